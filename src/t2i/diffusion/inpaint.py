"""Inpainting (GLIDE's fine-tuned variant): what the model is shown, how training masks are drawn, and how
sampling keeps the known region.

The inpainting denoiser reads 4 more input channels than its base model: the image with the region to
regenerate blanked out, and the mask itself (1 = regenerate). `widen_from` starts it from the trained base
model with those channels' input weights at zero, so at step 0 it is exactly the base model and fine-tuning
only has to learn to use the new inputs. Training masks are half boxes, half object-shaped (a connected
region of pixels that differ from the image's border colour, dilated by 2 px: on the shapes data, one whole
object, the case the benchmark fills). While sampling, `Reimpose` puts the known pixels back into every
predicted x0, so the sampler only ever invents the masked region.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn


def condition(known: Tensor, mask: Tensor) -> Tensor:
    """The 4 extra channels: known (B, 3, H, W) in [-1, 1] blanked where mask (B, 1, H, W) is 1, then the mask."""
    return torch.cat([known * (1 - mask), mask], dim=1)


class Reimpose:
    """x0 -> the known pixels where mask is 0, the model's prediction where it is 1."""

    def __init__(self, known: Tensor, mask: Tensor):
        self.known, self.mask = known, mask

    def __call__(self, x0: Tensor) -> Tensor:
        m = self.mask.to(x0.device, x0.dtype)
        return m * x0 + (1 - m) * self.known.to(x0.device, x0.dtype)


def random_masks(images: Tensor, rng: np.random.Generator, object_share: float = 0.5) -> Tensor:
    """(B, 1, H, W) float masks for training: an object-shaped region where one is found (with probability
    `object_share`), otherwise a box of 20-60% of the side."""
    b, _, h, w = images.shape
    pix = ((images.detach().float().cpu().numpy() + 1) * 127.5).transpose(0, 2, 3, 1)
    out = np.zeros((b, 1, h, w), dtype=np.float32)
    for i in range(b):
        if rng.random() < object_share and (m := _object_mask(pix[i], rng)) is not None:
            out[i, 0] = m
            continue
        bh, bw = (max(1, int(rng.uniform(0.2, 0.6) * s)) for s in (h, w))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        out[i, 0, y:y + bh, x:x + bw] = 1.0
    return torch.from_numpy(out).to(images.device)


def _object_mask(img: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    fg = np.abs(img - background).max(axis=-1) > 30
    labels, n = ndimage.label(fg)
    if n == 0:
        return None
    sizes = ndimage.sum(fg, labels, range(1, n + 1))
    keep = [k + 1 for k, s in enumerate(sizes) if s >= 4]  # not anti-aliasing crumbs
    if not keep:
        return None
    region = labels == keep[int(rng.integers(len(keep)))]
    return ndimage.binary_dilation(region, iterations=2).astype(np.float32)


@torch.no_grad()
def widen_from(net: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """Load a base model's weights into `net`, whose input layer reads more channels: the leading input
    columns get the base weights, the extra ones zeros (the base model's output, unchanged, at step 0)."""
    own = net.state_dict()
    for key, value in state.items():
        if key not in own:
            raise KeyError(f"{key} is not a parameter of the widened model")
        target = own[key]
        if target.shape == value.shape:
            target.copy_(value)
        elif target.ndim == value.ndim and target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:]:
            target.zero_()
            target[:, :value.shape[1]].copy_(value)
        else:
            raise ValueError(f"{key}: cannot widen {tuple(value.shape)} to {tuple(target.shape)}")
    return net
