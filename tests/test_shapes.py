"""The shapes dataset is an interface: these tests pin its numbers and check every scene's promises."""

import random

import numpy as np
import pytest

from t2i.data import shapes
from t2i.data.sample import Sample
from t2i.data.shapes import (
    BACKGROUND,
    HOLDOUT,
    PALETTE,
    SIZES,
    Obj,
    boxes_apart,
    counterfactual,
    iter_samples,
    make_sample,
    obj_box,
    parse_prompt,
    relations,
    render,
    render_prompt,
)
from t2i.errors import UserError


def test_interface_numbers():
    assert BACKGROUND == (245, 245, 245)
    assert PALETTE == {
        "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (235, 210, 40), "green": (40, 170, 60),
        "cyan": (40, 200, 210), "blue": (40, 80, 220), "purple": (150, 60, 190), "gray": (128, 128, 128),
    }
    assert SIZES == {"small": 0.10, "medium": 0.15, "large": 0.22}
    assert {("purple", "triangle"), ("yellow", "square"), ("cyan", "circle")} == HOLDOUT


def test_samples_are_deterministic_and_seed_dependent():
    a, b = make_sample(7, seed=3), make_sample(7, seed=3)
    assert a.caption == b.caption and a.meta == b.meta
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    other = [make_sample(7, seed=s).meta for s in range(4, 10)]
    assert any(m != a.meta for m in other)


def _check_scene(meta: dict) -> None:
    objs = [Obj(**o) for o in meta["objects"]]
    for o in objs:
        assert o.r <= o.cx <= 1 - o.r and o.r <= o.cy <= 1 - o.r  # fully inside the canvas
    for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
            assert boxes_apart(a, b, 0.02)
    kind = meta["kind"]
    spec = parse_prompt(meta["canonical"])
    assert spec.kind == kind
    if kind == "single_object":
        assert len(objs) == 1 and objs[0].size == "medium"
    elif kind == "size":
        assert len(objs) == 1 and objs[0].size in ("small", "large") and objs[0].size == spec.size
    elif kind in ("two_object", "position"):
        assert len(objs) == 2 and objs[0].color != objs[1].color
        assert all(o.size == "medium" for o in objs)
        if kind == "position":
            assert relations(obj_box(objs[0]), obj_box(objs[1])) == {spec.relation}
    else:
        assert len(objs) == spec.count in (2, 3, 4)
        assert len({(o.color, o.shape, o.size) for o in objs}) == 1 and objs[0].size == "small"
    assert (objs[0].color, objs[0].shape) == (spec.color, spec.shape)


def test_every_scene_keeps_its_promises():
    kinds, captions = set(), 0
    for s in iter_samples(n=600, seed=1):
        _check_scene(s.meta)
        kinds.add(s.meta["kind"])
        captions += s.caption != s.meta["canonical"]
        assert s.image.size == (64, 64) and s.image.mode == "RGB"
    assert kinds == set(shapes.KINDS)
    assert 150 < captions < 450  # about half the training captions are paraphrases


def test_counterfactuals_are_minimal_pairs_the_exact_judge_tells_apart():
    """Each counterfactual shows its own caption and not its original's; edits are single and minimal."""
    from t2i.eval.shapesbench import score_image

    edits: set[str] = set()
    for s in iter_samples(n=200, seed=3):
        c = counterfactual(s, random.Random(s.key))
        assert c is not None and c.key == s.key + "~" and c.image.size == s.image.size
        assert score_image(c.image, c.meta["canonical"])[0], (s.meta["canonical"], c.meta["canonical"])
        assert not score_image(c.image, s.meta["canonical"])[0], (s.meta["canonical"], c.meta["canonical"])
        before, after = parse_prompt(s.meta["canonical"]), parse_prompt(c.meta["canonical"])
        changed = {f for f in ("color", "shape", "size", "color2", "shape2", "relation", "count")
                   if getattr(before, f) != getattr(after, f)}
        assert after.kind == before.kind and changed and (len(changed) == 1 or changed == {"color", "color2"})
        edits.add("swap" if len(changed) == 2 else changed.pop())
        new_pairs = {(o["color"], o["shape"]) for o in c.meta["objects"]} - {
            (o["color"], o["shape"]) for o in s.meta["objects"]}
        assert not new_pairs & HOLDOUT  # the novel split stays unseen, also as a negative
        if before.relation != after.relation:  # the same two objects, their places exchanged
            a, b = s.meta["objects"]
            ca, cb = c.meta["objects"]
            assert (ca["cx"], ca["cy"], cb["cx"], cb["cy"]) == (b["cx"], b["cy"], a["cx"], a["cy"])
            assert (ca["color"], cb["color"]) == (a["color"], b["color"])
    assert edits == {"color", "shape", "size", "color2", "shape2", "relation", "count", "swap"}
    s = make_sample(5)
    assert counterfactual(s, random.Random(1)).caption == counterfactual(s, random.Random(1)).caption
    assert counterfactual(Sample(s.image, "a cat on a mat"), random.Random(1)) is None  # no ground truth


def test_holdout_pairs_never_in_train_and_always_in_novel():
    for s in iter_samples(n=400, seed=2, split="train"):
        assert not {(o["color"], o["shape"]) for o in s.meta["objects"]} & HOLDOUT
    for s in iter_samples(n=100, seed=2, split="novel"):
        assert {(o["color"], o["shape"]) for o in s.meta["objects"]} & HOLDOUT


def test_rendering_colours_and_antialiasing():
    img = np.asarray(render([Obj("blue", "circle", "medium", 0.5, 0.5)], 64)).astype(int)
    assert tuple(img[32, 32]) == PALETTE["blue"]
    assert tuple(img[2, 2]) == BACKGROUND
    values = {tuple(p) for p in img.reshape(-1, 3)}
    assert len(values) > 3  # edge pixels are blends, not just two colours


def test_triangle_apex_is_at_top_and_square_fills_its_box():
    tri = np.asarray(render([Obj("red", "triangle", "large", 0.5, 0.5)], 128)).astype(int)
    mask = np.abs(tri - np.array(BACKGROUND)).sum(-1) > 100
    rows = mask.sum(1)
    ys = np.nonzero(rows)[0]
    assert rows[ys[0]] < rows[ys[-1]] / 4  # narrow at the top, wide at the base
    box = round(2 * 0.22 * 128)
    assert abs(rows.max() - box) <= 2 and abs(len(ys) - box) <= 2
    sq = np.asarray(render([Obj("red", "square", "medium", 0.5, 0.5)], 64)).astype(int)
    m = np.abs(sq - np.array(BACKGROUND)).sum(-1) > 100
    assert abs(m.sum() - (0.3 * 64) ** 2) < 2 * 0.3 * 64 + 2


@pytest.mark.parametrize("size", [32, 100, 256])
def test_any_size_renders(size):
    s = make_sample(0, size=size)
    assert s.image.size == (size, size)


def test_bad_size_and_split_are_user_errors():
    with pytest.raises(UserError, match=r"32\.\.512"):
        make_sample(0, size=16)
    with pytest.raises(UserError, match="split"):
        make_sample(0, split="test")


def test_parse_prompt_grammar():
    p = parse_prompt("a red circle left of a blue square")
    assert (p.kind, p.color, p.shape, p.relation, p.color2, p.shape2) == (
        "position", "red", "circle", "left of", "blue", "square")
    assert parse_prompt("three green triangles").count == 3
    assert parse_prompt("a large gray square").size == "large"
    assert parse_prompt("a purple triangle").novel
    assert not parse_prompt("a purple circle").novel
    for bad in ["a red dog", "five red circles", "red circle", "a huge red circle", ""]:
        with pytest.raises(UserError, match="not a canonical"):
            parse_prompt(bad)


def test_render_prompt_matches_the_prompt():
    rng = random.Random(0)
    for _ in range(50):
        spec = shapes.random_spec(rng, "all")
        _, meta = render_prompt(spec.canonical(), seed=rng.randrange(1000))
        assert meta["canonical"] == spec.canonical()
        _check_scene(meta)


def test_geneval_relation_rule():
    box = (0.4, 0.4, 0.6, 0.6)
    assert relations((0.0, 0.4, 0.2, 0.6), box) == {"left of"}
    assert relations((0.8, 0.4, 1.0, 0.6), box) == {"right of"}
    assert relations((0.4, 0.0, 0.6, 0.2), box) == {"above"}  # y points down
    assert relations((0.4, 0.8, 0.6, 1.0), box) == {"below"}
    assert relations((0.0, 0.0, 0.2, 0.2), box) == {"left of", "above"}  # far diagonal: both
    assert relations((0.45, 0.4, 0.65, 0.6), box) == set()  # offset smaller than the size shrink
