"""The pixel cascade GLIDE and Imagen share: a base model at 32 px, then a text-conditional 32 -> 64 upsampler.

* `PixelModelConfig`: one stage's backbone (a pixel DiT on patches, or an ADM-style UNet), its diffusion
  process and its sampling defaults. `build_net` wires it to the family's text module.
* `SRStage`: the super-resolution stage's training. Its input is the real image at the base's side,
  upsampled back, corrupted by noise-conditioning augmentation (`t2i.diffusion.augment`) at a level drawn
  per sample, the level going to the backbone as a second time embedding.
* `CascadePipeline`: text -> base -> SR in one `generate`, each stage with its own steps, guidance and
  sampler (`--sr-steps`, ...), `--stop-at base` for the 32 px image, a fixed sampling `--aug-level`.
* `train_cascade`: the base and sr stages with the shared trainer, previews and ShapesBench probes.

A family supplies only its text side (captions -> tensors, `t2i.families.diffusion.BPEText` or a frozen
language model) and the text module each stage's denoiser starts with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from t2i import runtime
from t2i.config import require
from t2i.diffusion import Schedule, inpaint
from t2i.diffusion.augment import noise_augment, training_levels
from t2i.diffusion.generate import THRESHOLDING, SampleConfig, check_sampling, denoise, noise
from t2i.diffusion.guidance import ClipGuide
from t2i.errors import OptionError, UserError
from t2i.families import base
from t2i.families.diffusion import (
    BPEText,
    DiffusionConfig,
    DiffusionOptions,
    TextDenoiser,
    TextDiffusionStage,
)
from t2i.images import grid, images_to_tensor, tensor_to_images
from t2i.nn.dit import DiT, DiTConfig
from t2i.nn.unet import UNet, UNetConfig
from t2i.train.data import DataConfig, batches
from t2i.train.stages import PREVIEW_PROMPTS, Stages, stage_data, take
from t2i.train.trainer import TrainConfig, param_count

CASCADE = ("base", "sr")
GUIDES = ("cfg", "clip", "both")


@dataclass
class PixelModelConfig:
    """One cascade stage: backbone, process, sampling defaults. in/out channels, side and text widths are
    filled in from the stage and the family's text module."""

    backbone: str = "dit"  # dit | unet
    dit: DiTConfig = field(default_factory=lambda: DiTConfig(3, 3, patch=4, dim=256, depth=4,
                                                             text_attention="concat"))
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(3, 3, channels=64, channel_mult=(1, 2, 2),
                                                                attention_levels=(1, 2), text_attention="concat"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(sigma_max=None))
    # Self-conditioning (`t2i.diffusion.objectives.training_loss`): the denoiser also reads its own previous
    # x0 guess; half the training batch pays a second, gradient-free forward pass for it.
    self_cond: bool = False

    def validate(self, where: str) -> None:
        require(self.backbone in ("dit", "unet"), where, "backbone", "must be dit or unet", self.backbone)


@dataclass
class AugConfig:
    """Noise-conditioning augmentation of the SR stage's low-res input (levels in [0, 1], cosine VP)."""

    train_max: float = 1.0  # training draws levels uniformly from [0, train_max] (Imagen: [0, 1])
    level: float = 0.2  # sampling's fixed level (Imagen's best samples used 0.1-0.3)

    def validate(self, where: str) -> None:
        require(0 < self.train_max <= 1, where, "train_max", "must be in (0, 1]", self.train_max)
        require(0 <= self.level <= 1, where, "level", "must be in [0, 1]", self.level)


@dataclass
class CascadeStages:
    base: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, batch_size=128, lr=1e-3, resolution=32))
    sr: TrainConfig = field(default_factory=lambda: TrainConfig(steps=500, batch_size=64, lr=1e-3, resolution=64))


def sides(cfg: Any) -> tuple[int, int]:
    """(base side, SR side) of a cascade family's config."""
    return stage_data(cfg.data, cfg.stages.base).resolution, stage_data(cfg.data, cfg.stages.sr).resolution


def build_net(model: PixelModelConfig, side: int, text: nn.Module, context_dim: int, pooled_dim: int,
              extra_in: int = 0, aug: bool = False, channels: int = 3) -> TextDenoiser:
    """A stage's denoiser: `text` (the family's text module) and the backbone at `side`, reading `extra_in`
    more input channels (the SR stage's 3 of the upsampled low-res image, the inpainting variant's 4) and, for
    the SR stage, embedding the augmentation level. `channels`: of the image it denoises (3 for pixels; a
    latent decoder's latent channels, at the latent side)."""
    common = {"in_channels": channels * (2 if model.self_cond else 1) + extra_in, "out_channels": channels,
              "context_dim": context_dim, "pooled_dim": pooled_dim, "aug_embed": aug}
    if model.backbone == "dit":
        backbone: nn.Module = DiT(dataclasses.replace(model.dit, input_size=side, **common))
    else:
        backbone = UNet(dataclasses.replace(model.unet, **common))
    return TextDenoiser(text, backbone, self_cond=model.self_cond)


def low_res_input(images: Tensor, low_side: int) -> Tensor:
    """The SR stage's conditioning image: `images` brought down to the base side (area average, which is
    what a smaller render of the same scene looks like) and back up bilinearly."""
    side = images.shape[-1]
    low = images if side == low_side else F.interpolate(images, size=(low_side,) * 2, mode="area")
    return upsample(low, side)


def upsample(low: Tensor, side: int) -> Tensor:
    return low if low.shape[-1] == side else F.interpolate(low.float(), size=(side,) * 2, mode="bilinear",
                                                           align_corners=False)


class SRStage(TextDiffusionStage):
    """x0 is the 64 px image; the low-res condition is its downsampled copy under noise augmentation."""

    def __init__(self, net: TextDenoiser, cfg: DiffusionConfig, text: Any, low_side: int, aug: AugConfig):
        super().__init__(net, cfg, text)
        self.low_side, self.aug = low_side, aug

    def extra(self, batch: dict[str, Tensor], x0: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        levels = training_levels(x0.shape[0], self.aug.train_max, generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return {"channels": noise_augment(low_res_input(x0, self.low_side), levels, eps), "aug": levels}


class InpaintStage(TextDiffusionStage):
    """The base model's inpainting variant: its extra channels are the masked image and a random mask."""

    def extra(self, batch: dict[str, Tensor], x0: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        # the masks' seed comes from the trainer's generator, so a resumed run draws the masks it would have
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return {"channels": inpaint.condition(x0, inpaint.random_masks(x0, rng))}


# ------------------------------------------------------------------------------------------ generate
@dataclass
class CascadeOptions(DiffusionOptions):
    """`steps`, `guidance` and `sampler` are the base stage's; the SR stage has its own."""

    sr_steps: int | None = base.option(None, "cascade runs: the super-resolution stage's sampler steps", int)
    sr_guidance: float | None = base.option(None, "cascade runs: the super-resolution stage's guidance scale", float)
    sr_sampler: str | None = base.option(None, "cascade runs: the super-resolution stage's sampler")
    aug_level: float | None = base.option(None, "cascade runs: noise level in [0, 1] put on the base image "
                                          "before upsampling (default: the run's)", float)
    stop_at: str | None = base.option(None, "cascade runs: the last stage to run: base (the 32 px image) or sr")
    thresholding: str | None = base.option(None, "cascade runs: x0 clipping while sampling: none | static | "
                                           "dynamic (Imagen's, at the run's percentile)")
    guide: str | None = base.option(None, "cascade runs: the base stage's guidance: cfg (classifier-free, "
                                    "--guidance), clip (the run's noised CLIP, --clip-scale; no CFG) or both")
    clip_scale: float | None = base.option(None, "cascade runs: CLIP guidance strength with --guide clip|both", float)

    def check(self) -> None:
        super().check()
        if self.aug_level is not None and not 0 <= self.aug_level <= 1:
            raise OptionError("aug_level", f"must be in [0, 1] (0 = the clean base image), got {self.aug_level}")
        if self.guide is not None and self.guide not in GUIDES:
            raise OptionError("guide", f"must be one of {', '.join(GUIDES)}, got {self.guide!r}")
        if self.clip_scale is not None and not (math.isfinite(self.clip_scale) and self.clip_scale >= 0):
            raise OptionError("clip_scale", f"must be >= 0 and finite, got {self.clip_scale}")
        if self.thresholding is not None and self.thresholding not in THRESHOLDING:
            raise OptionError("thresholding", f"must be one of {', '.join(THRESHOLDING)}, got {self.thresholding!r}")
        if self.stop_at is not None and self.stop_at not in CASCADE:
            raise OptionError("stop_at", f"names no stage of this cascade: {self.stop_at!r} (stages: "
                              f"{', '.join(CASCADE)})")


class CascadePipeline(base.Pipeline):
    """Text -> 32 px base -> 64 px SR. `text` is the family's text side (captions -> the nets' text inputs);
    `inpaint_net`, when the run has one, does the base stage of `inpaint` requests."""

    Options = CascadeOptions

    def __init__(self, cfg: Any, text: Any, base_net: TextDenoiser, sr_net: TextDenoiser | None,
                 device: torch.device | None = None, inpaint_net: TextDenoiser | None = None,
                 noised_clip: nn.Module | None = None, clip_scale: float = 0.0):
        self.cfg, self.text = cfg, text
        self.noised_clip = noised_clip.eval() if noised_clip is not None else None
        self.clip_scale = clip_scale
        self.device = device or runtime.device()
        self.base_net = base_net.to(self.device).eval()
        self.sr_net = sr_net.to(self.device).eval() if sr_net is not None else None
        self.inpaint_net = inpaint_net.to(self.device).eval() if inpaint_net is not None else None
        self.schedules = {s: Schedule.from_name(getattr(cfg, s).diffusion.schedule) for s in CASCADE}

    @property
    def tasks(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("img2img", "inpaint") if self.inpaint_net is not None else ("img2img",)

    inpainting = False  # whether the family has an inpainting variant (a run may still have trained it 0 steps)

    def check_inputs(self, inputs: Any, n: int) -> list[base.Input | None]:
        if (self.inpainting and self.inpaint_net is None
                and any(i is not None and i.task == "inpaint" for i in inputs or [])):
            raise UserError(f"this {self.family} run has no inpainting variant (its inpaint stage trained 0 steps); "
                            "train it with `t2i train --resume --out RUN --set stages.inpaint.steps=1000`")
        return super().check_inputs(inputs, n)

    def defaults(self) -> dict[str, Any]:
        b, s = self.cfg.base.sample, self.cfg.sr.sample
        return {"steps": b.steps, "guidance": b.guidance, "sampler": b.sampler, "candidates": b.candidates,
                "rerank": b.rerank, "sr_steps": s.steps, "sr_guidance": s.guidance, "sr_sampler": s.sampler,
                "aug_level": self.cfg.aug.level, "stop_at": "sr" if self.sr_net is not None else "base",
                "thresholding": b.thresholding, "guide": "cfg", "clip_scale": self.clip_scale, "negative_prompt": ""}

    def check(self, options: base.Options, given: dict[str, Any]) -> base.Options:
        if options.guide != "cfg" and self.noised_clip is None:
            raise OptionError("guide", f"{options.guide} needs a noised CLIP, which this {self.family} run has not got "
                              "(glide runs train one as their noised_clip stage); use --guide cfg")
        if options.guide == "clip":  # CLIP guidance alone, as GLIDE sampled it: no classifier-free guidance
            options = dataclasses.replace(options, guidance=1.0)
        check_sampling(options.steps, options.guidance, options.sampler)
        try:
            check_sampling(options.sr_steps, options.sr_guidance, options.sr_sampler)
        except OptionError as e:
            raise OptionError("sr_" + e.name, e.detail) from None
        if options.stop_at == "sr" and self.sr_net is None:
            raise OptionError("stop_at", "this pipeline has no SR stage loaded; use base")
        return options

    def _conds(self, prompts: list[str], negative: str = "") -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        cond = {k: v.to(self.device) for k, v in self.text.encode(prompts).items()}
        uncond = {k: v.to(self.device) for k, v in self.text.encode([negative]).items()}
        return cond, uncond

    def _sample_config(self, stage: str, options: base.Options) -> SampleConfig:
        prefix = "" if stage == "base" else "sr_"
        return dataclasses.replace(getattr(self.cfg, stage).sample, steps=getattr(options, prefix + "steps"),
                                   guidance=getattr(options, prefix + "guidance"),
                                   sampler=getattr(options, prefix + "sampler"), thresholding=options.thresholding)

    def _known(self, inputs: list[base.Input | None], side: int) -> tuple[Tensor, Tensor]:
        """Inpainting's known image and mask (1 = regenerate) at `side`; rows without a mask regenerate all."""
        known = torch.zeros(len(inputs), 3, side, side)
        mask = torch.ones(len(inputs), 1, side, side)
        for i, inp in enumerate(inputs):
            if inp is not None and inp.task == "inpaint":
                known[i] = images_to_tensor([inp.image.convert("RGB").resize((side, side), Image.BOX)])[0]
                m = np.asarray(inp.mask.convert("L").resize((side, side), Image.BOX), dtype=np.float32)
                mask[i, 0] = torch.from_numpy((m > 0).astype(np.float32))  # any white pixel: regenerate it
        return known.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], options: base.Options,
                 inputs: list[base.Input | None]) -> list[Image.Image]:
        low_side, high_side = sides(self.cfg)
        shape = self.base_shape()
        cond, uncond = self._conds(prompts, options.negative_prompt)
        extra, extra_un, start = self.base_condition(prompts, seeds, options, inputs)
        bc = self._sample_config("base", options)
        known, mask = self._known(inputs, low_side)
        x = torch.empty(len(prompts), *shape, device=self.device)
        groups: dict[tuple[str, float] | None, list[int]] = {}  # one denoising pass per task and strength
        for i, inp in enumerate(inputs):
            groups.setdefault(None if inp is None else (inp.task, inp.strength), []).append(i)
        clip_text = None
        if options.guide != "cfg":
            assert self.noised_clip is not None
            clip_text = self.noised_clip.encode_text(**{k: v.to(self.device) for k, v in self.text.encode(prompts).items()})
        for key, idx in groups.items():
            sub = {k: v[idx] for k, v in {**cond, **extra}.items()}
            seeds_of = [seeds[i] for i in idx]
            run: dict[str, Any] = {"init": None, "strength": 1.0, "constrain": None, "guide": None,
                                   "start": None if start is None else start[idx]}
            if clip_text is not None:
                run["guide"] = ClipGuide(self.noised_clip.encode_image, clip_text[idx], self.schedules["base"],
                                         float(options.clip_scale))
            net = self.base_net
            if key is not None and key[0] == "inpaint":
                assert self.inpaint_net is not None
                net, k, m = self.inpaint_net, known[idx], mask[idx]
                sub["channels"] = inpaint.condition(k, m)
                run["constrain"] = inpaint.Reimpose(k, m)
            elif key is not None and key[0] == "img2img":
                run["init"] = self.encode(images_to_tensor([inputs[i].image.convert("RGB").resize(
                    (low_side,) * 2, Image.BICUBIC) for i in idx]).to(self.device))
                run["strength"] = key[1]
            un = {**uncond, **extra_un}
            if "channels" in sub:
                un["channels"] = sub["channels"]
            x[idx] = denoise(net, self.schedules["base"], self.cfg.base.diffusion.objective, seeds_of, shape, sub, un,
                             bc, device=self.device, to_pixels=self.decode, **run)
        x = self.decode(x).float().clamp(-1, 1)
        if options.stop_at == "base" or self.sr_net is None:
            return tensor_to_images(x)
        constrain = None
        if any(inp is not None and inp.task == "inpaint" for inp in inputs):
            constrain = inpaint.Reimpose(*self._known(inputs, high_side))
        return tensor_to_images(self.upscale(x, cond, uncond, seeds, options, high_side, constrain))

    def base_shape(self) -> tuple[int, ...]:
        """What the base stage denoises: 32 px images here; a latent decoder's latents (unCLIP's)."""
        side = sides(self.cfg)[0]
        return (3, side, side)

    def encode(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] at the base side -> the base stage's space (img2img's start)."""
        return x

    def decode(self, x0: Tensor) -> Tensor:
        """The base stage's sample -> images in [-1, 1]."""
        return x0

    def base_condition(self, prompts: list[str], seeds: list[int], options: base.Options,
                       inputs: list[base.Input | None]) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]:
        """What a family adds to the base stage's inputs beside the text: (cond, uncond) keyword arguments (the
        unCLIP decoder's image embedding) and the start noise (None: the seeds' own)."""
        return {}, {}, None

    def phases(self, options: base.Options) -> int:
        return 1 if options.stop_at == "base" or self.sr_net is None else 2

    def upscale(self, low: Tensor, cond: dict[str, Tensor], uncond: dict[str, Tensor], seeds: list[int],
                options: base.Options, side: int, constrain: Any = None) -> Tensor:
        """The SR stage on base images `low` in [-1, 1]: augmented at the fixed level, then denoised at `side`."""
        assert self.sr_net is not None
        level = torch.full((low.shape[0],), float(options.aug_level), device=self.device)
        eps = noise(tuple(low.shape[1:]), [s * 2 + 1 for s in seeds], self.device)  # not the base's noise
        extra = {"channels": upsample(noise_augment(low, level, eps), side), "aug": level}
        sc = self._sample_config("sr", options)
        return denoise(self.sr_net, self.schedules["sr"], self.cfg.sr.diffusion.objective,
                       [s + 7_777_777 for s in seeds], (3, side, side), {**cond, **extra}, {**uncond, **extra},
                       sc, device=self.device, constrain=constrain).clamp(-1, 1)


# --------------------------------------------------------------------------------------------- train
def _data(cfg: Any, stage: str, text: Any) -> Callable[[int], Any]:
    """A stage's batches: captions, plus BPE ids when the text side reads them (a `BPEText`)."""
    tc = getattr(cfg.stages, stage)
    data: DataConfig = stage_data(cfg.data, tc)
    tokenizer, max_len = (text.tokenizer, text.max_len) if isinstance(text, BPEText) else (None, 32)
    return lambda start: batches(data, tc.batch_size // runtime.world_size(), start, tokenizer, max_len, seed=cfg.seed)


def train_cascade(cfg: Any, stages: Stages, text: Any, make_net: Callable[[str], TextDenoiser],
                  make_pipeline: Callable[..., CascadePipeline], progress: bool = True,
                  base_stage: Callable[[TextDenoiser], TextDiffusionStage] | None = None) -> None:
    """The base and sr stages of a cascade family, each resuming on its own. `make_net(stage)` builds a
    stage's denoiser; `make_pipeline(base_net, sr_net, inpaint_net=None)` the family's pipeline, for previews
    and probes; `base_stage(net)`, the base stage's training when it reads more than the caption (unCLIP's
    decoder: the CLIP image embedding)."""
    from t2i.eval.shapesbench import quick_score
    from t2i.train.rundir import load_part

    low_side, _ = sides(cfg)

    def probes(pipe_of: Callable[[nn.Module], CascadePipeline]) -> tuple[Callable, Callable]:
        def preview(model: nn.Module, step: int) -> Image.Image:
            return grid(pipe_of(model)(PREVIEW_PROMPTS, seed=0), PREVIEW_PROMPTS)

        def quick_eval(model: nn.Module, step: int) -> dict[str, float]:
            return quick_score(pipe_of(model))

        return preview, quick_eval

    if stages.todo("base"):
        net = make_net("base")
        stage = base_stage(net) if base_stage else TextDiffusionStage(net, cfg.base.diffusion, text)
        preview, quick_eval = probes(lambda m: make_pipeline(m.net, None))
        stages.fit("base", stage, cfg.stages.base, {"base": "net"}, _data(cfg, "base", text), preview, progress,
                   evaluate=quick_eval)
        stages.meta.setdefault("params", {})["base"] = param_count(stage.net)
        stages.finish("base")
    if stages.todo("sr"):
        base_net = load_part(make_net("base"), stages.run, "base")
        stage = SRStage(make_net("sr"), cfg.sr.diffusion, text, low_side, cfg.aug)
        preview, quick_eval = probes(lambda m: make_pipeline(base_net, m.net))
        stages.fit("sr", stage, cfg.stages.sr, {"sr": "net"}, _data(cfg, "sr", text), preview, progress,
                   evaluate=quick_eval)
        stages.meta.setdefault("params", {})["sr"] = param_count(stage.net)
        stages.finish("sr")


def train_inpaint(cfg: Any, stages: Stages, text: Any, make_net: Callable[[str], TextDenoiser],
                  make_pipeline: Callable[..., CascadePipeline], progress: bool = True) -> None:
    """The inpaint stage: the base model's inpainting variant, fine-tuned from the trained base weights;
    `stages.inpaint.steps: 0` makes a run without one."""
    from safetensors.torch import load_file

    if stages.todo("inpaint"):
        if cfg.stages.inpaint.steps == 0:
            stages.finish("inpaint", inpaint=False)
            return
        net = inpaint.widen_from(make_net("inpaint"), load_file(str(stages.run / "base.safetensors")))
        stage = InpaintStage(net, cfg.base.diffusion, text)
        fixed = take(stage_data(cfg.data, cfg.stages.inpaint), 8, cfg.seed)
        side = stage_data(cfg.data, cfg.stages.inpaint).resolution
        box = Image.new("L", (side, side), 0)
        box.paste(255, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
        requests = [base.Input("inpaint", s.image, box) for s in fixed]

        def preview_inpaint(model: nn.Module, step: int) -> Image.Image:
            pipe = make_pipeline(model.net, None, inpaint_net=model.net)
            images = pipe([s.caption for s in fixed], seed=0, inputs=requests, stop_at="base")
            return grid([s.image for s in fixed] + images, [s.caption for s in fixed] + ["centre refilled"] * 8)

        stages.fit("inpaint", stage, cfg.stages.inpaint, {"inpaint": "net"}, _data(cfg, "inpaint", text),
                   preview_inpaint, progress)
        stages.meta.setdefault("params", {})["inpaint"] = param_count(stage.net)
        stages.finish("inpaint", inpaint=True)


def load_nets(run: Path, make_net: Callable[[str], TextDenoiser]) -> dict[str, TextDenoiser | None]:
    """A finished cascade run's denoisers by stage; "inpaint" is None when the run has no inpainting variant."""
    from t2i.train.rundir import load_part, read_meta

    nets: dict[str, TextDenoiser | None] = {s: load_part(make_net(s), run, s) for s in CASCADE}
    nets["inpaint"] = load_part(make_net("inpaint"), run, "inpaint") if read_meta(run).get("inpaint") else None
    return nets
