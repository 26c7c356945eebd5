"""The one attention module every model in t2i uses: self, causal, cross, masked and cached.

Every family needs attention in a slightly different shape -- bidirectional over text (text encoders),
cross-attention from image tokens to text tokens (UNets), causal with a KV cache (DALL-E, Parti) -- and
keeping a single implementation means one place to get masking right. The math is always
``softmax(q k^T / sqrt(d_head) + mask) v``: `F.scaled_dot_product_attention` on accelerators, plain
matmuls on CPU (see `_attend`); both follow the inputs' device and dtype (so they work under autocast).

Masks are boolean with True = attend. Two kinds combine:

* a key padding mask (B, Lk): which keys exist (text padding, or padding of the decoded sequence);
* the causal mask, aligned to the *end* of the key sequence, so a query block that is a suffix of the
  sequence (incremental decoding with a `KVCache`) sees exactly the keys at or before its own position.

A query row whose keys are all masked would be a softmax over nothing (NaN); such rows output zeros, so
the residual stream passes through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class KVCache:
    """Keys and values (B, heads, L, d_head) of one self-attention layer for the tokens seen so far.

    Pass the same cache to every call while decoding: each call appends its new keys/values and attends
    to everything cached. A decoder keeps one cache per layer (``[KVCache() for _ in blocks]``).
    """

    k: Tensor | None = None
    v: Tensor | None = None

    @property
    def length(self) -> int:
        """How many positions are cached (the position of the next token)."""
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions and return all keys and values so far."""
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reset(self) -> None:
        self.k = self.v = None


class Attention(nn.Module):
    """Multi-head attention: self-attention on x, or cross-attention from x to `context`.

    `context_dim` sets the width of the context (default: same as x). `causal` applies to self-attention
    only. Heads split `dim` evenly.

    `concat_dim` makes it GLIDE's text attention instead: self-attention over x whose keys and values are
    preceded by the `context` tokens' own projection (width `concat_dim`), so one softmax decides between
    looking at other pixels and looking at words. Cross-attention (LDM) keeps the two apart.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, causal: bool = False,
                 bias: bool = False, concat_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        if concat_dim and (context_dim or causal):
            raise ValueError("concat_dim is a self-attention mode: no context_dim or causal with it")
        self.heads, self.causal = heads, causal
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=bias)
        self.to_ctx_kv = nn.Linear(concat_dim, 2 * dim, bias=bias) if concat_dim else None
        self.to_out = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                cache: KVCache | None = None, context_cache: KVCache | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        """x (B, Lq, dim) -> (B, Lq, dim).

        context: (B, Lc, context_dim) to cross-attend to; None for self-attention.
        context_mask: (B, Lk) bool, True = keep, over the keys -- the context tokens, or in self-attention
            x's own tokens (all of them, cached ones included, when a cache is used).
        cache: self-attention only; x's keys/values are appended to it and x attends to all of it, with
            x taken to be the last Lq positions of the sequence.
        context_cache: cross-attention only; the context's keys/values are computed on the first call and
            reused afterwards (the context must not change between calls: incremental decoding, where
            projecting the same encoder states again at every step would cost more than the step itself).
        attn_mask: (Lq, Lk) bool, True = attend: which keys each query may see, beyond padding and causality
            (NUWA's nearby and axial patterns); with a cache, the rows of the current queries.
        """
        if self.to_ctx_kv is not None:
            return self._concat(x, context, context_mask)
        if context is not None and (self.causal or cache is not None):
            raise ValueError("causal masking and KV caching apply to self-attention only")
        b, lq, dim = x.shape
        if context_cache is not None and context is None:
            raise ValueError("context_cache applies to cross-attention only")
        q = self.to_q(x).reshape(b, lq, self.heads, dim // self.heads).transpose(1, 2)
        if context_cache is not None and context_cache.k is not None and context_cache.v is not None:
            k, v = context_cache.k, context_cache.v
        else:
            k, v = self.to_kv(x if context is None else context).chunk(2, dim=-1)
            k, v = (t.reshape(b, -1, self.heads, dim // self.heads).transpose(1, 2) for t in (k, v))
            if context_cache is not None:
                context_cache.append(k, v)
        if cache is not None:
            k, v = cache.append(k, v)
        lk = k.shape[2]

        mask = None
        if context_mask is not None:
            if context_mask.shape != (b, lk):
                raise ValueError(f"key mask has shape {tuple(context_mask.shape)}, expected {(b, lk)}")
            mask = context_mask.bool()[:, None, None, :]  # (B, 1, 1, Lk)
        if attn_mask is not None:
            if attn_mask.shape != (lq, lk):
                raise ValueError(f"attention pattern has shape {tuple(attn_mask.shape)}, expected {(lq, lk)}")
            mask = attn_mask.bool() if mask is None else mask & attn_mask.bool()
        # Fast path: a square causal pass with no padding lets the kernel build the mask itself.
        fused_causal = self.causal and lq == lk and mask is None
        if self.causal and not fused_causal and lq > 1:
            # Query i sits at position (lk - lq + i): it may see keys up to and including that position.
            causal = torch.ones(lq, lk, dtype=torch.bool, device=x.device).tril(diagonal=lk - lq)
            mask = causal if mask is None else mask & causal
        dead = None
        if mask is not None:
            dead = ~mask.any(dim=-1, keepdim=True)  # rows with nothing to attend to
            mask = mask | dead
        if mask is not None and mask.dim() == 2 and lq >= 2 * SPARSE_BLOCK:
            out = _attend_blocked(q, k, v, mask, SPARSE_BLOCK)
        else:
            out = _attend(q, k, v, mask, fused_causal)
        if dead is not None:
            out = out.masked_fill(dead, 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, lq, dim))


    def _concat(self, x: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        """Self-attention over x with the context's keys/values in front (plain self-attention without one)."""
        b, lq, dim = x.shape
        split = (b, -1, self.heads, dim // self.heads)
        q = self.to_q(x).reshape(split).transpose(1, 2)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        mask = None
        if context is not None:
            assert self.to_ctx_kv is not None
            ck, cv = self.to_ctx_kv(context).chunk(2, dim=-1)
            k, v = torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
            if context_mask is not None:
                if context_mask.shape != context.shape[:2]:
                    raise ValueError(f"context mask has shape {tuple(context_mask.shape)}, expected "
                                     f"{tuple(context.shape[:2])}")
                own = torch.ones(b, lq, dtype=torch.bool, device=x.device)
                mask = torch.cat([context_mask.bool(), own], dim=1)[:, None, None, :]
        k, v = (t.reshape(split).transpose(1, 2) for t in (k, v))
        out = _attend(q, k, v, mask, False)
        return self.to_out(out.transpose(1, 2).reshape(b, lq, dim))


SPARSE_BLOCK = 64  # queries per block of the block-sparse path: one 8x8 frame of NUWA's code grid


def _attend_blocked(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, block: int) -> Tensor:
    """`_attend` for a long pattern shared by the batch (mask (Lq, Lk)), block by block of `block` queries,
    each block against only the keys some of its rows may see. Exact, since a key left out is masked for every
    row of its block; fast where the pattern is sparse: NUWA's nearby attention lets a frame see two frames, so
    a 512-code clip costs each frame 129 keys instead of 512 (and plain causal attention, half on average)."""
    outs = []
    for s in range(0, q.shape[2], block):
        rows = mask[s:s + block]
        seen = rows.any(0).nonzero().squeeze(1).tolist()
        # Slices, not a gather (whose backward, an index_put, cost more than the attention it saved): the first
        # key seen, then the span of the others; a key inside a span that no row sees stays masked.
        spans = [(seen[0], seen[0] + 1), (seen[1], seen[-1] + 1)] if len(seen) > 1 and seen[1] > seen[0] + 1 \
            else [(seen[0], seen[-1] + 1)]
        kk = torch.cat([k[:, :, a:b] for a, b in spans], dim=2)
        vv = torch.cat([v[:, :, a:b] for a, b in spans], dim=2)
        mm = torch.cat([rows[:, a:b] for a, b in spans], dim=1)
        outs.append(_attend(q[:, :, s:s + block], kk, vv, mm, False))
    return torch.cat(outs, dim=2)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v. On CUDA a fused kernel; on CPU plain batched matmuls, because
    the CPU flash kernel's backward is slow at the short sequences t2i uses (measured: 40% of an LDM UNet
    training step at 64 latent tokens, against under 10% with matmuls)."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
    if is_causal:
        lq, lk = scores.shape[-2:]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1).to(v.dtype) @ v
