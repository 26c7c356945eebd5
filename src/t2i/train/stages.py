"""What every multi-stage family shares around its trainers: stage bookkeeping, the BPE stage, previews.

A run trains in stages (tokenizer -> codec -> generator); `run.json` records which are done and how long
each took, so `t2i train --resume` skips finished stages and `t2i compare` can report training time per
stage. Keeping that here means a family file only says what each stage trains.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t2i import runtime
from t2i.data.tokenizer import Tokenizer
from t2i.nn.transformer import TextEncoderConfig
from t2i.train.data import DataConfig, captions
from t2i.train.rundir import process_age, read_meta, write_meta
from t2i.train.trainer import TrainConfig, Trainer

PREVIEW_PROMPTS = ["a red circle", "a large blue square", "a green triangle and a yellow circle",
                   "a red circle left of a blue square", "three purple circles", "a small orange triangle",
                   "a gray square above a cyan triangle", "two green squares"]


@dataclass
class TextConfig:
    """The text side of a family with its own text transformer: the BPE it trains, and the encoder's shape."""

    vocab_size: int = 512  # BPE target; the trained tokenizer's actual size is what the encoder gets
    max_len: int = 24
    tokenizer_captions: int = 20000
    dim: int = 128
    depth: int = 2
    heads: int = 4
    pool: str = "mean"  # the pooled vector added to the time embedding: mean of tokens | last (GLIDE)

    def validate(self, where: str) -> None:
        from t2i.config import require

        require(self.pool in ("mean", "last"), where, "pool", "must be mean or last", self.pool)

    def encoder(self, vocab_size: int) -> TextEncoderConfig:
        return TextEncoderConfig(vocab_size=vocab_size, max_len=self.max_len, dim=self.dim, depth=self.depth,
                                 heads=self.heads, pool=self.pool)


class Stages:
    """`run.json`'s stage record: `todo(stage)` starts a stage's clock, `fit(...)` trains it with the shared
    `Trainer`, `finish(stage, **extra)` records it.

    `todo` also seeds torch's global generator from the run's `seed` and the stage's name, just before the
    family builds that stage's model: without it every run drew its initial weights at random, so
    the seed did not reproduce a run (two VQ runs with the same seed, identical for their first 100
    steps by construction, already logged different losses at step 10); seeding by name also keeps a
    stage's weights independent of how many random numbers earlier stages used.

    Time is kept honestly across interruptions: a stage's `train_seconds` and the current invocation's
    `seconds` (the last entry of `invocations`, which `t2i.api.train` opens) are written to run.json at every
    checkpoint and at most every few seconds between, so a run killed and resumed adds up the time it really
    took, not just its last invocation's.
    Only rank 0 writes; every rank waits at a barrier so none starts the next stage on stale files.
    """

    PERSIST_EVERY = 0.25  # seconds between time writes to run.json while a stage trains (a few KB each)

    def __init__(self, run: Path, seed: int = 0):
        self.run, self.seed = Path(run), seed
        self.meta = read_meta(self.run)
        self.meta.setdefault("stages_done", [])
        self.meta.setdefault("train_seconds", {})
        self._started: dict[str, tuple[float, float]] = {}  # stage -> (clock at todo, seconds before it)
        self._last_write = time.perf_counter()

    def done(self, stage: str) -> bool:
        return stage in self.meta["stages_done"]

    def todo(self, stage: str) -> bool:
        """True when `stage` still has to run (and its clock starts now, and its seed is set)."""
        if self.done(stage):
            return False
        self._started[stage] = (time.perf_counter(), self.meta["train_seconds"].get(stage, 0.0))
        torch.manual_seed(self.seed * 1_000_003 + zlib.crc32(stage.encode()))
        self.tick(stage, saved=True)  # start-up time (imports, data, models) counts even if killed soon after
        return True

    def _clock(self, stage: str) -> None:
        if stage in self._started:
            t0, before = self._started[stage]
            self.meta["train_seconds"][stage] = before + time.perf_counter() - t0
        if self.meta.get("invocations"):
            self.meta["invocations"][-1]["seconds"] = round(process_age(), 2)

    def tick(self, stage: str, saved: bool) -> None:
        """After each training step: the stage's time so far to run.json, at checkpoints and every few seconds."""
        if not runtime.is_main() or not (saved or time.perf_counter() - self._last_write > self.PERSIST_EVERY):
            return
        self._clock(stage)
        write_meta(self.run, self.meta)
        self._last_write = time.perf_counter()

    def fit(self, stage: str, model: torch.nn.Module, cfg: TrainConfig, parts: dict[str, str],
            data: Callable[[int], Iterator[dict[str, Any]]], sample: Callable | None = None, progress: bool = True,
            evaluate: Callable | None = None) -> dict[str, float]:
        """Train `stage` with the shared Trainer under the run's seed; records which parts it writes, so a
        missing weight file can name the stage that rebuilds it."""
        self.meta.setdefault("parts", {})[stage] = list(parts)
        self.tick(stage, saved=True)
        return Trainer(stage, model, cfg, self.run, parts, data, sample, progress, evaluate=evaluate, seed=self.seed,
                       on_step=lambda saved: self.tick(stage, saved)).fit()

    def finish(self, stage: str, **extra: Any) -> None:
        self._clock(stage)
        self._started.pop(stage, None)
        self.meta["stages_done"].append(stage)
        self.meta.update(extra)
        if runtime.is_main():
            write_meta(self.run, self.meta)
        runtime.barrier()


def tokenizer_stage(stages: Stages, data: DataConfig | list[DataConfig], n_captions: int, vocab_size: int
                    ) -> Tokenizer:
    """The first stage of every text-conditioned family: byte-level BPE trained on the run's captions (of
    several sources in equal shares, for a family that trains on more than one: NUWA's images and clips)."""
    if stages.todo("tokenizer"):
        if runtime.is_main():
            sources = data if isinstance(data, list) else [data]
            texts = [c for d in sources for c in captions(d, n_captions // len(sources), stages.seed)]
            Tokenizer.train(texts, vocab_size).save(stages.run)
        runtime.barrier()
        stages.finish("tokenizer")
    return Tokenizer.load(stages.run / "tokenizer.json")


def stage_data(data: DataConfig, stage: TrainConfig) -> DataConfig:
    """The data one stage trains on: the run's source at the stage's own `resolution` when it sets one."""
    return dataclasses.replace(data, resolution=stage.resolution or data.resolution)


def take(data: DataConfig, n: int, seed: int = 0) -> list:
    """`n` samples from a seed no training run reads (the run's seed + 10,000): fixed inputs for previews and
    measurements."""
    from t2i.data.sources import open_source

    return list(open_source(data.source, resolution=data.resolution, seed=seed + 10_000, n=n))
