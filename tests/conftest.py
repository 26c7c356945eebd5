"""Test-wide settings."""

import os
import subprocess
import sys

import pytest
import torch

# Workers run side by side (pytest -n auto), so every torch process a test starts, CLI subprocesses included,
# takes one thread: two 2-thread processes on 2 cores ran 10-20x slower than one.
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny tensors, where a second thread only adds contention: one thread is faster and steadier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cli():
    """`cli("generate", run, ...)` runs `python -m t2i.cli` in a fresh process, as a user would: exit code and
    stderr are what a user sees, so one-line-error tests read them. Returns the CompletedProcess."""

    def run(*args):
        return subprocess.run([sys.executable, "-m", "t2i.cli", *map(str, args)], capture_output=True, text=True)

    return run
