"""The text-conditioned UNet of Latent Diffusion (and, at pixel level, of GLIDE / Imagen / DALL-E 2).

Encoder: at each resolution level, `num_res_blocks` ResBlocks (each followed by a SpatialTransformer at
the `attention_levels`), then a stride-2 downsample (except at the last level). Middle: ResBlock,
SpatialTransformer, ResBlock. Decoder: the mirror image with one more ResBlock per level, each one
concatenating the matching encoder activation (the skip connections carry fine detail past the
bottleneck). The time embedding conditions every ResBlock; text tokens condition every SpatialTransformer
through cross-attention. The output conv starts at zero, so a fresh model predicts exactly 0 -- the mean
of any of the diffusion targets -- and training starts from a sensible place.

`t` is whatever float the caller's schedule uses (t2i passes t in [0, 1]); the UNet only embeds it.

The pixel families' options: `text_attention="concat"` (GLIDE: text keys/values in front of the pixels'
own in one self-attention), `aug_embed` (a cascade's super-resolution stage: the noise level its low-res
input was corrupted with, embedded like t and added to the time embedding; Imagen), `skip_scale` (Imagen's
Efficient UNet scales the skips by 1/sqrt(2), keeping the decoder's input variance from doubling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i.nn.blocks import Downsample, ResBlock, SpatialTransformer, Upsample, group_norm
from t2i.nn.embeddings import TimestepEmbedding


@dataclass
class UNetConfig:
    """Widths are ``channels * channel_mult[level]``; level i works at 1 / 2**i of the input resolution."""

    in_channels: int
    out_channels: int
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)
    heads: int = 4
    context_dim: int | None = None  # width of the text tokens to cross-attend to; None = unconditional
    # width of a pooled text vector added to the timestep embedding (GLIDE/Imagen): global conditioning
    # that every ResBlock sees from the first step, while cross-attention learns where things go
    pooled_dim: int | None = None
    dropout: float = 0.0
    text_attention: str = "cross"  # cross (LDM) | concat (GLIDE: text K/V in front of the pixels')
    aug_embed: bool = False  # a second time embedding for the noise-augmentation level (super-resolution)
    skip_scale: float = 1.0  # Imagen's Efficient UNet: 1/sqrt(2)


def add_aug(emb: Tensor, embed: nn.Module | None, aug: Tensor | None, batch: int) -> Tensor:
    """The time embedding plus the embedded augmentation level, for backbones built with `aug_embed`."""
    if (aug is None) != (embed is None):
        raise ValueError("aug (the low-res input's noise level) is given exactly when the backbone has aug_embed")
    if aug is None or embed is None:
        return emb
    aug = torch.as_tensor(aug, device=emb.device)
    return emb + embed(aug.expand(batch) if aug.ndim == 0 else aug)


class _Stage(nn.Module):
    """One ResBlock, followed by a SpatialTransformer at attention levels."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, attn: bool, cfg: UNetConfig):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.dropout)
        self.attn = (SpatialTransformer(out_ch, cfg.heads, cfg.context_dim, text_attention=cfg.text_attention)
                     if attn else None)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, context, context_mask)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, levels = cfg.channels, len(cfg.channel_mult)
        emb_dim = 4 * ch
        self.time_embed = TimestepEmbedding(ch, emb_dim)
        self.pooled_proj = nn.Linear(cfg.pooled_dim, emb_dim) if cfg.pooled_dim else None
        self.aug_embed = TimestepEmbedding(ch, emb_dim) if cfg.aug_embed else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [ch]  # channels of each activation the decoder will concatenate
        width = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_Stage(width, ch * mult, emb_dim, level in cfg.attention_levels, cfg))
                width = ch * mult
                skips.append(width)
            if level < levels - 1:
                self.down.append(Downsample(width))
                skips.append(width)

        self.mid = nn.ModuleList([_Stage(width, width, emb_dim, True, cfg), _Stage(width, width, emb_dim, False, cfg)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(_Stage(width + skips.pop(), ch * mult, emb_dim, level in cfg.attention_levels, cfg))
                width = ch * mult
            if level > 0:
                self.up.append(Upsample(width))

        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, pooled: Tensor | None = None, aug: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), t (B,) or scalar float, context (B, L, context_dim), context_mask (B, L) bool,
        pooled (B, pooled_dim), aug (B,) the noise-augmentation level of a low-res input (aug_embed).

        H and W must be divisible by 2**(len(channel_mult) - 1) so the skips line up.
        """
        if context is not None and self.cfg.context_dim is None:
            raise ValueError("context given to a UNet built without context_dim")
        factor = 2 ** (len(self.cfg.channel_mult) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not divisible by the UNet's downsampling {factor}")
        t = torch.as_tensor(t, device=x.device)
        emb = self.time_embed(t.expand(x.shape[0]) if t.ndim == 0 else t)
        if pooled is not None:
            if self.pooled_proj is None:
                raise ValueError("pooled conditioning given to a UNet built without pooled_dim")
            emb = emb + self.pooled_proj(pooled)
        emb = add_aug(emb, self.aug_embed, aug, x.shape[0])

        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb, context, context_mask) if isinstance(m, _Stage) else m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb, context, context_mask)
        for m in self.up:
            if isinstance(m, _Stage):
                skip = hs.pop()
                h = m(torch.cat([h, skip if self.cfg.skip_scale == 1 else skip * self.cfg.skip_scale], dim=1),
                      emb, context, context_mask)
            else:
                h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))
