"""A stack of TransformerBlocks for token models: the body of DALL-E's GPT, Parti's decoder and MaskGIT.

Nothing new inside: the shared `TransformerBlock` (pre-LN, optional cross-attention) and the one `Attention`
with its `KVCache`. This only threads one cache per layer through the stack for incremental decoding and
ends in the final LayerNorm that pre-LN stacks need before their output head.
"""

from __future__ import annotations

from torch import Tensor, nn

from t2i.nn.attention import KVCache
from t2i.nn.blocks import TransformerBlock


class TokenTransformer(nn.Module):
    """(B, L, dim) -> (B, L, dim): `depth` blocks, causal or bidirectional, optionally cross-attending."""

    def __init__(self, dim: int, depth: int, heads: int, causal: bool = True, context_dim: int | None = None):
        super().__init__()
        self.depth = depth
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, context_dim=context_dim, causal=causal)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                caches: list[KVCache] | None = None, context_caches: list[KVCache] | None = None,
                mask: Tensor | None = None, attn_mask: Tensor | None = None,
                context_attn_mask: Tensor | None = None) -> Tensor:
        """With `caches` (one per block), x holds only the positions after the cached ones; `context_caches`
        (one per block) keep the context's cross-attention keys/values from the first call on. `mask` is
        x's key padding (B, L); `attn_mask` / `context_attn_mask` are (Lq, Lk) patterns of which keys each
        position may see (NUWA's nearby attention), in the self- and cross-attention."""
        for name, given in (("caches", caches), ("context_caches", context_caches)):
            if given is not None and len(given) != self.depth:
                raise ValueError(f"{len(given)} {name} for {self.depth} blocks")
        for i, block in enumerate(self.blocks):
            x = block(x, context=context, context_mask=context_mask, cache=None if caches is None else caches[i],
                      context_cache=None if context_caches is None else context_caches[i], mask=mask,
                      attn_mask=attn_mask, context_attn_mask=context_attn_mask)
        return self.norm(x)
