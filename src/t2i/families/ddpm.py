"""DDPM (Ho et al. 2020), the survey's plain diffusion model (§4.1): an unconditional denoiser on pixels.

Paper choices followed: a UNet with self-attention at the lower resolution, trained to predict the noise
(eps) of a linear-beta variance-preserving schedule, sampled by ancestral DDPM steps. It reads no text, so
every prompt gives a sample of the whole data distribution and guidance does not apply; it is here as the
baseline the text-conditional families improve on, and as the smallest family written only through the
family contract (`t2i.families.base`): the CLI, the API and eval reach it without naming it.

Stages: diffusion.
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
from t2i.diffusion import Schedule, training_loss
from t2i.diffusion.generate import SampleConfig, check_sampling, denoise
from t2i.errors import OptionError
from t2i.families import base
from t2i.families.diffusion import image_side
from t2i.images import grid, tensor_to_images
from t2i.nn.unet import UNet, UNetConfig
from t2i.train.data import DataConfig, batches
from t2i.train.rundir import load_part, require_complete
from t2i.train.stages import Stages, stage_data
from t2i.train.trainer import TrainConfig, param_count

NAME = "ddpm"
STAGES = ["diffusion"]


@dataclass
class StageConfigs:
    diffusion: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000, batch_size=64, lr=2e-4))


@dataclass
class Config:
    family: str = NAME
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(resolution=32))
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(3, 3, channels=64, channel_mult=(1, 2, 2),
                                                                  num_res_blocks=1, attention_levels=(2,)))
    schedule: str = "linear"
    objective: str = "eps"
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(steps=100, sampler="ddpm", guidance=1.0,
                                                                      spacing="uniform", sigma_max=None))
    stages: StageConfigs = field(default_factory=StageConfigs)


class DiffusionStage(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.net = UNet(dataclasses.replace(cfg.unet, in_channels=3, out_channels=3, context_dim=None))
        self.schedule, self.objective = Schedule.from_name(cfg.schedule), cfg.objective

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        loss = training_loss(self.net, batch["image"], {}, self.schedule, self.objective, generator=generator)
        return {"loss": loss.mean()}


def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    stages = Stages(run, cfg.seed)
    tc = cfg.stages.diffusion
    if stages.todo("diffusion"):
        stage = DiffusionStage(cfg)

        def preview(model: nn.Module, step: int) -> Image.Image:
            images = Pipeline(cfg, model.net)([""] * 8, seed=0)
            return grid(images, [f"seed {i}" for i in range(8)])

        data = stage_data(cfg.data, tc)
        stages.fit("diffusion", stage, tc, {"unet": "net"},
                   lambda start: batches(data, tc.batch_size // runtime.world_size(), start, seed=cfg.seed),
                   preview, progress)
        stages.finish("diffusion", params={"unet": param_count(stage.net)})
    return stages.meta


class Pipeline(base.Pipeline):
    """Noise -> images; prompts only say how many (and each image's seed)."""

    family = NAME

    def __init__(self, cfg: Config, net: UNet, device: torch.device | None = None):
        self.cfg, self.device = cfg, device or runtime.device()
        self.net = net.to(self.device)
        self.schedule = Schedule.from_name(cfg.schedule)

    @classmethod
    def load(cls, run: str | Path, cfg: Config) -> Pipeline:
        require_complete(run, NAME, STAGES)
        net = UNet(dataclasses.replace(cfg.unet, in_channels=3, out_channels=3, context_dim=None))
        return cls(cfg, load_part(net, run, "unet"))

    def defaults(self) -> dict[str, Any]:
        sc = self.cfg.sample
        return {"steps": sc.steps, "guidance": 1.0, "sampler": sc.sampler, "candidates": 1, "rerank": ""}

    def check(self, options: base.Options, given: dict[str, Any]) -> base.Options:
        if options.guidance != 1.0:
            raise OptionError("guidance", f"needs a text-conditioned model; {NAME} runs are unconditional (leave it out)")
        check_sampling(options.steps, options.guidance, options.sampler)
        return options

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], options: base.Options,
                 inputs: list[base.Input | None]) -> list[Image.Image]:
        sc = dataclasses.replace(self.cfg.sample, steps=options.steps, sampler=options.sampler, guidance=1.0)
        side = image_side(self.cfg)
        x = denoise(self.net, self.schedule, self.cfg.objective, seeds, (3, side, side), {}, {}, sc,
                    device=self.device)
        return tensor_to_images(x)


FAMILY = base.Family(NAME, "generator", Config, tuple(STAGES), train, Pipeline.load, base.Options,
                     summary="DDPM: an unconditional pixel-space denoiser (the survey's plain diffusion model)",
                     legacy={"train": "diffusion"})
