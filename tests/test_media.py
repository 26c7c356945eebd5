"""The media type: a clip of T frames travels through samples, shards, folders, tensors, grids, the generated
folder layout and `--inputs` requests on the same paths as an image, stored as a PNG strip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.sample import Sample
from t2i.data.shapes import render_prompt
from t2i.data.sources import SampleDataset, SkipStats, open_source, write_shards
from t2i.errors import UserError
from t2i.eval.shapesbench import read_index, score_dir, write_images
from t2i.families.base import Input
from t2i.images import (
    Clip,
    as_stored,
    frames_of,
    from_stored,
    grid,
    images_to_tensor,
    resize_media,
    save_media,
    tensor_to_images,
)


def _clip(t: int = 4, size: int = 32, seed: int = 0) -> Clip:
    """T different renders: every frame distinguishable, so a shuffled or mis-cut strip is caught."""
    return Clip(tuple(render_prompt("a red circle", seed=seed * 100 + i, size=size)[0] for i in range(t)))


def _same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_strip_round_trip_keeps_frame_order() -> None:
    clip = _clip(5)
    strip = clip.strip()
    assert strip.size == (5 * 32, 32)
    back = Clip.from_strip(strip, 5)
    assert all(_same(a, b) for a, b in zip(clip.frames, back.frames, strict=True))
    assert not _same(back.frames[0], back.frames[1])


def test_a_strip_is_never_guessed_a_clip_and_wrong_widths_are_errors() -> None:
    wide = Image.new("RGB", (64, 32))
    assert from_stored(wide, None) is not None and not isinstance(from_stored(wide, None), Clip)
    assert len(from_stored(wide, 2)) == 2
    with pytest.raises(UserError, match="stored as a strip 96x32"):
        Clip.from_strip(wide, 3)
    with pytest.raises(UserError, match="squares of one size"):
        Clip((Image.new("RGB", (32, 32)), Image.new("RGB", (16, 16))))
    with pytest.raises(UserError, match="at least one frame"):
        Clip(())


def test_tensor_round_trip_is_five_dimensional_for_clips() -> None:
    clips = [_clip(3, 32, s) for s in range(2)]
    x = images_to_tensor(clips)
    assert x.shape == (2, 3, 3, 32, 32)
    back = tensor_to_images(x)
    assert isinstance(back[1], Clip) and _same(back[1].frames[2], clips[1].frames[2])
    with pytest.raises(UserError, match="one frame count"):
        images_to_tensor([_clip(3), _clip(2)])


def test_resize_works_per_frame_not_on_the_strip() -> None:
    clip = _clip(4, 64)
    small = resize_media(clip, 32)
    assert isinstance(small, Clip) and small.size == 32 and len(small) == 4
    assert _same(small.frames[3], resize_media(clip.frames[3], 32))


def test_clips_round_trip_through_shards_and_the_dataset(tmp_path: Path) -> None:
    samples = [Sample(_clip(4, 32, i), f"clip {i}", {"i": i}) for i in range(3)]
    samples.append(Sample(render_prompt("a blue square", seed=9, size=32)[0], "a still", None))
    write_shards(samples, tmp_path / "shards", progress=False)
    back = list(open_source(str(tmp_path / "shards"), resolution=32))
    assert [isinstance(s.image, Clip) for s in back] == [True, True, True, False]
    assert back[1].meta == {"i": 1, "frames": 4}
    assert all(_same(a, b) for a, b in zip(back[2].image.frames, samples[2].image.frames, strict=True))
    item = next(iter(SampleDataset(str(tmp_path / "shards"), resolution=16)))
    assert item["image"].shape == (4, 3, 16, 16) and item["image"].min() >= -1
    assert torch.allclose(item["image"][0], images_to_tensor([resize_media(samples[0].image.frames[0], 16)])[0])


def test_a_folder_clip_with_a_bad_strip_is_skipped_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, frames in (("good", 4), ("bad", 3)):
        _clip(4).strip().save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("a red circle")
        (folder / f"{name}.json").write_text(json.dumps({"frames": frames}))
    stats = SkipStats()
    got = list(open_source(str(folder), resolution=32, stats=stats))
    assert [s.key for s in got] == ["good"] and len(got[0].image) == 4
    assert stats.counts == {"bad_clip": 1}


def test_grid_gives_a_clip_a_row_of_frames() -> None:
    sheet = grid([_clip(4), _clip(4, seed=1)], ["a", "b"], cols=8, cell=32)
    assert sheet.width == 4 + 2 * (4 * 32 + 4)  # two clips of 4 frames side by side fill 8 cells
    one = grid([_clip(4)], ["a"], cols=2, cell=32)  # fewer cols than frames: one clip per row, never cut
    assert one.width == 4 + 4 * 32 + 4


def test_generated_folder_layout_records_frames_and_writes_gifs(tmp_path: Path) -> None:
    items = [(_clip(3), "a red circle", 0), (render_prompt("a red circle", seed=1, size=32)[0], "a red circle", 1)]
    write_images(tmp_path / "out", items, gif=True)
    rows = read_index(tmp_path / "out")
    assert rows[0]["frames"] == 3 and "frames" not in rows[1]
    with Image.open(tmp_path / "out" / rows[0]["file"]) as strip:
        assert len(from_stored(strip, rows[0]["frames"])) == 3
    with Image.open(tmp_path / "out" / "00000.gif") as gif:
        assert gif.n_frames == 3
    assert not (tmp_path / "out" / "00001.gif").exists()
    with pytest.raises(UserError, match="3-frame clip; ShapesBench scores still images"):
        score_dir(tmp_path / "out", write=False, progress=False)


def test_inputs_requests_carry_clips_and_tasks_check_their_media(tmp_path: Path) -> None:
    from t2i.api import read_requests

    save_media(_clip(4), tmp_path / "c.png")
    as_stored(_clip(1)).save(tmp_path / "i.png")
    rows = [{"prompt": "a red circle moving up", "task": "predict", "image": "c.png", "frames": 4},
            {"prompt": "a red circle", "task": "img2img", "image": "i.png"}]
    (tmp_path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_requests(tmp_path)
    assert isinstance(got[0]["input"].image, Clip) and len(frames_of(got[0]["input"].image)) == 4
    assert got[0]["echo"]["frames"] == 4 and not isinstance(got[1]["input"].image, Clip)
    with pytest.raises(UserError, match="task predict takes a clip"):
        Input("predict", render_prompt("a red circle", size=32)[0])
    with pytest.raises(UserError, match="task img2img takes a still image, got a 4-frame clip"):
        Input("img2img", _clip(4))
    (tmp_path / "index.jsonl").write_text(json.dumps({**rows[0], "frames": 3}) + "\n")
    with pytest.raises(UserError, match=r"index.jsonl:1: image .*c.png: a 3-frame clip is stored as a strip"):
        read_requests(tmp_path)
