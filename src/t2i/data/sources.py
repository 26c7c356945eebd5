"""One stream of `Sample`s from any data source, plus writing and previewing shards.

Training, evaluation and the CLI all call `open_source(spec)` so that a new dataset is one spec string away and
every source gets the same resizing, shuffling, splitting and bad-data handling.

Splitting across DDP ranks and DataLoader workers: every (rank, worker) pair is one *consumer*, numbered
``rank * num_workers + worker`` out of ``world_size * num_workers``. A source is a list of *units* (tar shards,
image files, COCO images). With at least as many units as consumers each consumer reads
``units[id::consumers]``, so nobody reads bytes it throws away; with fewer, every consumer walks the records
and decodes only those whose index is ``id`` modulo ``consumers``. Shapes renders any index on demand, so a
consumer renders just indices ``id, id + consumers, ...``. Either way consumers are disjoint and together
cover the source. The unit order is shuffled with the same seed on every consumer before it is
split, so they agree on the assignment. Shard splitting can leave ranks with unequal counts; pass `n` (or drop
uneven tails in the trainer) when every rank must step the same number of times.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from braceexpand import braceexpand
from PIL import Image
from tqdm import tqdm
from webdataset import TarWriter

from t2i.data.sample import Sample
from t2i.errors import UserError
from t2i.images import Clip, as_stored, from_stored, resize_media, stored_frames, to_rgb

log = logging.getLogger("t2i.data")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
SPEC_FORMS = (
    "'shapes' (or 'shapes:position=3,...' to reweight prompt kinds), 'shapes-video' (or 'shapes-video:frames=N'), "
    "a .tar shard, a shard pattern like "
    "'data/{00000..00099}.tar', a directory of .tar shards, a directory of images with same-name .txt captions, 'coco:ANNOTATIONS_JSON,IMAGE_DIR' or 'coco:ROOT'"
)
_FORMATS = {"png": ("png", "PNG"), "jpg": ("jpg", "JPEG"), "jpeg": ("jpg", "JPEG"), "webp": ("webp", "WEBP")}


@dataclass
class SkipStats:
    """What a stream dropped and why: web data is always a little broken, and a long run must neither die on
    one bad JPEG nor hide that a third of a shard was unreadable."""

    counts: Counter[str] = field(default_factory=Counter)
    first_keys: list[str] = field(default_factory=list)
    yielded: int = 0
    max_keys: int = 5

    def skip(self, reason: str, key: str) -> None:
        self.counts[reason] += 1
        if len(self.first_keys) < self.max_keys:
            self.first_keys.append(f"{key} ({reason})")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        if not self.total:
            return f"read {self.yielded} samples, none skipped"
        reasons = ", ".join(f"{reason}={count}" for reason, count in sorted(self.counts.items()))
        more = ", ..." if self.total > len(self.first_keys) else ""
        return f"skipped {self.total} samples ({reasons}), read {self.yielded}; first: {', '.join(self.first_keys)}{more}"


class _Skip(Exception):
    """A record that cannot become a sample; `reason` names its SkipStats bucket."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Record(NamedTuple):
    key: str
    load: Callable[[], Sample]  # deferred, so a consumer decodes only the records it keeps


@dataclass
class _Plan:
    units: list[Any]
    read: Callable[[Any], Iterator[_Record]]
    read_slice: Callable[[int, int, int | None], Iterator[_Record]] | None = None  # (start, step, count)


# ---------------------------------------------------------------------------------------------- images


def _decode(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return to_rgb(im)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        raise _Skip("bad_image") from e


def _media(data: bytes, meta: dict[str, Any] | None) -> Any:
    """An image, or a clip when the sample's JSON declares `frames` (its strip is then cut into them)."""
    image = _decode(data)
    try:
        return from_stored(image, stored_frames(meta))
    except UserError as e:  # a strip of the wrong width, or a nonsense frame count
        raise _Skip("bad_clip") from e


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise _Skip("missing_image") from e
    except OSError as e:
        raise _Skip("unreadable") from e


def _caption(data: bytes) -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise _Skip("bad_caption") from e


def _meta(data: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise _Skip("bad_json") from e
    if not isinstance(meta, dict):
        raise _Skip("bad_json")
    return meta


# ---------------------------------------------------------------------------------------------- readers


def _fail(reason: str) -> Sample:
    raise _Skip(reason)


def _tar_sample(key: str, parts: dict[str, bytes]) -> Sample:
    image_ext = next((ext for ext in IMAGE_EXTS if ext in parts), None)
    if image_ext is None:
        raise _Skip("no_image")
    if "txt" not in parts:
        raise _Skip("no_caption")
    caption = _caption(parts["txt"])
    meta = _meta(parts["json"]) if "json" in parts else None
    return Sample(_media(parts[image_ext], meta), caption, meta, key)


def _tar_records(path: Path) -> Iterator[_Record]:
    """Group consecutive members by key (the text before the first dot of the basename), as webdataset does,
    but read with `tarfile` directly so a truncated or garbage shard costs one counted skip, not the run."""
    key: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with path.open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or base.startswith(".") or "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                member_key = member.name[: len(member.name) - len(base)] + stem
                if member_key != key:
                    if key is not None:
                        yield _Record(f"{path.name}/{key}", partial(_tar_sample, f"{path.name}/{key}", parts))
                    key, parts = member_key, {}
                data = tar.extractfile(member).read()  # type: ignore[union-attr]  # isfile() checked
                if len(data) != member.size:
                    raise tarfile.ReadError("short member")
                parts[ext.lower()] = data
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        # Before any member the file is not a tar at all; after one, it ends mid-sample.
        yield _Record(f"{path.name}/{key or ''}", partial(_fail, "truncated_tar" if key else "bad_shard"))
        return
    if key is not None:
        yield _Record(f"{path.name}/{key}", partial(_tar_sample, f"{path.name}/{key}", parts))


def _file_sample(path: Path, key: str) -> Sample:
    caption_path = path.with_suffix(".txt")
    if not caption_path.is_file():
        raise _Skip("no_caption")
    caption = _caption(_read(caption_path))
    meta_path = path.with_suffix(".json")
    meta = _meta(_read(meta_path)) if meta_path.is_file() else None
    return Sample(_media(_read(path), meta), caption, meta, key)


def _file_records(root: Path, path: Path) -> Iterator[_Record]:
    key = path.relative_to(root).with_suffix("").as_posix()
    yield _Record(key, partial(_file_sample, path, key))


def _folder_images(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix[1:].lower() in IMAGE_EXTS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


def _coco_sample(
    image_path: Path | None, cache: list[Image.Image], key: str, caption: str, meta: dict
) -> Sample:
    if image_path is None:
        raise _Skip("no_image")
    if not cache:  # the ~5 captions of an image are adjacent: decode it once
        cache.append(_decode(_read(image_path)))
    return Sample(cache[0], caption.strip(), meta, key)


def _coco_records(
    image_dir: Path, files: dict[Any, str], unit: tuple[Any, list[tuple[Any, str]]]
) -> Iterator[_Record]:
    image_id, captions = unit
    name = files.get(image_id)
    path = image_dir / name if name is not None else None
    cache: list[Image.Image] = []
    for ann_id, caption in captions:
        key = f"{image_id}/{ann_id}"
        meta = {"source": "coco", "image_id": image_id, "annotation_id": ann_id}
        yield _Record(key, partial(_coco_sample, path, cache, key, caption, meta))


def _coco_plan(rest: str, split: str) -> _Plan:
    """COCO captions are one JSON of (image_id, caption) pairs plus a flat image folder: units are images so
    that all captions of one image land on the same consumer and it is decoded once."""
    if "," in rest:
        ann_path, image_dir = (Path(p.strip()).expanduser() for p in rest.split(",", 1))
    else:
        root = Path(rest.strip()).expanduser()
        ann_path, image_dir = root / "annotations" / f"captions_{split}2017.json", root / f"{split}2017"
    for p in (ann_path, image_dir):
        if not p.exists():
            raise UserError(
                f"COCO path does not exist: {p} (spec 'coco:ANNOTATIONS_JSON,IMAGE_DIR' or 'coco:ROOT')"
            )
    try:
        data = json.loads(ann_path.read_bytes())
        files = {im["id"]: im["file_name"] for im in data["images"]}
        by_image: dict[Any, list[tuple[Any, str]]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append((ann["id"], ann["caption"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read COCO captions file {ann_path} ({e!r}); expected captions_*.json") from e
    if not by_image:
        raise UserError(f"COCO captions file {ann_path} has no annotations")
    units = [(image_id, sorted(caps)) for image_id, caps in sorted(by_image.items())]
    return _Plan(units, partial(_coco_records, image_dir, files))


def is_shapes(spec: str) -> bool:
    """True for the embedded generator ('shapes' or 'shapes:KIND=W,...'): endless and index-addressed."""
    return spec == "shapes" or spec.startswith("shapes:")


def is_generated(spec: str) -> bool:
    """True for the embedded generators (shapes, shapes-video): endless and index-addressed, so a resumed
    reader jumps straight to its next sample."""
    return is_shapes(spec) or spec == "shapes-video" or spec.startswith("shapes-video:")


def _video_plan(spec: str, n: int | None, seed: int, resolution: int, split: str) -> _Plan:
    """shapes-video, addressed by index like shapes (`_shapes_plan`)."""
    from t2i.data.video import iter_clips, parse_frames_spec

    frames = parse_frames_spec(spec)

    def read_slice(start: int, step: int, count: int | None) -> Iterator[_Record]:
        for sample in iter_clips(n=count, seed=seed, size=resolution, split=split, start=start, step=step,
                                 frames=frames):
            yield _Record(sample.key, lambda s=sample: s)

    next(read_slice(0, 1, 1), None)
    return _Plan([None], lambda _unit: read_slice(0, 1, n), read_slice)


def _shapes_plan(spec: str, n: int | None, seed: int, resolution: int, split: str) -> _Plan:
    """Shapes renders any index on demand, so a consumer renders only its slice r, r+C, ...: the same
    samples as items r, r+C, ... of the single-process stream, whatever the number of consumers."""
    from t2i.data.shapes import iter_samples, parse_kind_weights  # late: no other source needs the generator

    weights = parse_kind_weights(spec[len("shapes:") :]) if spec.startswith("shapes:") else None

    def read_slice(start: int, step: int, count: int | None) -> Iterator[_Record]:
        for sample in iter_samples(n=count, seed=seed, size=resolution, split=split, start=start, step=step,
                                   kind_weights=weights):
            yield _Record(sample.key, lambda s=sample: s)

    next(read_slice(0, 1, 1), None)  # a bad size or split fails now with the generator's UserError
    return _Plan([None], lambda _unit: read_slice(0, 1, n), read_slice)


def _resolve(spec: str, *, n: int | None, seed: int, resolution: int, split: str) -> _Plan:
    if resolution < 1 or (n is not None and n < 0):
        raise UserError(f"need resolution >= 1 and n >= 0, got resolution={resolution}, n={n}")
    if not spec.strip():
        raise UserError(f"empty data source; expected {SPEC_FORMS}")
    if is_shapes(spec):
        return _shapes_plan(spec, n, seed, resolution, split)
    if is_generated(spec):
        return _video_plan(spec, n, seed, resolution, split)
    if spec.startswith("coco:"):
        return _coco_plan(spec[len("coco:") :], split)
    if "{" in spec:
        paths = [Path(p).expanduser() for p in braceexpand(spec)]
        found = [p for p in paths if p.is_file()]
        if not found:
            raise UserError(
                f"shard pattern {spec!r} matches no file (first: {paths[0]}); check the directory and range"
            )
        if len(found) < len(paths):
            log.warning(
                "%s: %d of %d shards are missing; reading the rest", spec, len(paths) - len(found), len(paths)
            )
        return _Plan(found, _tar_records)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.name.endswith((".tar", ".tgz", ".tar.gz")):
            return _Plan([path], _tar_records)
        raise UserError(f"unknown data source {spec!r}: a file but not a .tar shard; expected {SPEC_FORMS}")
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if shards:
            return _Plan(shards, _tar_records)
        images = _folder_images(path)
        if images:
            return _Plan(images, partial(_file_records, path))
        raise UserError(
            f"no images or .tar shards found in {path}: add images with same-name .txt captions "
            "(searched recursively) or .tar shards (e.g. from `write_shards` or img2dataset)"
        )
    if "/" in spec or os.sep in spec or path.suffix:
        raise UserError(f"data source path does not exist: {path}")
    raise UserError(f"unknown data source {spec!r}; expected {SPEC_FORMS}")


# ---------------------------------------------------------------------------------------------- stream


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise UserError("give both rank and world_size, or neither (then torch.distributed decides)")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    return rank, world_size


def _load(records: Iterable[_Record], resolution: int, stats: SkipStats) -> Iterator[Sample]:
    for record in records:
        try:
            sample = record.load()
        except _Skip as e:
            stats.skip(e.reason, record.key)
            continue
        sample.image = resize_media(sample.image, resolution)
        yield sample


def _shuffled(items: Iterable[Sample], size: int, rng: random.Random) -> Iterator[Sample]:
    buffer: list[Sample] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def open_source(
    spec: str,
    *,
    resolution: int = 64,
    shuffle: int = 0,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    n: int | None = None,
    split: str = "train",
    stats: SkipStats | None = None,
    start: int = 0,
    log_skips: bool = True,
) -> Iterator[Sample]:
    """Every source as one stream of RGB `resolution`-square samples, so no caller cares where data lives.

    The spec is checked now (a bad one raises `UserError` before training starts); samples come lazily, and
    the DataLoader worker is looked up when iteration starts, in the process that iterates. `n` is a total
    over all consumers (each yields its share), so it means the same on 1 or 8 GPUs. `shuffle` is a buffer
    size and also shuffles the unit order; 0 keeps source order. Skips are counted in `stats` and logged.
    `start` skips that many records of this consumer's stream before decoding any (shapes jumps straight
    there): a resumed training run continues with the data it would have seen. `log_skips=False` keeps the
    skip summary out of the log (a training loop reading a source once per epoch says it once).
    """
    if shuffle < 0:
        raise UserError(f"shuffle is a buffer size (0 = off), got {shuffle}")
    rank, world_size = _rank_world(rank, world_size)
    plan = _resolve(spec, n=n, seed=seed, resolution=resolution, split=split)
    stats = stats if stats is not None else SkipStats()

    def stream(stats: SkipStats) -> Iterator[Sample]:
        worker = torch.utils.data.get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        consumers, me = world_size * num_workers, rank * num_workers + worker_id
        share = None if n is None else max(n // consumers + (me < n % consumers) - start, 0)
        units = list(plan.units)
        if shuffle > 0:
            random.Random(seed).shuffle(units)  # the same permutation on every consumer
        by_unit = consumers > 1 and len(units) >= consumers
        records: Iterable[_Record] = chain.from_iterable(
            map(plan.read, units[me::consumers] if by_unit else units)
        )
        if plan.read_slice is not None:
            records = plan.read_slice(me + start * consumers, consumers, share)
        else:
            if consumers > 1 and not by_unit:
                records = islice(records, me, None, consumers)
            records = islice(records, start, None)
        samples = _load(records, resolution, stats)
        if shuffle > 0:
            samples = _shuffled(samples, shuffle, random.Random(seed * 1_000_003 + me))
        try:
            for sample in islice(samples, share):
                stats.yielded += 1
                yield sample
        finally:
            if stats.total and log_skips:
                log.warning("%s: %s", spec, stats)

    return stream(stats)


class SampleDataset(torch.utils.data.IterableDataset):
    """`open_source` for a torch DataLoader: each worker opens its own stream and `get_worker_info` splits it.

    Rank and world size are fixed here, in the main process, because spawned workers never see the
    initialised process group. Yields ``{"image": float C,H,W in [-1, 1] (T,C,H,W for a clip), "caption",
    "meta": JSON or "", "key"}``; strings because the default collate cannot batch dicts of varying shape.
    """

    def __init__(
        self,
        spec: str,
        *,
        resolution: int = 64,
        shuffle: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        n: int | None = None,
        split: str = "train",
    ) -> None:
        super().__init__()
        rank, world_size = _rank_world(rank, world_size)
        _resolve(spec, n=n, seed=seed, resolution=resolution, split=split)  # fail here, not in a worker
        self.spec = spec
        self.kwargs: dict[str, Any] = dict(
            resolution=resolution,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            n=n,
            split=split,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in open_source(self.spec, **self.kwargs):
            frames = [np.asarray(im, dtype=np.float32) for im in getattr(sample.image, "frames", [sample.image])]
            pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2) / 127.5 - 1.0
            yield {
                "image": pixels if isinstance(sample.image, Clip) else pixels[0],
                "caption": sample.caption,
                "meta": json.dumps(sample.meta) if sample.meta is not None else "",
                "key": sample.key,
            }


# ---------------------------------------------------------------------------------------------- writing


def write_shards(
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    image_format: str = "png",
    progress: bool = True,
) -> list[Path]:
    """Render a stream into WebDataset shards that `open_source` (and img2dataset tooling) reads back.

    Each shard is written under a hidden temp name and renamed when complete, so an interrupted render leaves
    only whole shards that a directory spec would pick up. (webdataset's ShardWriter opens final names.)
    """
    if image_format.lower() not in _FORMATS or shard_size < 1:
        raise UserError(f"image_format must be one of {sorted(_FORMATS)} and shard_size >= 1")
    ext, pil_format = _FORMATS[image_format.lower()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = len(samples) if isinstance(samples, Sized) else None
    width = max(5, len(str(total - 1))) if total else 5  # unknown total: %05d widens by itself past 99999
    numbered = enumerate(tqdm(samples, total=total, disable=not progress, unit="sample", desc=str(out)))
    shards: list[Path] = []
    for first in numbered:
        final = out / f"{len(shards):05d}.tar"
        part = out / f".{final.name}.tmp"  # not *.tar, so never mistaken for a shard
        try:
            with part.open("wb") as stream, TarWriter(stream, encoder=False, mtime=0.0) as writer:
                for i, sample in chain([first], islice(numbered, shard_size - 1)):
                    buf = io.BytesIO()
                    as_stored(sample.image).save(buf, format=pil_format)
                    record = {
                        "__key__": f"{i:0{width}d}",
                        ext: buf.getvalue(),
                        "txt": sample.caption.encode(),
                    }
                    meta = sample.meta
                    if isinstance(sample.image, Clip):  # the frame count travels with the strip
                        meta = {**(meta or {}), "frames": len(sample.image)}
                    if meta is not None:
                        record["json"] = json.dumps(meta).encode()
                    writer.write(record)
        except BaseException:  # interrupted mid-shard (Ctrl-C included): drop the partial file
            part.unlink(missing_ok=True)
            raise
        os.replace(part, final)
        shards.append(final)
    stale = sorted(set(out.glob("*.tar")) - set(shards))
    if stale:
        log.warning("%s: %d stale .tar files (e.g. %s) will be read with it", out, len(stale), stale[0].name)
    return shards
