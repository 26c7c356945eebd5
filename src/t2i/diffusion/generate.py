"""Text-conditioned sampling shared by every diffusion family: guidance, sigmas, img2img, seeds.

A family supplies its network as ``net(x_t, t, **cond)``, the schedule and target it was trained with, and
the conditional / unconditional keyword arguments; this turns them into images (or latents).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from t2i import monitor
from t2i.config import require
from t2i.diffusion.guidance import CFGDenoiser
from t2i.diffusion.objectives import Denoiser
from t2i.diffusion.samplers import get_sampler
from t2i.diffusion.schedules import Schedule, schedule_sigmas
from t2i.errors import OptionError, UserError
from t2i.images import tensor_to_images
from t2i.runtime import autocast


@dataclass
class SampleConfig:
    """Sampling defaults stored with a run; every one can be overridden per call."""

    steps: int = 20
    sampler: str = "dpmpp-2m"
    guidance: float = 4.0
    spacing: str = "karras"
    sigma_max: float | None = 80.0  # start here (VE sigma), not at the schedule's end: cosine reaches ~2e4,
    # where karras spacing would spend steps on pure noise; 80 is EDM's choice for unit-variance data
    thresholding: str = "none"  # x0 clipping while sampling, pixel-space models: none | static | dynamic (Imagen)
    threshold: float | None = None  # dynamic thresholding's percentile (None = Imagen's 0.995)
    precision: str = "auto"  # the network runs under bf16 autocast where the hardware has it (2x on CPU);
    # the sampler's own arithmetic stays fp32
    candidates: int = 1  # images drawn per prompt, the best kept by the `rerank` CLIP run
    rerank: str = ""  # a lab CLIP run directory for reranking; empty = reranking off

    def validate(self, where: str) -> None:
        try:
            check_sampling(self.steps, self.guidance, self.sampler)
        except OptionError as e:  # named as the config key, not the CLI flag
            raise UserError(f"{where}{e}") from None
        require(self.spacing in ("uniform", "karras"), where, "spacing", "must be uniform or karras", self.spacing)
        require(self.sigma_max is None or (math.isfinite(self.sigma_max) and self.sigma_max > 0), where, "sigma_max",
                "must be a positive number or null", self.sigma_max)
        require(self.threshold is None or 0 < self.threshold <= 1, where, "threshold", "must be in (0, 1] or null",
                self.threshold)
        require(self.thresholding in THRESHOLDING, where, "thresholding", f"must be one of {', '.join(THRESHOLDING)}",
                self.thresholding)
        require(self.precision in ("auto", "bf16", "fp32"), where, "precision", "must be auto, bf16 or fp32",
                self.precision)
        require(self.candidates >= 1, where, "candidates", "must be >= 1", self.candidates)


THRESHOLDING = ("none", "static", "dynamic")


def threshold_of(cfg: SampleConfig) -> float | str | None:
    """What `CFGDenoiser` is given: None, "static" (clip x0 to [-1, 1]) or dynamic thresholding's percentile."""
    if cfg.thresholding not in THRESHOLDING:
        raise OptionError("thresholding", f"must be one of {', '.join(THRESHOLDING)}, got {cfg.thresholding!r}")
    if cfg.thresholding == "none":
        return None
    return "static" if cfg.thresholding == "static" else (cfg.threshold or 0.995)


def check_sampling(steps: int, guidance: float, sampler: str, strength: float = 1.0) -> None:
    if steps < 1:
        raise OptionError("steps", f"must be at least 1, got {steps}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise OptionError("guidance", f"must be >= 0 and finite (1 = no guidance, 0 = unconditional), got {guidance}")
    if not 0 < strength <= 1:
        raise OptionError("strength", f"must be in (0, 1], got {strength}")
    get_sampler(sampler)


def noise(shape: tuple[int, ...], seeds: list[int], device: torch.device) -> Tensor:
    """Per-image start noise from per-image seeds: an image depends on its seed, not on its batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)


@torch.no_grad()
def denoise(net: Callable[..., Tensor], schedule: Schedule, objective: str, seeds: list[int],
            shape: tuple[int, ...], cond: dict[str, Any], uncond: dict[str, Any], cfg: SampleConfig,
            init: Tensor | None = None, strength: float = 1.0, device: torch.device | None = None,
            callback: Callable[[dict], None] | None = None,
            constrain: Callable[[Tensor], Tensor] | None = None,
            guide: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
            to_pixels: Callable[[Tensor], Tensor] | None = None, start: Tensor | None = None) -> Tensor:
    """Sample x0 for a batch (one seed per item). With `init` (clean x0), start part-way: img2img/SDEdit.

    `strength` is the fraction of the noise schedule to run: 1 ignores `init`, 0.3 keeps most of it.
    `constrain` maps every predicted x0 (inpainting's `Reimpose`); `guide` shifts it first (`ClipGuide`).
    Every step is reported to the installed `t2i.monitor` (progress, cancel), with the predicted x0 as the
    preview: through `to_pixels` for a latent space (default: x0 itself when it has 3 channels).
    `start` replaces the seeds' unit noise (unCLIP's interpolation slerps two seeds' noise); ancestral
    samplers still draw their per-step noise from the seeds.
    """
    check_sampling(cfg.steps, cfg.guidance, cfg.sampler, strength)
    device = device or torch.device("cpu")
    t_max = None
    if cfg.sigma_max is not None:
        t_max = min(float(schedule.t_from_sigma_ve(torch.tensor(cfg.sigma_max, dtype=torch.float64))), schedule.t_max)
    sigmas = schedule_sigmas(schedule, cfg.steps, cfg.spacing, t_max=t_max).to(device, torch.float32)
    eps = noise(shape, seeds, device) if start is None else start.to(device, torch.float32)
    if init is not None and strength < 1:
        first = min(round(cfg.steps * (1 - strength)), cfg.steps - 1)
        sigmas = sigmas[first:]
        x = init.to(device) + eps * sigmas[0]
    else:
        x = eps * sigmas[0]
    def net_amp(*args: Any, **kwargs: Any) -> Tensor:
        with autocast(device, cfg.precision):
            return net(*args, **kwargs).float()

    self_cond = bool(getattr(net, "self_cond", False))  # a net trained with self-conditioning says so
    model = CFGDenoiser(Denoiser(net_amp, schedule, objective, self_cond), cfg.guidance, threshold_of(cfg),
                        constrain, guide)
    # Ancestral samplers' noise, one generator per image: an image depends on its seed, not on its batch.
    gen = [torch.Generator(device).manual_seed((s * 7919 + 1) % 2**63) for s in seeds]
    show = to_pixels or ((lambda x0: x0) if shape[0] == 3 else None)
    n = len(sigmas) - 1

    def report(d: dict) -> None:
        preview = None if show is None else (lambda: tensor_to_images(show(d["denoised"]).float().clamp(-1, 1)))
        monitor.step(d["i"], n, preview)
        if callback is not None:
            callback(d)

    return get_sampler(cfg.sampler)(model, x, sigmas, extra_args={"cond": cond, "uncond": uncond},
                                    callback=report, disable=True, generator=gen)
