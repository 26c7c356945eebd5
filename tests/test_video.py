"""shapes-video and VideoBench: the clip dataset's spec (motion, margins, gaps, hold-out, storage), sketches, and
the scorer held to exact answers (ground truth passes; frozen, flipped and reversed clips fail; each
conditional task's rule rejects what it must)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from t2i.data.shapes import BACKGROUND, Obj, make_sample, render
from t2i.data.sources import open_source, write_shards
from t2i.data.video import (
    HOLDOUT,
    MARGIN,
    RADIUS,
    SKETCH_INK,
    SKETCH_PAPER,
    SPEED,
    iter_clips,
    make_clip,
    parse_video_prompt,
    render_video_prompt,
    sketch,
    sketch_objects,
)
from t2i.errors import UserError
from t2i.eval import videobench as vb
from t2i.images import Clip

FLIP = {"left": "right", "right": "left", "up": "down", "down": "up"}


# ---------------------------------------------------------------------------------------------- dataset
def test_clips_follow_the_spec():
    for i in range(200):
        s = make_clip(i, seed=3)
        meta = s.meta
        assert isinstance(s.image, Clip) and len(s.image) == 8 == meta["frames"] and s.image.size == 64
        objs = meta["objects"]
        assert len(objs) == (1 if meta["kind"] == "single_motion" else 2)
        assert len({o["color"] for o in objs}) == len(objs)
        assert parse_video_prompt(meta["canonical"]).canonical() == meta["canonical"]
        for o in objs:
            assert o["size"] == "medium" and (o["shape"], o["direction"]) not in HOLDOUT  # the train split
            c = np.asarray(o["centers"])
            assert np.allclose(c[0], [o["cx0"], o["cy0"]])
            step = np.diff(c, axis=0)
            assert np.allclose(np.abs(step).sum(1), SPEED)  # 0.05 a frame, along one axis, never bouncing
            assert np.allclose(step, step[0])
            assert c.min() >= RADIUS + MARGIN - 1e-9 and c.max() <= 1 - RADIUS - MARGIN + 1e-9
        if len(objs) == 2:
            a, b = (np.asarray(o["centers"]) for o in objs)
            assert (np.abs(a - b).max(1) >= 2 * RADIUS + MARGIN - 1e-9).all()  # boxes 0.02 apart in every frame


def test_clips_are_pure_functions_of_their_index_and_the_hold_out_is_kept_apart():
    a, b = make_clip(5, seed=1), make_clip(5, seed=1)
    assert a.caption == b.caption and a.image.strip().tobytes() == b.image.strip().tobytes()
    novel = [make_clip(i, split="novel").meta for i in range(40)]
    assert all(any((o["shape"], o["direction"]) in HOLDOUT for o in m["objects"]) for m in novel)
    short = make_clip(0, frames=3, size=32)
    assert len(short.image) == 3 and short.image.size == 32
    with pytest.raises(UserError, match=r"2\.\.14 frames"):
        make_clip(0, frames=16)


def test_clips_travel_as_strips_in_shards_and_read_back(tmp_path):
    write_shards(iter_clips(n=6, seed=2), tmp_path / "shards", progress=False)
    back = list(open_source(str(tmp_path / "shards")))
    first = make_clip(0, seed=2)
    assert len(back) == 6 and isinstance(back[0].image, Clip) and len(back[0].image) == 8
    assert back[0].image.strip().tobytes() == first.image.strip().tobytes() and back[0].caption == first.caption
    source = list(open_source("shapes-video:frames=4", n=2, resolution=32))
    assert len(source[0].image) == 4 and source[0].image.size == 32
    with pytest.raises(UserError, match="shapes-video:frames=N"):
        open_source("shapes-video:frams=4")


def test_the_cli_renders_previews_and_names_the_datasets(cli, tmp_path):
    r = cli("data", "render", "--dataset", "shapes-video", "--n", "3", "--out", tmp_path / "v", "-q")
    assert r.returncode == 0, r.stderr
    r = cli("data", "preview", str(tmp_path / "v"), "--n", "2", "--gif", "--out", tmp_path / "p.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p-000.gif").is_file() and Image.open(tmp_path / "p-000.gif").n_frames == 8
    r = cli("data", "render", "--dataset", "mnist", "--n", "3", "--out", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "shapes, shapes-video" in r.stderr


def test_a_sketch_is_gray_outlines_on_white_at_the_objects():
    s = make_sample(7, seed=0)
    for obj in s.meta["objects"]:
        assert obj["shape"]  # a scene of any kind
    im = sketch(s.meta)
    colours = {tuple(c) for c in np.asarray(im).reshape(-1, 3)}
    assert colours <= {SKETCH_INK, SKETCH_PAPER} and SKETCH_INK in colours
    found = sketch_objects(im)
    assert len(found) == len(s.meta["objects"])
    for o in s.meta["objects"]:
        assert min(np.hypot(x - o["cx"], y - o["cy"]) for x, y in found) < 0.02
    ink = np.asarray(im)[..., 0] == SKETCH_INK[0]
    filled = np.asarray(render([Obj(**o) for o in s.meta["objects"]]))[..., 0] != BACKGROUND[0]
    assert ink.sum() < 0.8 * filled.sum()  # outlines, not filled shapes


# ---------------------------------------------------------------------------------------------- scorer
def _flipped(prompt: str) -> str:
    return " and ".join(f"a {m.color} {m.shape} moving {FLIP[m.direction]}" for m in parse_video_prompt(prompt).objects)


def test_videobench_prompts_cover_every_kind_and_the_novel_pairs():
    prompts = vb.video_prompts()
    specs = [parse_video_prompt(p) for p in prompts]
    assert len(prompts) == 240
    assert sum(s.kind == "single_motion" and not s.novel for s in specs) == 100
    assert sum(s.novel for s in specs) == 40


def test_ground_truth_passes_and_frozen_flipped_or_reversed_clips_fail():
    prompts = vb.video_prompts()[::4]
    ok = frozen = flipped = reversed_ = 0
    for i, p in enumerate(prompts):
        clip, _ = render_video_prompt(p, seed=i)
        ok += vb.score_clip(clip, p)[0]
        frozen += vb.score_clip(Clip((clip.frames[0],) * len(clip)), p)[0]
        flipped += vb.score_clip(clip, _flipped(p))[0]
        reversed_ += vb.score_clip(Clip(clip.frames[::-1]), p)[0]
    n = len(prompts)
    assert ok / n >= 0.995 and frozen / n <= 0.01 and flipped / n <= 0.01 and reversed_ / n <= 0.01


def test_a_missing_frame_is_forgiven_but_two_are_not():
    p = "a red circle moving right"
    clip, _ = render_video_prompt(p)
    blank = Image.new("RGB", (64, 64), BACKGROUND)
    assert vb.score_clip(Clip((blank, *clip.frames[1:])), p)[0]
    ok, why = vb.score_clip(Clip((blank, blank, *clip.frames[2:])), p)
    assert not ok and "2 of 8 frames" in why


@pytest.mark.parametrize("task", ["predict", "sketch", "complete"])
def test_each_task_passes_its_truth_and_rejects_wrong_answers(task):
    reqs = vb.task_requests(task, 40, seed=1)
    rows = [{**r, "task": task, "file": "x.png"} for r in reqs]
    assert all(vb.score_media(task, vb.task_truth(r), r)[0] for r in rows)
    wrong = 0
    for r in rows:
        truth = vb.task_truth(r)
        if task == "predict":  # the given frames, then frozen
            bad = Clip(truth.frames[:2] + (truth.frames[1],) * (len(truth) - 2))
        elif task == "sketch":  # the right objects, mirrored through the centre
            bad = render([Obj(**{**o, "cx": 1 - o["cx"], "cy": 1 - o["cy"]}) for o in r["truth"]["objects"]])
        else:  # the top half, and nothing below it
            bad = vb.completion_input(r["truth"])
        wrong += vb.score_media(task, bad, r)[0]
    assert wrong / len(rows) <= 0.05


def test_completion_rejects_a_changed_top_and_a_half_drawn_object():
    truth = {"objects": [{"color": "red", "shape": "square", "size": "large", "cx": 0.5, "cy": 0.55}],
             "canonical": "a red square", "kind": "single_object"}
    whole = render([Obj(**truth["objects"][0])])
    assert vb.judge_complete(whole, "a red square", truth)[0]
    cut = np.asarray(whole).copy()
    cut[40:] = BACKGROUND  # the square's bottom rows never drawn
    ok, why = vb.judge_complete(Image.fromarray(cut), "a red square", truth)
    assert not ok
    shifted = np.asarray(whole).copy()
    shifted[:32] = np.roll(shifted[:32], 6, axis=1)
    ok, why = vb.judge_complete(Image.fromarray(shifted), "a red square", truth)
    assert not ok and "top half changed" in why


def test_score_dir_judges_each_row_by_its_task_and_needs_truth(tmp_path, cli):
    from t2i.eval.shapesbench import write_images

    p = "a blue square moving up"
    clip, _ = render_video_prompt(p)
    reqs = vb.task_requests("sketch", 2)
    media = [clip, render([Obj("red", "circle", "medium", 0.5, 0.5)]), vb.task_truth({**reqs[0], "task": "sketch"})]
    extras = [{}, {}, {"task": "sketch", "truth": reqs[0]["truth"]}]
    write_images(tmp_path / "out", zip(media, [p, "a red circle", reqs[0]["prompt"]], [0, 1, 2], strict=True), extras)
    r = cli("bench", "score", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "out" / "videobench.json").read_text())
    assert {t: s["overall"] for t, s in result["tasks"].items()} == {"t2i": 1.0, "t2v": 1.0, "sketch": 1.0}
    r = cli("bench", "score", tmp_path / "out", "-q", "--scorer", "v1")  # an older scorer writes beside it
    assert r.returncode == 0, r.stderr
    older = json.loads((tmp_path / "out" / "videobench-v1.json").read_text())
    assert older["version"].endswith("(shapesbench-v1 per frame)")
    assert json.loads((tmp_path / "out" / "videobench.json").read_text()) == result  # the default's, untouched
    rows = (tmp_path / "out" / "index.jsonl").read_text().splitlines()
    (tmp_path / "out" / "index.jsonl").write_text(rows[2].replace('"truth"', '"truht"') + "\n")
    r = cli("bench", "score", tmp_path / "out", "-q")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs its source's `truth`" in r.stderr


def test_a_partial_evaluation_reaches_every_group_of_prompts_novel_included():
    from t2i.eval.shapesbench import benchmark_prompts, spread, spread_prompts

    prompts = vb.video_prompts()
    novel = set(prompts[-2 * vb.NOVEL_PER_KIND:])
    for n in (24, 48, 100, 150):
        picked = spread(prompts, n)
        assert len(picked) == n and novel & set(picked), n
    assert spread(prompts, None) == prompts and spread(prompts, 1000) == prompts
    # where the old stride already covered the list, the selection is the same prompts as before
    images = benchmark_prompts()
    assert spread_prompts(100) == images[::6] and spread_prompts(200) == images[::3]
    assert spread(prompts, 24) == prompts[::10]
