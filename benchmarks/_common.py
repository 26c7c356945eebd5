"""Shared by the benchmark scripts: pin to one core, describe the machine, record results in RESULTS.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def pin_one_core() -> None:
    """The figures are per core; pinning keeps a second core's noise out of them."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name()} (torch {torch.__version__})"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}{gpu}"


def train_or_resume(family: str, preset: str, run: Path, extra: list[str] | None = None) -> float:
    """Train `preset` of `family` into `run`, or resume it when the run exists (an interrupted benchmark
    is continued by the same command); returns this invocation's wall-clock minutes."""
    import subprocess
    import time

    cli = [sys.executable, "-m", "t2i.cli", "train"]
    cmd = ([*cli, "--resume", "--out", str(run), "-q"] if (run / "run.json").exists() else
           [*cli, "--family", family, "--preset", preset, "--out", str(run), "-q", *(extra or [])])
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return (time.perf_counter() - t) / 60


def record(title: str, rows: list[str], save: bool, current: dict[str, tuple[str, str, str]] | None = None) -> None:
    """Print a result block; with `save`, append it to benchmarks/RESULTS.md as measured, and replace (or add)
    each preset's row of the current table: `current` maps a preset name to (figure, scorer, training time)."""
    script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parent.parent)
    args = " ".join(shlex.quote(a) for a in [str(script), *sys.argv[1:]])
    cmd = ".venv/bin/python " + args
    block = [f"### {title}", "", f"- command: `{cmd}`", f"- machine: {machine()}",
             f"- date: {_dt.date.today().isoformat()}", "", *rows, ""]
    text = "\n".join(block)
    print(text)
    if not save:
        return
    lines = RESULTS.read_text().splitlines()
    end = lines.index("<!-- current:end -->")
    cpu = machine().split(",")[0].replace("Intel(R) ", "").replace("(R)", "").replace(" Processor", "")
    cell = f"`{args.removeprefix('benchmarks/')}`"
    if len(cell) > 160:  # a long command is in full in its block; the table names the block
        cell = f"`{cell[1:].split()[0]} ...` (in full: the {_dt.date.today().isoformat()} block \"{title}\")"
    for preset, (figure, scorer, training) in (current or {}).items():
        row = (f"| {preset} | {figure} | {scorer} | {training} | {_dt.date.today().isoformat()} | "
               f"{cpu}, {os.cpu_count()} cores | {cell} |")
        at = next((i for i, line in enumerate(lines[:end]) if line.startswith(f"| {preset} |")), None)
        if at is None:
            lines.insert(end, row)
            end += 1
        else:
            lines[at] = row
    RESULTS.write_text("\n".join(lines).rstrip("\n") + "\n\n" + text + "\n")
