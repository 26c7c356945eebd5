"""The LDM family end to end at toy size: train (all stages), resume, generate, img2img, eval, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import t2i
from t2i.api import train
from t2i.errors import OptionError, UserError
from t2i.families.base import Input
from t2i.train.rundir import read_meta, write_meta


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ldm") / "run"
    train("ldm", str(out), preset="tiny", progress=False)
    return out


def test_run_directory_layout(run):
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "run.json", "tokenizer.json", "autoencoder.safetensors", "denoiser.safetensors",
            "train_state.pt", "log.csv", "samples"} <= names
    meta = read_meta(run)
    assert meta["family"] == "ldm" and meta["stages_done"] == ["tokenizer", "autoencoder", "diffusion"]
    assert meta["latent_scale"] > 0
    assert {p.name for p in (run / "samples").iterdir()} == {"autoencoder_000004.png", "diffusion_000006.png"}


def test_generate_is_seeded_and_batch_independent(run):
    pipe = t2i.load(str(run))
    a = pipe(["a red circle", "two blue squares"], steps=3, seed=5)
    b = pipe(["two blue squares"], steps=3, seeds=[6])
    assert a[0].size == (64, 64) and a[0].mode == "RGB"
    # An image depends on its seed, not on its batch, up to float rounding of batched kernels: GPU libraries
    # pick their algorithms by batch size (3/255 on an H200; other seeds differ by ~100/255).
    assert np.abs(np.asarray(a[1], float) - np.asarray(b[0], float)).max() <= 4
    c = pipe(["a red circle"], steps=3, seed=99)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    for sampler in ["ddpm", "ddim", "euler", "heun", "dpmpp-2m"]:
        assert len(pipe([""], steps=2, sampler=sampler, guidance=1.0)) == 1  # empty prompt = unconditional


def test_img2img_keeps_the_init_at_low_strength(run):
    from t2i.images import images_to_tensor, tensor_to_images

    pipe = t2i.load(str(run))
    init = pipe(["a red circle"], steps=3, seed=1)[0]
    ae = pipe.autoencoder
    round_trip = tensor_to_images(ae.decode(ae.encode(images_to_tensor([init]).to(pipe.device)).mode()))[0]
    near = pipe(["a red circle"], steps=10, seed=2, inputs=[Input("img2img", init, strength=0.1)])[0]
    far = pipe(["a red circle"], steps=10, seed=2)[0]

    def dist(a, b):
        return np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()

    assert dist(near, round_trip) < dist(far, round_trip)


def test_cli_generate_grid_and_contract_folder(cli, run, tmp_path):
    r = cli("generate", run, "a red circle left of a blue square", "-n", 3, "--steps", 2, "--out", tmp_path / "g.png", "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g.png").is_file()
    (tmp_path / "p.txt").write_text("a red circle\nthree green squares\n")
    r = cli("generate", run, "--prompts-file", tmp_path / "p.txt", "--per-prompt", 2, "--steps", 2,
            "--out", tmp_path / "d", "-q")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "d" / "index.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in rows] == ["a red circle"] * 2 + ["three green squares"] * 2
    assert len({row["seed"] for row in rows}) == 4


def test_cli_eval_writes_scores(cli, run):
    r = cli("eval", run, "--n", 10, "--steps", 2, "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "eval" / "shapesbench.json").read_text())
    assert 0.0 <= res["overall"] <= 1.0 and res["sampling"]["images"] == 10
    assert (run / "eval" / "shapesbench" / "shapesbench.json").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--guidance", "-1"], "--guidance must be >= 0"),
    (["--sampler", "plms"], "--sampler 'plms' is unknown"),
    (["--init-image", "/nonexistent.png"], "cannot read --init-image"),
])
def test_cli_generate_bad_options(cli, run, tmp_path, args, message):
    r = cli("generate", run, "a red circle", "--out", tmp_path / "x.png", *args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


def test_options_of_other_families_are_one_line_errors(run):
    pipe = t2i.load(str(run))
    # Through the API an error names the parameter (top_k), through the CLI the flag (--top-k): one check.
    with pytest.raises(OptionError, match=r"^top_k does not apply to ldm runs \(it is for dalle, parti, maskgit, nuwa\)") as e:
        pipe.options(top_k=5)
    assert e.value.as_flag().startswith("--top-k does not apply") and isinstance(e.value, ValueError)
    with pytest.raises(UserError, match="sampler 'parallel' is unknown"):
        pipe.options(sampler="parallel")
    with pytest.raises(UserError, match=r"^guidance must be >= 0 and finite"):
        pipe.options(guidance=float("nan"))
    assert pipe.options(steps=3).steps == 3 and pipe.options().sampler == pipe.cfg.sample.sampler


def test_bad_run_directories(cli, run, tmp_path):
    r = cli("generate", tmp_path / "missing", "a red circle", "--out", tmp_path / "x.png")
    assert r.returncode == 2 and "does not exist" in r.stderr
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text((run / "config.yaml").read_text())
    write_meta(partial, {"family": "ldm", "stages_done": ["tokenizer"]})
    with pytest.raises(UserError, match="incomplete"):
        t2i.load(str(partial))
    write_meta(partial, {"family": "cogview", "stages_done": []})
    with pytest.raises(UserError, match="unknown family 'cogview'"):
        t2i.load(str(partial))


def test_interrupted_run_resumes_to_completion(cli, tmp_path):
    out = tmp_path / "r"
    train("ldm", str(out), preset="tiny", overrides=["stages.diffusion.steps=0"], progress=False)
    meta = read_meta(out)
    assert meta["stages_done"] == ["tokenizer", "autoencoder", "diffusion"]
    meta["stages_done"] = ["tokenizer", "autoencoder"]  # as if it died before the diffusion stage ended
    write_meta(out, meta)
    r = cli("train", "--resume", "--out", out, "--set", "stages.diffusion.steps=3", "-q")
    assert r.returncode == 0, r.stderr
    assert read_meta(out)["stages_done"][-1] == "diffusion"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["stages"]["diffusion"]["steps"] == 3  # the run says what it trained
    assert "already holds a run" in cli("train", "--family", "ldm", "--preset", "tiny", "--out", out).stderr


def test_training_from_an_encoded_cache(tmp_path):
    out = tmp_path / "cached"
    train("ldm", str(out), preset="tiny", overrides=["data.cache=40", "stages.diffusion.eval_every=0"], progress=False)
    assert read_meta(out)["stages_done"][-1] == "diffusion"
    assert len(t2i.load(str(out))(["a red circle"], steps=2)) == 1


def test_demo_runs_end_to_end_with_the_tiny_preset(cli, tmp_path):
    r = cli("demo", "--preset", "tiny", "--n", 40, "--out", tmp_path, "-q")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["groundtruth"]["overall"] == 1.0
    assert summary["ldm"]["sampling"]["images"] == 600
    assert (tmp_path / "preview.png").is_file()


def test_generate_inputs_dir_runs_each_request_and_echoes_it(cli, run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (64, 64), (220, 40, 40)).save(src / "red.png")
    rows = [{"prompt": "a red circle", "seed": 3},
            {"prompt": "a blue square", "seed": 4, "task": "img2img", "image": "red.png", "strength": 0.3}]
    (src / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    r = cli("generate", run, "--inputs", src, "--steps", 2, "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(g["prompt"], g["seed"]) for g in got] == [("a red circle", 3), ("a blue square", 4)]
    assert got[1]["task"] == "img2img" and got[1]["strength"] == 0.3 and got[1]["image"] == "red.png"
    # the CLI's requests are the API call with the same prompts, seeds and Inputs
    pipe = t2i.load(str(run))
    inputs = [None, Input("img2img", Image.open(src / "red.png").convert("RGB"), strength=0.3)]
    api = pipe(["a red circle", "a blue square"], seeds=[3, 4], steps=2, inputs=inputs)
    def diff(a, b):
        return np.abs(np.asarray(a, float) - np.asarray(b, float))

    for im, g in zip(api, got, strict=True):  # another process: bf16 kernels may round a level apart
        assert diff(im, Image.open(out / g["file"])).max() <= 3
    plain = pipe(["a blue square"], seeds=[4], steps=2)[0]  # the request's image really was used
    assert diff(plain, Image.open(out / got[1]["file"])).mean() > 5
    assert cli("bench", "score", out, "-q").returncode == 0
    (src / "index.jsonl").write_text(json.dumps({"prompt": "a red circle", "image": "nope.png"}) + "\n")
    r = cli("generate", run, "--inputs", src, "--out", tmp_path / "o2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot read image" in r.stderr
    (src / "index.jsonl").write_text(json.dumps({"prompt": "a red circle", "colour": "red"}) + "\n")
    r = cli("generate", run, "--inputs", src, "--out", tmp_path / "o3")
    assert r.returncode == 2 and "unknown field(s) colour" in r.stderr


def test_a_run_made_before_stage_keyed_configs_loads_and_resumes(run, cli, tmp_path):
    """Runs written before 2026-12 had `ae_train` / `train` (each with a seed) and `data.seed`; they must load,
    give the same images, and resume into the new keys."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run, old)
    new_cfg = yaml.safe_load((old / "config.yaml").read_text())
    legacy = yaml.safe_load((Path(__file__).parent / "data" / "configs-2026-11" / "ldm-tiny.yaml").read_text())
    assert "ae_train" in legacy and "stages" not in legacy and legacy["data"]["seed"] == 0
    (old / "config.yaml").write_text(yaml.safe_dump(legacy, sort_keys=False))
    a = t2i.load(str(run))(["a red circle"], steps=2, seed=1)[0]
    b = t2i.load(str(old))(["a red circle"], steps=2, seed=1)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    meta = read_meta(old)
    meta["stages_done"] = ["tokenizer", "autoencoder"]  # resume the diffusion stage of the old run
    write_meta(old, meta)
    r = cli("train", "--resume", "--out", old, "--set", "stages.diffusion.steps=7", "-q")
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((old / "config.yaml").read_text())
    assert "ae_train" not in saved and "train" not in saved and "seed" not in saved["data"]
    assert saved["stages"]["diffusion"]["steps"] == 7 and saved["stages"] == {**new_cfg["stages"], "diffusion": {
        **new_cfg["stages"]["diffusion"], "steps": 7}}
