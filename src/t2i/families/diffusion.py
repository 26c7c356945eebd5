"""What every text-conditioned diffusion family shares (LDM today; GLIDE, Imagen and the unCLIP decoder next).

* `TextDenoiser`: a text encoder over the run's BPE and a backbone (UNet or DiT). The encoder's tokens are
  cross-attended, its pooled vector is added to the time embedding; `net(x_t, t, ids=, mask=)`.
* `TextDiffusionStage`: caption dropout (the empty caption stands in, so the one network also learns the
  unconditional model that classifier-free guidance needs) and the diffusion loss on the stage's x0.
* `TextDiffusionPipeline`: the guided sampling loop, options and img2img, shared by every such family.

A family says only where it diffuses: `TextDiffusionStage.x0(batch)` (pixels, or latents from a codec) for
training, and `shape`, `encode` and `decode` on the pipeline for sampling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from t2i import runtime
from t2i.config import require
from t2i.data.tokenizer import Tokenizer
from t2i.diffusion import Schedule, TimeDensity, apply_null_condition, drop_condition, training_loss
from t2i.diffusion.generate import check_sampling, denoise
from t2i.families import base
from t2i.images import images_to_tensor, tensor_to_images
from t2i.nn.transformer import TextEncoder, TextEncoderConfig
from t2i.runtime import autocast
from t2i.train.stages import stage_data


@dataclass
class DiffusionConfig:
    """The process a text diffusion family trains with (see `t2i.diffusion`)."""

    schedule: str = "cosine"
    objective: str = "v"
    weighting: str = "min-snr"
    gamma: float = 5.0
    t_density: str = "uniform"
    t_mean: float = 0.0
    t_std: float = 1.0
    cond_drop: float = 0.1  # caption dropout: the share of training captions replaced by the empty one

    def validate(self, where: str) -> None:
        from t2i.diffusion import OBJECTIVES, SCHEDULES, WEIGHTINGS
        from t2i.diffusion.objectives import T_DENSITIES

        for key, names in (("schedule", SCHEDULES), ("objective", OBJECTIVES), ("weighting", WEIGHTINGS),
                           ("t_density", T_DENSITIES)):
            require(getattr(self, key) in names, where, key, f"must be one of {', '.join(names)}", getattr(self, key))
        require(self.t_std > 0, where, "t_std", "must be > 0", self.t_std)
        require(0 <= self.cond_drop < 1, where, "cond_drop", "must be in [0, 1)", self.cond_drop)


class TextDenoiser(nn.Module):
    """Text encoder + backbone: the trained part of a text diffusion stage, ``net(x_t, t, ids=, mask=)``."""

    def __init__(self, text: TextEncoderConfig, backbone: nn.Module):
        super().__init__()
        self.text_encoder = TextEncoder(text)
        self.unet = backbone  # the name saved runs' weights use, whichever backbone it holds

    def forward(self, x: Tensor, t: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        tokens, pooled = self.text_encoder(ids, mask)
        return self.unet(x, t, context=tokens, context_mask=mask, pooled=pooled)


class TextDiffusionStage(nn.Module):
    """Caption dropout and the diffusion loss; subclasses say what x0 is (`x0`: pixels by default)."""

    def __init__(self, net: TextDenoiser, cfg: DiffusionConfig, tokenizer: Tokenizer, max_len: int):
        super().__init__()
        self.cfg, self.net = cfg, net
        self.schedule = Schedule.from_name(cfg.schedule)
        self.t_density = TimeDensity(cfg.t_density, cfg.t_mean, cfg.t_std)
        null_ids, null_mask = tokenizer.encode([""], max_len)
        self.register_buffer("null_ids", null_ids[0], persistent=False)
        self.register_buffer("null_mask", null_mask[0], persistent=False)

    def x0(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["image"]

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x0 = self.x0(batch)
        drop = drop_condition(self.cfg.cond_drop, batch=x0.shape[0], generator=generator, device=x0.device)
        ids = apply_null_condition(batch["ids"], self.null_ids, drop)
        mask = apply_null_condition(batch["mask"], self.null_mask, drop)
        loss = training_loss(self.net, x0, {"ids": ids, "mask": mask}, self.schedule, self.cfg.objective,
                             self.cfg.weighting, self.t_density, generator, self.cfg.gamma)
        return {"loss": loss.mean()}


def image_side(cfg: Any) -> int:
    """The side a diffusion family generates at: its `diffusion` stage's resolution (0 = the data's)."""
    return stage_data(cfg.data, cfg.stages.diffusion).resolution


class TextDiffusionPipeline(base.Pipeline):
    """Text -> images by guided denoising; img2img with ``inputs=[Input("img2img", image, strength=0.6)]``.

    `cfg` needs `sample` (a `diffusion.generate.SampleConfig`), `diffusion`, `text.max_len`, `data` and
    `stages.diffusion` (`image_side`). Subclasses set `shape` and override `encode` / `decode` for a latent space."""

    tasks = ("img2img",)

    def __init__(self, cfg: Any, tokenizer: Tokenizer, net: TextDenoiser, device: torch.device | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.device = device or runtime.device()
        self.net = net.to(self.device)
        self.schedule = Schedule.from_name(cfg.diffusion.schedule)

    @property
    def shape(self) -> tuple[int, ...]:
        side = image_side(self.cfg)
        return (3, side, side)

    def encode(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] -> the space diffusion runs in (img2img's start)."""
        return x

    def decode(self, x0: Tensor) -> Tensor:
        """The sampled x0 -> images in [-1, 1]."""
        return x0

    def defaults(self) -> dict[str, Any]:
        sc = self.cfg.sample
        return {"steps": sc.steps, "guidance": sc.guidance, "sampler": sc.sampler, "candidates": sc.candidates,
                "rerank": sc.rerank}

    def check(self, options: base.Options, given: dict[str, Any]) -> base.Options:
        check_sampling(options.steps, options.guidance, options.sampler)
        return options

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], options: base.Options,
                 inputs: list[base.Input | None]) -> list[Image.Image]:
        sc = dataclasses.replace(self.cfg.sample, steps=options.steps, guidance=options.guidance,
                                 sampler=options.sampler)
        null_ids, null_mask = self.tokenizer.encode([""], self.cfg.text.max_len)
        uncond = {"ids": null_ids.to(self.device), "mask": null_mask.to(self.device)}
        out: list[Image.Image | None] = [None] * len(prompts)
        groups: dict[float | None, list[int]] = {}  # one denoising pass per img2img strength
        for i, inp in enumerate(inputs):
            groups.setdefault(None if inp is None else inp.strength, []).append(i)
        for strength, idx in groups.items():
            ids, mask = self.tokenizer.encode([prompts[i] for i in idx], self.cfg.text.max_len)
            cond = {"ids": ids.to(self.device), "mask": mask.to(self.device)}
            init = None
            if strength is not None:
                side = (image_side(self.cfg),) * 2
                init = self.encode(images_to_tensor([inputs[i].image.convert("RGB").resize(side) for i in idx])
                                   .to(self.device))
            x0 = denoise(self.net, self.schedule, self.cfg.diffusion.objective, [seeds[i] for i in idx], self.shape,
                         cond, uncond, sc, init=init, strength=1.0 if strength is None else strength,
                         device=self.device)
            with autocast(self.device, sc.precision):
                for i, im in zip(idx, tensor_to_images(self.decode(x0).float()), strict=True):
                    out[i] = im
        return out
