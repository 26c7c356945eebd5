"""A small bidirectional transformer text encoder (the role CLIP's / T5's encoder plays at full scale).

Token embedding + learned positions, pre-LN TransformerBlocks attending only to real tokens, final
LayerNorm. It returns per-token features (what cross-attention reads) and a pooled vector for models that
condition on a single embedding: the mask-aware mean, or (``pool="last"``, GLIDE) the last real token's
state, which has attended to the whole caption. Padding is masked out of every attention, so
the features of a caption do not depend on how much padding its batch needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t2i.nn.blocks import TransformerBlock


@dataclass
class TextEncoderConfig:
    vocab_size: int
    max_len: int = 32
    dim: int = 128
    depth: int = 2
    heads: int = 4
    pool: str = "mean"  # mean | last


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_len, cfg.dim) * 0.02)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.pool not in ("mean", "last"):
            raise ValueError(f"pool must be mean or last, got {cfg.pool!r}")

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """ids (B, L) long, mask (B, L) bool (True = real token) -> tokens (B, L, dim), pooled (B, dim).

        Features at padded positions are meaningless: pass `mask` on as the cross-attention's context_mask.
        """
        if ids.shape[1] > self.cfg.max_len:
            raise ValueError(f"{ids.shape[1]} tokens exceed the encoder's max_len {self.cfg.max_len}")
        mask = mask.bool()
        x = self.tok_emb(ids) + self.pos_emb[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask=mask)
        x = self.norm(x)
        if self.cfg.pool == "last":
            last = (mask.long().sum(dim=1) - 1).clamp(min=0)
            return x, x[torch.arange(x.shape[0], device=x.device), last]
        w = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        return x, pooled
