"""`shapes-video`: moving shapes, the embedded clip dataset that NUWA trains on and VideoBench measures; and the
sketch of any `shapes` scene (NUWA's sketch-to-image input).

Like `shapes`, it is exact and needs no download: every clip carries each object's centre in every frame, so a
generated clip can be checked against its caption. The numbers below are an interface (VideoBench, the tests
and outside checks rely on them):

* a clip is `frames` frames (8 by default) of one square size (64 px native), drawn by `shapes.render`, so
  background, palette, anti-aliasing and shapes are the image dataset's;
* one or two medium objects (half-extent 0.15), of different colours, each moving 0.05 of the side per frame
  left, right, up or down, never bouncing: every centre stays in [r + 0.02, 1 - r - 0.02] on both axes in
  every frame, and two objects' boxes stay at least 0.02 apart in every frame. The motion and the margins
  fit at most 14 frames (0.05 x 13 = 0.65 of the 0.66 the centre can travel), so 15 and 16 are refused;
* kinds `single_motion` ("a red circle moving left") and `two_motion` ("a red circle moving left and a blue
  square moving up"); training captions add paraphrases ("a red circle slides to the left");
* the (shape, direction) pairs (triangle, up) and (square, left) never appear in the `train` split:
  VideoBench's `novel` score measures whether a model composes a motion it has only seen on other shapes.

Clip `i` of seed `s` is a pure function of (s, i, split, size, frames), as in `shapes`.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from t2i.data.sample import Sample
from t2i.data.shapes import (
    COLORS,
    MAX_SIZE,
    MIN_SIZE,
    NATIVE_SIZE,
    SHAPES,
    SIZES,
    Obj,
    render,
    shape_coverage,
)
from t2i.errors import UserError
from t2i.images import Clip

FRAMES = 8
MIN_FRAMES, MAX_FRAMES = 2, 14
SPEED = 0.05  # fraction of the side per frame
MARGIN = 0.02  # centres stay in [r + MARGIN, 1 - r - MARGIN]; boxes stay this far apart
RADIUS = SIZES["medium"]
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
KINDS = ("single_motion", "two_motion")
HOLDOUT: frozenset[tuple[str, str]] = frozenset({("triangle", "up"), ("square", "left")})
SPLITS = ("train", "all", "novel")
SKETCH_INK, SKETCH_PAPER = (64, 64, 64), (255, 255, 255)
SKETCH_WIDTH = 2  # px at 64x64: an outline is the mask's pixels within this distance of its boundary

_MOTION = ["{c} {s} moving {d}", "{c} {s} slides {to}", "{c} {s} going {d}", "{c} {s} heading {d}",
           "{c} {s} that moves {d}"]
_C, _S, _D = "|".join(COLORS), "|".join(SHAPES), "|".join(DIRECTIONS)
_ONE = rf"a ({_C}) ({_S}) moving ({_D})"
_PROMPT = re.compile(rf"^{_ONE}(?: and {_ONE})?$")


@dataclass(frozen=True)
class Motion:
    color: str
    shape: str
    direction: str


@dataclass(frozen=True)
class VideoSpec:
    """What a canonical clip caption asks for: one or two objects, each with its direction."""

    objects: tuple[Motion, ...]

    @property
    def kind(self) -> str:
        return KINDS[len(self.objects) - 1]

    @property
    def novel(self) -> bool:
        return any((m.shape, m.direction) in HOLDOUT for m in self.objects)

    def canonical(self) -> str:
        return " and ".join(f"a {m.color} {m.shape} moving {m.direction}" for m in self.objects)


def parse_video_prompt(prompt: str) -> VideoSpec:
    """A canonical clip caption back to its spec; anything else is a one-line error showing the grammar."""
    m = _PROMPT.match(prompt.strip().lower())
    if not m:
        raise UserError(f"not a shapes-video caption: {prompt!r}; expected 'a COLOR SHAPE moving DIRECTION' "
                        "(optionally 'and a COLOR SHAPE moving DIRECTION'), directions left|right|up|down")
    g = m.groups()
    objects = tuple(Motion(*g[i:i + 3]) for i in (0, 3) if g[i] is not None)
    if len(objects) == 2 and objects[0].color == objects[1].color:
        raise UserError(f"{prompt!r}: the two objects of a clip have different colours")
    return VideoSpec(objects)


def _check(size: int, frames: int, split: str) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"shapes-video renders at {MIN_SIZE}..{MAX_SIZE} px, got {size}")
    if not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise UserError(f"shapes-video clips have {MIN_FRAMES}..{MAX_FRAMES} frames, got {frames} (at 0.05 of the "
                        "side per frame, a longer clip would carry an object out of the canvas)")
    if split not in SPLITS:
        raise UserError(f"unknown shapes-video split {split!r}; use one of {', '.join(SPLITS)}")


def random_video_spec(rng: random.Random, split: str = "train", kind: str | None = None) -> VideoSpec:
    """A random spec of `kind` (or either kind) whose (shape, direction) pairs fit the split."""
    while True:
        n = 1 + (KINDS.index(kind) if kind else rng.randrange(2))
        colors = rng.sample(COLORS, n)
        spec = VideoSpec(tuple(Motion(c, rng.choice(SHAPES), rng.choice(list(DIRECTIONS))) for c in colors))
        if (split == "all" or (split == "novel") == spec.novel):
            return spec


def _path(cx0: float, cy0: float, direction: str, frames: int) -> list[tuple[float, float]]:
    dx, dy = DIRECTIONS[direction]
    return [(cx0 + SPEED * t * dx, cy0 + SPEED * t * dy) for t in range(frames)]


def place(spec: VideoSpec, rng: random.Random, frames: int = FRAMES) -> list[list[tuple[float, float]]]:
    """Each object's centre in every frame: starts drawn so that every frame keeps the margins and the gap."""
    lo, hi = RADIUS + MARGIN, 1 - RADIUS - MARGIN
    travel = SPEED * (frames - 1)
    for _ in range(10_000):
        paths = []
        for m in spec.objects:
            dx, dy = DIRECTIONS[m.direction]
            start = []
            for d in (dx, dy):  # the moving axis starts where the whole path fits
                a, b = (lo, hi - travel) if d > 0 else (lo + travel, hi) if d < 0 else (lo, hi)
                start.append(rng.uniform(a, b))
            paths.append(_path(start[0], start[1], m.direction, frames))
        if len(paths) == 1 or all(max(abs(p[0] - q[0]), abs(p[1] - q[1])) >= 2 * RADIUS + MARGIN
                                  for p, q in zip(paths[0], paths[1], strict=True)):
            return paths
    raise RuntimeError(f"no placement found for {spec.canonical()!r}")  # not reachable: opposite corners fit


def render_clip(spec: VideoSpec, paths: list[list[tuple[float, float]]], size: int = NATIVE_SIZE) -> Clip:
    frames = len(paths[0])
    return Clip(tuple(render([Obj(m.color, m.shape, "medium", *p[t]) for m, p in zip(spec.objects, paths,
                                                                                        strict=True)], size)
                      for t in range(frames)))


def clip_metadata(spec: VideoSpec, paths: list[list[tuple[float, float]]]) -> dict:
    return {"kind": spec.kind, "canonical": spec.canonical(), "frames": len(paths[0]),
            "objects": [{"color": m.color, "shape": m.shape, "size": "medium", "direction": m.direction,
                         "cx0": p[0][0], "cy0": p[0][1], "centers": [list(c) for c in p]}
                        for m, p in zip(spec.objects, paths, strict=True)]}


def video_caption(spec: VideoSpec, rng: random.Random, paraphrase_prob: float = 0.5) -> str:
    if rng.random() >= paraphrase_prob:
        return spec.canonical()
    parts = []
    for m in spec.objects:
        to = f"to the {m.direction}" if m.direction in ("left", "right") else m.direction
        parts.append("a " + rng.choice(_MOTION).format(c=m.color, s=m.shape, d=m.direction, to=to))
    if len(parts) == 2 and rng.random() < 0.5:
        parts.reverse()
    return " and ".join(parts)


def make_clip(index: int, seed: int = 0, size: int = NATIVE_SIZE, split: str = "train", frames: int = FRAMES,
              paraphrase_prob: float = 0.5) -> Sample:
    """Clip `index` of the dataset with this seed, split and length: deterministic, independent of any other."""
    _check(size, frames, split)
    rng = random.Random(f"shapes-video:{seed}:{split}:{index}")
    spec = random_video_spec(rng, split)
    paths = place(spec, rng, frames)
    caption = video_caption(spec, rng, paraphrase_prob)
    return Sample(render_clip(spec, paths, size), caption, clip_metadata(spec, paths), key=f"{index:08d}")


def iter_clips(n: int | None = None, seed: int = 0, size: int = NATIVE_SIZE, split: str = "train", start: int = 0,
               step: int = 1, frames: int = FRAMES) -> Iterator[Sample]:
    """Clips start, start+step, ... (n of them, or forever); arguments checked before the first is drawn."""
    _check(size, frames, split)
    return (make_clip(start + k * step, seed, size, split, frames)
            for k in (range(n) if n is not None else itertools.count()))


def render_video_prompt(prompt: str, seed: int = 0, size: int = NATIVE_SIZE, frames: int = FRAMES
                        ) -> tuple[Clip, dict]:
    """Ground truth for a canonical clip caption: a random start that satisfies it, and its metadata."""
    _check(size, frames, "all")
    spec = parse_video_prompt(prompt)
    paths = place(spec, random.Random(f"video-prompt:{seed}:{spec.canonical()}"), frames)
    return render_clip(spec, paths, size), clip_metadata(spec, paths)


def parse_frames_spec(spec: str) -> int:
    """'shapes-video' -> 8, 'shapes-video:frames=4' -> 4."""
    rest = spec[len("shapes-video"):]
    if not rest:
        return FRAMES
    m = re.fullmatch(r":frames=(\d+)", rest)
    if not m:
        raise UserError(f"bad shapes-video spec {spec!r}; write 'shapes-video' or 'shapes-video:frames=N' "
                        f"(N in {MIN_FRAMES}..{MAX_FRAMES})")
    frames = int(m.group(1))
    _check(NATIVE_SIZE, frames, "train")
    return frames


# ---------------------------------------------------------------------------------------------- sketches
def sketch(meta: dict, size: int = NATIVE_SIZE) -> Image.Image:
    """The sketch of a `shapes` scene (its metadata): each object's outline -- the pixels of its half-covered
    mask within 2 px of the mask's boundary at 64 px -- in gray on white, no colour. Drawn at 64 px and
    resized, so an outline is the same fraction of the side at every size."""
    ink = np.zeros((NATIVE_SIZE, NATIVE_SIZE), dtype=bool)
    for o in meta["objects"]:
        r, n = SIZES[o["size"]], NATIVE_SIZE
        x0, y0 = max(int((o["cx"] - r) * n) - 1, 0), max(int((o["cy"] - r) * n) - 1, 0)  # the object's box
        x1, y1 = min(int((o["cx"] + r) * n) + 2, n), min(int((o["cy"] + r) * n) + 2, n)
        mask = shape_coverage(o["shape"], o["cx"], o["cy"], r, n, x0, y0, x1, y1) >= 0.5
        inside = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # distance to the outside
        ink[y0:y1, x0:x1] |= mask & (inside <= SKETCH_WIDTH)
    out = np.empty((NATIVE_SIZE, NATIVE_SIZE, 3), dtype=np.uint8)
    out[:] = SKETCH_PAPER
    out[ink] = SKETCH_INK
    im = Image.fromarray(out, "RGB")
    return im if size == NATIVE_SIZE else im.resize((size, size), Image.Resampling.NEAREST)


def sketch_objects(image: Image.Image) -> list[tuple[float, float]]:
    """The centres (fractions of the side) of the outlines a sketch holds, read back from its pixels: what
    sketch-to-image must place its objects at. The outlines' filled boxes give each centre."""
    a = np.asarray(image.convert("L").resize((NATIVE_SIZE, NATIVE_SIZE), Image.Resampling.NEAREST))
    filled = ndimage.binary_fill_holes(a < 160)
    labels, _ = ndimage.label(filled)
    out = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        (y0, y1), (x0, x1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
        if (y1 - y0) * (x1 - x0) >= 16:
            out.append(((x0 + x1) / 2 / NATIVE_SIZE, (y0 + y1) / 2 / NATIVE_SIZE))
    return sorted(out, key=lambda c: (c[1], c[0]))
