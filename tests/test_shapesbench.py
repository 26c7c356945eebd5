"""ShapesBench must be exact: ground truth passes, anything else fails, for the reason it states."""

import json
import random

import numpy as np
import pytest
from PIL import Image

from t2i.data.shapes import KINDS, Obj, parse_prompt, render, render_prompt
from t2i.errors import UserError
from t2i.eval import shapesbench as sb


@pytest.fixture(scope="module")
def prompts():
    return sb.benchmark_prompts()


@pytest.fixture(scope="module")
def groundtruth(prompts):
    return [render_prompt(p, seed=i)[0] for i, p in enumerate(prompts)]


def test_prompt_set_is_fixed_and_complete(prompts):
    assert prompts == sb.benchmark_prompts()
    specs = [parse_prompt(p) for p in prompts]
    for kind in KINDS:
        assert sum(s.kind == kind and not s.novel for s in specs) >= 100
        assert sum(s.kind == kind and s.novel for s in specs) >= 10
    assert all(p == s.canonical() for p, s in zip(prompts, specs, strict=True))


def test_groundtruth_scores_perfectly_and_shuffled_captions_fail(prompts, groundtruth):
    result = sb.summarize((p, sb.score_image(im, p)[0]) for p, im in zip(prompts, groundtruth, strict=True))
    assert all(v >= 0.995 for v in result["kinds"].values()), result
    assert result["novel"] >= 0.995
    shuffled = prompts[:]
    random.Random(0).shuffle(shuffled)
    bad = sb.summarize((p, sb.score_image(im, p)[0]) for p, im in zip(shuffled, groundtruth, strict=True))
    assert bad["overall"] <= 0.02, bad


def test_detection_reads_attributes():
    img = render([Obj("orange", "triangle", "large", 0.3, 0.3), Obj("gray", "square", "small", 0.75, 0.7)])
    dets = sb.detect(img)
    assert [(d.color, d.shape, d.size) for d in dets] == [("orange", "triangle", "large"), ("gray", "square", "small")]


@pytest.mark.parametrize(("objs", "prompt", "reason"), [
    ([Obj("red", "circle", "medium", 0.5, 0.5)], "a blue circle", "expected blue circle"),
    ([Obj("red", "circle", "medium", 0.5, 0.5)], "a red square", "expected red square"),
    ([Obj("red", "circle", "medium", 0.3, 0.5), Obj("blue", "square", "medium", 0.7, 0.5)], "a red circle", "expected 1"),
    ([Obj("red", "circle", "medium", 0.5, 0.5)], "a large red circle", "large"),
    ([Obj("red", "circle", "medium", 0.3, 0.5), Obj("blue", "square", "medium", 0.7, 0.5)],
     "a red circle right of a blue square", "not right of (found left of)"),
    ([Obj("red", "circle", "medium", 0.5, 0.2), Obj("blue", "square", "medium", 0.5, 0.8)],
     "a red circle right of a blue square", "not right of (found above)"),
    ([Obj("red", "circle", "small", 0.2, 0.5), Obj("red", "circle", "small", 0.6, 0.5)], "three red circles", "expected 3"),
])
def test_wrong_images_fail_with_a_reason(objs, prompt, reason):
    ok, why = sb.score_image(render(objs), prompt)
    assert not ok and reason in why


def test_right_relation_passes_either_object_order():
    objs = [Obj("blue", "square", "medium", 0.7, 0.5), Obj("red", "circle", "medium", 0.3, 0.5)]
    assert sb.score_image(render(objs), "a red circle left of a blue square") == (True, "")
    assert sb.score_image(render(objs), "a blue square right of a red circle") == (True, "")


def test_other_sizes_are_resized(prompts):
    for i, p in enumerate(prompts[::50]):
        assert sb.score_image(render_prompt(p, seed=i, size=160)[0], p)[0], p


def test_score_dir_round_trip(tmp_path, prompts, groundtruth):
    n = sb.write_images(tmp_path, ((groundtruth[i], prompts[i], i) for i in range(0, 600, 20)))
    assert n == 30
    result = sb.score_dir(tmp_path, progress=False)
    saved = json.loads((tmp_path / "shapesbench.json").read_text())
    assert saved["overall"] == result["overall"] == 1.0 and len(saved["images"]) == 30
    assert saved["version"] == sb.VERSION


def test_score_dir_bad_input(tmp_path):
    with pytest.raises(UserError, match=r"index\.jsonl"):
        sb.score_dir(tmp_path)
    Image.new("RGB", (64, 64), (245, 245, 245)).save(tmp_path / "a.png")
    (tmp_path / "index.jsonl").write_text(json.dumps({"file": "a.png", "prompt": "a red dog", "seed": 0}) + "\n")
    with pytest.raises(UserError, match="not a canonical"):
        sb.score_dir(tmp_path)
    (tmp_path / "b.png").write_bytes(b"not a png")
    (tmp_path / "index.jsonl").write_text(json.dumps({"file": "b.png", "prompt": "a red circle", "seed": 0}) + "\n")
    with pytest.raises(UserError, match="cannot decode"):
        sb.score_dir(tmp_path)
    assert not (tmp_path / "shapesbench.json").exists()  # nothing half-written


def test_blank_and_noise_images_fail():
    assert not sb.score_image(np.full((64, 64, 3), 245, np.uint8), "a red circle")[0]
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert not sb.score_image(noise, "a red circle")[0]


def test_cli_bad_input_is_one_line(cli, tmp_path):
    r = cli("bench", "score", tmp_path / "nope")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "not a directory" in r.stderr
