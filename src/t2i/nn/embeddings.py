"""Embedding a continuous time or noise level into a vector a network can condition on.

t2i's diffusion code calls networks with a float t in [0, 1] (see `t2i.diffusion.schedules`), not DDPM's
integer step, so the sinusoid's phase is ``scale * t`` with ``scale = 1000``: the fastest frequency then
turns about 1000 radians across [0, 1], as it did over DDPM's 1000 integer steps, and the slowest still
barely moves -- the network sees t at every resolution. A caller that conditions on something else (a
log noise level, an aesthetic score) picks the `scale` that spreads its range similarly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features (B, dim) of float values t (B,): [cos(t f_i), sin(t f_i)] with geometric f_i.

    Frequencies run from 1 down to 1 / max_period (Transformer / DDPM convention). Computed in float32
    whatever the input dtype or autocast state, since bf16 cannot resolve the phase of large arguments.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """t (B,) float -> (B, out_dim): sinusoidal features of ``scale * t`` followed by a SiLU MLP.

    The MLP lets the network reshape the fixed sinusoids into whatever conditioning each block needs;
    `out_dim` defaults to `dim` (UNets use 4x their base width, as in DDPM/LDM).
    """

    def __init__(self, dim: int, out_dim: int | None = None, scale: float = 1000.0):
        super().__init__()
        self.dim, self.out_dim, self.scale = dim, out_dim or dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, self.out_dim), nn.SiLU(), nn.Linear(self.out_dim, self.out_dim))

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t.float() * self.scale, self.dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
