"""bf16 autocast against fp32, per training stage of the CPU presets, over whole stages: the choice the
trainer's `precision: auto` makes from two timed passes at the start of each stage.

    .venv/bin/python benchmarks/bench_precision.py --record

Each stage of each preset trains `--steps` steps twice through `t2i train` (the real data path, model and
optimizer), once with `stages.S.precision=bf16` and once with `fp32`, alternating the order between presets so
drift on a shared machine falls on both; the figure is the median it/s the trainer logs after its first 20
steps. Caches are cut to a few thousand samples (they are encoded before training and not timed).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import record

PRESETS = {  # family: (stages to time, settings that keep the untimed parts short)
    "ldm": (["autoencoder", "diffusion"], ["data.cache=4096"]),
    "dalle": (["vq", "transformer"], ["data.cache=4096", "stages.vq_decoder.steps=0"]),
    "parti": (["transformer"], ["data.cache=4096", "stages.vq_decoder.steps=0", "stages.vq.steps=20"]),
    "maskgit": (["transformer"], ["data.cache=4096", "stages.vq_decoder.steps=0", "stages.vq.steps=20"]),
    "clip": (["clip"], []),
}


def run(family: str, stages: list[str], extra: list[str], precision: str, steps: int, out: Path) -> dict[str, float]:
    sets = [*extra]
    for s in stages:
        sets += [f"stages.{s}.steps={steps}", f"stages.{s}.precision={precision}", f"stages.{s}.sample_every=0",
                 f"stages.{s}.eval_every=0", f"stages.{s}.ckpt_every={steps}"]
    cmd = [sys.executable, "-m", "t2i.cli", "train", "--family", family, "--preset", "quick", "--out", str(out),
           "--quiet", *[a for kv in sets for a in ("--set", kv)]]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rates: dict[str, list[float]] = {}
    for row in csv.DictReader((out / "log.csv").open()):
        if row["stage"] in stages and int(row["step"]) > 20:
            rates.setdefault(row["stage"], []).append(float(row["it_per_s"]))
    return {s: statistics.median(v) for s, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--families", default=",".join(PRESETS))
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rows = ["| preset | stage | bf16 it/s | fp32 it/s | fp32 / bf16 |", "|---|---|---|---|---|"]
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, family in enumerate(args.families.split(",")):
            stages, extra = PRESETS[family]
            order = ("bf16", "fp32") if i % 2 == 0 else ("fp32", "bf16")
            res = {p: run(family, stages, extra, p, args.steps, Path(tmp) / f"{family}-{p}") for p in order}
            for s in stages:
                r = res["fp32"][s] / res["bf16"][s]
                ratios.append(r)
                rows.append(f"| {family} quick | {s} | {res['bf16'][s]:.2f} | {res['fp32'][s]:.2f} | {r:.2f} |")
    import torch

    rows += ["", f"- torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
             f"{torch.get_num_threads()} threads; {args.steps} steps per stage and precision"]
    record("Training precision on this CPU: bf16 autocast against fp32", rows, args.record,
           {"precision (CPU presets)": (f"fp32 / bf16 training speed {min(ratios):.2f}-{max(ratios):.2f}x over "
                                        f"{len(ratios)} stages", "-", "-")})


if __name__ == "__main__":
    main()
