"""open_source / write_shards / SampleDataset / preview_grid on tiny data built in tmp_path."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.sample import Sample
from t2i.data.sources import SampleDataset, SkipStats, open_source, write_shards
from t2i.errors import UserError
from t2i.images import preview_grid


def _colour(i: int) -> tuple[int, int, int]:
    return (40 * i % 256, 255 - 30 * i % 256, 128)


def _samples(count: int, size: int = 24) -> list[Sample]:
    return [
        Sample(Image.new("RGB", (size, size), _colour(i)), f"caption {i}", {"i": i}) for i in range(count)
    ]


def _shards(tmp_path: Path, count: int, shard_size: int) -> Path:
    out = tmp_path / "shards"
    write_shards(_samples(count), out, shard_size=shard_size, progress=False)
    return out


def _keys(spec: str | Path, **kw) -> list[str]:
    return [s.key for s in open_source(str(spec), **kw)]


def _rewrite_tar(path: Path, replace: dict[str, bytes]) -> None:
    """Copy a shard, swapping the payload of the named members."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            data = replace.get(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_write_shards_round_trip(tmp_path: Path) -> None:
    paths = write_shards(_samples(7), tmp_path / "out", shard_size=3, progress=False)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames()[:3] == ["00000.json", "00000.png", "00000.txt"]
    samples = list(open_source(str(tmp_path / "out"), resolution=16))
    assert [s.caption for s in samples] == [f"caption {i}" for i in range(7)]
    assert [s.meta for s in samples] == [{"i": i} for i in range(7)]
    assert samples[4].key == "00001.tar/00004"
    for i, s in enumerate(samples):
        assert s.image.size == (16, 16) and s.image.mode == "RGB"
        assert np.abs(np.asarray(s.image, dtype=int) - _colour(i)).max() <= 1


def test_shard_pattern_single_tar_and_n(tmp_path: Path) -> None:
    out = _shards(tmp_path, 7, 3)
    assert len(_keys(f"{out}/{{00000..00002}}.tar")) == 7
    assert _keys(f"{out}/{{00001..00002}}.tar") == [f"0000{i // 3}.tar/0000{i}" for i in range(3, 7)]
    assert len(_keys(out / "00002.tar")) == 1
    assert len(_keys(out, n=4)) == 4


def test_meta_none_round_trips_without_json(tmp_path: Path) -> None:
    paths = write_shards([Sample(Image.new("RGB", (8, 8)), "plain")], tmp_path, progress=False)
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames() == ["00000.png", "00000.txt"]
    [sample] = open_source(str(paths[0]), resolution=8)
    assert sample.meta is None and sample.caption == "plain"


def test_folder_source_crops_centre_and_counts_missing_captions(tmp_path: Path) -> None:
    nested = tmp_path / "imgs" / "a" / "b"
    nested.mkdir(parents=True)
    wide = Image.new("RGB", (80, 40), (0, 0, 255))
    wide.paste((0, 255, 0), (20, 0, 60, 40))  # green centre square, blue/red strips squashing would keep
    wide.paste((255, 0, 0), (60, 0, 80, 40))
    wide.save(nested / "img1.png")
    (nested / "img1.txt").write_text("a green square\n")
    (nested / "img1.json").write_text('{"kind": "square"}')
    Image.new("RGBA", (20, 30), (0, 0, 0, 0)).save(tmp_path / "imgs" / "clear.png")
    (tmp_path / "imgs" / "clear.txt").write_text("transparent")
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "orphan.jpg")
    stats = SkipStats()
    samples = {s.key: s for s in open_source(str(tmp_path / "imgs"), resolution=16, stats=stats)}
    assert sorted(samples) == ["a/b/img1", "clear"]
    img1 = samples["a/b/img1"]
    assert img1.caption == "a green square" and img1.meta == {"kind": "square"}
    pixels = np.asarray(img1.image, dtype=int)
    assert pixels.shape == (16, 16, 3)
    assert np.abs(pixels - (0, 255, 0)).max() <= 2
    assert np.asarray(samples["clear"].image).min() == 255  # transparency lands on white
    assert stats.counts == {"no_caption": 1} and "orphan" in str(stats)


def _coco(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.new("RGB", (30, 20), "red").save(root / "val2017" / "000000000001.jpg")
    Image.new("RGB", (20, 30), "blue").save(root / "val2017" / "000000000002.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg"},
            {"id": 2, "file_name": "000000000002.jpg"},
            {"id": 3, "file_name": "000000000003.jpg"},  # listed but missing on disk
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "caption": "A red thing. "},
            {"id": 21, "image_id": 2, "caption": "A blue thing."},
            {"id": 12, "image_id": 1, "caption": "Something red."},
            {"id": 31, "image_id": 3, "caption": "Gone."},
        ],
    }
    ann = root / "annotations" / "captions_val2017.json"
    ann.write_text(json.dumps(data))
    return root, ann


def test_coco_both_spellings(tmp_path: Path) -> None:
    root, ann = _coco(tmp_path)
    for spec in (f"coco:{root}", f"coco:{ann},{root / 'val2017'}"):
        stats = SkipStats()
        samples = list(open_source(spec, resolution=8, split="val", stats=stats))
        assert [s.caption for s in samples] == ["A red thing.", "Something red.", "A blue thing."]
        assert samples[1].meta == {"source": "coco", "image_id": 1, "annotation_id": 12}
        assert samples[0].image.getpixel((4, 4))[0] > 200 and samples[2].image.getpixel((4, 4))[2] > 200
        assert stats.counts == {"missing_image": 1}
    with pytest.raises(UserError, match=r"captions_train2017\.json"):
        open_source(f"coco:{root}")


def test_corrupt_members_are_skipped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = _shards(tmp_path, 5, 5)
    _rewrite_tar(out / "00000.tar", {"00002.png": b"not an image", "00003.json": b"{broken"})
    stats = SkipStats()
    with caplog.at_level(logging.WARNING, logger="t2i.data"):
        keys = [s.key for s in open_source(str(out), stats=stats)]
    assert keys == ["00000.tar/00000", "00000.tar/00001", "00000.tar/00004"]
    assert stats.counts == {"bad_image": 1, "bad_json": 1} and stats.yielded == 3
    assert "00000.tar/00002 (bad_image)" in str(stats)
    assert any("skipped 2 samples" in r.getMessage() for r in caplog.records)


def test_truncated_and_garbage_shards_do_not_stop_the_stream(tmp_path: Path) -> None:
    out = _shards(tmp_path, 8, 5)
    with tarfile.open(out / "00000.tar") as tar:
        member = tar.getmember("00003.png")
    raw = (out / "00000.tar").read_bytes()
    (out / "00000.tar").write_bytes(raw[: member.offset_data + member.size // 2])
    (out / "00002.tar").write_bytes(b"garbage" * 100)
    stats = SkipStats()
    keys = _keys(out, stats=stats)
    assert keys == [f"00000.tar/0000{i}" for i in range(3)] + [f"00001.tar/0000{i}" for i in range(5, 8)]
    assert stats.counts == {"truncated_tar": 1, "bad_shard": 1}


@pytest.mark.parametrize("shard_size", [2, 100])  # 5 shards -> split by shard; 1 shard -> split by index
def test_rank_split_is_disjoint_and_complete(tmp_path: Path, shard_size: int) -> None:
    out = _shards(tmp_path, 10, shard_size)
    everything = _keys(out)
    for world in (2, 3):
        parts = [_keys(out, rank=r, world_size=world) for r in range(world)]
        assert sorted(k for part in parts for k in part) == sorted(everything)
        assert all(len(p) >= 2 for p in parts)
    parts = [_keys(out, rank=r, world_size=3, n=7) for r in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2] and len({k for p in parts for k in p}) == 7
    with pytest.raises(UserError, match="rank"):
        open_source(str(out), rank=1)
    with pytest.raises(UserError, match="outside"):
        open_source(str(out), rank=2, world_size=2)


def test_shuffle_is_deterministic_per_seed(tmp_path: Path) -> None:
    out = _shards(tmp_path, 12, 3)
    plain = _keys(out)
    first = _keys(out, shuffle=4, seed=1)
    assert first == _keys(out, shuffle=4, seed=1)
    assert first != _keys(out, shuffle=4, seed=2)
    assert first != plain and sorted(first) == sorted(plain)


def test_bad_specs_raise_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.json").write_text("{}")
    cases = {
        "laion": "unknown data source 'laion'.*'shapes'.*coco:",
        str(tmp_path / "missing" / "x.tar"): "does not exist: .*missing",
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path / "empty"): "no images or .tar shards found in .*empty",
        f"{tmp_path}/{{00000..00003}}.tar": "matches no file",
        str(tmp_path / "notes.json"): "not a .tar shard",
        f"coco:{tmp_path / 'nope'}": "COCO path does not exist",
        "": "empty data source",
    }
    for spec, message in cases.items():
        with pytest.raises(UserError, match=message):
            open_source(spec)
    with pytest.raises(UserError, match="no images"):
        SampleDataset(str(tmp_path / "empty"))


@pytest.mark.parametrize("shard_size", [2, 100])
def test_sample_dataset_with_two_workers_yields_each_sample_once(tmp_path: Path, shard_size: int) -> None:
    out = _shards(tmp_path, 7, shard_size)
    loader = torch.utils.data.DataLoader(SampleDataset(str(out), resolution=8), batch_size=3, num_workers=2)
    keys, captions = [], []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 8, 8) and batch["image"].dtype == torch.float32
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        keys += batch["key"]
        captions += batch["caption"]
        assert all(
            json.loads(m)["i"] == int(c.split()[1])
            for m, c in zip(batch["meta"], batch["caption"], strict=True)
        )
    assert sorted(keys) == sorted(_keys(out)) and len(set(keys)) == 7
    assert sorted(captions) == sorted(f"caption {i}" for i in range(7))


def test_write_shards_interrupted_leaves_only_complete_shards(tmp_path: Path) -> None:
    def broken():
        yield from _samples(5)
        raise RuntimeError("render died")

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="render died"):
        write_shards(broken(), out, shard_size=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00001.tar"]
    assert len(_keys(out)) == 4


def test_write_shards_widens_keys_for_large_known_totals(tmp_path: Path) -> None:
    class Many(list):
        def __len__(self) -> int:  # pretend to be huge; iteration still yields the two real samples
            return 123_456

    [path] = write_shards(Many(_samples(2)), tmp_path, progress=False)
    with tarfile.open(path) as tar:
        assert tar.getnames()[0] == "000000.json"


def test_preview_grid_draws_images_and_captions(tmp_path: Path) -> None:
    samples = _samples(5, size=16)
    samples[1].caption = ""
    samples[2].caption = "a very long caption that has to wrap over several lines " * 4
    grid = preview_grid(samples, cols=3, cell=32)
    assert grid.mode == "RGB" and grid.width < 3 * 40 + 8 and grid.height > 2 * 32
    pixels = np.asarray(grid, dtype=int)
    assert np.abs(pixels[4 + 16, 4 + 16] - _colour(0)).max() <= 1  # first image top-left, upscaled

    def caption_ink(col: int) -> int:
        x = 4 + col * 36
        return int((pixels[4 + 33 : 4 + 60, x : x + 32] < 128).any(axis=2).sum())

    assert caption_ink(0) > 0 and caption_ink(1) == 0 and caption_ink(2) > caption_ink(0)
    with pytest.raises(UserError):
        preview_grid([])


def test_shapes_source_if_available() -> None:
    shapes = pytest.importorskip("t2i.data.shapes")
    if not hasattr(shapes, "iter_samples"):
        pytest.skip("t2i.data.shapes.iter_samples not written yet")
    samples = list(open_source("shapes", n=5, resolution=32, seed=3))
    assert len(samples) == 5 and all(s.image.size == (32, 32) and s.caption for s in samples)
    parts = [list(open_source("shapes", n=5, resolution=32, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert [len(p) for p in parts] == [3, 2]
    assert [s.caption for s in parts[0]] == [s.caption for s in samples[0::2]]


def test_shapes_kind_weights_reweight_kinds_and_keep_the_default_dataset() -> None:
    from collections import Counter

    from t2i.data.shapes import iter_samples

    default = [s.caption for s in open_source("shapes", resolution=32, n=30)]
    assert default == [s.caption for s in iter_samples(30, size=32)]  # no weights: the dataset is unchanged
    kinds = Counter(s.meta["kind"] for s in open_source("shapes:position=6", resolution=32, n=200))
    assert kinds["position"] > 100  # 6/10 expected
    only = Counter(s.meta["kind"] for s in open_source(
        "shapes:single_object=0,size=0,two_object=0,counting=0", resolution=32, n=20))
    assert only == {"position": 20}
    whole = [s.caption for s in open_source("shapes:counting=2", resolution=32, n=6)]
    rank1 = [s.caption for s in open_source("shapes:counting=2", resolution=32, n=6, rank=1, world_size=2)]
    assert rank1 == whole[1::2]  # still index-addressed: ranks render disjoint slices of one stream


@pytest.mark.parametrize("spec, says", [
    ("shapes:pos=3", "KIND=WEIGHT"),
    ("shapes:position", "KIND=WEIGHT"),
    ("shapes:position=many", "not a number"),
    ("shapes:position=-1", ">= 0"),
    ("shapes:single_object=0,size=0,two_object=0,position=0,counting=0", "all 0"),
])
def test_shapes_kind_weight_errors(spec: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        open_source(spec, n=1)


def test_data_config_kind_weights_reach_training_batches_only_for_shapes() -> None:
    from t2i.train.data import DataConfig, batches

    cfg = DataConfig(resolution=32, kind_weights="single_object=0,size=0,two_object=0,counting=0")
    assert cfg.train_spec() == "shapes:single_object=0,size=0,two_object=0,counting=0"
    batch = next(batches(cfg, 8))
    # every caption (canonical or paraphrase) names a relation
    assert all(any(r in c for r in ("left of", "right of", "above", "below")) for c in batch["caption"])
    assert DataConfig(source="data/x.tar", kind_weights="position=3").train_spec() == "data/x.tar"
    assert DataConfig(source="shapes:counting=2", kind_weights="position=3").train_spec() == "shapes:counting=2"
