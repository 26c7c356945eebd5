"""Latent Diffusion / Stable Diffusion (Rombach et al. 2022), from scratch.

Paper choices followed: a KL-regularised autoencoder (f=8) trained first, a UNet denoiser with
cross-attention to the tokens of a text transformer trained jointly with it (LDM's text-to-image setup, a
BERT-style encoder rather than SD's frozen CLIP, which cannot be downloaded here), latents scaled by
1/std measured on data, classifier-free guidance by caption dropout. Departures, measured on shapes: v or
flow targets with min-SNR weighting instead of eps, and DPM-Solver++ sampling by default.

Stages: tokenizer -> autoencoder -> diffusion. Each resumes on its own; `t2i train --resume` continues.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from t2i import runtime
from t2i.codecs.autoencoder import AutoencoderConfig, AutoencoderKL
from t2i.config import require
from t2i.data.tokenizer import Tokenizer
from t2i.diffusion.generate import SampleConfig
from t2i.errors import UserError
from t2i.families import base
from t2i.families.diffusion import (
    BPEText,
    DiffusionConfig,
    DiffusionOptions,
    TextDenoiser,
    TextDiffusionPipeline,
    TextDiffusionStage,
    autoencoder_stage,
    image_side,
)
from t2i.images import grid
from t2i.nn.dit import DiT, DiTConfig
from t2i.nn.unet import UNet, UNetConfig
from t2i.train.data import DataConfig, generator_data
from t2i.train.rundir import load_part, require_complete
from t2i.train.stages import PREVIEW_PROMPTS, Stages, TextConfig, stage_data, tokenizer_stage
from t2i.train.trainer import TrainConfig, param_count

NAME = "ldm"
STAGES = ["tokenizer", "autoencoder", "diffusion"]


@dataclass
class StageConfigs:
    autoencoder: TrainConfig = field(default_factory=lambda: TrainConfig(steps=400, batch_size=32, lr=2e-3, warmup=20))
    diffusion: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, batch_size=128, lr=1e-3))


@dataclass
class Config:
    """Everything that rebuilds an LDM run. unet.in/out_channels and context_dim follow the autoencoder and text.
    The diffusion stage's resolution is the one images are generated at."""

    family: str = NAME
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(4, 4, channels=128, channel_mult=(1, 2),
                                                                  num_res_blocks=1, attention_levels=(0, 1)))
    backbone: str = "unet"  # unet | dit
    dit: DiTConfig = field(default_factory=lambda: DiTConfig(4, 4))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    stages: StageConfigs = field(default_factory=StageConfigs)

    def validate(self, where: str) -> None:
        require(self.backbone in ("unet", "dit"), where, "backbone", "must be unet or dit", self.backbone)


def _unet_config(cfg: Config) -> UNetConfig:
    c = cfg.autoencoder.latent_channels
    return dataclasses.replace(cfg.unet, in_channels=c, out_channels=c, context_dim=cfg.text.dim,
                               pooled_dim=cfg.text.dim)


def _dit_config(cfg: Config) -> DiTConfig:
    c = cfg.autoencoder.latent_channels
    return dataclasses.replace(cfg.dit, in_channels=c, out_channels=c,
                               input_size=image_side(cfg) // cfg.autoencoder.downsample_factor,
                               context_dim=cfg.text.dim, pooled_dim=cfg.text.dim)


# ------------------------------------------------------------------------------------------- stages
def build_denoiser(cfg: Config, vocab_size: int) -> TextDenoiser:
    """The trained part of the diffusion stage: the run's text encoder and its backbone on the latents."""
    if cfg.backbone not in ("unet", "dit"):
        raise UserError(f"backbone must be unet or dit, got {cfg.backbone!r}")
    backbone = UNet(_unet_config(cfg)) if cfg.backbone == "unet" else DiT(_dit_config(cfg))
    return TextDenoiser(cfg.text.encoder(vocab_size), backbone)


class DiffusionStage(TextDiffusionStage):
    """The shared text diffusion stage on latents: from the encoded cache, or encoded on the fly."""

    def __init__(self, cfg: Config, tokenizer: Tokenizer, autoencoder: AutoencoderKL, scale: float):
        super().__init__(build_denoiser(cfg, tokenizer.vocab_size), cfg.diffusion, BPEText(tokenizer, cfg.text.max_len))
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale = scale

    def x0(self, batch: dict[str, Tensor]) -> Tensor:
        if "latent" in batch:  # from the encoded cache (data.cache > 0)
            return batch["latent"] * self.scale
        with torch.no_grad():
            return self.autoencoder.encode(batch["image"]).mode() * self.scale


# --------------------------------------------------------------------------------------------- train
def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    """Run every stage not yet done; each one checkpoints and resumes on its own."""
    stages = Stages(run, cfg.seed)
    tokenizer = tokenizer_stage(stages, cfg.data, cfg.text.tokenizer_captions, cfg.text.vocab_size)
    ae_cfg, dm_cfg = cfg.stages.autoencoder, cfg.stages.diffusion
    ae_data, dm_data = stage_data(cfg.data, ae_cfg), stage_data(cfg.data, dm_cfg)

    ae, scale = autoencoder_stage(stages, cfg.autoencoder, ae_cfg, ae_data, dm_data, cfg.seed, progress)

    if stages.todo("diffusion"):
        stage = DiffusionStage(cfg, tokenizer, ae, scale)

        def preview(model: nn.Module, step: int) -> Image.Image:
            return grid(Pipeline(cfg, tokenizer, ae, model.net, scale)(PREVIEW_PROMPTS, seed=0), PREVIEW_PROMPTS)

        def quick_eval(model: nn.Module, step: int) -> dict[str, float]:
            from t2i.eval.shapesbench import quick_score

            return quick_score(Pipeline(cfg, tokenizer, ae, model.net, scale))

        data = generator_data(dm_data, dm_cfg.batch_size // runtime.world_size(), tokenizer, cfg.text.max_len,
                              lambda x: ae.encode(x).mode(), progress, seed=cfg.seed)
        stages.fit("diffusion", stage, dm_cfg, {"denoiser": "net"}, data, preview, progress, evaluate=quick_eval)
        stages.finish("diffusion", params={"autoencoder": param_count(ae), "denoiser": param_count(stage.net)})
    return stages.meta


# ------------------------------------------------------------------------------------------ generate
class Pipeline(TextDiffusionPipeline):
    """Text -> images with a trained run: `pipe(["a red circle"], steps=20, guidance=4, seed=0)`; img2img
    with `inputs=[Input("img2img", image, strength=0.6)]`. Diffusion runs on the autoencoder's latents."""

    family = NAME

    def __init__(self, cfg: Config, tokenizer: Tokenizer, autoencoder: AutoencoderKL, net: TextDenoiser,
                 scale: float, device: torch.device | None = None):
        super().__init__(cfg, tokenizer, net, device)
        self.autoencoder, self.scale = autoencoder.to(self.device), scale

    @classmethod
    def load(cls, run: str | Path, cfg: Config) -> Pipeline:
        run = Path(run)
        meta = require_complete(run, NAME, STAGES)
        tokenizer = Tokenizer.load(run / "tokenizer.json")
        ae = load_part(AutoencoderKL(cfg.autoencoder), run, "autoencoder")
        net = load_part(build_denoiser(cfg, tokenizer.vocab_size), run, "denoiser")
        return cls(cfg, tokenizer, ae, net, meta["latent_scale"])

    @property
    def shape(self) -> tuple[int, ...]:
        side = image_side(self.cfg) // self.autoencoder.downsample_factor
        return (self.cfg.autoencoder.latent_channels, side, side)

    def encode(self, x: Tensor) -> Tensor:
        return self.autoencoder.encode(x).mode() * self.scale

    def decode(self, x0: Tensor) -> Tensor:
        return self.autoencoder.decode(x0 / self.scale)


FAMILY = base.Family(NAME, "generator", Config, tuple(STAGES), train, Pipeline.load, DiffusionOptions,
                     tasks=Pipeline.tasks, summary="Latent Diffusion: KL autoencoder + text-conditioned denoiser",
                     legacy={"ae_train": "autoencoder", "train": "diffusion"})
