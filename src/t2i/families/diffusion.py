"""What every text-conditioned diffusion family shares (LDM, GLIDE, Imagen, the unCLIP decoder).

* A text side (`BPEText` here; Imagen's frozen language model in `t2i.text.pretrained`): captions -> the
  keyword arguments of the denoiser's text module, for a training batch (`from_batch`) or prompts (`encode`).
* `TextDenoiser`: that text module and a backbone (UNet or DiT). The text tokens are attended to, the
  pooled vector is added to the time embedding; `net(x_t, t, mask=, **text)`, plus `channels=` (concatenated
  to x_t's: a super-resolution stage's upsampled low-res image, an inpainting model's masked image and mask)
  and `aug=` (the SR input's noise-augmentation level).
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
from t2i.codecs.autoencoder import AutoencoderConfig, AutoencoderKL
from t2i.config import require
from t2i.data.tokenizer import Tokenizer
from t2i.diffusion import Schedule, TimeDensity, apply_null_condition, drop_condition, training_loss
from t2i.diffusion.generate import check_sampling, denoise
from t2i.families import base
from t2i.images import grid, images_to_tensor, tensor_to_images
from t2i.nn.transformer import TextEncoder, TextEncoderConfig
from t2i.runtime import autocast
from t2i.train.stages import stage_data


@dataclass
class DiffusionConfig:
    """The process a text diffusion family trains with (see `t2i.diffusion`)."""

    schedule: str = "cosine"
    objective: str = "v"
    weighting: str = "min-snr"  # uniform | min-snr | velocity (x0 error weighted as its flow error: docs/cascade.md)
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


class BPEText:
    """The text side of a family whose text encoder trains with it: the run's BPE ids and mask."""

    def __init__(self, tokenizer: Tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def encode(self, captions: list[str]) -> dict[str, Tensor]:
        ids, mask = self.tokenizer.encode(captions, self.max_len)
        return {"ids": ids, "mask": mask}

    def from_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"ids": batch["ids"], "mask": batch["mask"]}


PADDED = ("ids", "states")  # the text tensors laid out (B, L, ...) like the mask


def trim_padding(mask: Tensor, text: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Drop the padding columns no caption of the batch uses. Captions are padded to `text.max_len` so that
    caption dropout and guidance can swap and stack rows, but the shapes captions need 14 MiniLM tokens at most
    against Imagen's 32: every attention layer projected and attended over 18 keys it then masked. Masked keys
    add nothing to a softmax, the text encoders are bidirectional with absolute positions from 0, and the
    pooled vectors read real tokens only, so the outputs are the same; only the cost falls."""
    if mask.dim() != 2:
        return mask, text
    n = max(int(mask.sum(dim=1).max()), 1)
    if n == mask.shape[1]:
        return mask, text
    return mask[:, :n], {k: v[:, :n] if k in PADDED and v.shape[:2] == mask.shape else v for k, v in text.items()}


class TextDenoiser(nn.Module):
    """Text module + backbone: the trained part of a text diffusion stage, ``net(x_t, t, mask=, **text)``.

    `text` maps the text side's tensors to (tokens, pooled): a `TextEncoder` over BPE ids, or the adapter of
    a frozen language model's states; a module that appends tokens of its own (unCLIP's embedding tokens)
    also returns the widened mask. `channels` are concatenated to x_t's (the SR stage's upsampled low-res
    image, the inpainting variant's masked image and mask); `aug`, the SR input's noise level, goes to the
    backbone. With `self_cond` the backbone also reads the net's own previous x0 guess (zeros when none is
    given), between x_t and `channels`, so an inpainting variant widened from the base keeps its columns."""

    def __init__(self, text: TextEncoderConfig | nn.Module, backbone: nn.Module, self_cond: bool = False):
        super().__init__()
        self.text_encoder = TextEncoder(text) if isinstance(text, TextEncoderConfig) else text
        self.unet = backbone  # the name saved runs' weights use, whichever backbone it holds
        self.self_cond = self_cond

    def forward(self, x: Tensor, t: Tensor, mask: Tensor, channels: Tensor | None = None,
                aug: Tensor | None = None, self_cond: Tensor | None = None, **text: Tensor) -> Tensor:
        mask, text = trim_padding(mask, text)
        tokens, pooled, *rest = self.text_encoder(mask=mask, **text)
        mask = rest[0] if rest else mask  # a text module that adds context tokens (unCLIP's) widens the mask
        if self.self_cond:
            x = torch.cat([x, torch.zeros_like(x) if self_cond is None else self_cond.to(x.dtype)], dim=1)
        if channels is not None:
            x = torch.cat([x, channels.to(x.dtype)], dim=1)
        extra = {} if aug is None else {"aug": aug}
        return self.unet(x, t, context=tokens, context_mask=mask, pooled=pooled, **extra)


class TextDiffusionStage(nn.Module):
    """Caption dropout and the diffusion loss; subclasses say what x0 is (`x0`: pixels by default) and may add
    conditions of their own (`extra`: a super-resolution stage's low-res input)."""

    def __init__(self, net: TextDenoiser, cfg: DiffusionConfig, text: Any):
        super().__init__()
        self.cfg, self.net, self.text = cfg, net, text
        self.schedule = Schedule.from_name(cfg.schedule)
        self.t_density = TimeDensity(cfg.t_density, cfg.t_mean, cfg.t_std)
        self.null = {k: v[0] for k, v in text.encode([""]).items()}

    def x0(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["image"]

    def extra(self, batch: dict[str, Tensor], x0: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        return {}

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x0 = self.x0(batch)
        drop = drop_condition(self.cfg.cond_drop, batch=x0.shape[0], generator=generator, device=x0.device)
        cond = {k: apply_null_condition(v.to(x0.device), self.null[k].to(x0.device), drop)
                for k, v in self.text.from_batch(batch).items()}
        cond.update(self.extra(batch, x0, generator))
        loss = training_loss(self.net, x0, cond, self.schedule, self.cfg.objective, self.cfg.weighting,
                             self.t_density, generator, self.cfg.gamma, getattr(self.net, "self_cond", False))
        return {"loss": loss.mean()}


# ------------------------------------------------------------------------------------- latent space
class AutoencoderStage(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.autoencoder = AutoencoderKL(cfg)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return self.autoencoder.loss(batch["image"], generator)


def autoencoder_stage(stages: Any, cfg: AutoencoderConfig, tc: Any, data: Any, latent_data: Any, seed: int,
                      progress: bool = True) -> tuple[AutoencoderKL, float]:
    """The `autoencoder` stage of a latent diffusion family (LDM; unCLIP's latent decoder): trained with
    reconstruction previews, then its latent scale measured on `latent_data`; returns the trained
    autoencoder and the scale, from the run when the stage is already done."""
    from t2i.train.data import batches
    from t2i.train.rundir import load_part
    from t2i.train.stages import take

    if stages.todo("autoencoder"):
        fixed = images_to_tensor([s.image for s in take(data, 8, seed)])

        def recon(model: nn.Module, step: int) -> Image.Image:
            with torch.no_grad():
                ae = model.autoencoder
                rec = ae.decode(ae.encode(fixed.to(next(ae.parameters()).device)).mode())
            return grid(tensor_to_images(fixed) + tensor_to_images(rec), ["input"] * 8 + ["reconstruction"] * 8)

        stages.fit("autoencoder", AutoencoderStage(cfg), tc, {"autoencoder": "autoencoder"},
                   lambda start: batches(data, tc.batch_size // runtime.world_size(), start, seed=seed), recon, progress)
        ae = load_part(AutoencoderKL(cfg), stages.run, "autoencoder")
        stages.finish("autoencoder", latent_scale=measure_latent_scale(ae, latent_data, seed=seed))
    return load_part(AutoencoderKL(cfg), stages.run, "autoencoder"), stages.meta["latent_scale"]


@torch.no_grad()
def measure_latent_scale(ae: AutoencoderKL, data: Any, n: int = 512, seed: int = 0) -> float:
    """LDM's scale factor: 1 / std of the latents on data, so diffusion sees unit-variance inputs."""
    from t2i.train.stages import take

    images = images_to_tensor([s.image for s in take(data, n, seed)])
    z = torch.cat([ae.encode(chunk).mode() for chunk in images.split(128)])
    return float(1.0 / z.float().std())


def image_side(cfg: Any) -> int:
    """The side a diffusion family generates at: its `diffusion` stage's resolution (0 = the data's)."""
    return stage_data(cfg.data, cfg.stages.diffusion).resolution


@dataclass
class DiffusionOptions(base.Options):
    """What every text-conditioned diffusion family adds: a negative prompt, the caption classifier-free
    guidance steers away from in place of the empty one it was trained to drop to."""

    negative_prompt: str | None = base.option(None, "text diffusion runs: what guidance steers away from (default: "
                                              "the empty caption; needs --guidance above 1)")


class TextDiffusionPipeline(base.Pipeline):
    """Text -> images by guided denoising; img2img with ``inputs=[Input("img2img", image, strength=0.6)]``.

    `cfg` needs `sample` (a `diffusion.generate.SampleConfig`), `diffusion`, `text.max_len`, `data` and
    `stages.diffusion` (`image_side`). Subclasses set `shape` and override `encode` / `decode` for a latent space."""

    tasks = ("img2img",)
    Options = DiffusionOptions

    def __init__(self, cfg: Any, tokenizer: Tokenizer, net: TextDenoiser, device: torch.device | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.text = BPEText(tokenizer, cfg.text.max_len)
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
                "rerank": sc.rerank, "negative_prompt": ""}

    def check(self, options: base.Options, given: dict[str, Any]) -> base.Options:
        check_sampling(options.steps, options.guidance, options.sampler)
        return options

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], options: base.Options,
                 inputs: list[base.Input | None]) -> list[Image.Image]:
        sc = dataclasses.replace(self.cfg.sample, steps=options.steps, guidance=options.guidance,
                                 sampler=options.sampler)
        uncond = {k: v.to(self.device) for k, v in self.text.encode([options.negative_prompt]).items()}
        out: list[Image.Image | None] = [None] * len(prompts)
        groups: dict[float | None, list[int]] = {}  # one denoising pass per img2img strength
        for i, inp in enumerate(inputs):
            groups.setdefault(None if inp is None else inp.strength, []).append(i)
        for strength, idx in groups.items():
            cond = {k: v.to(self.device) for k, v in self.text.encode([prompts[i] for i in idx]).items()}
            init = None
            if strength is not None:
                side = (image_side(self.cfg),) * 2
                init = self.encode(images_to_tensor([inputs[i].image.convert("RGB").resize(side) for i in idx])
                                   .to(self.device))
            x0 = denoise(self.net, self.schedule, self.cfg.diffusion.objective, [seeds[i] for i in idx], self.shape,
                         cond, uncond, sc, init=init, strength=1.0 if strength is None else strength,
                         device=self.device, to_pixels=self.decode)
            with autocast(self.device, sc.precision):
                for i, im in zip(idx, tensor_to_images(self.decode(x0).float()), strict=True):
                    out[i] = im
        return out
