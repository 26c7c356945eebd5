"""Decoding image tokens from a trained token model: autoregressive (DALL-E, Parti) and parallel (MaskGIT).

Both decoders are pure functions over a model callable, in the style of the diffusion samplers:

* `sample_autoregressive(next_logits, ...)`: one token per step. `next_logits(cond, tokens, caches)` returns
  the logits of the token after `tokens`; with `caches` (one `KVCache` per layer) the model only runs the
  positions it has not cached yet, so a step costs one token instead of the whole prefix.
* `sample_parallel(masked_logits, ...)`: MaskGIT / Muse. Start from all-[MASK]; each step predicts every
  masked token at once, keeps the most confident ones and re-masks the rest, following a cosine schedule
  (`mask_schedule`), so 64 tokens take ~8 model calls instead of 64.

Shared sampling options (`DecodeOptions`): classifier-free guidance on logits as in Parti
(``l_u + g (l_c - l_u)``, the conditional and unconditional rows run as one batch), then temperature,
top-k and top-p (nucleus) filtering.

Randomness: every image draws its uniforms from its own seed, up front, and a token is picked by inverse
CDF of those uniforms. An image therefore depends on its seed only (not on its batch), and cached and
uncached decoding pick the same tokens from the same logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from t2i.errors import UserError
from t2i.nn.attention import KVCache


@dataclass
class DecodeOptions:
    temperature: float = 1.0
    top_k: int | None = None  # keep the k most likely tokens (None: all)
    top_p: float | None = None  # keep the smallest set whose probability reaches p (None: all)
    guidance: float = 1.0  # classifier-free guidance on logits; 1 = off (no unconditional pass)
    steps: int = 8  # parallel decoding only: model calls for the whole image

    def check(self) -> DecodeOptions:
        check_options(self.temperature, self.top_k, self.top_p, self.guidance, self.steps)
        return self


def check_options(temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                  guidance: float | None = None, steps: int | None = None) -> None:
    """One-line `UserError`s for unusable decoding options (None = not given)."""
    if temperature is not None and not temperature > 0:
        raise UserError(f"--temperature must be > 0 (1 = the model's distribution), got {temperature}")
    if top_k is not None and top_k <= 0:
        raise UserError(f"--top-k must be a positive number of tokens, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1] (1 = no nucleus filtering), got {top_p}")
    if guidance is not None and guidance < 0:
        raise UserError(f"--guidance must be >= 0 (1 = no guidance, 0 = unconditional), got {guidance}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")


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


def guided(logits_fn: Callable[[dict[str, Any]], Tensor], cond: dict[str, Any], uncond: dict[str, Any] | None,
           guidance: float) -> Tensor:
    """Classifier-free guidance on logits: one batched call over [cond; uncond] rows, then l_u + g (l_c - l_u)."""
    if uncond is None or guidance == 1.0:
        return logits_fn(cond)
    both = logits_fn({k: torch.cat([cond[k], uncond[k]]) if isinstance(cond[k], Tensor) else cond[k]
                      for k in cond})
    c, u = both.float().chunk(2)
    return u + guidance * (c - u)


@torch.no_grad()
def sample_autoregressive(next_logits: Callable[[dict[str, Any], Tensor, list[KVCache] | None], Tensor],
                          cond: dict[str, Any], uncond: dict[str, Any] | None, n_tokens: int, seeds: list[int],
                          opts: DecodeOptions, layers: int, use_cache: bool = True,
                          device: torch.device | str = "cpu") -> Tensor:
    """Tokens (B, n_tokens), one per step, each drawn from the guided, filtered next-token distribution.

    `cond` / `uncond` hold batched tensors (B, ...) the model reads (text ids, encoder states); `uncond`
    is the empty caption, used only when guidance != 1. `layers` is the number of cached self-attentions.
    """
    opts.check()
    b = len(seeds)
    u = uniforms(seeds, n_tokens, device)
    tokens = torch.zeros(b, 0, dtype=torch.long, device=device)
    use_uncond = uncond is not None and opts.guidance != 1.0
    caches = [KVCache() for _ in range(layers)] if use_cache else None
    for i in range(n_tokens):
        prefix = torch.cat([tokens, tokens]) if use_uncond else tokens
        logits = guided(lambda c, p=prefix: next_logits(c, p, caches), cond, uncond if use_uncond else None,
                        opts.guidance)
        nxt = pick(probabilities(logits, opts), u[:, i])
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    return tokens


def mask_schedule(steps: int, n_tokens: int) -> list[int]:
    """Tokens still masked after each parallel-decoding step: n cos(pi/2 (s+1)/steps), MaskGIT's cosine
    schedule, adjusted so every step reveals at least one token and the last step reveals the rest."""
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    out, left = [], n_tokens
    for s in range(steps):
        target = math.floor(n_tokens * math.cos(math.pi / 2 * (s + 1) / steps))
        left = max(min(target, left - 1), 0)
        out.append(left)
    out[-1] = 0
    return out


@torch.no_grad()
def sample_parallel(masked_logits: Callable[[dict[str, Any], Tensor], Tensor], cond: dict[str, Any],
                    uncond: dict[str, Any] | None, n_tokens: int, mask_id: int, seeds: list[int],
                    opts: DecodeOptions, choice_temperature: float = 4.5,
                    device: torch.device | str = "cpu") -> Tensor:
    """MaskGIT decoding: `opts.steps` calls of `masked_logits(cond, tokens) -> (B, n_tokens, V)`.

    Each step samples every masked position, scores it by its log-probability plus Gumbel noise annealed
    from `choice_temperature` to 0 (MaskGIT's randomised confidence), and re-masks the least confident
    ones so that `mask_schedule` many stay masked.
    """
    opts.check()
    b = len(seeds)
    schedule = mask_schedule(opts.steps, n_tokens)
    u = uniforms(seeds, 2 * opts.steps * n_tokens, device).reshape(b, 2, opts.steps, n_tokens)
    tokens = torch.full((b, n_tokens), mask_id, dtype=torch.long, device=device)
    use_uncond = uncond is not None and opts.guidance != 1.0
    for s in range(opts.steps):
        masked = tokens == mask_id
        inp = torch.cat([tokens, tokens]) if use_uncond else tokens
        logits = guided(lambda c, x=inp: masked_logits(c, x), cond, uncond if use_uncond else None, opts.guidance)
        probs = probabilities(logits, opts)
        sampled = pick(probs, u[:, 0, s])
        logp = probs.gather(-1, sampled[..., None]).squeeze(-1).clamp(min=1e-30).log()
        gumbel = -torch.log(-torch.log(u[:, 1, s].clamp(1e-10, 1 - 1e-10)))
        conf = logp + choice_temperature * (1 - (s + 1) / opts.steps) * gumbel
        conf = conf.masked_fill(~masked, float("inf"))  # decided tokens are never re-masked
        tokens = torch.where(masked, sampled, tokens)
        keep_masked = schedule[s]
        if keep_masked:
            lowest = conf.argsort(dim=-1)[:, :keep_masked]
            tokens = tokens.scatter(1, lowest, mask_id)
    return tokens
