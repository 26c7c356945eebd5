"""The lab CLIP at toy size: train (CLI and API), the stable encode API, retrieval, CLIP-score conventions."""

import csv

import pytest
import torch

import t2i
from t2i.api import load_generator, train
from t2i.errors import UserError
from t2i.eval.clipscore import clip_s_hessel, clip_score_100, clip_scores
from t2i.families.clip import edit_name, minimal_pairs, retrieval_pool, zero_shot_retrieval
from t2i.images import images_to_tensor
from t2i.train.data import DataConfig, batches
from t2i.train.rundir import read_meta


@pytest.fixture(scope="module")
def run(cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "run"
    r = cli("train", "--family", "clip", "--preset", "tiny", "--data", "shapes", "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    return out


def test_run_directory_and_meta(run):
    meta = read_meta(run)
    assert meta["family"] == "clip" and meta["stages_done"] == ["tokenizer", "clip"]
    assert meta["params"]["clip"] > 0 and set(meta["train_seconds"]) == {"tokenizer", "clip"}
    assert {"config.yaml", "tokenizer.json", "clip.safetensors", "log.csv"} <= {p.name for p in run.iterdir()}


def test_encode_api_gives_unit_vectors_and_agrees_across_input_types(run):
    clip = t2i.load(run)
    samples = retrieval_pool(6)
    images = [s.image for s in samples]
    img = clip.encode_image(images).cpu()  # embeddings live on the model's device
    txt = clip.encode_text([s.caption for s in samples]).cpu()
    assert img.shape == txt.shape == (6, clip.embed_dim) and img.dtype == torch.float32
    assert torch.allclose(img.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert torch.allclose(clip.encode_image(images_to_tensor(images)).cpu(), img, atol=1e-6)  # PIL == tensor input
    big = [im.resize((128, 128)) for im in images]
    assert clip.encode_image(big).shape == (6, clip.embed_dim)  # any size is resized to the model's
    sims = clip.similarity(images, [s.caption for s in samples]).cpu()
    assert torch.allclose(sims, img @ txt.T, atol=1e-6)
    assert torch.allclose(clip.cosine(images, [s.caption for s in samples]).cpu(), sims.diagonal(), atol=1e-6)
    # A batch does not change an embedding.
    assert torch.allclose(clip.encode_text([samples[2].caption]).cpu(), txt[2:3], atol=1e-5)


def test_clip_run_refuses_to_generate_and_bad_inputs(cli, run):
    clip = t2i.load(run)
    with pytest.raises(UserError, match="cannot generate images"):
        load_generator(run)
    with pytest.raises(UserError, match="list of prompts"):
        clip.encode_text("a red circle")
    with pytest.raises(UserError, match=r"\(B, 3, H, W\)"):
        clip.encode_image(torch.zeros(3, 64, 64))
    with pytest.raises(UserError, match="2 images and 3 prompts"):
        clip.cosine(torch.zeros(2, 3, 64, 64), ["a", "b", "c"])
    r = cli("generate", run, "a red circle", "--out", "x.png")
    assert r.returncode == 2 and "cannot generate images" in r.stderr


def test_contrastive_training_lowers_the_loss(tmp_path):
    out = tmp_path / "learn"
    train("clip", out, preset="tiny", overrides=["stages.clip.steps=40", "stages.clip.batch_size=16", "stages.clip.lr=3e-3"],
          progress=False)
    rows = list(csv.DictReader((out / "log.csv").open()))
    first, last = float(rows[0]["loss"]), sum(float(r["loss"]) for r in rows[-5:]) / 5
    assert last < first - 0.5


def test_zero_shot_retrieval_reports_top1_top5_and_kinds(run):
    res = zero_shot_retrieval(t2i.load(run), candidates=10, groups=2)
    assert res["queries"] == 20 and 0 <= res["top1"] <= res["top5"] <= 1
    assert set(res["kinds"]) <= {"single_object", "size", "two_object", "position", "counting"}
    pool = retrieval_pool(30)
    assert len({s.meta["canonical"] for s in pool}) == 30  # one right image per caption


def test_clip_score_conventions_are_distinct():
    cos = [0.5, -0.2, 0.3]
    assert clip_score_100(cos) == pytest.approx(20.0)  # 100 x mean(cos), clamped after the mean
    assert clip_s_hessel(cos) == pytest.approx(2.5 * (0.5 + 0.0 + 0.3) / 3)  # clamped per pair
    assert clip_score_100([-0.3, 0.1]) == 0.0
    with pytest.raises(UserError, match="no image-prompt pairs"):
        clip_score_100([])


def test_clip_scores_follow_their_formulas_on_real_cosines(run):
    clip = t2i.load(run)
    samples = retrieval_pool(8)
    images, captions = [s.image for s in samples], [s.caption for s in samples]
    res = clip_scores(clip, images, captions)
    cos = clip.cosine(images, captions)
    assert res["clip_score_100"] == pytest.approx(max(100 * float(cos.mean()), 0.0), rel=1e-6)
    assert res["clip_s_hessel"] == pytest.approx(float((2.5 * cos.clamp(min=0)).mean()), rel=1e-6)
    assert len(res["cosines"]) == 8


def test_minimal_pairs_name_the_edit_and_score_both_directions(run):
    assert edit_name("a red circle left of a blue square", "a red circle right of a blue square") == "relation"
    assert edit_name("a red circle and a blue square", "a blue circle and a red square") == "colour swap"
    assert edit_name("two red circles", "four red circles") == "count"
    assert edit_name("a small red circle", "a large red circle") == "size"
    assert edit_name("a red circle", "a red square") == "shape"
    assert edit_name("a red circle and a blue square", "a red circle and a green square") == "colour"
    res = minimal_pairs(t2i.load(run), n=60)
    assert res["pairs"] == 60 and 0 <= res["text"] <= 1 and 0 <= res["image"] <= 1
    assert set(res["edits"]) <= {"relation", "count", "size", "colour swap", "colour", "shape"}
    assert len(res["edits"]) >= 4 and all(0 <= v <= 1 for v in res["edits"].values())


def test_counterfactual_batches_pair_each_sample_and_resume_exactly():
    cfg = DataConfig(resolution=32)
    first, second = (b for b, _ in zip(batches(cfg, 4, counterfactuals=True), range(2), strict=False))
    assert first["image"].shape == (8, 3, 32, 32) and len(first["caption"]) == 8
    plain = next(batches(cfg, 4))
    assert first["caption"][:4] == plain["caption"] and torch.equal(first["image"][:4], plain["image"])
    resumed = next(batches(cfg, 4, start=4, counterfactuals=True))  # the pairs come back the same
    assert resumed["caption"] == second["caption"] and torch.equal(resumed["image"], second["image"])


def test_counterfactuals_on_data_without_ground_truth_warn_and_train_plain(tmp_path, caplog):
    from PIL import Image

    from t2i.data.sample import Sample
    from t2i.data.sources import write_shards

    samples = [Sample(Image.new("RGB", (32, 32), (i * 20, 0, 0)), f"a photo {i}", {"i": i}) for i in range(8)]
    write_shards(samples, tmp_path / "web", shard_size=8, progress=False)
    with caplog.at_level("WARNING", logger="t2i.data"):
        batch = next(batches(DataConfig(source=str(tmp_path / "web"), resolution=32), 4, counterfactuals=True))
    assert len(batch["caption"]) == 4 and "no shapes ground truth" in caplog.text


def test_counterfactual_clip_with_flattened_text_trains_end_to_end(tmp_path):
    out = tmp_path / "cf"
    train("clip", out, preset="tiny", overrides=["stages.clip.steps=3", "stages.clip.batch_size=8", "counterfactuals=true",
                                                 "text_pool=flatten", "text.max_len=16", "stages.clip.eval_every=3"], progress=False)
    clip = t2i.load(out)
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert rows and float(rows[-1]["loss"]) > 0
    evals = list(csv.DictReader((out / "eval.csv").open()))
    assert [r["step"] for r in evals] == ["3"] and 0 <= float(evals[0]["minimal_pairs"]) <= 1
    txt = clip.encode_text(["a red circle left of a blue square", "a blue square left of a red circle"])
    assert txt.shape == (2, clip.embed_dim) and not torch.allclose(txt[0], txt[1])
    # each prompt's embedding does not depend on the padding its batch needs
    assert torch.allclose(clip.encode_text(["a red circle"]), clip.encode_text(["a red circle", "two blue "
                                                                                "squares above a circle"])[:1], atol=1e-5)
    with pytest.raises(UserError, match="'mean' or 'flatten'"):
        train("clip", tmp_path / "bad", preset="tiny", overrides=["text_pool=max"], progress=False)
