"""The DALL-E family end to end at toy size: train, generate, CLIP reranking, CLI options and errors, eval."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import t2i
from t2i.api import train
from t2i.errors import UserError
from t2i.eval.runs import evaluate
from t2i.families.base import Input
from t2i.train.rundir import read_meta, write_meta


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dalle") / "run"
    train("dalle", str(out), preset="tiny", progress=False)
    return out


def test_run_directory_layout(run):
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "run.json", "tokenizer.json", "vq.safetensors", "transformer.safetensors",
            "train_state.pt", "log.csv", "samples"} <= names
    meta = read_meta(run)
    assert meta["stages_done"] == ["tokenizer", "vq", "transformer"]
    assert 0 < meta["vq"]["codes_used"] <= 32 and 0 <= meta["vq"]["reconstruction_shapesbench"] <= 1
    assert {p.name for p in (run / "samples").iterdir()} == {"vq_000004.png", "transformer_000006.png"}


def test_generate_is_seeded_batch_independent_and_cache_exact(run):
    pipe = t2i.load(str(run))
    a = pipe(["a red circle", "two blue squares"], seed=5, candidates=1)
    b = pipe(["two blue squares"], seeds=[6], candidates=1)
    assert a[0].size == (64, 64) and a[0].mode == "RGB"
    assert np.array_equal(np.asarray(a[1]), np.asarray(b[0]))
    pipe.use_cache = False
    c = pipe(["a red circle", "two blue squares"], seed=5, candidates=1)
    pipe.use_cache = True
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, c, strict=True))
    assert len(pipe([""], guidance=1.0, top_k=3, top_p=0.9, temperature=0.7, candidates=1)) == 1


class FakeClip:
    """A stand-in for a loaded scorer: it prefers the reddest candidate."""

    def best_of(self, prompts, images, n):
        red = torch.tensor([np.asarray(im, float)[..., 0].mean() for im in images]).reshape(len(prompts), n)
        return red.argmax(1).tolist()


def test_clip_reranking_returns_the_best_candidate(run):
    pipe = t2i.load(str(run))
    best = pipe(["a red circle"], seed=3, candidates=3, rerank=FakeClip())[0]
    cands = pipe(["a red circle"] * 3, seeds=[3, 4 * 1_000_003 + 1, 4 * 1_000_003 + 2], candidates=1)
    reds = [np.asarray(im, float)[..., 0].mean() for im in cands]
    assert np.array_equal(np.asarray(best), np.asarray(cands[int(np.argmax(reds))]))


def test_draw_keeps_every_candidate_and_pick_reranks_them(run):
    pipe = t2i.load(str(run))
    prompts = ["a red circle", "two blue squares"]
    groups = pipe.draw(prompts, seed=3, candidates=3)
    assert [len(g) for g in groups] == [3, 3]
    first = pipe(prompts, seed=3, candidates=1)
    assert all(np.array_equal(np.asarray(g[0]), np.asarray(f)) for g, f in zip(groups, first, strict=True))
    best = pipe(prompts, seed=3, candidates=3, rerank=FakeClip())
    picked = pipe.pick(prompts, groups, FakeClip())
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(best, picked, strict=True))
    with pytest.raises(UserError, match="reranking needs a CLIP run"):
        pipe.pick(prompts, groups)
    with pytest.raises(UserError, match="same number of candidates"):
        pipe.pick(prompts, [groups[0], groups[1][:2]], FakeClip())


def test_reranking_off_without_clip_says_so(run, caplog):
    pipe = t2i.load(str(run))
    assert pipe.cfg.sample.candidates == 4 and pipe.cfg.sample.clip == ""
    with caplog.at_level("WARNING"):
        assert len(pipe(["a red circle"], seed=0)) == 1
    assert "CLIP reranking is off" in caplog.text
    # what `t2i eval` records: one candidate drawn, no reranker
    assert pipe.picking(pipe.options()).candidates == 1 and pipe.options().rerank == ""


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 4}, "steps applies to parallel decoding"),
    ({"sampler": "ddim"}, "sampler 'ddim' does not apply to dalle runs"),
    ({"top_k": 0}, "top_k must be a positive"),
    ({"candidates": 0}, "candidates must be at least 1"),
    ({"inputs": [Input("img2img", Image.new("RGB", (64, 64)))]}, "task img2img is not supported by dalle runs "
                                                                 "(families that can: ldm, glide, imagen, unclip)"),
    ({"rerank": "/nonexistent-clip"}, "does not exist"),
    ({"top_q": 0.5}, "top_q does not apply to dalle runs (it is for no family)"),
])
def test_pipeline_rejects_options_that_do_not_apply(run, kwargs, message):
    pipe = t2i.load(str(run))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipe(["a red circle"], candidates=kwargs.pop("candidates", 2), **kwargs)


def test_long_prompts_are_truncated_with_a_warning(run, caplog):
    pipe = t2i.load(str(run))
    with caplog.at_level("WARNING"):
        assert len(pipe(["a red circle left of a blue square " * 5], candidates=1)) == 1
    assert "were cut, e.g. 'a red circle left of a blue square a red circle left of a...'" in caplog.text


def test_cli_generate_and_eval(cli, run, tmp_path):
    r = cli("generate", run, "a red circle", "-n", 2, "--top-k", 8, "--temperature", 0.9, "--guidance", 2,
            "--candidates", 1, "--out", tmp_path / "g.png", "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g.png").is_file()
    r = cli("eval", run, "--n", 10, "--top-p", 0.9, "--candidates", 1, "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "eval" / "shapesbench.json").read_text())
    assert res["sampling"]["sampler"] == "autoregressive" and res["sampling"]["top_p"] == 0.9
    assert res["sampling"]["images"] == 10 and 0 <= res["overall"] <= 1


def test_cli_eval_reranks_with_a_clip_run_and_records_it(cli, run, tmp_path):
    clip_run = tmp_path / "clip"
    r = cli("train", "--family", "clip", "--preset", "tiny", "--data", "shapes", "--out", clip_run, "-q")
    assert r.returncode == 0, r.stderr
    r = cli("eval", run, "--n", 5, "--candidates", 2, "--rerank", clip_run, "--name", "rr", "-q")
    assert r.returncode == 0, r.stderr
    sampling = json.loads((run / "eval" / "rr.json").read_text())["sampling"]
    assert sampling["candidates"] == 2 and sampling["rerank"] == str(clip_run) and sampling["images"] == 5
    # every candidate judged: the first alone is the one-image eval, and "any" bounds what reranking picks
    res = json.loads((run / "eval" / "rr.json").read_text())
    cands = res["candidates"]
    assert cands["n"] == 2 and cands["any"]["counts"] == res["counts"]
    one = evaluate(run, limit=5, candidates=1, out_name="one", progress=False)
    assert cands["first"]["kinds"] == one["kinds"]
    for kind, v in res["kinds"].items():
        assert max(v, cands["first"]["kinds"][kind]) <= cands["any"]["kinds"][kind]
    r = cli("eval", run, "--n", 5, "--candidates", 2, "--rerank", run, "--name", "rr2", "-q")
    assert r.returncode == 2 and "--rerank" in r.stderr and "not a CLIP run" in r.stderr
    assert r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--top-k", "0"], "--top-k must be a positive"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--steps", "3"], "--steps applies to parallel decoding"),
])
def test_cli_generate_bad_options(cli, run, tmp_path, args, message):
    r = cli("generate", run, "a red circle", "--out", tmp_path / "x.png", *args)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


def test_tokenizer_reuse_and_its_errors(cli, run, tmp_path):
    out = tmp_path / "reuse"
    r = cli("train", "--family", "dalle", "--preset", "tiny", "--tokenizer", run, "--out", out,
            "--set", "stages.transformer.steps=2", "-q")
    assert r.returncode == 0, r.stderr
    meta = read_meta(out)
    assert meta["tokenizer_from"] == str(run)
    assert meta["stages_done"] == ["tokenizer", "vq", "vq_decoder", "transformer"]  # the copied VQ is final
    assert (out / "vq.safetensors").read_bytes() == (run / "vq.safetensors").read_bytes()
    assert "vq_000004.png" not in {p.name for p in (out / "samples").iterdir()}  # no VQ was trained
    assert "deprecated" in r.stderr  # --tokenizer still works, as the old name of --image-tokenizer
    r = cli("train", "--family", "ldm", "--preset", "tiny", "--image-tokenizer", run, "--out", tmp_path / "x")
    assert r.returncode == 2 and "--image-tokenizer does not apply to ldm runs (it is for dalle, parti, maskgit, nuwa)" \
        in r.stderr
    r = cli("train", "--family", "dalle", "--preset", "tiny", "--image-tokenizer", tmp_path / "nope", "--out",
            tmp_path / "y")
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stderr.count("\n") == 1


def test_decoder_phase_fine_tunes_only_the_decoder_and_resumes(cli, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "dec"
    r = cli("train", "--family", "dalle", "--preset", "tiny", "--out", out, "--set", "stages.vq_decoder.steps=3",
            "--set", "stages.vq_decoder.log_every=1", "-q")
    assert r.returncode == 0, r.stderr
    meta = read_meta(out)
    assert meta["stages_done"] == ["tokenizer", "vq", "vq_decoder", "transformer"]
    assert 0 < meta["vq"]["codes_used"] <= 32  # the VQ report describes the fine-tuned tokenizer
    assert sum(line.startswith("vq_decoder,") for line in (out / "log.csv").read_text().splitlines()) == 3
    # Another run cannot reuse a tokenizer whose decoder phase has not finished.
    meta["stages_done"] = ["tokenizer", "vq"]
    write_meta(out, meta)
    r = cli("train", "--family", "parti", "--preset", "tiny", "--tokenizer", out, "--out", tmp_path / "p")
    assert r.returncode == 2 and "decoder fine-tuning (stage vq_decoder) has not finished" in r.stderr
    # Resumed after the VQ stage: the phase runs again and moves the decoder, never the encoder or codebook.
    (out / "train_state.pt").unlink()  # as if it had died right after the VQ stage
    before = load_file(str(out / "vq.safetensors"))
    r = cli("train", "--resume", "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    assert read_meta(out)["stages_done"][-2:] == ["vq_decoder", "transformer"]
    after = load_file(str(out / "vq.safetensors"))
    frozen = [k for k in before if not k.startswith("decoder.")]
    assert "quantizer.codebook" in frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_train_seed_reproduces_a_run_and_another_seed_changes_it(run, tmp_path):
    # The global generator is seeded per stage, so initial weights (not only data and noise) follow the seed.
    from safetensors.torch import load_file

    same = train("dalle", str(tmp_path / "same"), preset="tiny", progress=False)
    other = train("dalle", str(tmp_path / "other"), preset="tiny", overrides=["seed=1"], progress=False)
    for part in ("vq", "transformer"):
        ref, a, b = (load_file(str(r / f"{part}.safetensors")) for r in (run, same, other))
        assert all(torch.equal(ref[k], a[k]) for k in ref), part
        assert any(not torch.equal(ref[k], b[k]) for k in ref), part
