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


def record(title: str, rows: list[str], save: bool) -> None:
    """Print a result block; with `save`, append it to benchmarks/RESULTS.md as measured."""
    script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parent.parent)
    cmd = ".venv/bin/python " + " ".join(shlex.quote(a) for a in [str(script), *sys.argv[1:]])
    block = [f"### {title}", "", f"- command: `{cmd}`", f"- machine: {machine()}",
             f"- date: {_dt.date.today().isoformat()}", "", *rows, ""]
    text = "\n".join(block)
    print(text)
    if save:
        with RESULTS.open("a") as f:
            f.write(text + "\n")
