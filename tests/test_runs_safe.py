"""A run folder cannot be corrupted, lie about itself or lose work: the findings of the runs-safe issue, each
reproduced as a user would meet it (mostly through the real CLI in a fresh process)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import t2i
from t2i.api import train
from t2i.errors import OptionError, UserError
from t2i.train.rundir import LOCK, read_meta, write_meta

TINY = ["--family", "ddpm", "--preset", "tiny"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished tiny LDM run (text-conditioned, so the sampling options all apply)."""
    out = tmp_path_factory.mktemp("safe") / "ldm"
    train("ldm", out, preset="tiny", progress=False)
    return out


def _copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def _one_line(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------ 1. the lock
def test_a_second_trainer_is_refused_while_the_first_holds_the_run(tmp_path):
    out = tmp_path / "r"
    first = subprocess.Popen([sys.executable, "-m", "t2i.cli", "train", *TINY, "--out", out, "-q",
                              "--set", "stages.diffusion.steps=100000"], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (out / LOCK).exists() and (out / "log.csv").exists():
                break
            time.sleep(0.1)
        held = json.loads((out / LOCK).read_text())
        assert held["pid"] == first.pid
        second = subprocess.run([sys.executable, "-m", "t2i.cli", "train", "--resume", "--out", out],
                                capture_output=True, text=True)
        _one_line(second, f"is being trained by PID {first.pid}", f"kill {first.pid}")
        assert first.poll() is None  # the first trainer is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("stage,step") and all(r.startswith("diffusion,") for r in rows[1:])


def test_a_stale_lock_is_taken_over_with_a_notice(done, cli, tmp_path, caplog):
    run = _copy(done, tmp_path / "r")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK).write_text(json.dumps({"pid": int(gone.stdout), "host": os.uname().nodename, "since": "earlier"}))
    r = cli("train", "--resume", "--out", run)
    assert r.returncode == 0, r.stderr
    assert f"taking over a stale lock of PID {int(gone.stdout)}" in r.stderr and not (run / LOCK).exists()


# ----------------------------------------------------------------------------- 2. what --resume may change
def test_resume_refuses_architecture_changes_before_writing_anything(done, cli, tmp_path):
    run = _copy(done, tmp_path / "r")
    before = (run / "config.yaml").read_bytes()
    _one_line(cli("train", "--resume", "--out", run, "--set", "unet.channels=32"),
              "--set unet.channels: changes what", "start a new run")
    _one_line(cli("train", "--resume", "--out", run, "--set", "stages.diffusion.lr=0.5"),
              "the diffusion stage has already trained", "a resume changes only its schedule")
    _one_line(cli("train", "--resume", "--out", run, "--set", "stages.autoencoder.steps=10"),
              "diffusion already trained on the autoencoder stage's result")
    _one_line(cli("train", "--resume", "--out", run, "--set", "stages.diffusion.steps=3"),
              "has trained 6 steps already", "can add steps, not remove them")
    assert (run / "config.yaml").read_bytes() == before
    for flags, says in ((["--family", "dalle"], "--family dalle does not match"),
                        (["--preset", "quick"], "--preset quick does not match"),
                        (["--data", "shapes:position=2"], "--data shapes:position=2 does not match")):
        _one_line(cli("train", "--resume", "--out", run, *flags), says, "a resumed run keeps its")
    r = cli("train", "--resume", "--out", run, "--family", "ldm", "-q")  # the run's own values are fine
    assert r.returncode == 0 and "run complete" in r.stdout, r.stderr


def test_more_steps_on_a_finished_run_train_those_steps_and_are_recorded(done, cli, tmp_path):
    run = _copy(done, tmp_path / "r")
    r = cli("train", "--resume", "--out", run, "--set", "stages.diffusion.steps=9", "--set",
            "stages.diffusion.log_every=1", "-q")
    assert r.returncode == 0, r.stderr
    steps = [int(line.split(",")[1]) for line in (run / "log.csv").read_text().splitlines()[1:]
             if line.startswith("diffusion,")]
    assert steps == list(range(1, 10))
    meta = read_meta(run)
    assert meta["stages_done"] == ["tokenizer", "autoencoder", "diffusion"]
    event = meta["invocations"][-1]
    assert event["resume"] and event["changes"]["stages.diffusion.steps"] == [6, 9]
    assert event["changes"]["reopened"] == ["diffusion"]
    assert yaml.safe_load((run / "config.yaml").read_text())["stages"]["diffusion"]["steps"] == 9
    a = t2i.load(str(done))(["a red circle"], steps=2)[0]
    b = t2i.load(str(run))(["a red circle"], steps=2)[0]
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # the three steps changed the weights


# ------------------------------------------------------------------- 3-4. checked before anything is made
@pytest.mark.parametrize(("args", "says"), [
    (["--data", "/nonexistent"], "/nonexistent"),
    (["--set", "stages.diffusion.steps=-5"], "stages.diffusion.steps must be >= 0, got -5"),
    (["--set", "stages.diffusion.batch_size=0"], "stages.diffusion.batch_size must be >= 1, got 0"),
    (["--set", "sample.sampler=foo"], "sample.sampler 'foo' is unknown"),
    (["--set", "stages.diffusion.lr=nan"], "stages.diffusion.lr must be a positive number"),
    (["--set", "diffusion.objective=x1"], "diffusion.objective must be one of eps, v, x0, flow"),
])
def test_bad_configs_fail_before_a_folder_is_made(cli, tmp_path, args, says):
    out = tmp_path / "new"
    _one_line(cli("train", "--family", "ldm", "--preset", "tiny", "--out", out, *args), says)
    assert not out.exists()


def test_images_without_captions_and_a_foreign_tokenizer_leave_no_folder(done, cli, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(folder / f"{i}.png")
    out = tmp_path / "new"
    _one_line(cli("train", "--family", "ldm", "--preset", "tiny", "--data", folder, "--out", out),
              "yields no usable samples (skipped 5 samples (no_caption=5)", "needs a caption")
    assert not out.exists()
    _one_line(cli("train", "--family", "parti", "--preset", "tiny", "--image-tokenizer", done, "--out", out),
              "--image-tokenizer", "needs a token-family run")
    assert not out.exists()
    r = cli("train", "--family", "ldm", "--preset", "tiny", "--out", out, "-q")  # the corrected command works
    assert r.returncode == 0, r.stderr


def test_a_failure_during_training_says_how_to_continue(tmp_path, monkeypatch):
    import t2i.families.ddpm as ddpm

    def broken(*a, **k):
        raise UserError("the data went away")

    monkeypatch.setattr(ddpm, "batches", broken)
    out = tmp_path / "r"
    with pytest.raises(UserError, match=rf"the data went away -- the run in {out} is kept: .*t2i train --resume "
                                        rf"--out {out}.*rm -r {out}"):
        train("ddpm", out, preset="tiny", progress=False)
    assert (out / "config.yaml").exists() and not (out / LOCK).exists()


# ------------------------------------------------------------------------------- 5-6. sampling and outputs
def test_non_finite_and_out_of_range_values_are_errors_everywhere(done, cli, tmp_path):
    pipe = t2i.load(str(done))
    for value in (float("nan"), float("inf")):
        with pytest.raises(OptionError, match=r"^guidance must be >= 0 and finite"):
            pipe(["a red circle"], guidance=value)
    with pytest.raises(OptionError, match=r"^seed must be a whole number in 0\.\.4294967295"):
        pipe(["a red circle"], seed=2**40)
    with pytest.raises(OptionError, match=r"^batch_size must be at least 1"):
        pipe(["a red circle"], batch_size=0)
    _one_line(cli("generate", done, "a red circle", "--guidance", "inf", "--out", tmp_path / "x.png"),
              "--guidance must be >= 0 and finite")
    _one_line(cli("eval", done, "--n", 5, "--guidance", "nan", "-q"), "--guidance must be >= 0 and finite")
    _one_line(cli("generate", done, "a red circle", "--seed", "99999999999999999999", "--out", tmp_path / "x.png"),
              "--seed must be a whole number")
    _one_line(cli("generate", done, "a red circle", "-n", 2, "--batch-size", 0, "--out", tmp_path / "x.png"),
              "--batch-size must be at least 1")
    _one_line(cli("generate", done, "a red circle", "--strength", 0.3, "--out", tmp_path / "x.png"),
              "--strength sets how much of --init-image to keep")
    assert not (tmp_path / "x.png").exists()


def test_output_paths_are_checked_before_generating(done, cli, tmp_path):
    _one_line(cli("generate", done, "a red circle", "--out", tmp_path), "one prompt writes one image file")
    _one_line(cli("generate", done, "a red circle", "--out", tmp_path / "name"), "ending in .png")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    out = tmp_path / "gen"
    assert cli("generate", done, "--prompts-file", prompts, "--out", out, "--steps", 2, "-q").returncode == 0
    assert len(list(out.glob("*.png"))) == 3
    prompts.write_text("a red circle\n")
    _one_line(cli("generate", done, "--prompts-file", prompts, "--out", out, "-q"), "already holds generated images",
              "--overwrite")
    r = cli("generate", done, "--prompts-file", prompts, "--out", out, "--steps", 2, "--overwrite", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png"]  # no stale images beside the new index
    (tmp_path / "afile").write_text("x")
    _one_line(cli("generate", done, "--prompts-file", prompts, "--out", tmp_path / "afile"), "is a file")


# ------------------------------------------------------------------------------------------ 7-8. honest logs
def test_interrupted_runs_log_each_step_once_and_add_up_their_time(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "t2i.cli", "train", *TINY, "--out", str(out), "-q", "--set",
           "stages.diffusion.steps=60", "--set", "stages.diffusion.ckpt_every=7", "--set", "stages.diffusion.log_every=1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    while not (out / "train_state.pt").exists() or len((out / "log.csv").read_text().splitlines()) < 18:
        time.sleep(0.05)
        assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = time.perf_counter() - t0
    logged = len((out / "log.csv").read_text().splitlines()) - 1
    so_far = read_meta(out)["train_seconds"]["diffusion"]  # kept while it trained, not only at the end
    assert so_far > 0
    r = subprocess.run([sys.executable, "-m", "t2i.cli", "train", "--resume", "--out", str(out), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    steps = [int(line.split(",")[1]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 61)) and logged > 7  # steps past the checkpoint were logged, then redone
    meta = read_meta(out)
    assert [inv["resume"] for inv in meta["invocations"]] == [False, True]
    assert meta["invocations"][0]["seconds"] > 0.5 * first  # the killed invocation kept its time
    # The stage's time adds the resumed invocation's training to the killed one's, not replacing it.
    assert so_far < meta["train_seconds"]["diffusion"] <= so_far + meta["invocations"][1]["seconds"]


def test_a_missing_weight_file_names_the_command_that_rebuilds_it(done, cli, tmp_path):
    run = _copy(done, tmp_path / "r")
    (run / "denoiser.safetensors").unlink()
    r = cli("generate", run, "a red circle", "--out", tmp_path / "x.png")
    _one_line(r, f"t2i train --resume --out {run} --redo diffusion")
    r = cli("train", "--resume", "--out", run, "--redo", "diffusion", "-q")
    assert r.returncode == 0, r.stderr
    assert (run / "denoiser.safetensors").exists() and read_meta(run)["invocations"][-1]["changes"]["redo"] == [
        "diffusion"]
    assert cli("generate", run, "a red circle", "--out", tmp_path / "x.png", "--steps", 2).returncode == 0


# ------------------------------------------------------------------------------------------- 9. small ones
def test_a_corrupt_sample_is_reported_once_not_every_epoch(tmp_path, caplog):
    from itertools import islice

    from t2i.train.data import DataConfig, batches

    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"image {i}")
    (folder / "bad.png").write_bytes(b"not a png")
    (folder / "bad.txt").write_text("broken")
    with caplog.at_level(logging.WARNING, logger="t2i.data"):
        list(islice(batches(DataConfig(source=str(folder), resolution=32), 2), 8))  # four epochs
    assert caplog.text.count("bad_image=1") == 1


def test_fid_from_few_images_warns(caplog):
    from t2i.eval.fid import fid_from_features

    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING, logger="t2i.eval"):
        fid_from_features(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)))
    assert "FID from 20 images is biased upward" in caplog.text


def test_old_meta_without_invocations_still_resumes(done, cli, tmp_path):
    run = _copy(done, tmp_path / "r")
    meta = read_meta(run)
    for key in ("invocations", "parts"):
        meta.pop(key, None)
    write_meta(run, meta)
    r = cli("train", "--resume", "--out", run, "-q")
    assert r.returncode == 0 and len(read_meta(run)["invocations"]) == 1, r.stderr
