"""Kill -9 a training at random moments, resume it each time, and check that nothing was lost or invented.

    .venv/bin/python benchmarks/bench_resume.py --record

Trains the tiny DDPM preset (made longer: 240 steps, a checkpoint every 10) once without interruption, then
again in a fresh folder, killed with SIGKILL `--kills` times (default 20) and resumed after each kill. Most kills land at a random
moment a few steps into an invocation; every fifth waits for a checkpoint write in progress (a `.tmp` file in the run
folder) and kills it there, and every fifth lands while the process is still starting up. It records:

* whether the final weights equal the uninterrupted run's, bit for bit (both at one thread);
* whether `log.csv` has each step exactly once;
* whether the run's own time record (`run.json`: each invocation's seconds) adds up to the wall time the
  invocations really took, measured from outside (within 10%).

Both runs use one thread; nothing else should run meanwhile (the timing check is a ratio, so load slows both
sides, but a loaded machine makes kill moments land less evenly).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import record

STEPS, CKPT = 240, 10
SET = ["--set", f"stages.diffusion.steps={STEPS}", "--set", f"stages.diffusion.ckpt_every={CKPT}", "--set",
       "stages.diffusion.log_every=1", "--set", "stages.diffusion.sample_every=0",
       # named, not auto: a run killed before its first checkpoint starts over and times its precision again
       "--set", "stages.diffusion.precision=fp32"]


def _cmd(out: Path, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "t2i.cli", "train", "--out", str(out), "-q"]
    return base + (["--resume"] if resume else ["--family", "ddpm", "--preset", "tiny", *SET])


def _weights(run: Path) -> str:
    return hashlib.sha256((run / "unet.safetensors").read_bytes()).hexdigest()


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _rows(run: Path) -> int:
    try:
        return len((run / "log.csv").read_text().splitlines())
    except OSError:
        return 0


def _invocations(run: Path) -> int:
    try:
        return len(json.loads((run / "run.json").read_text()).get("invocations", []))
    except (OSError, ValueError):
        return 0


def _finished(run: Path) -> bool:
    try:
        return "diffusion" in json.loads((run / "run.json").read_text()).get("stages_done", [])
    except (OSError, ValueError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--record", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="t2i-resume-"))
    try:
        ref = root / "uninterrupted"
        subprocess.run(_cmd(ref, False), check=True, env=_env())
        ref_meta = json.loads((ref / "run.json").read_text())

        run = root / "killed"
        walls, kinds, resume, unrecorded = [], [], False, 0
        while not _finished(run):
            before = _invocations(run)
            t0 = time.perf_counter()
            proc = subprocess.Popen(_cmd(run, resume), env=_env(), stderr=subprocess.DEVNULL)
            if len(kinds) < args.kills:
                kind = ("random", "random", "checkpoint write", "random", "start-up")[len(kinds) % 5]
                rows0 = _rows(run)
                target = rows0 + rng.randint(1, max(2, 2 * STEPS // (args.kills + 4)))
                startup = t0 + rng.uniform(0.3, 3.0)
                while proc.poll() is None:
                    now = time.perf_counter()
                    if kind == "start-up":
                        hit = now > startup
                    elif kind == "random":
                        hit = _rows(run) >= target
                    else:
                        hit = _rows(run) > rows0 and run.is_dir() and any(p.name.endswith(".tmp") for p in run.iterdir())
                    if hit:
                        if kind == "random":
                            time.sleep(rng.uniform(0.0, 0.2))  # somewhere inside a step
                        proc.send_signal(signal.SIGKILL)
                        kinds.append(kind)
                        break
                    time.sleep(0.001 if kind == "checkpoint write" else 0.01)
            proc.wait()
            if _invocations(run) > before:
                walls.append(time.perf_counter() - t0)
            else:  # killed before it wrote its invocation record: nothing in run.json to compare with
                unrecorded += 1
            resume = resume or (run / "run.json").exists()
            if len(walls) + unrecorded > args.kills + 5:
                raise SystemExit("the run does not finish after the kills; see " + str(run))
        meta = json.loads((run / "run.json").read_text())
        steps = [int(line.split(",")[1]) for line in (run / "log.csv").read_text().splitlines()[1:]]
        recorded = sum(inv["seconds"] for inv in meta["invocations"])
        same = _weights(run) == _weights(ref)
        once = steps == list(range(1, STEPS + 1))
        ratio = recorded / sum(walls)
        rows = [
            f"DDPM tiny, {STEPS} steps, a checkpoint every {CKPT}; {len(kinds)} kills with SIGKILL "
            f"({kinds.count('random')} at random moments while training, {kinds.count('checkpoint write')} during a "
            f"checkpoint write, {kinds.count('start-up')} while starting up), {len(walls) + unrecorded} invocations "
            f"in all; the time comparison leaves out the {unrecorded} killed before writing a record (still starting).",
            "",
            "| check | result |",
            "|---|---|",
            f"| final weights equal the uninterrupted run's | {'yes' if same else 'NO'} |",
            f"| log.csv has each step once | {'yes' if once else 'NO'} ({len(steps)} rows) |",
            f"| recorded invocation time / measured wall time | {ratio:.3f} ({recorded:.1f} s / {sum(walls):.1f} s)"
            f" {'within 10%' if abs(ratio - 1) <= 0.10 else 'OFF BY MORE THAN 10%'} |",
            f"| recorded training time of the stage, killed / uninterrupted | "
            f"{meta['train_seconds']['diffusion']:.1f} s / {ref_meta['train_seconds']['diffusion']:.1f} s |",
        ]
        figure = (f"{len(kinds)} kill -9s: weights {'equal' if same else 'DIFFER'}, each step logged "
                  f"{'once' if once else 'NOT once'}, recorded time {ratio:.2f}x the measured")
        record("Kill -9 and resume: nothing lost, nothing invented", rows, args.record,
               current={"resume safety (ddpm tiny)": (figure, "-", "-")})
        if not (same and once and abs(ratio - 1) <= 0.10):
            raise SystemExit(1)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
