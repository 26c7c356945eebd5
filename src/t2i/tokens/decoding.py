"""Decoding image tokens from a trained token model: autoregressive (DALL-E, Parti) and parallel (MaskGIT).

Both decoders are pure functions over a model callable, in the style of the diffusion samplers:

* `sample_autoregressive(next_state, head, ...)`: one position per step. `next_state(cond, codes, caches)`
  returns the state that predicts the position after `codes`; with `caches` (one `KVCache` per layer) the
  model only runs the positions it has not cached yet, so a step costs one position instead of the prefix.
* `sample_parallel(masked_state, head, ...)`: MaskGIT / Muse. Start from all-[MASK]; each step predicts
  every masked position at once, keeps the most confident ones and re-masks the rest, following a cosine
  schedule (`mask_schedule`), so 64 positions take ~8 model calls instead of 64.

A position holds `slots` codes (a p x p patch of the code grid, `t2i.tokens.patches`; 1 by default):
`head(state, chosen)` gives the logits of a position's next code from its state and the codes already
chosen there, and `sample_patch` draws them one by one.

Shared sampling options (`DecodeOptions`): classifier-free guidance on logits as in Parti (`Guide`), then
temperature, top-k and top-p (nucleus) filtering.

Randomness: every image draws its uniforms from its own seed, up front, and a token is picked by inverse
CDF of those uniforms. An image therefore depends on its seed only (not on its batch), and cached and
uncached decoding pick the same codes from the same logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from t2i import monitor
from t2i.errors import OptionError
from t2i.nn.attention import KVCache


@dataclass
class DecodeOptions:
    temperature: float = 1.0
    top_k: int | None = None  # keep the k most likely tokens (None: all)
    top_p: float | None = None  # keep the smallest set whose probability reaches p (None: all)
    guidance: float = 1.0  # classifier-free guidance on logits; 1 = off (no unconditional pass)
    steps: int = 8  # parallel decoding only: model calls for the whole image

    def check(self) -> DecodeOptions:
        check_decoding(self.temperature, self.top_k, self.top_p, self.guidance, self.steps)
        return self


def check_decoding(temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                  guidance: float | None = None, steps: int | None = None) -> None:
    """One-line `UserError`s for unusable decoding options (None = not given)."""
    if temperature is not None and not temperature > 0:
        raise OptionError("temperature", f"must be > 0 (1 = the model's distribution), got {temperature}")
    if top_k is not None and top_k <= 0:
        raise OptionError("top_k", f"must be a positive number of tokens, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise OptionError("top_p", f"must be in (0, 1] (1 = no nucleus filtering), got {top_p}")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise OptionError("guidance", f"must be >= 0 and finite (1 = no guidance, 0 = unconditional), got {guidance}")
    if steps is not None and steps < 1:
        raise OptionError("steps", f"must be at least 1, got {steps}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (over the last dimension).

    The nucleus is the smallest set of most likely tokens whose probability reaches `top_p`; the most
    likely token is always kept, so a row never ends up empty.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.float().softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def probabilities(logits: Tensor, opts: DecodeOptions) -> Tensor:
    """Softmax of temperature-scaled, filtered logits, in float32."""
    return filter_logits(logits.float() / opts.temperature, opts.top_k, opts.top_p).softmax(dim=-1)


def pick(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF sampling: the token whose cumulative probability first exceeds u (same leading shape)."""
    cdf = probs.cumsum(dim=-1)
    idx = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1).contiguous()).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


def uniforms(seeds: list[int], n: int, device: torch.device | str = "cpu") -> Tensor:
    """(B, n) uniforms in [0, 1), row i from seed i alone."""
    return torch.stack([torch.rand(n, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                        for s in seeds]).float().to(device)


class Guide:
    """Classifier-free guidance on logits, as in Parti: conditional and unconditional rows run as one batch
    (`cond` holds both, built once per image batch), then ``l_u + g (l_c - l_u)``.

    With guidance 1 (or no `uncond`) only the conditional rows run."""

    def __init__(self, cond: dict[str, Any], uncond: dict[str, Any] | None, guidance: float):
        self.on, self.guidance = uncond is not None and guidance != 1.0, guidance
        self.cond = cond if not self.on else {
            k: torch.cat([v, uncond[k]]) if isinstance(v, Tensor) else v for k, v in cond.items()}  # type: ignore[index]

    def rows(self, x: Tensor) -> Tensor:
        """What the model reads for `x` (B, ...): x for the conditional rows and again for the unconditional."""
        return torch.cat([x, x]) if self.on else x

    def mix(self, logits: Tensor) -> Tensor:
        if not self.on:
            return logits
        c, u = logits.float().chunk(2)
        return u + self.guidance * (c - u)


def sample_patch(head: Callable[[Tensor, Tensor], Tensor], h: Tensor, u: Tensor, opts: DecodeOptions,
                 guide: Guide) -> tuple[Tensor, Tensor]:
    """The codes of one patch per row of `h`, slot after slot; returns them (B, ..., slots) with their
    summed log-probability (B, ...).

    `head(h, chosen)` gives slot j's logits from the state and the j codes chosen before it in the patch
    (`PatchHead.slot_logits`); `h` holds guide.rows of the states; u (B, ..., slots) are the uniforms."""
    slots = u.shape[-1]
    chosen = torch.zeros(*u.shape[:-1], 0, dtype=torch.long, device=u.device)
    logp = torch.zeros(u.shape[:-1], device=u.device)
    for j in range(slots):
        probs = probabilities(guide.mix(head(h, guide.rows(chosen))), opts)
        nxt = pick(probs, u[..., j])
        logp = logp + probs.gather(-1, nxt[..., None]).squeeze(-1).clamp(min=1e-30).log()
        chosen = torch.cat([chosen, nxt[..., None]], dim=-1)
    return chosen, logp


@torch.no_grad()
def sample_autoregressive(next_state: Callable[[dict[str, Any], Tensor, list[KVCache] | None], Tensor],
                          head: Callable[[Tensor, Tensor], Tensor], cond: dict[str, Any],
                          uncond: dict[str, Any] | None, positions: int, slots: int, seeds: list[int],
                          opts: DecodeOptions, layers: int, use_cache: bool = True,
                          device: torch.device | str = "cpu", prefix: Tensor | None = None) -> Tensor:
    """Codes (B, positions, slots), one position per step: `next_state(cond, codes so far, caches)` gives
    the state (B, dim) that predicts the next position, whose `slots` codes `head` then draws one by one
    from the guided, filtered distribution (`sample_patch`).

    `cond` / `uncond` hold batched tensors (B, ...) the model reads (text ids, encoder states); `uncond`
    is the empty caption, used only when guidance != 1. `layers` is the number of cached attentions.
    `prefix` (B, P, slots): given codes the decoding continues (NUWA's video prediction and completion); the
    first step runs all P of them at once and fills the caches.
    """
    opts.check()
    b = len(seeds)
    u = uniforms(seeds, positions * slots, device).reshape(b, positions, slots)
    codes = torch.zeros(b, 0, slots, dtype=torch.long, device=device) if prefix is None else prefix.to(device)
    if codes.shape[0] != b or codes.shape[1] > positions:
        raise ValueError(f"a prefix of shape {tuple(codes.shape)} for {b} rows of {positions} positions")
    guide = Guide(cond, uncond, opts.guidance)
    caches = [KVCache() for _ in range(layers)] if use_cache else None
    for i in range(codes.shape[1], positions):
        h = next_state(guide.cond, guide.rows(codes), caches)
        patch, _ = sample_patch(head, h, u[:, i], opts, guide)
        codes = torch.cat([codes, patch[:, None]], dim=1)
        monitor.step(i, positions)
    return codes


def mask_schedule(steps: int, n_tokens: int) -> list[int]:
    """Tokens still masked after each parallel-decoding step: n cos(pi/2 (s+1)/steps), MaskGIT's cosine
    schedule, adjusted so every step reveals at least one token and the last step reveals the rest."""
    if steps < 1:
        raise OptionError("steps", f"must be at least 1, got {steps}")
    out, left = [], n_tokens
    for s in range(steps):
        target = math.floor(n_tokens * math.cos(math.pi / 2 * (s + 1) / steps))
        left = max(min(target, left - 1), 0)
        out.append(left)
    out[-1] = 0
    return out


@torch.no_grad()
def sample_parallel(masked_state: Callable[[dict[str, Any], Tensor], Tensor],
                    head: Callable[[Tensor, Tensor], Tensor], cond: dict[str, Any],
                    uncond: dict[str, Any] | None, positions: int, slots: int, mask_id: int, seeds: list[int],
                    opts: DecodeOptions, choice_temperature: float = 4.5,
                    device: torch.device | str = "cpu") -> Tensor:
    """MaskGIT decoding: `opts.steps` calls of `masked_state(cond, codes) -> (B, positions, dim)`, where
    masked positions hold `mask_id` in every slot.

    Each step samples every masked position (its slots one by one, `sample_patch`), scores it by its
    log-probability plus Gumbel noise annealed from `choice_temperature` to 0 (MaskGIT's randomised
    confidence), and re-masks the least confident ones so that `mask_schedule` many stay masked.
    """
    opts.check()
    b = len(seeds)
    schedule = mask_schedule(opts.steps, positions)
    u = uniforms(seeds, 2 * opts.steps * positions * slots, device).reshape(b, 2, opts.steps, positions, slots)
    codes = torch.full((b, positions, slots), mask_id, dtype=torch.long, device=device)
    guide = Guide(cond, uncond, opts.guidance)
    for s in range(opts.steps):
        masked = codes[..., 0] == mask_id
        h = masked_state(guide.cond, guide.rows(codes))
        sampled, logp = sample_patch(head, h, u[:, 0, s], opts, guide)
        gumbel = -torch.log(-torch.log(u[:, 1, s, :, 0].clamp(1e-10, 1 - 1e-10)))
        conf = logp + choice_temperature * (1 - (s + 1) / opts.steps) * gumbel
        conf = conf.masked_fill(~masked, float("inf"))  # decided positions are never re-masked
        codes = torch.where(masked[..., None], sampled, codes)
        keep_masked = schedule[s]
        if keep_masked:
            lowest = conf.argsort(dim=-1)[:, :keep_masked]
            codes = codes.scatter(1, lowest[..., None].expand(-1, -1, slots), mask_id)
        monitor.step(s, opts.steps)
    return codes
