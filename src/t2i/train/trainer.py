"""The one trainer every family uses: a stage is an `nn.Module` whose forward(batch, generator) returns losses.

What it owns, so no family re-implements it: bf16 autocast (where it pays) and channels_last, AdamW with
warmup + cosine/constant LR, gradient clipping and accumulation, EMA weights, DDP under `torchrun`,
checkpoints (EMA weights as safetensors per part, everything else in `train_state.pt`) with exact resume,
a progress bar with loss / it/s / ETA, `log.csv`, optional TensorBoard, sample grids, and a NaN guard that
stops without overwriting the last good checkpoint.

Exact resume: the online weights, optimizer, EMA, step, the noise generator's state and the number of
samples consumed are saved together; the data factory is asked to start where the run left off, so an
interrupted run continues with the same batches and the same noise.
"""

from __future__ import annotations

import copy
import csv
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from t2i import runtime
from t2i.config import require
from t2i.errors import UserError
from t2i.train.rundir import truncate_log, widen_log


def train_precision(precision: str, device: torch.device) -> str:
    """What a stage trains in when `auto` is not timed: bf16 where the GPU has it (autocast decides), fp32 on
    a CPU. On a CPU `Trainer` times both instead (`Trainer.pick_precision`), because which one wins depends on
    the CPU and on the model's widths: every CPU preset trained 1.06-1.53x faster in fp32 on one Xeon (the
    casts cost more than its bf16 GEMMs saved; benchmarks/bench_precision.py, 2026-12-02), while a pixel DiT
    step ran 1.7x faster under bf16 on an EPYC with AVX-512 BF16 (2026-12-02). Sampling keeps bf16 on a CPU:
    without a backward pass it pays there (`diffusion.generate.SampleConfig`)."""
    return "fp32" if precision == "auto" and device.type == "cpu" else precision


BF16_MARGIN = 0.9  # `auto` on a CPU trains in bf16 only when a timed pass takes under 0.9x fp32's
# A stage whose fp32 pass takes under this many seconds trains in fp32 without a bf16 trial: at that size the
# casts cannot pay, and a tie timed there flips with the load (a tiny DALL-E VQ timed fp32 0.014 s, bf16
# 0.016 s; under CI's load one run of two picked bf16, and the seed no longer reproduced the run).
TIMED_FLOOR_S = 0.05


@dataclass
class TrainConfig:
    """One stage's settings: a family's `stages.<name>`. `batch_size` is global: DDP ranks split it. `resolution`
    lets a stage train at its own image side (a cascade's 32 px base beside its 64 px upsampler); 0 means the
    run's `data.resolution`. Seeds are not here: the run's one top-level `seed` covers every stage."""

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    warmup: int = 50
    lr_schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 disables EMA (the saved weights are then the online ones)
    precision: str = "auto"  # auto (bf16 on GPUs that have it; on a CPU the faster of the two, timed) | bf16 | fp32
    channels_last: bool = True
    ckpt_every: int = 200
    sample_every: int = 0
    eval_every: int = 0  # run the family's quick evaluation (e.g. ShapesBench on 100 prompts) into eval.csv
    log_every: int = 10
    tensorboard: bool = False
    resolution: int = 0

    def validate(self, where: str) -> None:
        finite = math.isfinite
        for key, ok, rule in (
            ("steps", self.steps >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("grad_accum", self.grad_accum >= 1, "must be >= 1"),
            ("lr", finite(self.lr) and self.lr > 0, "must be a positive number"),
            ("warmup", self.warmup >= 0, "must be >= 0"),
            ("lr_schedule", self.lr_schedule in ("cosine", "constant"), "must be cosine or constant"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]"),
            ("weight_decay", finite(self.weight_decay) and self.weight_decay >= 0, "must be >= 0"),
            ("beta2", 0 < self.beta2 < 1, "must be in (0, 1)"),
            ("grad_clip", finite(self.grad_clip) and self.grad_clip >= 0, "must be >= 0 (0 = off)"),
            ("ema_decay", 0 <= self.ema_decay < 1, "must be in [0, 1) (0 = off)"),
            ("precision", self.precision in ("auto", "bf16", "fp32"), "must be auto, bf16 or fp32"),
            ("ckpt_every", self.ckpt_every >= 1, "must be >= 1"),
            ("sample_every", self.sample_every >= 0, "must be >= 0 (0 = off)"),
            ("eval_every", self.eval_every >= 0, "must be >= 0 (0 = off)"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("resolution", self.resolution == 0 or 8 <= self.resolution <= 4096, "must be 0 (the data's) or 8..4096"),
        ):
            require(ok, where, key, rule, getattr(self, key))


def adamw(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """The optimiser every stage trains with (and benchmarks/probe_tokens.py probes with): AdamW over the
    trainable parameters, weight decay on matrices only, one fused kernel where PyTorch has one -- its CPU
    default is a loop over tensors (the update fell from 12 to 5 ms of a Parti step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type in ("cpu", "cuda") or None)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule != "cosine":
        raise UserError(f"lr_schedule must be cosine or constant, got {cfg.lr_schedule!r}")
    progress = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    """Trains one stage of a run. `parts` names the submodules saved as `<name>.safetensors` (EMA weights).

    `data(start)` returns an iterator of per-rank batches (dicts of tensors) beginning after `start` samples
    of this rank's stream; `sample(ema_model, step)` returns a PIL image saved under samples/. `seed` (the
    run's) seeds the stage's own randomness (noise levels, dropout masks) per rank. `on_step(saved)` is
    called after every step (saved: a checkpoint was just written), for the run's time bookkeeping.
    """

    def __init__(self, stage: str, model: nn.Module, cfg: TrainConfig, run_dir: str | Path,
                 parts: dict[str, str], data: Callable[[int], Iterator[dict[str, Any]]],
                 sample: Callable[[nn.Module, int], Any] | None = None, progress: bool = True,
                 device: torch.device | None = None,
                 evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None, seed: int = 0,
                 on_step: Callable[[bool], None] | None = None) -> None:
        self.stage, self.cfg, self.dir = stage, cfg, Path(run_dir)
        self.parts, self.data_fn, self.sample_fn, self.progress = parts, data, sample, progress
        self.eval_fn, self.on_step = evaluate, on_step
        self.device = device or runtime.device()
        self.rank, self.world = runtime.rank(), runtime.world_size()
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise UserError(f"batch_size {cfg.batch_size} must divide by world_size x grad_accum = "
                            f"{self.world} x {cfg.grad_accum}")
        self.micro = cfg.batch_size // (self.world * cfg.grad_accum)
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
        self.ddp = (torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
                    if self.world > 1 else model)
        self.opt = adamw(model, cfg, self.device)
        self.gen = torch.Generator(self.device).manual_seed(seed * 1000 + self.rank)
        self.step, self.samples_seen, self.elapsed = 0, 0, 0.0
        self.state_path = self.dir / "train_state.pt"
        self.precision = train_precision(cfg.precision, self.device)
        self.timed = cfg.precision == "auto" and self.device.type == "cpu" and self.world == 1

    # ------------------------------------------------------------------------------------- checkpoint
    def _ema_update(self) -> None:
        if self.ema is None:
            return
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        pairs = [(e, p.detach()) for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True)
                 if p.requires_grad]
        torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            b_ema.copy_(b)

    def inference_model(self) -> nn.Module:
        return self.ema if self.ema is not None else self.model

    def save_parts(self) -> None:
        src = self.inference_model()
        for name, attr in self.parts.items():
            module = src.get_submodule(attr)
            tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            tmp = self.dir / f".{name}.safetensors.tmp"
            save_file(tensors, str(tmp))
            tmp.replace(self.dir / f"{name}.safetensors")

    def save(self) -> None:
        """Atomic: a crash mid-save leaves the previous checkpoint intact."""
        if self.rank != 0:
            return
        self.save_parts()
        state = {
            "stage": self.stage, "step": self.step, "samples_seen": self.samples_seen, "elapsed": self.elapsed,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "generator": self.gen.get_state(), "world_size": self.world, "precision": self.precision,
        }
        tmp = self.dir / ".train_state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.state_path)

    def load(self) -> bool:
        """Resume from train_state.pt if it belongs to this stage; returns whether it did."""
        if not self.state_path.is_file():
            return False
        try:
            state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        except Exception as e:
            raise UserError(f"{self.state_path} is unreadable ({e}); delete it to restart this stage") from None
        if state.get("stage") != self.stage:
            return False
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["generator"].cpu())  # a CPU ByteTensor for CUDA generators too
        self.step, self.samples_seen, self.elapsed = state["step"], state["samples_seen"], state["elapsed"]
        if self.timed and state.get("precision") in ("bf16", "fp32"):  # a resumed stage keeps what it chose
            self.precision, self.timed = state["precision"], False
        if state.get("world_size", 1) != self.world:
            print(f"note: resuming a {state.get('world_size')}-process run on {self.world}; data order changes")
        return True

    # ------------------------------------------------------------------------------------------- loop
    def pick_precision(self, batch: dict[str, Any], reps: int = 2) -> dict[str, float]:
        """`auto` on one CPU process: time `reps` forward/backward passes of `batch` under fp32 and under bf16
        autocast (after one untimed pass each) and train in bf16 only if it is clearly faster (under
        `BF16_MARGIN` of fp32's time): near a tie, timing noise would otherwise pick either, and two runs of
        one config would then differ. Nothing of the trial stays: the weights and buffers (a VQ's EMA
        codebook moves in a forward pass), the gradients and the noise generator are put back, and `batch` is
        still the first one trained on, so the run sees the same data and noise as one that names its
        precision. A pass under `TIMED_FLOOR_S` in fp32 keeps fp32 untried in bf16. Returns the seconds per
        pass of each precision timed."""
        weights = copy.deepcopy(self.model.state_dict())
        rng = self.gen.get_state()
        times = {}
        for precision in ("fp32", "bf16"):
            for i in range(reps + 1):
                if i == 1:  # the first pass of each warms its kernels up
                    t0 = time.perf_counter()
                with runtime.autocast(self.device, precision):
                    loss = self.ddp(batch, generator=self.gen)["loss"].float()
                loss.backward()
            times[precision] = (time.perf_counter() - t0) / reps
            if times["fp32"] < TIMED_FLOOR_S:
                break
        self.model.load_state_dict(weights)
        self.opt.zero_grad(set_to_none=True)
        self.gen.set_state(rng)
        self.precision = "bf16" if times.get("bf16", math.inf) < BF16_MARGIN * times["fp32"] else "fp32"
        self.timed = False
        return times

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in batch.items():
            if isinstance(v, Tensor):
                v = v.to(self.device, non_blocking=True)
                if self.cfg.channels_last and v.ndim == 4:
                    v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def _log(self, row: dict[str, Any], name: str = "log.csv") -> None:
        """Append a row; stages log different columns (a CLIP's accuracy, a prior's cosines) into one file, so
        a row with a column the header lacks widens the header first, and every row stays under its names."""
        path = self.dir / name
        header = None
        if path.exists():
            with path.open(newline="") as f:
                header = next(csv.reader(f), None)
        if header and not set(row) <= set(header):
            header = widen_log(path, [*header, *(k for k in row if k not in header)])
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header or list(row), restval="")
            if not header:
                w.writeheader()
            w.writerow(row)

    def fit(self) -> dict[str, float]:
        """Train to cfg.steps (continuing a checkpoint of this stage if one exists); returns final losses."""
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        resumed = self.load()
        if self.rank == 0:  # the steps past the checkpoint are trained again: their old rows go
            for name in ("log.csv", "eval.csv"):
                truncate_log(self.dir / name, self.stage, self.step)
        data = self.data_fn(self.samples_seen // self.world)
        writer = None
        if cfg.tensorboard and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.dir / "tb"))
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.stage, unit="it", dynamic_ncols=True,
                   disable=not self.progress or self.rank != 0)
        if resumed and self.rank == 0:
            bar.write(f"{self.stage}: resumed at step {self.step}")
        last: dict[str, float] = {}
        self.model.train()
        if self.timed and self.step < cfg.steps:
            first = self._to_device(next(data))
            times = self.pick_precision(first)
            data = itertools.chain([first], data)
            if self.rank == 0:
                bf16 = f"bf16 {times['bf16']:.3f} s" if "bf16" in times else f"bf16 not tried under {TIMED_FLOOR_S} s"
                bar.write(f"{self.stage}: precision auto -> {self.precision} (one forward and backward pass: fp32 "
                          f"{times['fp32']:.3f} s, {bf16})")
        t_window, n_window = time.perf_counter(), 0
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.step, cfg)
            totals: dict[str, float] = {}
            for _ in range(cfg.grad_accum):
                batch = self._to_device(next(data))
                with runtime.autocast(self.device, self.precision):
                    losses = self.ddp(batch, generator=self.gen)
                loss = losses["loss"].float()
                if not torch.isfinite(loss):
                    bar.close()
                    raise UserError(
                        f"{self.stage}: loss became {loss.item()} at step {self.step}; stopped without saving, "
                        f"the last good checkpoint is kept in {self.dir} (lower train.lr or check the data)")
                (loss / cfg.grad_accum).backward()
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            if cfg.grad_clip > 0:
                totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            self.samples_seen += cfg.batch_size
            self._ema_update()
            self.elapsed += time.perf_counter() - t0
            n_window += 1
            last = totals
            bar.update(1)
            bar.set_postfix(loss=f"{totals['loss']:.4f}", lr=f"{lr_at(self.step - 1, cfg):.1e}")
            if self.rank == 0 and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                now = time.perf_counter()
                row = {"stage": self.stage, "step": self.step, "samples": self.samples_seen,
                       "elapsed_s": round(self.elapsed, 2), "lr": lr_at(self.step - 1, cfg),
                       "it_per_s": round(n_window / (now - t_window), 3),
                       **{k: round(v, 6) for k, v in totals.items()}}
                self._log(row)
                if writer is not None:
                    for k, v in totals.items():
                        writer.add_scalar(f"{self.stage}/{k}", v, self.step)
                t_window, n_window = now, 0
            saved = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps
            if saved:
                self.save()
            if self.on_step is not None:
                self.on_step(saved)
            if self.sample_fn is not None and cfg.sample_every and self.rank == 0 and (
                    self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                self._sample()
            if self.eval_fn is not None and cfg.eval_every and self.rank == 0 and (
                    self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                self._evaluate(bar)
        bar.close()
        if writer is not None:
            writer.close()
        if not resumed and self.step == 0:
            self.save()  # a zero-step stage still leaves its (initial) parts, so the run is loadable
        return last

    def _evaluate(self, bar: tqdm) -> None:
        """Quality against training time (the curve a budget run is judged by); not counted as training time."""
        model = self.inference_model()
        model.eval()
        metrics = self.eval_fn(model, self.step)
        self.model.train()
        row = {"stage": self.stage, "step": self.step, "train_minutes": round(self.elapsed / 60, 3),
               **{k: round(v, 4) for k, v in metrics.items()}}
        self._log(row, "eval.csv")
        bar.write(f"{self.stage} step {self.step} ({row['train_minutes']:.1f} train-min): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))

    def _sample(self) -> None:
        model = self.inference_model()
        was_training = model.training
        model.eval()
        image = self.sample_fn(model, self.step)
        model.train(was_training)
        out = self.dir / "samples"
        out.mkdir(exist_ok=True)
        image.save(out / f"{self.stage}_{self.step:06d}.png")


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
