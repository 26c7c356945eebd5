"""LDM quick preset on this machine: ShapesBench after a <= 20-minute run, few-step vs many-step sampling,
training FLOP/s against the measured bf16 matmul peak, sampling throughput, and the accuracy-vs-minutes curve.

    .venv/bin/python benchmarks/bench_ldm.py --train --run runs/ldm-quick --record

`--train` trains the run first with `t2i train --family ldm --preset quick` (resumable: rerun the same
command after an interruption); without it an existing run is measured. `--width-sweep` measures only the
FLOP ratio of wider DiTs on the run's data. Uses both cores: nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from _common import record, train_or_resume


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 20) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak the training figure is compared to."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def training_flops(run: Path, steps: int = 6, overrides: list[str] | None = None) -> tuple[float, float, int]:
    """(FLOP per step, seconds per step, batch) of the run's diffusion stage at its configured batch size,
    with `overrides` (``key=value``, as ``--set``) applied to its config first.

    Batches come straight from the data source (encoded per step), so this slightly overstates the work of
    a run that trains from an encoded cache; the FLOP count includes that encoding too."""
    from torch.utils.flop_counter import FlopCounterMode

    from t2i.codecs.autoencoder import AutoencoderKL
    from t2i.config import load_yaml, override
    from t2i.data.tokenizer import Tokenizer
    from t2i.families.ldm import Config, DiffusionStage
    from t2i.runtime import autocast
    from t2i.train.data import batches
    from t2i.train.rundir import load_part, read_meta
    from t2i.train.trainer import TrainConfig, Trainer

    cfg = override(load_yaml(Config, run / "config.yaml"), overrides or [])
    tok = Tokenizer.load(run / "tokenizer.json")
    ae = load_part(AutoencoderKL(cfg.autoencoder), run, "autoencoder")
    stage = DiffusionStage(cfg, tok, ae, read_meta(run)["latent_scale"])
    tc = TrainConfig(**{**cfg.stages.diffusion.__dict__, "steps": 10**9, "ckpt_every": 10**9, "sample_every": 0,
                        "eval_every": 0, "log_every": 10**9})
    trainer = Trainer("bench", stage, tc, run / "bench_tmp", {}, lambda s: batches(
        cfg.data, tc.batch_size, 0, tok, cfg.text.max_len), progress=False)
    data = batches(cfg.data, tc.batch_size, 0, tok, cfg.text.max_len)
    batch = trainer._to_device(next(data))
    opt = trainer.opt

    def step() -> None:
        with autocast(trainer.device, tc.precision):
            loss = stage(batch, generator=trainer.gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    with FlopCounterMode(display=False) as fc:
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return fc.get_total_flops(), (time.perf_counter() - t) / steps, tc.batch_size


SEEDS = (0, 10_000)


def width_sweep(run: Path, dims: tuple[int, ...] = (256, 512, 768, 1024)) -> list[str]:
    """FLOP ratio and samples/s of the run's diffusion stage with the DiT made wider (heads of 64 channels).

    Answers whether the ratio target is a matter of model shape: a wider DiT fills the matrix units better
    but trains fewer samples per second, and this budget is sample-limited."""
    peak = matmul_peak(torch.bfloat16)
    rows = [f"DiT width sweep on `{run}`'s diffusion stage (depth and batch as configured; bf16 matmul peak "
            f"measured now: {peak / 1e9:.0f} GFLOP/s):", "",
            "| width | GFLOP/s | ratio | samples/s | ms/step |", "|---|---|---|---|---|"]
    for dim in dims:
        flop, sec, batch = training_flops(run, overrides=[f"dit.dim={dim}", f"dit.heads={max(dim // 64, 1)}"])
        rows.append(f"| {dim} | {flop / sec / 1e9:.0f} | {flop / sec / peak:.2f} | {batch / sec:.0f} | "
                    f"{sec * 1000:.0f} |")
    return rows


def mean_of(results: list[dict]) -> dict:
    """Scores averaged over evaluations of the same prompts with different seed sets; sampling info of the first."""
    kinds = results[0]["kinds"]
    return {"kinds": {k: sum(r["kinds"][k] for r in results) / len(results) for k in kinds},
            "overall": sum(r["overall"] for r in results) / len(results),
            "novel": sum(r["novel"] for r in results) / len(results),
            "per_set": [r["overall"] for r in results], "sampling": results[0]["sampling"],
            "version": results[0]["version"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/ldm-quick")
    ap.add_argument("--train", action="store_true", help="train the quick preset into --run first")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--ddpm-steps", type=int, default=250)
    ap.add_argument("--width-sweep", action="store_true",
                    help="only measure the FLOP ratio of wider DiTs on the run's data (no ShapesBench)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    run = Path(args.run)
    if args.width_sweep:
        record("LDM training FLOP ratio against DiT width", width_sweep(run), args.record)
        return
    if args.train:
        print(f"training wall-clock this invocation: {train_or_resume('ldm', args.preset, run):.1f} min")
    from t2i.eval.runs import evaluate
    from t2i.train.rundir import read_meta

    meta = read_meta(run)
    train_min = sum(meta["train_seconds"].values()) / 60
    # Two seed sets per sampler (1,200 images each): one set of 600 moves the overall score by +-0.03, as much
    # as the few-step/many-step difference being measured.
    fast = mean_of([evaluate(run, seed=seed, progress=False, out_name=f"bench_default_s{seed}") for seed in SEEDS])
    slow = mean_of([evaluate(run, steps=args.ddpm_steps, sampler="ddpm", seed=seed, progress=False,
                             out_name=f"bench_ddpm_s{seed}") for seed in SEEDS])
    flop, sec, batch = training_flops(run)
    peak = matmul_peak(torch.bfloat16)
    peak32 = matmul_peak(torch.float32)
    kinds = list(fast["kinds"])
    rows = [f"run `{run}` (preset `{meta.get('preset')}`), training time {train_min:.1f} min "
            f"({', '.join(f'{k} {v / 60:.1f}' for k, v in meta['train_seconds'].items())} min)", "",
            "| sampler | steps | " + " | ".join(kinds) + " | overall | novel | images/s |",
            "|---|---|" + "---|" * (len(kinds) + 3)]
    for res in (fast, slow):
        s = res["sampling"]
        rows.append(f"| {s['sampler']} | {s['steps']} | " + " | ".join(f"{res['kinds'][k]:.3f}" for k in kinds)
                    + f" | {res['overall']:.3f} | {res['novel']:.3f} | {s['images_per_s']:.1f} |")
    rows += ["", f"- ShapesBench above: the mean over seed sets {', '.join(map(str, SEEDS))} (600 prompts each; overall "
             f"per set: {fast['sampling']['sampler']} {' / '.join(f'{x:.3f}' for x in fast['per_set'])}, ddpm "
             f"{' / '.join(f'{x:.3f}' for x in slow['per_set'])})",
             f"- few-step vs many-step: {fast['sampling']['sampler']} {fast['sampling']['steps']} steps "
             f"{fast['overall']:.3f} vs ddpm {args.ddpm_steps} steps {slow['overall']:.3f} "
             f"(difference {fast['overall'] - slow['overall']:+.3f})",
             f"- training throughput (diffusion stage, batch {batch}): "
             f"{flop / sec / 1e9:.0f} GFLOP/s achieved ({flop / 1e9:.1f} GFLOP/step, {sec * 1000:.0f} ms/step); "
             f"bf16 matmul peak measured in the same run {peak / 1e9:.0f} GFLOP/s (fp32 {peak32 / 1e9:.0f}); "
             f"ratio {flop / sec / peak:.2f}",
             f"- sampling throughput: {fast['sampling']['images_per_s']:.1f} images/s at "
             f"{fast['sampling']['steps']} steps with guidance {fast['sampling']['guidance']} (batch 64)"]
    curve = run / "eval.csv"
    if curve.exists():
        rows += ["", "ShapesBench (100-prompt probe, default sampler) against diffusion training minutes:", "",
                 "| step | train min | overall | single | size | two | position | counting | novel |",
                 "|---|---|---|---|---|---|---|---|---|"]
        with curve.open() as f:
            for r in csv.DictReader(f):
                rows.append(f"| {r['step']} | {float(r['train_minutes']):.1f} | {float(r['shapesbench']):.3f} | "
                            + " | ".join(r.get(k, "") for k in ("single_object", "size", "two_object", "position",
                                                                 "counting", "novel")) + " |")
    s = fast["sampling"]
    record("LDM quick preset", rows, args.record, current={f"ldm {meta.get('preset')}": (
        f"{fast['overall']:.3f} ({s['sampler']}, {s['steps']} steps; ddpm {args.ddpm_steps} steps {slow['overall']:.3f}; "
        f"counting {fast['kinds']['counting']:.2f})", fast["version"].removeprefix("shapesbench-"),
        f"{train_min:.1f} min")})


if __name__ == "__main__":
    main()
