"""DiT (Peebles & Xie 2023) with cross-attention to text (PixArt-alpha's layout): a transformer denoiser.

Latent cells (or p x p patches of them) are tokens with learned positions; every block is adaLN-Zero
modulated self-attention, cross-attention to the text tokens, and an MLP. The timestep and pooled text
embedding drive the modulation; gates start at zero, so a fresh DiT outputs zero like the UNet. Same
call signature as `UNet`, so a family picks either by config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t2i.nn.attention import Attention
from t2i.nn.blocks import check_text_attention
from t2i.nn.embeddings import TimestepEmbedding, timestep_embedding
from t2i.nn.unet import add_aug


@dataclass
class DiTConfig:
    in_channels: int
    out_channels: int
    input_size: int = 8  # latent side
    patch: int = 1
    dim: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: int = 4
    context_dim: int | None = None
    pooled_dim: int | None = None
    # How the (learned) position table starts: "random" (N(0, 0.02), as in ViT) or "sincos" (DiT's fixed
    # 2D sin-cos table, here only the starting point). With sincos, "left of" is already a direction in the
    # embedding at step 0 instead of something the denoiser has to discover (docs/ldm.md, Round 4).
    pos_init: str = "random"
    text_attention: str = "cross"  # cross (PixArt) | concat (text K/V in front of the image tokens', GLIDE)
    # > 0: the tokens are unpatchified to this many channels and a small conv head (3x3 conv, SiLU, 3x3 conv)
    # makes the output (U-ViT's final conv): pixels near a patch edge then see the neighbouring patch, which a
    # per-patch linear output cannot, and large pixel patches stop showing as tiles. 0: the linear output alone.
    conv_head: int = 0
    # With a conv head: it also reads the denoiser's own input (x_t, and an SR stage's upsampled low-res image)
    # at full resolution, next to the unpatchified tokens (the pixel decoders of DeCo and PixNerd): detail
    # that x_t still carries at low noise, or that the low-res image gives, need not pass through a patch token.
    # Off in every preset: on GLIDE's 32 px base (x0 targets) it passed x_t's noise through as speckle inside
    # the objects and scored 0.018 against 0.138 at 2,000 steps (benchmarks/RESULTS.md, 2026-12-03).
    head_input: bool = False
    aug_embed: bool = False  # a second time embedding for a low-res input's noise level (super-resolution)

    def validate(self, where: str) -> None:
        from t2i.config import require

        require(self.conv_head > 0 or not self.head_input, where, "head_input",
                "needs a conv head: set conv_head > 0 too", self.head_input)


def sincos_2d(grid: int, dim: int) -> Tensor:
    """(grid*grid, dim) table, row-major: half the channels encode the row, half the column (MAE/DiT layout).

    Each half is the 1D sinusoid of `timestep_embedding` with max_period 10,000 over integer coordinates,
    so neighbouring cells get similar vectors and a fixed offset is a fixed rotation of each frequency pair.
    """
    if dim % 4:
        raise ValueError(f"a 2D sin-cos position table needs dim divisible by 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float32)
    rows = timestep_embedding(coords, dim // 2)  # (grid, dim/2)
    rr, cc = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([rows[rr.reshape(-1)], rows[cc.reshape(-1)]], dim=-1)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, context_dim: int | None, text_attention: str = "cross"):
        super().__init__()
        check_text_attention(text_attention)
        self.concat = text_attention == "concat" and bool(context_dim)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads, concat_dim=context_dim if self.concat else None)
        self.norm_c = nn.LayerNorm(dim) if context_dim and not self.concat else None
        self.cross = Attention(dim, heads, context_dim=context_dim) if context_dim and not self.concat else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        s1, b1, g1, s2, b2, g2 = self.ada(emb)[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + s1) + b1
        x = x + g1 * (self.attn(h, context, context_mask=context_mask) if self.concat else self.attn(h))
        if context is not None and self.cross is not None and self.norm_c is not None:
            x = x + self.cross(self.norm_c(x), context, context_mask=context_mask)
        return x + g2 * self.mlp(self.norm2(x) * (1 + s2) + b2)


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch, cfg.dim
        if cfg.input_size % p:
            raise ValueError(f"input_size {cfg.input_size} is not divisible by patch {p}")
        self.grid = cfg.input_size // p
        self.embed = nn.Linear(cfg.in_channels * p * p, d)
        if cfg.pos_init not in ("random", "sincos"):
            raise ValueError(f"pos_init must be random or sincos, got {cfg.pos_init!r}")
        table = sincos_2d(self.grid, d) if cfg.pos_init == "sincos" else torch.randn(self.grid**2, d) * 0.02
        self.pos = nn.Parameter(table[None])
        self.time_embed = TimestepEmbedding(d, d)
        self.pooled_proj = nn.Linear(cfg.pooled_dim, d) if cfg.pooled_dim else None
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio, cfg.context_dim, cfg.text_attention)
                                    for _ in range(cfg.depth))
        self.aug_embed = TimestepEmbedding(d, d) if cfg.aug_embed else None
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.ada_out = nn.Linear(d, 2 * d)
        head = cfg.conv_head
        self.out = nn.Linear(d, (head or cfg.out_channels) * p * p)
        if cfg.head_input and not head:
            raise ValueError("dit.head_input needs a conv head: set dit.conv_head > 0")
        head_in = head + (cfg.in_channels if cfg.head_input else 0)
        self.head = (nn.Sequential(nn.Conv2d(head_in, head, 3, padding=1), nn.SiLU(),
                                   nn.Conv2d(head, cfg.out_channels, 3, padding=1)) if head else None)
        zero = [self.ada_out, self.head[-1]] if self.head is not None else [self.ada_out, self.out]
        for m in zero:  # a fresh DiT outputs exactly zero, like the UNet
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                pooled: Tensor | None = None, aug: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        p, g = self.cfg.patch, self.grid
        if (h, w) != (self.cfg.input_size,) * 2:
            raise ValueError(f"DiT built for {self.cfg.input_size}x{self.cfg.input_size} inputs, got {h}x{w}")
        tokens = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
        hdn = self.embed(tokens) + self.pos
        t = torch.as_tensor(t, device=x.device)
        emb = self.time_embed(t.expand(b) if t.ndim == 0 else t)
        if pooled is not None and self.pooled_proj is not None:
            emb = emb + self.pooled_proj(pooled)
        emb = torch.nn.functional.silu(add_aug(emb, self.aug_embed, aug, b))
        for block in self.blocks:
            hdn = block(hdn, emb, context, context_mask)
        shift, scale = self.ada_out(emb)[:, None].chunk(2, dim=-1)
        out = self.out(self.norm_out(hdn) * (1 + scale) + shift)
        out = out.reshape(b, g, g, -1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, h, w)
        if self.head is None:
            return out
        return self.head(torch.cat([out, x.to(out.dtype)], dim=1) if self.cfg.head_input else out)
