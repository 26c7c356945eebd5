"""DALL-E 2 / unCLIP: slerp, the prior's causal transformer, the decoder's embedding conditioning, and the
family end to end: text -> prior -> decoder -> SR, variations, interpolation, text diffs, a used CLIP run,
and the one-line errors."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import t2i
from t2i.api import train
from t2i.errors import UserError
from t2i.families.base import Input
from t2i.families.unclip import DecoderStage, EmbeddingText, PriorConfig, PriorNet, slerp
from t2i.nn.transformer import TextEncoder, TextEncoderConfig


# ----------------------------------------------------------------------------------------------- parts
def test_slerp_keeps_unit_vectors_unit_and_splits_the_angle():
    torch.manual_seed(0)
    a, b = torch.nn.functional.normalize(torch.randn(2, 3, 16), dim=-1)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose((mid * a).sum(-1), (mid * b).sum(-1), atol=1e-5)  # halfway in angle
    per_row = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(per_row[0], a[0], atol=1e-5) and torch.allclose(per_row[2], b[2], atol=1e-5)
    noise_a, noise_b = torch.randn(2, 4, 3, 8, 8)  # images of noise: the norm moves linearly, so the scale holds
    assert abs(slerp(noise_a, noise_b, 0.5).std().item() - 1) < 0.1


def test_the_prior_reads_text_and_noised_embedding_but_not_padding():
    torch.manual_seed(0)
    net = PriorNet(PriorConfig(dim=32, depth=2, heads=2), embed_dim=8, text_dim=16, max_len=6).eval()
    x, t = torch.randn(2, 8), torch.full((2,), 0.5)
    states, temb = torch.randn(2, 6, 16), torch.randn(2, 8)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    out = net(x, t, mask=mask, states=states, temb=temb)
    assert out.shape == (2, 8)
    padded = states.clone()
    padded[1, 3:] = 50.0
    assert torch.allclose(out, net(x, t, mask=mask, states=padded, temb=temb), atol=1e-5)
    for changed in ({"x": x + 1}, {"temb": temb + 1}, {"states": states + 1}, {"t": t * 0.5}):
        kw = {"x": x, "t": t, "mask": mask, "states": states, "temb": temb, **changed}
        assert not torch.allclose(out, net(**kw), atol=1e-4), sorted(changed)


def test_the_decoder_embedding_joins_pooled_and_adds_context_tokens():
    torch.manual_seed(0)
    text = EmbeddingText(TextEncoder(TextEncoderConfig(vocab_size=20, max_len=5, dim=16, depth=1, heads=2)),
                         embed_dim=8, dim=16, n=4)
    ids, mask = torch.randint(0, 20, (2, 5)), torch.tensor([[True] * 5, [True, True, False, False, False]])
    emb = torch.randn(2, 8)
    tokens, pooled, full = text(mask=mask, ids=ids, emb=emb)
    assert tokens.shape == (2, 9, 16) and pooled.shape == (2, 16)
    assert full[:, 5:].all() and torch.equal(full[:, :5], mask)  # the 4 embedding tokens are never masked
    tokens2, pooled2, _ = text(mask=mask, ids=ids, emb=emb * 0)
    assert torch.allclose(tokens[:, :5], tokens2[:, :5]) and not torch.allclose(tokens[:, 5:], tokens2[:, 5:])
    assert not torch.allclose(pooled, pooled2)


class _FakeClip:
    def encode_image(self, x):
        return torch.ones(len(x), 4)

    def encode_text(self, captions):
        return torch.full((len(captions), 4), 2.0)


def test_the_decoder_drops_its_embedding_on_its_own_rate():
    from t2i.families.unclip import Config

    cfg = Config()
    stage = DecoderStage.__new__(DecoderStage)  # only extra() is under test: no network needed
    torch.nn.Module.__init__(stage)
    stage.clip, stage.condition, stage.emb_drop = _FakeClip(), "image", 0.3
    x0 = torch.zeros(2000, 3, 2, 2)
    emb = stage.extra({"image": x0}, x0, torch.Generator().manual_seed(0))["emb"]
    dropped = (emb == 0).all(dim=1).float().mean().item()
    assert abs(dropped - 0.3) < 0.04 and set(emb.unique().tolist()) == {0.0, 1.0}
    stage.condition = "text"  # the no-prior ablation: trained on the captions' text embeddings
    emb = stage.extra({"image": x0, "caption": ["a"] * 2000}, x0, torch.Generator().manual_seed(0))["emb"]
    assert set(emb.unique().tolist()) == {0.0, 2.0}
    assert cfg.base.diffusion.cond_drop == 0.5 and cfg.decoder.emb_drop == 0.1  # the paper's rates


# ---------------------------------------------------------------------------------------------- family
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("unclip") / "run"
    train("unclip", path, preset="tiny", progress=False)
    return path


@pytest.fixture(scope="module")
def pipe(run):
    return t2i.load(run)


def _shapes(n: int, seed: int = 0) -> list[Image.Image]:
    from t2i.data.shapes import make_sample

    return [make_sample(i, seed=seed, size=64).image for i in range(n)]


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.tobytes() == b.tobytes()


def _close(a: Image.Image, b: Image.Image, levels: int = 2) -> bool:
    """Equal up to rounding: the same request in batches of different sizes runs GEMMs of different shapes,
    whose float sums may differ in the last bit and move a pixel by one level. A leak between requests (the
    other row's prompt or seed) moves pixels by tens of levels."""
    return a.size == b.size and int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) <= levels


def test_text_to_image_runs_prior_decoder_and_sr(run, pipe):
    meta = json.loads((run / "run.json").read_text())
    assert meta["stages_done"] == ["tokenizer", "clip", "prior", "autoencoder", "base", "sr"]
    assert meta["autoencoder"] is False  # the pixel decoder has none: its stage is recorded as skipped
    assert {"clip", "prior", "base", "sr"} <= set(meta["params"])
    assert set(meta["prior_fit"]) == {"prior_cosine", "text_cosine"}
    with (run / "log.csv").open() as f:  # stages log different columns: each row stays under its own names
        rows = list(csv.DictReader(f))
    assert {r["stage"] for r in rows} == {"clip", "prior", "base", "sr"} and all(None not in r for r in rows)
    assert all(r["acc"] for r in rows if r["stage"] == "clip") and not any(r["acc"] for r in rows if r["stage"] != "clip")
    assert all(float(r["loss"]) >= 0 for r in rows)
    images = pipe(["a red circle", "two blue squares"], seed=0)
    assert [im.size for im in images] == [(64, 64)] * 2
    assert _same(images[1], pipe(["two blue squares"], seeds=[1])[0])  # an image depends on its seed only
    assert pipe(["a red circle"], stop_at="base")[0].size == (32, 32)
    text_emb = pipe(["a red circle"], embedding="text", stop_at="base")[0]  # the decoder given text embeddings
    assert not _same(text_emb, pipe(["a red circle"], stop_at="base")[0])
    assert pipe.phases(pipe.options()) == 3 and pipe.phases(pipe.options(embedding="text", stop_at="base")) == 1


def test_variations_come_from_the_image_not_the_prompt(pipe):
    a, b = _shapes(2)
    va = pipe(["a red circle"], inputs=[Input("variation", a)], seed=3, stop_at="base")[0]
    assert _same(va, pipe(["anything else"], inputs=[Input("variation", a)], seed=3, stop_at="base")[0])
    assert not _same(va, pipe([""], inputs=[Input("variation", b)], seed=3, stop_at="base")[0])
    assert not _same(va, pipe([""], inputs=[Input("variation", a)], seed=4, stop_at="base")[0])


def test_interpolation_ends_are_the_variations_and_slerped_noise_ends_on_the_next_seed(pipe):
    a, b = _shapes(2, seed=5)
    strip = pipe([""] * 3, seeds=[7] * 3, inputs=[Input("variation", a, toward=b, mix=m) for m in (0, 0.5, 1)],
                 stop_at="base")
    assert _same(strip[0], pipe([""], seeds=[7], inputs=[Input("variation", a)], stop_at="base")[0])
    assert _same(strip[2], pipe([""], seeds=[7], inputs=[Input("variation", b)], stop_at="base")[0])
    assert not _same(strip[1], strip[0]) and not _same(strip[1], strip[2])
    slerped = pipe([""] * 2, seeds=[7] * 2, inputs=[Input("variation", a, toward=b, mix=m) for m in (0, 1)],
                   stop_at="base", interp_noise="slerp")
    assert _same(slerped[0], strip[0])  # the first end keeps the seed's own noise
    assert _same(slerped[1], pipe([""], seeds=[8], inputs=[Input("variation", b)], stop_at="base")[0])


def test_text_diffs_move_the_variation(pipe):
    a = _shapes(1, seed=9)[0]
    plain = pipe([""], inputs=[Input("variation", a)], stop_at="base")[0]
    edit = ("a red circle", "a blue circle")
    assert _same(plain, pipe([""], inputs=[Input("variation", a)], stop_at="base", text_diff=edit, diff_amount=0.0)[0])
    assert not _same(plain, pipe([""], inputs=[Input("variation", a)], stop_at="base", text_diff=edit)[0])
    with pytest.raises(UserError, match="--text-diff edits an image"):
        pipe(["a red circle"], text_diff=edit)
    with pytest.raises(UserError, match="two captions"):
        pipe.options(text_diff=("only one",))
    with pytest.raises(UserError, match=r"diff_amount.*\[0, 1\]"):
        pipe.options(diff_amount=1.5)
    with pytest.raises(UserError, match="prior_steps"):
        pipe.options(prior_steps=0)
    with pytest.raises(UserError, match="mix"):
        Input("variation", a, toward=a, mix=math.nan)
    with pytest.raises(UserError, match="task variation, not img2img"):
        Input("img2img", a, toward=a)


def test_cli_variations_interpolation_text_diff_and_their_errors(run, tmp_path, cli):
    src = tmp_path / "x.png"
    _shapes(1)[0].save(src)
    grid = tmp_path / "grid.png"
    proc = cli("generate", run, "--init-image", src, "--task", "variation", "-n", 2, "--out", grid, "-q")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(grid).size[0] > 64
    proc = cli("generate", run, "--init-image", src, "--text-diff", "a red circle", "a blue circle",
               "--out", tmp_path / "diff.png", "-q")
    assert proc.returncode == 0, proc.stderr
    strip = tmp_path / "strip.png"
    proc = cli("interpolate", run, src, grid, "--steps", 3, "--noise", "slerp", "--out", strip, "-q")
    assert proc.returncode == 0, proc.stderr
    w, h = Image.open(strip).size
    assert h < 2 * w / 3  # one row of 3
    for args, message in (
            (("interpolate", run, src, grid, "--steps", 1, "--out", tmp_path / "s.png"), "at least 2 images"),
            (("interpolate", run, src, tmp_path / "none.png", "--out", tmp_path / "s.png"), "cannot read"),
            (("generate", run, "--task", "variation", "--out", tmp_path / "v.png"), "works on --init-image"),
            (("generate", run, "a red circle", "--text-diff", "a", "--out", tmp_path / "v.png"), "expected 2 argument"),
    ):
        proc = cli(*args)
        last = proc.stderr.strip().splitlines()[-1]  # argparse prints its usage first; ours is the one line
        assert proc.returncode == 2 and message in last, (args, proc.stderr)
        assert "expected 2 argument" in message or len(proc.stderr.strip().splitlines()) == 1


def test_variations_through_inputs_keep_their_prompts_and_score(run, tmp_path, cli):
    from t2i.data.shapes import make_sample

    requests = tmp_path / "requests"
    requests.mkdir()
    rows = []
    for i in range(3):
        s = make_sample(i, seed=1, size=64)
        s.image.save(requests / f"{i}.png")
        rows.append({"prompt": s.meta["canonical"], "seed": i, "task": "variation", "image": f"{i}.png"})
    (requests / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    proc = cli("generate", run, "--inputs", requests, "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in index] == [r["prompt"] for r in rows] and {r["task"] for r in index} == {"variation"}
    assert cli("bench", "score", out).returncode == 0


def test_a_family_without_variations_says_which_can(tmp_path, cli):
    other = tmp_path / "ddpm"
    train("ddpm", other, preset="tiny", progress=False)
    src = tmp_path / "x.png"
    _shapes(1)[0].save(src)
    for args in (("generate", other, "--init-image", src, "--task", "variation", "--out", tmp_path / "v.png"),
                 ("interpolate", other, src, src, "--out", tmp_path / "s.png")):
        proc = cli(*args)
        assert proc.returncode == 2 and "unclip" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_used_clip_run_is_checked_when_given_and_when_loaded(tmp_path, cli):
    clip = tmp_path / "clip"
    train("clip", clip, preset="tiny", progress=False, overrides=["stages.clip.resolution=32"])
    run = tmp_path / "unclip"
    proc = cli("train", "--family", "unclip", "--preset", "tiny", "--clip", clip, "--out", run, "-q")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "run.json").read_text())["clip"]["run"] == str(clip)
    assert not (run / "clip.safetensors").exists()  # the used CLIP stays where it is
    assert t2i.load(run)(["a red circle"], stop_at="base")[0].size == (32, 32)
    proc = cli("train", "--family", "unclip", "--preset", "tiny", "--clip", run, "--out", tmp_path / "u2", "-q")
    assert proc.returncode == 2 and "not a lab CLIP run" in proc.stderr
    proc = cli("train", "--family", "unclip", "--preset", "tiny", "--clip", tmp_path / "none", "--out", tmp_path / "u3")
    assert proc.returncode == 2 and str(tmp_path / "none") in proc.stderr
    shutil.rmtree(clip)  # the CLIP run replaced by one of another width
    train("clip", clip, preset="tiny", progress=False, overrides=["stages.clip.resolution=32", "embed_dim=24"])
    with pytest.raises(UserError, match=rf"the CLIP run {clip} embeds in 24 dimensions"):
        t2i.load(run)
    shutil.rmtree(clip)
    with pytest.raises(UserError, match=rf"the CLIP run {clip} is not there"):
        t2i.load(run)


@pytest.mark.parametrize("condition", ["image", "text"])
def test_the_latent_decoder_trains_on_cached_latents_and_embeddings_and_needs_no_sr(tmp_path, condition):
    run = tmp_path / "latent"
    train("unclip", run, preset="tiny", progress=False, overrides=[
        f"decoder.condition={condition}", "decoder.space=latent", "autoencoder.channels=16", "autoencoder.patch=8", "autoencoder.channel_mult=[1]",
        "autoencoder.num_res_blocks=1", "autoencoder.latent_channels=4", "base.dit.patch=2",
        "stages.base.resolution=64", "stages.autoencoder.steps=2", "stages.autoencoder.batch_size=8",
        "data.cache=32"])
    meta = json.loads((run / "run.json").read_text())
    assert meta["stages_done"] == ["tokenizer", "clip", "prior", "autoencoder", "base", "sr"]
    assert meta["sr"] is False and meta["latent_scale"] > 0 and not (run / "sr.safetensors").exists()
    pipe = t2i.load(run)
    assert pipe.base_shape() == (4, 8, 8) and pipe.options().stop_at == "base"
    # the no-prior ablation's decoder reads the caption's text embedding: no prior loop by default
    assert pipe.options().embedding == {"image": "prior", "text": "text"}[condition]
    assert pipe.phases(pipe.options()) == {"image": 2, "text": 1}[condition]
    a = _shapes(1)[0]
    images = pipe(["a red circle", ""], inputs=[None, Input("variation", a)], seed=0)
    assert [im.size for im in images] == [(64, 64)] * 2
    assert _close(images[1], pipe(["other"], seeds=[1], inputs=[Input("variation", a)])[0])
    with pytest.raises(UserError, match="no SR stage"):
        pipe(["a red circle"], stop_at="sr")
