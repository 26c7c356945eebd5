"""`shapes`: the embedded procedural dataset that every t2i model trains on and ShapesBench measures.

It needs no download and is exact: every image comes with the objects that are in it, so a generated image
can be checked against its caption without any learned judge. The numbers below (palette, sizes, canvas,
caption grammar, hold-out pairs) are an interface: ShapesBench, the tests and outside checks rely on them.

A scene is a list of `Obj` (colour, shape, size, centre as fractions of the side, y down). Scenes come in
GenEval's five kinds; each kind has one canonical caption (what the benchmark prompts use) and a few
paraphrases (what training also sees, so a text encoder learns language rather than string ids).

Sample `i` of seed `s` is a pure function of (s, i, split, size): any worker or DDP rank can produce any
sample without coordination, and a seed reproduces a dataset exactly.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

from t2i.data.sample import Sample
from t2i.errors import UserError

NATIVE_SIZE = 64
MIN_SIZE, MAX_SIZE = 32, 512
BACKGROUND = (245, 245, 245)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 210, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 220),
    "purple": (150, 60, 190),
    "gray": (128, 128, 128),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
# Half-extent r of the object's box, as a fraction of the side.
SIZES: dict[str, float] = {"small": 0.10, "medium": 0.15, "large": 0.22}
KINDS = ("single_object", "size", "two_object", "position", "counting")
RELATIONS = ("left of", "right of", "above", "below")
COUNTS = {"two": 2, "three": 3, "four": 4}
NUMBER_WORDS = {v: k for k, v in COUNTS.items()}

# Compositional hold-out: these (colour, shape) pairs never appear in the default training split, so
# ShapesBench's `novel` score measures whether a model composes attributes it has only seen apart.
HOLDOUT: frozenset[tuple[str, str]] = frozenset({("purple", "triangle"), ("yellow", "square"), ("cyan", "circle")})

MIN_GAP = 0.02  # bounding boxes at least this far apart (fraction of the side)
EDGE_MARGIN = 0.01  # keep objects this far from the border so resizing never clips them
SUPERSAMPLE = 4
POSITION_THRESHOLD = 0.1  # GenEval's box-size shrink factor for relations
RELATION_MARGIN = 0.06  # generated relations hold with this slack, so detection noise cannot flip them
SPLITS = ("train", "all", "novel")

_CANONICAL = {
    "single_object": "a {c} {s}",
    "size": "a {z} {c} {s}",
    "two_object": "a {c} {s} and a {c2} {s2}",
    "position": "a {c} {s} {rel} a {c2} {s2}",
    "counting": "{n} {c} {s}s",
}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_PARAPHRASES = {
    "single_object": ["there is a {c} {s}", "a picture of a {c} {s}", "one {c} {s}", "a {s} that is {c}"],
    "size": ["there is a {z} {c} {s}", "a picture of a {z} {c} {s}", "a {c} {s} that is {z}"],
    "two_object": [
        "there is a {c} {s} and a {c2} {s2}",
        "a picture of a {c} {s} and a {c2} {s2}",
        "a {c2} {s2} and a {c} {s}",
        "a {c} {s} with a {c2} {s2}",
    ],
    "position": [
        "there is a {c} {s} {rel} a {c2} {s2}",
        "a picture of a {c} {s} {rel} a {c2} {s2}",
        "a {c2} {s2} {inv} a {c} {s}",
        "the {c} {s} is {rel} the {c2} {s2}",
    ],
    "counting": ["there are {n} {c} {s}s", "a picture of {n} {c} {s}s", "{n} {s}s, all {c}"],
}


@dataclass(frozen=True)
class Obj:
    """One object in a scene; centre (cx, cy) as fractions of the side, y pointing down."""

    color: str
    shape: str
    size: str
    cx: float
    cy: float

    @property
    def r(self) -> float:
        return SIZES[self.size]


@dataclass(frozen=True)
class PromptSpec:
    """What a canonical caption asks for: the kind, the objects (without positions) and the relation."""

    kind: str
    color: str
    shape: str
    size: str | None = None  # only the `size` kind names a size
    color2: str | None = None
    shape2: str | None = None
    relation: str | None = None
    count: int = 1

    @property
    def novel(self) -> bool:
        pairs = {(self.color, self.shape)}
        if self.color2 is not None:
            pairs.add((self.color2, self.shape2))
        return bool(pairs & HOLDOUT)

    def canonical(self) -> str:
        return _format(_CANONICAL[self.kind], self)


def _format(template: str, p: PromptSpec) -> str:
    return template.format(
        c=p.color, s=p.shape, z=p.size, c2=p.color2, s2=p.shape2, rel=p.relation,
        inv=_INVERSE.get(p.relation or "", ""), n=NUMBER_WORDS.get(p.count, ""),
    )


# ----------------------------------------------------------------------------------------------- grammar
_C = "|".join(COLORS)
_S = "|".join(SHAPES)
_GRAMMAR = [
    ("single_object", re.compile(rf"a (?P<c>{_C}) (?P<s>{_S})")),
    ("size", re.compile(rf"a (?P<z>small|large) (?P<c>{_C}) (?P<s>{_S})")),
    ("two_object", re.compile(rf"a (?P<c>{_C}) (?P<s>{_S}) and a (?P<c2>{_C}) (?P<s2>{_S})")),
    ("position", re.compile(rf"a (?P<c>{_C}) (?P<s>{_S}) (?P<rel>left of|right of|above|below) a (?P<c2>{_C}) (?P<s2>{_S})")),
    ("counting", re.compile(rf"(?P<n>two|three|four) (?P<c>{_C}) (?P<s>{_S})s")),
]


def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a canonical caption; anything outside the grammar is a `UserError` that shows the grammar."""
    text = " ".join(prompt.strip().lower().split())
    for kind, pattern in _GRAMMAR:
        m = pattern.fullmatch(text)
        if m:
            g = m.groupdict()
            return PromptSpec(
                kind=kind, color=g["c"], shape=g["s"], size=g.get("z"), color2=g.get("c2"),
                shape2=g.get("s2"), relation=g.get("rel"), count=COUNTS.get(g.get("n") or "", 1),
            )
    raise UserError(
        f"prompt {prompt!r} is not a canonical ShapesBench caption; expected one of: 'a red circle', "
        "'a small red circle', 'a red circle and a blue square', 'a red circle left of a blue square', "
        "'three red circles' (colours: " + ", ".join(COLORS) + "; shapes: " + ", ".join(SHAPES) + ")"
    )


# --------------------------------------------------------------------------------------------- geometry
def boxes_apart(a: Obj, b: Obj, gap: float = MIN_GAP) -> bool:
    """True when the two bounding boxes are at least `gap` apart along some axis."""
    return (abs(a.cx - b.cx) - a.r - b.r >= gap) or (abs(a.cy - b.cy) - a.r - b.r >= gap)


def relations(a_box: tuple[float, float, float, float], b_box: tuple[float, float, float, float],
              margin: float = 0.0) -> set[str]:
    """GenEval's relative-position rule for boxes (x0, y0, x1, y1), y down.

    The offset between box centres is shrunk on each axis by 0.1 x (size of A + size of B) on that axis,
    normalised by the unshrunk offset's length; a relation holds when its component passes 0.5. A positive
    `margin` asks for the relation to hold by that much (used when generating scenes).
    """
    ca = ((a_box[0] + a_box[2]) / 2, (a_box[1] + a_box[3]) / 2)
    cb = ((b_box[0] + b_box[2]) / 2, (b_box[1] + b_box[3]) / 2)
    dims = (a_box[2] - a_box[0] + b_box[2] - b_box[0], a_box[3] - a_box[1] + b_box[3] - b_box[1])
    off = (ca[0] - cb[0], ca[1] - cb[1])
    norm = (off[0] ** 2 + off[1] ** 2) ** 0.5
    revised = [max(abs(o) - POSITION_THRESHOLD * d, 0.0) * (1 if o > 0 else -1) for o, d in zip(off, dims, strict=True)]
    if norm < 1e-9 or all(abs(v) < 1e-3 for v in revised):
        return set()
    dx, dy = revised[0] / norm, revised[1] / norm
    out = set()
    if dx < -0.5 - margin:
        out.add("left of")
    if dx > 0.5 + margin:
        out.add("right of")
    if dy < -0.5 - margin:
        out.add("above")
    if dy > 0.5 + margin:
        out.add("below")
    return out


def obj_box(o: Obj) -> tuple[float, float, float, float]:
    return (o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r)


def _relation_is_clear(a: Obj, b: Obj, rel: str) -> bool:
    """`rel` holds with margin and no other relation holds even without margin: unambiguous training data."""
    return relations(obj_box(a), obj_box(b), RELATION_MARGIN) == {rel} and relations(obj_box(a), obj_box(b)) == {rel}


# ---------------------------------------------------------------------------------------------- scenes
def _place(rng: random.Random, specs: list[tuple[str, str, str]], rel: str | None = None,
           tries: int = 200) -> list[Obj]:
    """Rejection-sample non-overlapping positions for (colour, shape, size) specs."""
    for _ in range(tries):
        objs: list[Obj] = []
        for color, shape, size in specs:
            lo = SIZES[size] + EDGE_MARGIN
            o = Obj(color, shape, size, round(rng.uniform(lo, 1 - lo), 4), round(rng.uniform(lo, 1 - lo), 4))
            if all(boxes_apart(o, p) for p in objs):
                objs.append(o)
            else:
                break
        if len(objs) == len(specs) and (rel is None or _relation_is_clear(objs[0], objs[1], rel)):
            return objs
    raise RuntimeError(f"could not place {specs} with relation {rel!r} in {tries} tries")  # not reachable with these sizes


def scene_for(spec: PromptSpec, rng: random.Random) -> list[Obj]:
    """A random layout that satisfies a prompt spec (used for training data and ground-truth renders)."""
    if spec.kind == "single_object":
        return _place(rng, [(spec.color, spec.shape, "medium")])
    if spec.kind == "size":
        return _place(rng, [(spec.color, spec.shape, spec.size or "medium")])
    if spec.kind == "counting":
        return _place(rng, [(spec.color, spec.shape, "small")] * spec.count)
    pair = [(spec.color, spec.shape, "medium"), (spec.color2 or "", spec.shape2 or "", "medium")]
    return _place(rng, pair, spec.relation if spec.kind == "position" else None)


def _allowed(pairs: list[tuple[str, str]], split: str) -> bool:
    held = [p in HOLDOUT for p in pairs]
    if split == "train":
        return not any(held)
    if split == "novel":
        return any(held)
    return True


def random_spec(rng: random.Random, split: str = "train", kind: str | None = None,
                kind_weights: Sequence[float] | None = None) -> PromptSpec:
    """Draw a prompt spec of a kind that belongs to `split`: uniform over KINDS, or by `kind_weights` (one per
    kind, in KINDS order). Uniform draws keep `rng.choice`, so the default dataset never changes."""
    if kind is None:
        kind = rng.choice(KINDS) if kind_weights is None else rng.choices(KINDS, weights=kind_weights)[0]
    while True:
        c, s = rng.choice(COLORS), rng.choice(SHAPES)
        if kind in ("two_object", "position"):
            c2 = rng.choice([x for x in COLORS if x != c])
            s2 = rng.choice(SHAPES)
            if not _allowed([(c, s), (c2, s2)], split):
                continue
            rel = rng.choice(RELATIONS) if kind == "position" else None
            return PromptSpec(kind, c, s, color2=c2, shape2=s2, relation=rel)
        if not _allowed([(c, s)], split):
            continue
        if kind == "size":
            return PromptSpec(kind, c, s, size=rng.choice(("small", "large")))
        if kind == "counting":
            return PromptSpec(kind, c, s, count=rng.choice(tuple(COUNTS.values())))
        return PromptSpec(kind, c, s)


def caption_for(spec: PromptSpec, rng: random.Random, paraphrase_prob: float = 0.5) -> str:
    """The canonical caption, or with probability `paraphrase_prob` one of the kind's paraphrases."""
    if rng.random() < paraphrase_prob:
        return _format(rng.choice(_PARAPHRASES[spec.kind]), spec)
    return spec.canonical()


def _swap_pair_colors(p: PromptSpec) -> PromptSpec | None:
    # With equal shapes, swapped colours describe the same pair (two_object) or the inverted relation,
    # which the relation edit already covers.
    return None if p.shape == p.shape2 else replace(p, color=p.color2, color2=p.color)


def _other(options: Sequence[str], *avoid: str | None) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice([o for o in options if o not in avoid])


def _perturbations(p: PromptSpec) -> list[tuple[float, Callable[[random.Random], PromptSpec | None]]]:
    """(weight, edit) pairs; each edit yields a spec that the scene of `p` cannot satisfy.

    The structural edits weigh more (relation and count 4, colour swap and size 2, any one colour or shape
    1): in-batch negatives almost never differ from the positive in just those, so without them CLIP learns
    which objects are present and ignores how they are arranged."""
    colors = (p.color, p.color2)
    out: list[tuple[float, Callable[[random.Random], PromptSpec | None]]] = [
        (1.0, lambda rng: replace(p, color=_other(COLORS, *colors)(rng))),
        (1.0, lambda rng: replace(p, shape=_other(SHAPES, p.shape)(rng))),
    ]
    if p.kind == "size":
        out.append((2.0, lambda rng: replace(p, size="large" if p.size == "small" else "small")))
    if p.kind in ("two_object", "position"):
        out += [(1.0, lambda rng: replace(p, color2=_other(COLORS, *colors)(rng))),
                (1.0, lambda rng: replace(p, shape2=_other(SHAPES, p.shape2)(rng))),
                (2.0, lambda rng: _swap_pair_colors(p))]
    if p.kind == "position":
        out.append((4.0, lambda rng: replace(p, relation=_INVERSE[p.relation or ""])))
    if p.kind == "counting":
        out.append((4.0, lambda rng: replace(p, count=rng.choice([c for c in COUNTS.values() if c != p.count]))))
    return out


def _edit_scene(spec: PromptSpec, neg: PromptSpec, objects: list[Obj], rng: random.Random) -> list[Obj]:
    """The scene of `spec` changed as little as makes it show `neg`: recoloured, reshaped or resized objects,
    the pair's centres exchanged for an inverted relation; a new layout only when the count changes."""
    if neg.count != spec.count:
        return scene_for(neg, rng)
    if neg.relation != spec.relation:  # exchanging the centres of two equal-sized objects inverts the relation
        a, b = objects
        return [replace(a, cx=b.cx, cy=b.cy), replace(b, cx=a.cx, cy=a.cy)]
    out = [replace(o, color=neg.color, shape=neg.shape) for o in objects[:1 if neg.color2 else None]]
    if neg.color2 is not None:
        out.append(replace(objects[1], color=neg.color2, shape=neg.shape2 or ""))
    if neg.size != spec.size and neg.size is not None:
        lo = SIZES[neg.size] + EDGE_MARGIN
        out = [replace(o, size=neg.size, cx=min(max(o.cx, lo), 1 - lo), cy=min(max(o.cy, lo), 1 - lo)) for o in out]
    return out


def counterfactual(sample: Sample, rng: random.Random, paraphrase_prob: float = 0.5) -> Sample | None:
    """The sample's minimal pair: its scene with one attribute changed (a colour, a shape, the size, the
    count, the relation, or the pair's colours exchanged), rendered, with a caption of the changed scene;
    None when the sample has no shapes ground truth (web data).

    Training CLIP on batches of such pairs makes each one the other's hard negative, in both directions: the
    image tower must tell a scene from its mirror and the text tower "A left of B" from "A right of B". With
    random batches alone two captions almost never differ in just that, and the model learns which objects
    are present and not how they are arranged -- the bag-of-words failure NegCLIP (Yuksekgonul et al. 2023)
    measured. Edits that would name a held-out (colour, shape) pair are redrawn, so the `novel` split stays
    unseen."""
    meta = sample.meta or {}
    if not meta.get("canonical") or "objects" not in meta:
        return None
    spec = parse_prompt(meta["canonical"])
    neg = minimal_edit(spec, rng)
    objects = _edit_scene(spec, neg, [Obj(**o) for o in meta["objects"]], rng)
    return Sample(render(objects, sample.image.size[0]), caption_for(neg, rng, paraphrase_prob),
                  metadata(neg, objects), key=f"{sample.key}~")


def minimal_edit(spec: PromptSpec, rng: random.Random) -> PromptSpec:
    """A spec of the same kind that no scene of `spec` satisfies, one attribute changed (weighted as in
    `counterfactual`), never naming a held-out pair that `spec` does not: the hard wrong caption."""
    edits = _perturbations(spec)
    weights = [w for w, _ in edits]
    for _ in range(50):
        neg = rng.choices(edits, weights=weights)[0][1](rng)
        if neg is None or neg == spec:
            continue
        pairs = {(neg.color, neg.shape), (neg.color2, neg.shape2)} - {(spec.color, spec.shape), (spec.color2, spec.shape2)}
        if not pairs & HOLDOUT:
            return neg
    raise RuntimeError(f"no minimal edit found for {spec.canonical()!r}")  # not reachable: colour edits always exist


# ------------------------------------------------------------------------------------------- rendering
def shape_coverage(shape: str, cx: float, cy: float, r: float, size: int, x0: int, y0: int, x1: int,
                   y1: int) -> np.ndarray:
    """Anti-aliased coverage alpha[h, w] of a shape (centre and half-extent as fractions of a `size`-px side) on
    the pixel window [x0, x1) x [y0, y1): the one definition of each shape, shared by the renderer and
    ShapesBench's template fit, so the scorer's idea of a square is exactly the dataset's."""
    ss = SUPERSAMPLE * size
    xs = (np.arange(x0 * SUPERSAMPLE, x1 * SUPERSAMPLE, dtype=np.float32) + 0.5) / ss - cx
    ys = (np.arange(y0 * SUPERSAMPLE, y1 * SUPERSAMPLE, dtype=np.float32) + 0.5) / ss - cy
    X, Y = xs[None, :], ys[:, None]
    if shape == "circle":
        inside = X * X + Y * Y <= r * r
    elif shape == "square":
        inside = (np.abs(X) <= r) & (np.abs(Y) <= r)
    else:  # triangle: apex at top centre, base along the bottom edge of the box
        inside = (Y <= r) & (np.abs(X) <= (Y + r) * 0.5)
    h, w = y1 - y0, x1 - x0
    return inside.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)


def _coverage(o: Obj, size: int) -> tuple[int, int, np.ndarray]:
    """Anti-aliased coverage of one object on the pixels of its box: (x0, y0, alpha[h, w])."""
    x0, y0 = max(int((o.cx - o.r) * size), 0), max(int((o.cy - o.r) * size), 0)
    x1, y1 = min(int(np.ceil((o.cx + o.r) * size)), size), min(int(np.ceil((o.cy + o.r) * size)), size)
    return x0, y0, shape_coverage(o.shape, o.cx, o.cy, o.r, size, x0, y0, x1, y1)


def render(objects: list[Obj], size: int = NATIVE_SIZE) -> Image.Image:
    """Draw a scene: 4x supersampled coverage, box-filtered, blended over the background."""
    _check(size, "all")
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = BACKGROUND
    for o in objects:
        x0, y0, a = _coverage(o, size)
        patch = img[y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]]
        a3 = a[..., None]
        patch *= 1.0 - a3
        patch += a3 * np.asarray(PALETTE[o.color], dtype=np.float32)
    return Image.fromarray(np.rint(img).astype(np.uint8), "RGB")


def metadata(spec: PromptSpec, objects: list[Obj]) -> dict:
    """The ground-truth record shipped with each sample (JSON-serialisable)."""
    return {
        "kind": spec.kind,
        "canonical": spec.canonical(),
        "objects": [asdict(o) for o in objects],
    }


def _check(size: int, split: str) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"shapes renders at {MIN_SIZE}..{MAX_SIZE} px, got {size}; pick a size in that range")
    if split not in SPLITS:
        raise UserError(f"unknown shapes split {split!r}; use one of {', '.join(SPLITS)}")


def make_sample(index: int, seed: int = 0, size: int = NATIVE_SIZE, split: str = "train",
                paraphrase_prob: float = 0.5, kind_weights: Sequence[float] | None = None) -> Sample:
    """Sample `index` of the dataset with this seed and split: deterministic, independent of any other."""
    _check(size, split)
    rng = random.Random(f"shapes:{seed}:{split}:{index}")
    spec = random_spec(rng, split, kind_weights=kind_weights)
    objects = scene_for(spec, rng)
    caption = caption_for(spec, rng, paraphrase_prob)
    return Sample(render(objects, size), caption, metadata(spec, objects), key=f"{index:08d}")


def iter_samples(n: int | None = None, seed: int = 0, size: int = NATIVE_SIZE, split: str = "train",
                 start: int = 0, step: int = 1, paraphrase_prob: float = 0.5,
                 kind_weights: Sequence[float] | None = None) -> Iterator[Sample]:
    """Samples start, start+step, ... (n of them, or forever): `step` lets ranks/workers take disjoint slices.

    Arguments are checked here, before the first sample is asked for, so a bad size or split fails before
    any output file is opened.
    """
    _check(size, split)
    return (make_sample(start + k * step, seed, size, split, paraphrase_prob, kind_weights)
            for k in (range(n) if n is not None else itertools.count()))


def parse_kind_weights(text: str) -> tuple[float, ...]:
    """'position=3,counting=2' -> one weight per KINDS entry (unnamed kinds weigh 1), for `shapes:...` specs.

    Reweighting lets a run spend more of its samples on the kinds it learns last (relations, counts)
    without changing what each sample looks like.
    """
    weights = dict.fromkeys(KINDS, 1.0)
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in weights:
            raise UserError(f"bad shapes kind weight {part.strip()!r}: write KIND=WEIGHT with KIND one of "
                            f"{', '.join(KINDS)}, e.g. 'shapes:position=3,counting=2'")
        try:
            weights[name] = float(value)
        except ValueError:
            raise UserError(f"shapes kind weight for {name} is not a number: {value.strip()!r}") from None
        if not (weights[name] >= 0 and math.isfinite(weights[name])):
            raise UserError(f"shapes kind weight for {name} must be a finite number >= 0, got {value.strip()}")
    if not sum(weights.values()) > 0:
        raise UserError("shapes kind weights are all 0; give at least one kind a positive weight")
    return tuple(weights[k] for k in KINDS)


def render_prompt(prompt: str, seed: int = 0, size: int = NATIVE_SIZE) -> tuple[Image.Image, dict]:
    """Ground truth for a canonical prompt: a random layout that satisfies it, and its metadata."""
    spec = parse_prompt(prompt)
    objects = scene_for(spec, random.Random(f"prompt:{seed}:{spec.canonical()}"))
    return render(objects, size), metadata(spec, objects)


def meta_json(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)
