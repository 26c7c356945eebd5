"""Classifier-free guidance (Ho & Salimans 2021), CLIP guidance (GLIDE), Imagen's dynamic thresholding, and
caption dropout.

Guidance is applied to the denoised x0_hat. For a fixed x and sigma, x0_hat and eps_hat are affine in each
other (eps = (x - x0) / sigma), so ``uncond + s (cond - uncond)`` gives the same sample whether formed on
x0, eps or v: GLIDE's and Imagen's eps-space guidance is this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from t2i.diffusion.objectives import append_dims

Condition = Tensor | dict[str, Any] | None


def _as_kwargs(cond: Condition) -> dict[str, Any]:
    """A bare tensor is passed to the denoiser as ``cond=``; a dict as its keyword arguments."""
    if cond is None:
        return {}
    return {"cond": cond} if isinstance(cond, Tensor) else dict(cond)


def _batch_conditions(cond: Condition, uncond: Condition, batch: int) -> dict[str, Any]:
    """Keyword arguments for one forward pass over [cond batch; uncond batch].

    Tensors are concatenated along dim 0; an unconditional tensor with batch 1 (one shared null
    embedding) is expanded first. Other values (flags, None) must agree and are passed once.
    """
    c, u = _as_kwargs(cond), _as_kwargs(uncond)
    if c.keys() != u.keys():
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(c)} and {sorted(u)}")
    out: dict[str, Any] = {}
    for key, cv in c.items():
        uv = u[key]
        if isinstance(cv, Tensor):
            if uv.shape[0] == 1 and batch != 1:
                uv = uv.expand(batch, *uv.shape[1:])
            out[key] = torch.cat([cv, uv])
        elif cv is uv or cv == uv:
            out[key] = cv
        else:
            raise ValueError(f"non-tensor condition {key!r} differs between cond and uncond")
    return out


def dynamic_threshold(x0: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022) of a predicted image in [-1, 1].

    Per sample, s = the `percentile` quantile of |x0|, floored at 1; x0 is clipped to [-s, s] and divided
    by s. High guidance scales push x0_hat past the data range; static clipping to [-1, 1] then
    saturates, while this pulls saturated pixels back inward and leaves in-range samples (s = 1) as
    plain clipping to [-1, 1].
    """
    s = torch.quantile(x0.abs().flatten(1), percentile, dim=1).clamp(min=1.0)
    s = append_dims(s, x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s


class CFGDenoiser(nn.Module):
    """Wraps a denoiser ``D(x, sigma, **cond) -> x0`` with classifier-free guidance.

    Called as ``cfg(x, sigma, cond=..., uncond=...)`` (pass both via a sampler's `extra_args`), where each
    is a tensor (given to D as ``cond=``) or a dict of D's keyword arguments. Returns
    ``D_uncond + scale (D_cond - D_uncond)``, with both branches computed in ONE forward call over a
    doubled batch, the usual trade of memory for half the calls. scale = 1 is the conditional model and
    scale = 0 the unconditional one: each needs a single ordinary call. `threshold`, if given, is the
    dynamic-thresholding percentile applied to the guided x0_hat, or "static" for plain clipping to [-1, 1]
    (for pixel-space models in [-1, 1]). `guide(x, sigma, x0) -> x0`, if given, shifts the guided x0_hat
    first (CLIP guidance, `ClipGuide`); `constrain(x0)` maps it last (inpainting puts the known pixels back).
    """

    def __init__(self, denoiser: Callable[..., Tensor], scale: float, threshold: float | str | None = None,
                 constrain: Callable[[Tensor], Tensor] | None = None,
                 guide: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.scale = scale
        self.threshold = threshold
        self.constrain = constrain
        self.guide = guide

    def forward(self, x: Tensor, sigma: Tensor, cond: Condition = None, uncond: Condition = None) -> Tensor:
        if self.scale == 1:
            x0 = self.denoiser(x, sigma, **_as_kwargs(cond))
        elif self.scale == 0:
            x0 = self.denoiser(x, sigma, **_as_kwargs(uncond))
        else:
            batch = x.shape[0]
            sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(batch)
            kwargs = _batch_conditions(cond, uncond, batch)
            both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **kwargs)
            x0_cond, x0_uncond = both.chunk(2)
            x0 = x0_uncond + self.scale * (x0_cond - x0_uncond)
        if self.guide is not None:
            x0 = self.guide(x, torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]), x0)
        if self.threshold is not None:
            x0 = x0.clamp(-1, 1) if self.threshold == "static" else dynamic_threshold(x0, float(self.threshold))
        return x0 if self.constrain is None else self.constrain(x0)


class ClipGuide:
    """GLIDE's CLIP guidance for x0-predicting samplers: x0_hat + s * sigma_t^2 * grad_{x_t} (f(x_t, t) . g(c)).

    `image(x_t, t) -> (B, D)` is a CLIP image tower trained on noisy images (unit vectors) and `text` (B, D)
    the prompts' text embeddings. GLIDE shifts the mean of each reverse step by s * Sigma * grad; in the
    project's VE/x0 view the same score shift is x0_hat + s * sigma_ve^2 * grad_{x_ve}, which is
    (sigma_t^2 / alpha_t) * grad_{x_t}. That factor explodes where alpha_t -> 0 (pure noise, where CLIP sees
    nothing); it is used times alpha_t, so the push fades at the noisy end instead.
    """

    def __init__(self, image: Callable[[Tensor, Tensor], Tensor], text: Tensor, schedule: Any, scale: float):
        self.image, self.text, self.schedule, self.scale = image, text, schedule, scale

    def __call__(self, x: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
        if self.scale == 0:
            return x0
        t = self.schedule.t_from_sigma_ve(sigma)
        alpha, sig = self.schedule.alpha_sigma_from_sigma_ve(sigma)
        with torch.enable_grad():
            x_t = (append_dims(alpha, x.ndim) * x).detach().float().requires_grad_(True)
            sim = (self.image(x_t, t) * self.text.to(x_t.device)).sum()
            grad = torch.autograd.grad(sim, x_t)[0]
        return x0 + self.scale * append_dims(sig, x.ndim) ** 2 * grad.to(x0.dtype)


def drop_condition(
    mask_prob: float = 0.1,
    *,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Caption dropout for CFG training: a [batch] bool mask, True where a sample gets the null condition.

    Training one network on both conditional and (with probability `mask_prob`, 10% by default as in
    GLIDE/Imagen) unconditional inputs is what makes the unconditional branch of `CFGDenoiser` exist.
    """
    return torch.rand(batch, generator=generator, device=device) < mask_prob


def apply_null_condition(cond: Tensor, null: Tensor, drop: Tensor) -> Tensor:
    """Replace the rows of `cond` selected by the bool mask `drop` with `null` (broadcast over the batch)."""
    return torch.where(append_dims(drop, cond.ndim), null.to(cond.dtype), cond)
