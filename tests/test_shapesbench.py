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


# ---------------------------------------------------------------------------------------- v2: soft shapes
def scenes(kind: str, n: int, tag: str) -> list:
    from t2i.data.shapes import random_spec, scene_for

    rng = random.Random(f"{tag}:{kind}")
    out = []
    for _ in range(n):
        spec = random_spec(rng, "all", kind)
        out.append((spec.canonical(), render(scene_for(spec, rng))))
    return out


@pytest.fixture(scope="module")
def kind_scenes():
    return {kind: scenes(kind, 60, "soft") for kind in KINDS}


@pytest.mark.parametrize(("sigma", "bar"), [(0.8, 0.99), (1.2, 0.99), (1.5, 0.97)])
def test_blurred_noisy_truth_passes_every_kind(kind_scenes, sigma, bar):
    rng = np.random.default_rng(int(sigma * 10))
    for kind, items in kind_scenes.items():
        acc = np.mean([sb.score_image(sb.soften(im, sigma, rng), p)[0] for p, im in items])
        assert acc >= bar, (kind, sigma, acc)


def test_v1_is_kept_and_is_what_misjudged_soft_counting(kind_scenes):
    """v1 stays selectable (old figures reproduce) and is exact on exact renders; soft counting is its bug."""
    rng = np.random.default_rng(15)
    items = kind_scenes["counting"]
    assert all(sb.score_image(im, p, "v1")[0] for p, im in items)
    soft = [sb.soften(im, 1.5, rng) for _, im in items]
    v1 = np.mean([sb.score_image(im, p, "v1")[0] for (p, _), im in zip(items, soft, strict=True)])
    v2 = np.mean([sb.score_image(im, p, "v2")[0] for (p, _), im in zip(items, soft, strict=True)])
    assert v1 < 0.9 <= v2, (v1, v2)


def test_same_kind_wrong_captions_fail_on_soft_images(kind_scenes):
    from t2i.data.shapes import minimal_edit

    rng, edits = np.random.default_rng(1), random.Random(1)
    passed = [sb.score_image(sb.soften(im, 1.2, rng), minimal_edit(parse_prompt(p), edits).canonical())[0]
              for items in kind_scenes.values() for p, im in items]
    assert np.mean(passed) <= 0.01


def rounded_square(color: str, cx: float, cy: float, r: float, rho: float, size: int = 64) -> Image.Image:
    """A square of half-side r with corners rounded by radius rho (fractions of the side), anti-aliased 8x."""
    ss = 8 * size
    xs = (np.arange(ss) + 0.5) / ss
    X, Y = np.abs(xs[None, :] - cx), np.abs(xs[:, None] - cy)
    c = r - rho
    inside = (X <= r) & (Y <= r) & ((X <= c) | (Y <= c) | ((X - c) ** 2 + (Y - c) ** 2 <= rho**2))
    a = inside.reshape(size, 8, size, 8).mean(axis=(1, 3))[..., None]
    from t2i.data.shapes import BACKGROUND, PALETTE

    img = (1 - a) * np.asarray(BACKGROUND, np.float32) + a * np.asarray(PALETTE[color], np.float32)
    return Image.fromarray(np.rint(img).astype(np.uint8))


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_rounded_corner_squares_are_squares(size):
    from t2i.data.shapes import SIZES

    rng = np.random.default_rng(0)
    r = SIZES[size]
    for rounding in (0.0, 0.1, 0.2, 0.25):
        for sigma in (0.0, 0.8, 1.2, 1.5):
            cx, cy = rng.uniform(0.3, 0.7, 2)
            img = sb.soften(rounded_square("orange", cx, cy, r, rounding * r), sigma, rng, noise=8.0 if sigma else 0.0)
            [d] = sb.detect(img)
            assert (d.shape, d.size) == ("square", size), (size, rounding, sigma, d)


def test_circles_are_never_squares_and_blurred_triangles_stay_triangles():
    from t2i.data.shapes import SIZES

    rng = np.random.default_rng(2)
    for size in SIZES:
        for sigma in (0.0, 0.5, 1.0, 1.5):
            for _ in range(4):
                cx, cy = rng.uniform(0.3, 0.7, 2)
                for shape in ("circle", "triangle"):
                    img = sb.soften(render([Obj("blue", shape, size, cx, cy)]), sigma, rng, noise=8.0 if sigma else 0.0)
                    assert [(d.shape, d.size) for d in sb.detect(img)] == [(shape, size)], (shape, size, sigma)


def test_touching_same_colour_objects_blurred_together_are_counted_apart():
    """Two small squares 1.3 px apart merge at half coverage once blurred; v2 separates them again."""
    objs = [Obj("red", "square", "small", 0.3, 0.5), Obj("red", "square", "small", 0.52, 0.5)]
    img = sb.soften(render(objs), 1.5, np.random.default_rng(3))
    assert [d.shape for d in sb.detect(img, "v1")] == ["circle"]  # one merged blob under v1
    assert sb.score_image(img, "two red squares") == (True, "")


@pytest.mark.parametrize("size", ["medium", "large"])
def test_a_blob_between_square_and_circle_is_no_shape_under_v21(size):
    """Corners rounded by 60% of the half-side: halfway to a circle, where the two templates fit about equally
    (misfit ratio ~1.1). v2 named it a square; v2.1 names neither, so neither caption passes by luck. At 50%
    it is still a square and at 70% a circle under both."""
    from t2i.data.shapes import SIZES

    r = SIZES[size]
    between = rounded_square("orange", 0.5, 0.5, r, 0.6 * r)
    assert [d.shape for d in sb.detect(between, "v2")] == ["square"]
    assert [d.shape for d in sb.detect(between)] == ["unknown"]
    named = "" if size == "medium" else f"{size} "
    for caption in (f"a {named}orange square", f"a {named}orange circle"):
        assert not sb.score_image(between, caption)[0]
    assert [d.shape for d in sb.detect(rounded_square("orange", 0.5, 0.5, r, 0.5 * r))] == ["square"]
    assert [d.shape for d in sb.detect(rounded_square("orange", 0.5, 0.5, r, 0.7 * r))] == ["circle"]


def test_a_blob_that_fits_no_template_is_no_shape():
    img = np.full((64, 64, 3), 245, np.uint8)
    img[20:30, 10:50] = (220, 40, 40)  # a 4:1 bar
    [d] = sb.detect(img)
    assert d.shape == "unknown"
    ok, why = sb.score_image(img, "a red square")
    assert not ok and "unknown" in why


@pytest.mark.parametrize("size", [32, 48, 96, 128, 256, 512])
def test_groundtruth_is_exact_at_every_resolution(prompts, size):
    for i, p in enumerate(prompts[::12]):
        assert sb.score_image(render_prompt(p, seed=i, size=size)[0], p) == (True, ""), (size, p)


def test_scorer_is_versioned_and_older_ones_write_beside_it(tmp_path, prompts, groundtruth):
    sb.write_images(tmp_path, ((groundtruth[i], prompts[i], i) for i in range(0, 600, 60)))
    assert sb.score_dir(tmp_path, progress=False)["version"] == "shapesbench-v2.1" == sb.VERSION
    for old in ("v1", "v2"):
        assert sb.score_dir(tmp_path, progress=False, scorer=old)["version"] == f"shapesbench-{old}"
        assert json.loads((tmp_path / f"shapesbench-{old}.json").read_text())["version"] == f"shapesbench-{old}"
    assert json.loads((tmp_path / "shapesbench.json").read_text())["version"] == "shapesbench-v2.1"
    with pytest.raises(UserError, match="unknown ShapesBench scorer 'v3'"):
        sb.score_dir(tmp_path, scorer="v3")


def test_cli_scorer_flag(cli, tmp_path, prompts, groundtruth):
    sb.write_images(tmp_path, ((groundtruth[i], prompts[i], i) for i in range(0, 600, 60)))
    r = cli("bench", "score", tmp_path, "--scorer", "v1", "-q")
    assert r.returncode == 0 and "shapesbench-v1" in r.stdout
    r = cli("bench", "score", tmp_path, "--scorer", "v9")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown ShapesBench scorer" in r.stderr


def test_a_textured_object_that_falls_apart_at_high_coverage_stays_one_object():
    """A generator's gray square with a faint seam: its 0.6-level set is two pieces, but the whole fits a
    square far better than either piece fits anything, so it is one object (and two touching squares,
    above, are still two)."""
    img = np.asarray(render([Obj("gray", "square", "medium", 0.5, 0.5)]), dtype=np.float32).copy()
    seam = slice(31, 33)
    img[seam, 22:42] = 0.45 * np.float32(128) + 0.55 * np.float32(245)  # coverage 0.55 across the middle
    img = sb.soften(img.astype(np.uint8), 0.6, np.random.default_rng(4), noise=4.0)
    assert [(d.color, d.shape) for d in sb.detect(img)] == [("gray", "square")]
