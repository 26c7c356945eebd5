"""The token families' configs: everything that rebuilds a run except the family's own network settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2i.codecs.vq import VQConfig
from t2i.config import require
from t2i.errors import OptionError, UserError
from t2i.families import base
from t2i.tokens.decoding import check_decoding
from t2i.train.data import DataConfig
from t2i.train.rundir import read_meta
from t2i.train.trainer import TrainConfig

STAGES = ["tokenizer", "vq", "transformer"]
IMAGE_TOKENIZER = base.Use("image_tokenizer", "tokenizer_run", "reuse the BPE and VQ image tokenizer of this "
                           "token-family run instead of training them (one tokenizer, comparable codes)")


@dataclass
class BPEConfig:
    vocab_size: int = 512
    max_len: int = 24
    tokenizer_captions: int = 20000


@dataclass
class DecodeConfig:
    """Decoding defaults stored with a run; each can be overridden per call (CLI options of the same name)."""

    sampler: str = "autoregressive"  # fixed by the family: autoregressive (dalle, parti) | parallel (maskgit)
    steps: int = 8  # parallel decoding only (an autoregressive model takes one step per token)
    guidance: float = 3.0  # classifier-free guidance on logits
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    candidates: int = 1  # images generated per prompt for CLIP reranking (needs `clip`)
    clip: str = ""  # a lab CLIP run directory for reranking; empty = reranking off

    def validate(self, where: str) -> None:
        require(self.sampler in ("autoregressive", "parallel"), where, "sampler", "must be autoregressive or "
                "parallel", self.sampler)
        try:
            check_decoding(self.temperature, self.top_k, self.top_p, self.guidance, self.steps)
        except OptionError as e:  # named as the config key, not the CLI flag
            raise UserError(f"{where}{e}") from None
        require(self.candidates >= 1, where, "candidates", "must be >= 1", self.candidates)


@dataclass
class NetConfig:
    """What every token family's network has; a family's own NetConfig adds its extras."""

    dim: int = 256
    depth: int = 4
    heads: int = 4
    cond_drop: float = 0.1  # caption dropout, for classifier-free guidance on logits
    patch: int = 1  # p: a p x p patch of the code grid per position (t2i.tokens.patches)
    code_features: bool = False  # embedding and head also read each code's VQ vector (t2i.tokens.patches)


@dataclass
class TokenStageConfigs:
    vq: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, batch_size=32, lr=3e-3, warmup=20))
    # > 0: fine-tune the VQ decoder on frozen codes after the VQ stage (DecoderStage)
    vq_decoder: TrainConfig = field(default_factory=lambda: TrainConfig(steps=0, batch_size=32, warmup=0, ema_decay=0.0))
    transformer: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000, batch_size=64, lr=1e-3))


LEGACY = {"vq_train": "vq", "vq_decoder_train": "vq_decoder", "train": "transformer"}  # the keys before 2026-12


@dataclass
class TokenConfig:
    """Everything that rebuilds a token-family run except its network (`net`, set by the family's Config). The
    transformer stage's resolution is the one images are generated at; the VQ stages may train at another."""

    family: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(cache=20000))
    text: BPEConfig = field(default_factory=BPEConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    sample: DecodeConfig = field(default_factory=DecodeConfig)
    stages: TokenStageConfigs = field(default_factory=TokenStageConfigs)
    tokenizer_run: str = ""  # reuse the BPE and VQ image tokenizer of this token-family run (--image-tokenizer)

    def validate(self, where: str) -> None:
        if self.tokenizer_run:
            tokenizer_source(self)


def tokenizer_source(cfg: Any) -> tuple[Path, Any]:
    """The run `tokenizer_run` names and its config, checked: a token-family run whose VQ is final."""
    from t2i.families import all_families, read_config

    src = Path(cfg.tokenizer_run)
    meta = read_meta(src)
    token_families = [f.name for f in all_families() if IMAGE_TOKENIZER in f.uses]
    if meta.get("family") not in token_families or "vq" not in meta.get("stages_done", []):
        raise OptionError("image_tokenizer", f"{src}: needs a token-family run ({', '.join(token_families)}) whose "
                          f"vq stage is done; it is a {meta.get('family')!r} run with stages {meta.get('stages_done')}")
    _, other = read_config(src)
    if other.stages.vq_decoder.steps > 0 and "vq_decoder" not in meta["stages_done"]:
        raise OptionError("image_tokenizer", f"{src}: its VQ decoder fine-tuning (stage vq_decoder) has not "
                          f"finished; resume that run first (`t2i train --resume --out {src}`)")
    return src, other
