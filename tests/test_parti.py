"""Parti (encoder-decoder, autoregressive) and MaskGIT (masked tokens, parallel decoding) end to end at toy size."""

import json

import numpy as np
import pytest
import torch

import t2i
from t2i.api import train
from t2i.errors import UserError
from t2i.train.rundir import read_meta, write_meta


@pytest.fixture(scope="module")
def parti(tmp_path_factory):
    out = tmp_path_factory.mktemp("parti") / "run"
    train("parti", str(out), preset="tiny", progress=False)
    return out


@pytest.fixture(scope="module")
def maskgit(tmp_path_factory, parti):
    out = tmp_path_factory.mktemp("maskgit") / "run"
    train("maskgit", str(out), preset="tiny", overrides=[f"tokenizer_run={parti}"], progress=False)
    return out


def test_parti_generates_with_and_without_cache(parti):
    pipe = t2i.load(str(parti))
    assert pipe.sampler == "autoregressive"
    a = pipe(["a red circle", "three green squares"], seed=2, guidance=2.0, top_k=10)
    pipe.use_cache = False
    b = pipe(["a red circle", "three green squares"], seed=2, guidance=2.0, top_k=10)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    c = pipe(["three green squares"], seeds=[3], guidance=2.0, top_k=10)
    assert np.array_equal(np.asarray(a[1]), np.asarray(c[0]))  # batch-independent


def test_parti_encoder_ignores_padding(parti):
    pipe = t2i.load(str(parti))
    ids, mask = (t.to(pipe.device) for t in pipe.tokenizer.encode(["a red circle"], 24))
    short = pipe.net.prepare(ids[:, :8], mask[:, :8])["context"]
    long = pipe.net.prepare(ids, mask)["context"]
    torch.testing.assert_close(long[:, :int(mask.sum())], short[:, :int(mask.sum())], atol=1e-5, rtol=1e-5)


def test_maskgit_shares_the_tokenizer_and_decodes_in_parallel(maskgit, parti):
    assert (maskgit / "vq.safetensors").read_bytes() == (parti / "vq.safetensors").read_bytes()
    pipe = t2i.load(str(maskgit))
    assert pipe.sampler == "parallel" and pipe.options().steps == 8
    calls = []
    inner = pipe.net.masked_state
    pipe.net.masked_state = lambda cond, tokens: calls.append(1) or inner(cond, tokens)
    out = pipe(["a red circle", "two blue squares"], seed=1, steps=4, guidance=1.0)
    assert len(out) == 2 and len(calls) == 4  # 64 tokens in 4 model calls
    again = pipe(["two blue squares"], seeds=[2], steps=4, guidance=1.0)
    assert np.array_equal(np.asarray(out[1]), np.asarray(again[0]))


@pytest.mark.parametrize("patch", [1, 2])
def test_maskgit_loss_only_scores_masked_tokens(patch):
    from t2i.families.maskgit import MaskGitTransformer, NetConfig

    torch.manual_seed(0)
    net = MaskGitTransformer(NetConfig(dim=16, depth=1, heads=2, text_depth=1, patch=patch), 40, 6, 8, 16)
    ids, mask = torch.randint(3, 40, (4, 6)), torch.ones(4, 6, dtype=torch.bool)
    codes = torch.randint(0, 8, (4, 16))
    loss = net.loss(ids, mask, codes, torch.Generator().manual_seed(0))["loss"]
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert net.image_emb.weight.grad[net.image_emb.special(0)].abs().sum() > 0  # [MASK] was used as an input


def test_cli_maskgit_options(cli, maskgit, tmp_path):
    r = cli("generate", maskgit, "a red circle", "--steps", 3, "--sampler", "parallel", "--out", tmp_path / "a.png", "-q")
    assert r.returncode == 0, r.stderr
    r = cli("generate", maskgit, "a red circle", "--steps", 0, "--out", tmp_path / "b.png")
    assert r.returncode == 2 and "--steps must be at least 1" in r.stderr
    r = cli("generate", maskgit, "a red circle", "--sampler", "autoregressive", "--out", tmp_path / "c.png")
    assert r.returncode == 2 and "does not apply to maskgit runs" in r.stderr and r.stderr.count("\n") == 1


def test_cli_eval_parti(cli, parti):
    r = cli("eval", parti, "--n", 10, "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((parti / "eval" / "shapesbench.json").read_text())
    assert res["sampling"]["images"] == 10 and res["sampling"]["sampler"] == "autoregressive"


def test_bad_and_partial_runs(parti, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text((parti / "config.yaml").read_text())
    write_meta(partial, {"family": "parti", "stages_done": ["tokenizer", "vq"]})
    with pytest.raises(UserError, match="incomplete"):
        t2i.load(str(partial))
    write_meta(partial, {"family": "parti", "stages_done": ["tokenizer"]})
    with pytest.raises(UserError, match="vq stage is done"):
        train("maskgit", str(tmp_path / "m"), preset="tiny", overrides=[f"tokenizer_run={partial}"], progress=False)


def test_interrupted_token_run_resumes(cli, tmp_path, parti):
    out = tmp_path / "r"
    train("parti", str(out), preset="tiny", overrides=["stages.transformer.steps=0", f"tokenizer_run={parti}"], progress=False)
    meta = read_meta(out)
    meta["stages_done"] = ["tokenizer", "vq"]
    write_meta(out, meta)
    r = cli("train", "--resume", "--out", out, "--set", "stages.transformer.steps=2", "-q")
    assert r.returncode == 0, r.stderr
    assert read_meta(out)["stages_done"][-1] == "transformer"
