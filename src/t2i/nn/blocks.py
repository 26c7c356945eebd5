"""Building blocks shared by the UNets, the autoencoder and the transformers.

Conv blocks are plain conv/GroupNorm nets with no reshapes of their own, so `channels_last` tensors stay
`channels_last` all the way through (the fast layout for CPU convolutions, especially in bf16). Transformer
blocks are pre-LayerNorm: each sublayer adds to a residual stream that is never normalised, which is what
keeps deep stacks trainable without warm-up tricks.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from t2i.nn.attention import Attention, KVCache

TEXT_ATTENTION = ("cross", "concat")


def check_text_attention(mode: str) -> None:
    if mode not in TEXT_ATTENTION:
        raise ValueError(f"text_attention must be one of {', '.join(TEXT_ATTENTION)}, got {mode!r}")


def norm_groups(ch: int) -> int:
    """GroupNorm groups for `ch` channels: 32 as in DDPM/LDM, but at least 4 channels per group.

    Tiny test/CPU widths (8, 16) would otherwise degenerate into per-channel (instance) normalisation,
    or not divide at all.
    """
    groups = max(min(32, ch // 4), 1)
    while ch % groups:
        groups -= 1
    return groups


def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    """norm-SiLU-conv, twice, around a residual; an optional embedding (time) enters as scale and shift.

    Scale-shift after the second norm (``h * (1 + scale) + shift``, "AdaGN" of Improved DDPM) lets the
    embedding modulate every channel's gain, not just its bias. A 1x1 conv matches channels on the skip.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch) if emb_dim else None
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this ResBlock was built with emb_dim and needs an embedding")
            scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (learned, unlike pooling)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a 3x3 conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: self-attention, optional cross-attention to `context`, GELU MLP.

    `causal` makes the self-attention causal (decoders); `context_dim` adds cross-attention (UNets attend
    to text this way, Parti's decoder to its encoder), or with ``text_attention="concat"`` puts the context's
    keys/values in front of the self-attention's (GLIDE's way; `Attention`'s concat_dim).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, causal: bool = False,
                 mlp_ratio: int = 4, text_attention: str = "cross"):
        super().__init__()
        check_text_attention(text_attention)
        concat = text_attention == "concat" and bool(context_dim)
        self.concat = concat
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal=causal, concat_dim=context_dim if concat else None)
        self.norm2 = nn.LayerNorm(dim) if context_dim and not concat else None
        self.cross = Attention(dim, heads, context_dim=context_dim) if context_dim and not concat else None
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                mask: Tensor | None = None, cache: KVCache | None = None,
                context_cache: KVCache | None = None, attn_mask: Tensor | None = None,
                context_attn_mask: Tensor | None = None) -> Tensor:
        """x (B, L, dim) -> (B, L, dim).

        mask: (B, Lk) key padding mask for the self-attention (True = real token).
        context, context_mask: what the cross-attention reads; a block built with cross-attention but
            called without context skips it.
        cache: KV cache of this block's self-attention (incremental decoding).
        context_cache: keys/values of the context for the cross-attention, computed once (incremental decoding).
        attn_mask, context_attn_mask: (Lq, Lk) patterns of which keys each query may see, in the self- and the
            cross-attention (`Attention`'s attn_mask).
        """
        if self.concat:
            return self._mlp(x + self.attn(self.norm1(x), context, context_mask=context_mask))
        x = x + self.attn(self.norm1(x), context_mask=mask, cache=cache, attn_mask=attn_mask)
        if context is not None:
            if self.cross is None or self.norm2 is None:
                raise ValueError("context given to a TransformerBlock built without context_dim")
            x = x + self.cross(self.norm2(x), context, context_mask=context_mask, context_cache=context_cache,
                               attn_mask=context_attn_mask)
        return self._mlp(x)

    def _mlp(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Attention over the pixels of a feature map, with cross-attention to text (LDM's text conditioning).

    Normalise, read the HxW positions as tokens, run a TransformerBlock (self-attention among pixels,
    cross-attention to `context`), and add the result back. The output projection starts at zero, so a
    fresh block is the identity and the UNet trains as a plain conv net until attention becomes useful.
    """

    def __init__(self, ch: int, heads: int, context_dim: int | None = None, depth: int = 1,
                 text_attention: str = "cross"):
        super().__init__()
        self.norm = group_norm(ch)
        self.proj_in = nn.Linear(ch, ch)
        self.blocks = nn.ModuleList(TransformerBlock(ch, heads, context_dim=context_dim, text_attention=text_attention)
                                    for _ in range(depth))
        self.proj_out = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        # permute+reshape is a free view for channels_last input and gives channels_last back on the way out.
        tokens = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c))
        for block in self.blocks:
            tokens = block(tokens, context=context, context_mask=context_mask)
        return x + self.proj_out(tokens).reshape(b, h, w, c).permute(0, 3, 1, 2)
