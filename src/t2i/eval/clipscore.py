"""CLIP score: how well images match their prompts, by a CLIP model's cosine similarity.

Two conventions are in use and their numbers are not interchangeable, so each has its own name here:

* `clip_score_100` -- torchmetrics' `CLIPScore` (and most text-to-image papers' "CLIP score"):
  ``max(100 * mean_i cos(I_i, C_i), 0)``, the clamp applied to the mean. Range 0..100.
* `clip_s_hessel` -- CLIP-S of the CLIPScore paper (Hessel et al. 2021): ``mean_i 2.5 * max(cos(I_i, C_i), 0)``,
  the clamp applied per pair, w = 2.5 to stretch the typical range. Range 0..2.5.

Both depend on which CLIP computed the cosines: a score from the lab's CLIP (trained on the shapes data) is
comparable only with scores from the same CLIP run, never with numbers from OpenAI's ViT-B/32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from t2i.errors import UserError

HESSEL_W = 2.5


def _cosines(cos: Tensor | Sequence[float]) -> Tensor:
    c = torch.as_tensor(cos, dtype=torch.float64).flatten()
    if c.numel() == 0:
        raise UserError("CLIP score of no image-prompt pairs is undefined; pass at least one pair")
    return c


def clip_score_100(cos: Tensor | Sequence[float]) -> float:
    """torchmetrics' convention: max(100 x mean cosine, 0)."""
    return float(torch.clamp(100.0 * _cosines(cos).mean(), min=0.0))


def clip_s_hessel(cos: Tensor | Sequence[float], w: float = HESSEL_W) -> float:
    """CLIPScore paper's CLIP-S: mean over pairs of w x max(cosine, 0), w = 2.5."""
    return float((w * _cosines(cos).clamp(min=0.0)).mean())


def clip_scores(clip: Any, images: Any, prompts: list[str]) -> dict[str, Any]:
    """Both conventions for images paired one to one with prompts, plus the raw mean cosine and the cosines."""
    cos = clip.cosine(images, prompts).double().cpu()
    return {"clip_score_100": clip_score_100(cos), "clip_s_hessel": clip_s_hessel(cos),
            "mean_cosine": float(cos.mean()), "cosines": cos.tolist()}
