"""Noise-conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models"; Imagen).

A super-resolution stage is trained on real downsampled images but sampled on the base stage's outputs,
which carry artefacts the real ones lack. Corrupting its low-res input with Gaussian noise of a random
level, and telling the model that level, teaches it to treat the input as a noisy hint rather than the
truth; at sampling time a small fixed level (Imagen's best samples: 0.1-0.3) hides the base stage's own
artefacts under noise the model knows how to read through.

The corruption is variance preserving, on a cosine path: level `a` in [0, 1] gives
x_a = cos(a pi/2) x + sin(a pi/2) eps, so a = 0 is exactly the clean image and a = 1 pure noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from t2i.diffusion.objectives import append_dims


def noise_augment(x: Tensor, level: Tensor, eps: Tensor) -> Tensor:
    """x (B, ...) corrupted to noise levels `level` (B,) in [0, 1] with the given noise `eps` (shape of x)."""
    angle = level.to(x.device, torch.float32).clamp(0, 1) * (math.pi / 2)
    alpha, sigma = (append_dims(v, x.ndim).to(x.dtype) for v in (torch.cos(angle), torch.sin(angle)))
    return alpha * x + sigma * eps.to(x.dtype)


def training_levels(batch: int, aug_max: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Per-sample levels for training: uniform on [0, aug_max]."""
    return torch.rand(batch, generator=generator, device=device) * aug_max
