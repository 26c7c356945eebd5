"""Imagen (Saharia et al. 2022), at lab scale: a frozen pretrained language model conditions a pixel cascade.

Paper choices followed: the text encoder is a pretrained language model, frozen (`t2i.text.pretrained`;
all-MiniLM-L6-v2 by default, the largest real pretrained encoder available offline here, standing in for
T5-XXL), its states computed once per caption and cached; the states go through a LayerNorm into the
attention layers (keys/values in front of the pixels', as in GLIDE) and an attention-pooled vector is added
to the timestep embedding; caption dropout 10% for classifier-free guidance; dynamic thresholding of the
predicted x0 (p = 0.995) while sampling; a 32 px base and a 32 -> 64 upsampler trained with
noise-conditioning augmentation (`t2i.families.cascade`); skips scaled by 1/sqrt(2) when the UNet backbone
(Efficient UNet's choice) is used.

Departures: the backbone is the pixel DiT of the project's GLIDE (an ADM/Efficient UNet at 32 px trains
5-10x slower per image on this CPU; see `t2i.families.glide`). `text.encoder: scratch` swaps the frozen LM
for a trainable encoder of the same width over the run's BPE, `text.encoder: clip:RUN` for a lab CLIP's
frozen text tower: the paper's T5-vs-CLIP comparison, run by the benchmark.

Stages: text (records the frozen encoder's identity and hash, or trains the BPE for `scratch`) -> base -> sr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2i.config import require
from t2i.data.tokenizer import Tokenizer
from t2i.diffusion.generate import SampleConfig
from t2i.errors import UserError
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
)
from t2i.families.diffusion import BPEText, DiffusionConfig, TextDenoiser
from t2i.nn.transformer import TextEncoder, TextEncoderConfig
from t2i.nn.unet import UNetConfig
from t2i.text.pretrained import MINILM, CachedStates, FrozenCLIPText, FrozenLM, TextAdapter, resolve, sha256
from t2i.train.data import DataConfig, captions
from t2i.train.rundir import read_meta, require_complete
from t2i.train.stages import Stages

NAME = "imagen"
STAGES = ["text", "base", "sr"]
SCRATCH = "scratch"
CLIP_PREFIX = "clip:"


@dataclass
class ImagenTextConfig:
    """`encoder`: minilm (the installed all-MiniLM-L6-v2), a local Hugging Face encoder folder, `clip:RUN` (a
    lab CLIP run's text tower, frozen), or scratch (a trainable encoder over the run's BPE, shaped by the
    fields below, as wide as MiniLM by default)."""

    encoder: str = MINILM
    max_len: int = 32
    heads: int = 4  # the attention pooling's (frozen) or the scratch encoder's heads
    vocab_size: int = 512  # scratch only, as are the fields below
    tokenizer_captions: int = 20000
    dim: int = 384
    depth: int = 2

    def validate(self, where: str) -> None:
        """The encoder exists and is what it says, before a run folder is made."""
        require(bool(self.encoder), where, "encoder", "must be minilm, scratch, clip:RUN or a local model folder",
                self.encoder)
        if self.encoder == SCRATCH:
            return
        if self.encoder.startswith(CLIP_PREFIX):
            from t2i.families import run_family

            path = self.encoder.removeprefix(CLIP_PREFIX)
            if run_family(path).kind != "scorer":
                raise UserError(f"{where}encoder {self.encoder}: {path} is not a lab CLIP run (t2i train --family clip)")
            return
        resolve(self.encoder)

    def scratch(self, vocab_size: int) -> TextEncoderConfig:
        return TextEncoderConfig(vocab_size=vocab_size, max_len=self.max_len, dim=self.dim, depth=self.depth,
                                 heads=self.heads)


def _pixel(drop: float) -> PixelModelConfig:
    return PixelModelConfig(unet=UNetConfig(3, 3, channels=64, channel_mult=(1, 2, 2), attention_levels=(1, 2),
                                            text_attention="concat", skip_scale=2 ** -0.5),
                            diffusion=DiffusionConfig(cond_drop=drop),
                            sample=SampleConfig(sigma_max=None, thresholding="dynamic", threshold=0.995))


@dataclass
class Config:
    family: str = NAME
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    text: ImagenTextConfig = field(default_factory=ImagenTextConfig)
    base: PixelModelConfig = field(default_factory=lambda: _pixel(0.1))
    sr: PixelModelConfig = field(default_factory=lambda: _pixel(0.1))
    aug: AugConfig = field(default_factory=AugConfig)
    stages: CascadeStages = field(default_factory=CascadeStages)


def _frozen(cfg: Config) -> CachedStates:
    """The frozen text side: a local Hugging Face encoder, or (`clip:RUN`) a lab CLIP run's text tower."""
    if not cfg.text.encoder.startswith(CLIP_PREFIX):
        return FrozenLM(cfg.text.encoder, cfg.text.max_len)
    from t2i.families import load_run

    path = Path(cfg.text.encoder.removeprefix(CLIP_PREFIX))
    clip = load_run(path)
    weights = path / "clip.safetensors"
    return FrozenCLIPText(clip.tokenizer, clip.model.text, cfg.text.max_len,
                          {"kind": "lab-clip", "path": str(path), "width": clip.model.text.cfg.dim,
                           "sha256": sha256(weights)})


def _text_side(cfg: Config, run: Path, lm: CachedStates | None = None) -> tuple[Any, Any]:
    """(text side, text-module factory) of a run whose text stage is done; `lm`, an already loaded frozen
    encoder, is used rather than loaded again."""
    if cfg.text.encoder == SCRATCH:
        tokenizer = Tokenizer.load(run / "tokenizer.json")
        return BPEText(tokenizer, cfg.text.max_len), lambda: TextEncoder(cfg.text.scratch(tokenizer.vocab_size))
    frozen = lm or _frozen(cfg)
    return frozen, lambda: TextAdapter(frozen.width, cfg.text.heads)


def _width(cfg: Config, text: Any) -> int:
    return cfg.text.dim if cfg.text.encoder == SCRATCH else text.width


def _net_factory(cfg: Config, text: Any, module: Any):
    width = _width(cfg, text)

    def make(stage: str) -> TextDenoiser:
        return build_net(getattr(cfg, stage), sides(cfg)[0 if stage == "base" else 1], module(), width, width,
                         extra_in=3 if stage == "sr" else 0, aug=stage == "sr")
    return make


def _check_encoder(run: Path, text: Any) -> None:
    """A run loads only with the encoder it was trained with: its states are what the denoiser learned to read."""
    want = read_meta(run).get("text_encoder", {}).get("sha256")
    got = text.identity["sha256"] if isinstance(text, CachedStates) else None
    if want and got and want != got:
        raise UserError(f"{run} was trained with the text encoder of sha256 {want[:12]}..., but {text.path} has "
                        f"{got[:12]}...; point text.encoder at the original folder")


def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    stages = Stages(run, cfg.seed)
    lm = None if cfg.text.encoder == SCRATCH else _frozen(cfg)  # loaded once: the text stage and training use it
    if stages.todo("text"):
        if lm is None:
            Tokenizer.train(captions(cfg.data, cfg.text.tokenizer_captions, cfg.seed), cfg.text.vocab_size).save(run)
            stages.finish("text", text_encoder={"kind": SCRATCH, "width": cfg.text.dim})
        else:
            stages.finish("text", text_encoder=lm.identity)
    text, module = _text_side(cfg, run, lm)
    _check_encoder(run, text)
    train_cascade(cfg, stages, text, _net_factory(cfg, text, module), lambda b, s, **_: Pipeline(cfg, text, b, s),
                  progress)
    return stages.meta


class Pipeline(CascadePipeline):
    """`pipe(["a red circle"], seed=0)` -> 64 px images; `thresholding="none"` turns dynamic thresholding off."""

    family = NAME

    @classmethod
    def load(cls, run: str | Path, cfg: Config) -> Pipeline:
        run = Path(run)
        require_complete(run, NAME, STAGES)
        text, module = _text_side(cfg, run)
        _check_encoder(run, text)
        nets = load_nets(run, _net_factory(cfg, text, module))
        return cls(cfg, text, nets["base"], nets["sr"])


FAMILY = base.Family(NAME, "generator", Config, tuple(STAGES), train, Pipeline.load, CascadeOptions,
                     tasks=("img2img",),
                     summary="Imagen: a frozen pretrained language model conditions a 32 -> 64 px pixel cascade")
