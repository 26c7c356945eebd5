"""GLIDE (Nichol et al. 2022), from scratch: text-conditional diffusion in pixel space, then an upsampler.

Paper choices followed: a transformer text encoder trained with the model over the run's BPE; its final
token's state is projected and added to the timestep embedding, and every token state is projected per
attention layer and put in front of that layer's own keys and values (`text_attention: concat`); a base
model at low resolution and a text-conditional upsampler (the pixel cascade, `t2i.families.cascade`), each
with its own text encoder as in the paper; classifier-free guidance by 20% caption dropout (the paper's
fine-tune).

Departures, measured on this 2-core CPU (benchmarks/RESULTS.md, "pixel backbones"): the backbone is a
pixel DiT on 8x8 patches with a conv head (docs/cascade.md), not ADM's UNet, because an ADM UNet at 32 px
trains about 20-30x slower per image here (64 channels: 7.5-11.6 s per batch of 128 against 0.40 s);
`backbone: unet` builds the ADM-style UNet with the same text attention. The upsampler is the same DiT on
16x16 patches of its 64 px input. Rectified flow and DPM-Solver++ sampling, as in the project's LDM.

Inpainting (the paper's fine-tuned variant, `t2i.diffusion.inpaint`): the base model with 4 more input
channels (masked image, mask), started from the base weights with those channels at zero, trained with
random box and object-shaped masks; sampling puts the known pixels back into every predicted x0, at 32 px
and through the SR stage at 64 px. `t2i generate RUN PROMPT --init-image x.png --mask m.png`.

Noised-CLIP guidance (the paper's CLIP guidance): a CLIP whose image tower (the lab CLIP's conv tower, with
the time embedding added after its stem) reads x_t and t at the base's side, trained contrastively on the
run's data noised as in diffusion training; `--guide clip|both` shifts each predicted x0 along its gradient
(`t2i.diffusion.guidance.ClipGuide`).

Stages: tokenizer -> base (32 px) -> sr (32 -> 64 px) -> noised_clip (32 px) -> inpaint (32 px). Each
resumes on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i import runtime
from t2i.data.tokenizer import Tokenizer
from t2i.diffusion import Schedule, TimeDensity, append_dims
from t2i.families import base
from t2i.families.cascade import (
    AugConfig,
    CascadeOptions,
    CascadePipeline,
    CascadeStages,
    PixelModelConfig,
    build_net,
    load_nets,
    sides,
    train_cascade,
    train_inpaint,
)
from t2i.families.clip import ImageConfig, ImageTower, info_nce
from t2i.families.diffusion import BPEText, DiffusionConfig, TextDenoiser
from t2i.nn.embeddings import TimestepEmbedding
from t2i.nn.transformer import TextEncoder
from t2i.train.data import DataConfig, batches
from t2i.train.rundir import load_part, require_complete
from t2i.train.stages import Stages, TextConfig, stage_data, tokenizer_stage
from t2i.train.trainer import TrainConfig, param_count

NAME = "glide"
STAGES = ["tokenizer", "base", "sr", "noised_clip", "inpaint"]


@dataclass
class GlideStages(CascadeStages):
    noised_clip: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, batch_size=128, lr=2e-3,
                                                                         weight_decay=0.05, resolution=32))
    # the inpainting variant, fine-tuned from the base model; 0 steps = a run without one
    inpaint: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, batch_size=64, lr=5e-4, resolution=32))


@dataclass
class NoisedClipConfig:
    image: ImageConfig = field(default_factory=lambda: ImageConfig(patch=2, channels=(32, 64, 128)))
    embed_dim: int = 128
    counterfactuals: bool = True  # minimal pairs as hard negatives: what makes a CLIP see relations and counts
    scale: float = 20.0  # the default --clip-scale


@dataclass
class Config:
    family: str = NAME
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=lambda: TextConfig(pool="last"))
    base: PixelModelConfig = field(default_factory=lambda: PixelModelConfig(diffusion=DiffusionConfig(cond_drop=0.2)))
    # (the inpainting variant is the base model with 4 more input channels, trained with the base's process)
    sr: PixelModelConfig = field(default_factory=lambda: PixelModelConfig(diffusion=DiffusionConfig(cond_drop=0.2)))
    aug: AugConfig = field(default_factory=AugConfig)
    noised_clip: NoisedClipConfig = field(default_factory=NoisedClipConfig)
    stages: GlideStages = field(default_factory=GlideStages)


def _net_factory(cfg: Config, vocab_size: int):
    def make(stage: str) -> TextDenoiser:
        side = sides(cfg)[1 if stage == "sr" else 0]
        return build_net(cfg.sr if stage == "sr" else cfg.base, side, TextEncoder(cfg.text.encoder(vocab_size)),
                         cfg.text.dim, cfg.text.dim, extra_in={"base": 0, "sr": 3, "inpaint": 4}[stage],
                         aug=stage == "sr")
    return make


class NoisedCLIP(nn.Module):
    """`encode_image(x_t, t)` and `encode_text(ids=, mask=)`: unit vectors in one space."""

    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        c = cfg.noised_clip
        self.image = ImageTower(c.image, stage_data(cfg.data, cfg.stages.noised_clip).resolution, c.embed_dim)
        self.time = TimestepEmbedding(c.image.channels[0])
        self.text = TextEncoder(cfg.text.encoder(vocab_size))
        self.text_proj = nn.Linear(cfg.text.dim, c.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x_t: Tensor, t: Tensor) -> Tensor:
        h = self.image.net[0](x_t) + self.time(t)[:, :, None, None].to(x_t.dtype)
        h = self.image.net[1:](h)
        return F.normalize(self.image.proj(self.image.norm(h.flatten(1))).float(), dim=-1)

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        return F.normalize(self.text_proj(self.text(ids, mask)[1]).float(), dim=-1)


class NoisedClipStage(nn.Module):
    """Contrastive training on x_t at times drawn as the base stage's diffusion draws them."""

    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        self.clip = NoisedCLIP(cfg, vocab_size)
        d = cfg.base.diffusion
        self.schedule, self.t_density = Schedule.from_name(d.schedule), TimeDensity(d.t_density, d.t_mean, d.t_std)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x0 = batch["image"]
        u = self.t_density.sample(x0.shape[0], generator, device=x0.device)
        t = self.schedule.t_min + (self.schedule.t_max - self.schedule.t_min) * u
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = append_dims(self.schedule.alpha(t), 4) * x0 + append_dims(self.schedule.sigma(t), 4) * eps
        return info_nce(self.clip.encode_image(x_t, t), self.clip.encode_text(batch["ids"], batch["mask"]),
                        self.clip.logit_scale)


def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    stages = Stages(run, cfg.seed)
    tokenizer = tokenizer_stage(stages, cfg.data, cfg.text.tokenizer_captions, cfg.text.vocab_size)
    text = BPEText(tokenizer, cfg.text.max_len)
    make_net = _net_factory(cfg, tokenizer.vocab_size)
    pipeline = lambda b, s, inpaint_net=None: Pipeline(cfg, text, b, s, inpaint_net=inpaint_net)  # noqa: E731
    train_cascade(cfg, stages, text, make_net, pipeline, progress)
    if stages.todo("noised_clip"):
        tc = cfg.stages.noised_clip
        stage = NoisedClipStage(cfg, tokenizer.vocab_size)

        def data(start: int) -> Any:
            return batches(stage_data(cfg.data, tc), tc.batch_size // runtime.world_size(), start, tokenizer,
                           cfg.text.max_len, counterfactuals=cfg.noised_clip.counterfactuals, seed=cfg.seed)

        stages.fit("noised_clip", stage, tc, {"noised_clip": "clip"}, data, None, progress)
        stages.meta.setdefault("params", {})["noised_clip"] = param_count(stage.clip)
        stages.finish("noised_clip")
    train_inpaint(cfg, stages, text, make_net, pipeline, progress)
    return stages.meta


class Pipeline(CascadePipeline):
    """`pipe(["a red circle"], seed=0)` -> 64 px images; `stop_at="base"` -> the 32 px base images."""

    family = NAME
    inpainting = True

    @classmethod
    def load(cls, run: str | Path, cfg: Config) -> Pipeline:
        run = Path(run)
        require_complete(run, NAME, STAGES)
        tokenizer = Tokenizer.load(run / "tokenizer.json")
        nets = load_nets(run, _net_factory(cfg, tokenizer.vocab_size))
        clip = load_part(NoisedCLIP(cfg, tokenizer.vocab_size), run, "noised_clip")
        return cls(cfg, BPEText(tokenizer, cfg.text.max_len), nets["base"], nets["sr"], inpaint_net=nets["inpaint"],
                   noised_clip=clip, clip_scale=cfg.noised_clip.scale)


FAMILY = base.Family(NAME, "generator", Config, tuple(STAGES), train, Pipeline.load, CascadeOptions,
                     tasks=("img2img", "inpaint"), summary="GLIDE: pixel-space text diffusion, 32 px base + 64 px upsampler")
