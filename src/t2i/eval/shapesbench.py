"""ShapesBench: an exact compositional benchmark on the shapes dataset (GenEval's categories).

No learned judge: every pixel is explained as a blend of the background and one palette colour (anti-aliased
and blurred edges lie on that line, so they keep their object's colour), pixels at least half-covered form
connected components per colour, and small specks are dropped. Scorer v2 then judges each object the way the
eye does on soft images: a component that falls apart at a higher coverage level is split (blur joins
touching objects), and each object's soft coverage, rim included, is fitted to the three shape templates
rendered at the size its area implies and blurred over a range of widths; the best fit gives the shape, and
the fitted template gives size and box (a blob that fits none is `unknown`).

v2.1 (`shapesbench-v2.1`, the default) adds what the eye does with a blob between two shapes: it names
neither. When the runner-up template fits almost as well as the best (misfit ratio below MIN_MARGIN), the
object is `unknown`. Exact and blurred renders never come near that (ratio >= 3.2 at blur 1.5 px plus
noise), but a weak generator's blobs do, and under v2 a third of them passed by luck on the shape named.
v2 (`scorer="v2"`) and v1 (`scorer="v1"`, the thresholded mask: fill > 0.9 -> square, which called soft
squares circles) stay selectable so that older figures can be reproduced.

An image passes when it holds exactly the objects its caption names and nothing else, with the named
attributes and relation. The score is the unweighted mean over kinds (GenEval's convention); prompts that
use a hold-out (colour, shape) pair are reported apart as `novel`. The prompt list is the same under both
scorers.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from t2i.data.shapes import (
    BACKGROUND,
    COLORS,
    KINDS,
    NATIVE_SIZE,
    PALETTE,
    SHAPES,
    SIZES,
    PromptSpec,
    parse_prompt,
    random_spec,
    relations,
    shape_coverage,
)
from t2i.errors import UserError
from t2i.images import frame_count, save_media

# The prompt list is seeded by this name and stays the same under every scorer, so figures compare across
# scorer versions on the same images.
PROMPT_SET = "shapesbench-v1"
VERSION = "shapesbench-v2.1"  # the default scorer's name, what a result records
PROMPTS_PER_KIND = 100
NOVEL_PER_KIND = 20
MIN_AREA = 20  # px at 64x64: the smallest object (small triangle) covers ~80; specks below this are noise
MAX_RESIDUAL = 60.0  # RGB distance from the nearest background-to-colour line; beyond it a pixel is off-palette
FAINT = 0.2  # coverage below which a pixel's colour means nothing (noise and the faint rims of blurred objects)
_SIZE_EDGES = ((SIZES["small"] + SIZES["medium"]), (SIZES["medium"] + SIZES["large"]))  # box sides between sizes

_BG = np.asarray(BACKGROUND, dtype=np.float32)
_DIRS = np.stack([np.asarray(PALETTE[c], dtype=np.float32) - _BG for c in COLORS])  # (K, 3)
_DIR_NORM2 = (_DIRS**2).sum(axis=1)


@dataclass(frozen=True)
class Detection:
    """One object found in an image; box (x0, y0, x1, y1) as fractions of the side, y down."""

    color: str  # a palette name, or "other" for an off-palette blob
    shape: str
    size: str
    box: tuple[float, float, float, float]
    area: int


# -------------------------------------------------------------------------------------------- prompts
def benchmark_prompts(per_kind: int = PROMPTS_PER_KIND, novel_per_kind: int = NOVEL_PER_KIND) -> list[str]:
    """The fixed, versioned prompt list: `per_kind` canonical prompts of each kind, then the novel ones.

    Kinds with few distinct prompts cycle through all of them in a fixed shuffled order, so each appears
    equally often; kinds with many draw distinct prompts. Fixed seeds make the list part of `PROMPT_SET`.
    """
    out: list[str] = []
    for split, count in (("train", per_kind), ("novel", novel_per_kind)):
        for kind in KINDS:
            rng = random.Random(f"{PROMPT_SET}:{split}:{kind}")
            distinct: list[str] = []
            seen: set[str] = set()
            for _ in range(20000):  # enumerate the kind's prompt space (small kinds exhaust it)
                p = random_spec(rng, split, kind).canonical()
                if p not in seen:
                    seen.add(p)
                    distinct.append(p)
                if len(distinct) >= count:
                    break
            out.extend(distinct[i % len(distinct)] for i in range(count))
    return out


# ---------------------------------------------------------------------------------------------- detect
def _to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if image.size != (NATIVE_SIZE, NATIVE_SIZE):
        # BOX keeps edge pixels on the colour-background line that the unmixing relies on.
        image = image.resize((NATIVE_SIZE, NATIVE_SIZE), Image.BOX)
    return np.asarray(image, dtype=np.float32)


def _unmix(px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: nearest palette colour index, its coverage alpha in [0, 1], the off-line residual, and the
    coverage along every colour's line (h, w, K), which v2 reads in an object's soft rim.

    Pixels below FAINT coverage along every line skip the residual, most of the cost: no rule reads their
    colour or residual (they are never foreground, and v2 takes a faint rim pixel whatever its colour)."""
    d = px.reshape(-1, 3) - _BG  # (N, 3)
    a = np.clip(d @ _DIRS.T / _DIR_NORM2, 0.0, 1.0)  # (N, K) coverage along each colour's line
    k = a.argmax(1)
    alpha = a[np.arange(len(k)), k]
    res = np.zeros(len(k), dtype=np.float32)
    live = np.flatnonzero(alpha >= FAINT)
    al = a[live]
    r = ((d[live][:, None, :] - al[..., None] * _DIRS[None]) ** 2).sum(-1)  # (n, K)
    kl = r.argmin(1)
    idx = np.arange(len(kl))
    k[live], alpha[live], res[live] = kl, al[idx, kl], np.sqrt(r[idx, kl])
    shape = px.shape[:2]
    return k.reshape(shape), alpha.reshape(shape), res.reshape(shape), a.reshape(*shape, -1)


def _components(px: np.ndarray) -> tuple[list[tuple[int, tuple[slice, slice], np.ndarray]], tuple]:
    """Connected components of at-least-half-covered pixels per colour (off-palette pixels form colour K),
    specks dropped: [(colour index, bounding slice, mask within it)], and the unmixing they came from."""
    k, alpha, residual, a_all = _unmix(px)
    fg = alpha >= 0.5
    off = fg & (residual > MAX_RESIDUAL)
    labels = np.where(off, len(COLORS), k)
    comps = []
    for ci in np.unique(labels[fg]).tolist():  # only the colours present: labelling is most of the cost
        comp, n = ndimage.label(fg & (labels == ci))
        for sl, idx in zip(ndimage.find_objects(comp), range(1, n + 1), strict=True):
            mask = comp[sl] == idx
            if int(mask.sum()) >= MIN_AREA:
                comps.append((ci, sl, mask))
    return comps, (k, alpha, a_all)


def _shape_of(mask: np.ndarray) -> str:
    h, w = mask.shape
    rows = mask.sum(1).astype(np.float32)
    half = h // 2
    top, bottom = rows[:half].sum(), rows[h - half :].sum()
    if top < 0.6 * bottom:  # a triangle puts ~1/3 as much mass in its top half as in its bottom half
        return "triangle"
    fill = mask.sum() / float(h * w)
    return "square" if fill > 0.9 else "circle"


def _size_of(side: float) -> str:
    if side < _SIZE_EDGES[0]:
        return "small"
    return "medium" if side < _SIZE_EDGES[1] else "large"


def _sorted(dets: list[Detection]) -> list[Detection]:
    return sorted(dets, key=lambda d: (d.box[1], d.box[0]))


def detect_v1(image: Image.Image | np.ndarray) -> list[Detection]:
    """v1: shape from the thresholded mask (vertical mass balance -> triangle, fill > 0.9 -> square), size and
    box from the mask's bounding box. Kept so that figures recorded under v1 can be reproduced."""
    comps, _ = _components(_to_array(image))
    dets = []
    for ci, sl, mask in comps:
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        side = max(x1 - x0, y1 - y0) / NATIVE_SIZE
        box = (x0 / NATIVE_SIZE, y0 / NATIVE_SIZE, x1 / NATIVE_SIZE, y1 / NATIVE_SIZE)
        color = COLORS[ci] if ci < len(COLORS) else "other"
        dets.append(Detection(color, _shape_of(mask), _size_of(side), box, int(mask.sum())))
    return _sorted(dets)


# v2 fits every component to the three shape templates, each blurred over a range of widths. Blur moves
# coverage outward but keeps its total and its centroid, so the template's size comes from the soft area and
# its position from the soft centroid, and only the outline decides the shape: a square with softened
# corners stays far nearer a square than the circle of the same area.
FIT_SIGMAS = (0.0, 0.5, 0.8, 1.1, 1.4, 1.8, 2.2)  # px at 64x64: from exact renders to a generator's soft edges
RIM = 4  # px around the half-covered core where a blurred object still holds coverage
MAX_MISFIT = 0.35  # squared template error per unit of area above which a blob is no shape at all
# v2.1: runner-up misfit / best misfit below which an object is between two shapes. Exact and blurred truth sit
# at >= 3.2; generated objects below 1.15 were blobs to the eye, 1.15..1.3 a mix (2026-12-02, docs/shapes.md).
MIN_MARGIN = 1.2


def _radius(shape: str, area: float) -> float:
    """Half-extent (px) of the shape whose area is `area`: circle pi r^2, square 4 r^2, triangle 2 r^2."""
    return float(np.sqrt(area / {"circle": np.pi, "square": 4.0, "triangle": 2.0}[shape]))


@functools.lru_cache(maxsize=256)
def _blur_matrices(n: int) -> np.ndarray:
    """(S, n, n) row-normalised Gaussian blurs of a length-n window, one per FIT_SIGMAS (zero outside)."""
    i = np.arange(n, dtype=np.float64)
    out = np.empty((len(FIT_SIGMAS), n, n), dtype=np.float32)
    for s, sigma in enumerate(FIT_SIGMAS):
        if sigma == 0:
            out[s] = np.eye(n)
            continue
        taps = np.arange(-int(4 * sigma) - 1, int(4 * sigma) + 2)
        norm = np.exp(-(taps**2) / (2 * sigma**2)).sum()
        out[s] = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2)) / norm
    return out


def _fit(w: np.ndarray, valid: np.ndarray, x0: int, y0: int) -> tuple[str, float, float, float, float, float]:
    """Best template for soft coverage `w` on the window at (x0, y0): (shape, cx, cy, r, misfit, margin), px
    units; margin is the runner-up's misfit over the best's."""
    mass = float(w.sum())
    ys, xs = np.indices(w.shape, dtype=np.float32)
    mx, my = float((w * xs).sum() / mass) + 0.5, float((w * ys).sum() / mass) + 0.5
    gy, gx = _blur_matrices(w.shape[0]), _blur_matrices(w.shape[1])
    best, errs = ("circle", 0.0, 0.0, 0.0, np.inf), []
    for shape in SHAPES:
        r = _radius(shape, mass)
        cy = my - r / 3 if shape == "triangle" else my  # a triangle's centroid sits a third of r below its centre
        t = shape_coverage(shape, (x0 + mx) / NATIVE_SIZE, (y0 + cy) / NATIVE_SIZE, r / NATIVE_SIZE, NATIVE_SIZE,
                           x0, y0, x0 + w.shape[1], y0 + w.shape[0])
        err = float(((((gy @ t) @ gx.transpose(0, 2, 1)) - w) ** 2 * valid).sum(axis=(1, 2)).min() / mass)
        errs.append(err)
        if err < best[4]:
            best = (shape, x0 + mx, y0 + cy, r, err)
    return (*best, sorted(errs)[1] / max(best[4], 1e-9))


SPLIT_LEVELS = (0.6, 0.7, 0.8, 0.9)  # coverage levels at which touching blurred objects come apart
SPLIT_MIN_AREA = 6  # px: a part smaller than this at a split level is a noise island, not an object
SPLIT_MIN_MISFIT = 0.05  # a component that fits one template better than this is never tried for a split (speed)


def _soft(j: int, ci: int, win: tuple[slice, slice], owner: np.ndarray, ids: np.ndarray,
          unmixed: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Component j's soft coverage on a window, and which pixels of the window are its own."""
    k, alpha, a_all = unmixed
    valid = owner[win] == j
    if ci == len(COLORS):  # off-palette: no colour line to read a rim along
        return (alpha[win] * (ids[win] == j)).astype(np.float32), valid
    valid &= (k[win] == ci) | (alpha[win] < FAINT)  # this colour's rim, or too faint to be another's
    return (a_all[win][..., ci] * valid).astype(np.float32), valid


def _split(mask: np.ndarray, sl: tuple[slice, slice], alpha: np.ndarray) -> list[np.ndarray]:
    """The parts a component falls into at the lowest higher coverage level where it does (full-size masks),
    or [] when it never does. A single blurred convex shape never falls apart (its coverage is log-concave,
    so every level set is convex); a textured generated object can, which `detect_v2` tells apart by fit."""
    for level in SPLIT_LEVELS:
        lab, n = ndimage.label(mask & (alpha[sl] >= level))
        if n < 2:
            continue
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, range(1, n + 1))
        keep = [i + 1 for i, a in enumerate(sizes) if a >= SPLIT_MIN_AREA]
        if len(keep) >= 2:
            parts = []
            for i in keep:
                part = np.zeros(alpha.shape, dtype=bool)
                part[sl] = lab == i
                parts.append(part)
            return parts
    return []


def _fit_all(cores: list[tuple[int, np.ndarray]], unmixed: tuple) -> list[tuple[str, float, float, float, float, float,
                                                                                 float]]:
    """(shape, cx, cy, r, misfit, margin, soft area) per core: each core's soft coverage (core plus rim, every rim
    pixel given to the nearest core) fitted to the blurred templates."""
    ids = np.zeros(unmixed[1].shape, dtype=np.int32)
    for j, (_, core) in enumerate(cores, 1):
        ids[core] = j
    dist, (iy, ix) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    owner = np.where(dist <= RIM, ids[iy, ix], 0)
    out = []
    for j, (ci, core) in enumerate(cores, 1):
        rows, cols = np.flatnonzero(core.any(1)), np.flatnonzero(core.any(0))
        y0, x0 = max(rows[0] - RIM, 0), max(cols[0] - RIM, 0)
        y1, x1 = min(rows[-1] + 1 + RIM, NATIVE_SIZE), min(cols[-1] + 1 + RIM, NATIVE_SIZE)
        w, valid = _soft(j, ci, (slice(y0, y1), slice(x0, x1)), owner, ids, unmixed)
        out.append((*_fit(w, valid, int(x0), int(y0)), float(w.sum())))
    return out


def detect_v2(image: Image.Image | np.ndarray, min_margin: float = 0.0) -> list[Detection]:
    """v2: components as in v1; each one's soft coverage fitted to the blurred templates. A component that
    falls apart at a higher coverage level is taken as several objects only when every part fits its template
    at least twice as well as the whole did: touching objects that blur joined fit badly as one shape (misfit
    ~0.3) and well apart (~0.005), while a textured single object fits well whole and worse in pieces.
    Shape, size and box come from the fitted templates; an object whose runner-up template fits within
    `min_margin` times the best fit's misfit is `unknown` (v2.1)."""
    comps, unmixed = _components(_to_array(image))
    if not comps:
        return []
    alpha = unmixed[1]
    cores = []
    for ci, sl, mask in comps:
        full = np.zeros(alpha.shape, dtype=bool)
        full[sl] = mask
        cores.append((ci, full))
    fits = _fit_all(cores, unmixed)
    for i in reversed(range(len(comps))):
        ci, sl, mask = comps[i]
        if fits[i][4] < SPLIT_MIN_MISFIT:  # one shape already fits: blurred-together objects fit at ~0.3
            continue
        parts = _split(mask, sl, alpha)
        if not parts:
            continue
        trial = cores[:i] + [(ci, p) for p in parts] + cores[i + 1:]
        trial_fits = _fit_all(trial, unmixed)
        if max(f[4] for f in trial_fits[i:i + len(parts)]) < fits[i][4] / 2:
            cores, fits = trial, trial_fits
    dets = []
    for (ci, _), (shape, cx, cy, r, misfit, margin, area) in zip(cores, fits, strict=True):
        if misfit > MAX_MISFIT or margin < min_margin:
            shape = "unknown"
        box = ((cx - r) / NATIVE_SIZE, (cy - r) / NATIVE_SIZE, (cx + r) / NATIVE_SIZE, (cy + r) / NATIVE_SIZE)
        color = COLORS[ci] if ci < len(COLORS) else "other"
        dets.append(Detection(color, shape, _size_of(2 * r / NATIVE_SIZE), box, round(area)))
    return _sorted(dets)


def detect_v21(image: Image.Image | np.ndarray) -> list[Detection]:
    """v2.1: v2, with blobs between two shapes called `unknown`."""
    return detect_v2(image, MIN_MARGIN)


SCORERS: dict[str, Callable[[Image.Image | np.ndarray], list[Detection]]] = {
    "v1": detect_v1, "v2": detect_v2, "v2.1": detect_v21}
DEFAULT_SCORER = "v2.1"


def version(scorer: str = DEFAULT_SCORER) -> str:
    """The name a result records: `shapesbench-v2.1`; an unknown scorer is a one-line error."""
    if scorer not in SCORERS:
        raise UserError(f"unknown ShapesBench scorer {scorer!r}; use one of {', '.join(SCORERS)} "
                        f"(v1 reproduces figures recorded before 2026-12-01, v2 those of 2026-12-01..02)")
    return f"shapesbench-{scorer}"


def detect(image: Image.Image | np.ndarray, scorer: str = DEFAULT_SCORER) -> list[Detection]:
    """Every object in an image (resized to 64x64 first), ordered top-left to bottom-right."""
    version(scorer)
    return SCORERS[scorer](image)


# ----------------------------------------------------------------------------------------------- judge
def judge(spec: PromptSpec, dets: list[Detection]) -> tuple[bool, str]:
    """Does an image with these detections satisfy the prompt? Returns (ok, reason when not)."""
    found = ", ".join(f"{d.size} {d.color} {d.shape}" for d in dets) or "nothing"
    want = spec.count if spec.kind == "counting" else (2 if spec.kind in ("two_object", "position") else 1)
    if len(dets) != want:
        return False, f"expected {want} object(s), found {len(dets)}: {found}"
    if spec.kind in ("single_object", "size", "counting"):
        for d in dets:
            if (d.color, d.shape) != (spec.color, spec.shape):
                return False, f"expected {spec.color} {spec.shape}, found {found}"
            if spec.kind == "size" and d.size != spec.size:
                return False, f"expected a {spec.size} object, found {found}"
        return True, ""
    a_want, b_want = (spec.color, spec.shape), (spec.color2, spec.shape2)
    pairs = [(dets[0], dets[1]), (dets[1], dets[0])]
    matches = [(a, b) for a, b in pairs if (a.color, a.shape) == a_want and (b.color, b.shape) == b_want]
    if not matches:
        return False, f"expected {spec.color} {spec.shape} and {spec.color2} {spec.shape2}, found {found}"
    if spec.kind == "two_object":
        return True, ""
    held: set[str] = set()
    for a, b in matches:
        held = relations(a.box, b.box)
        if spec.relation in held:
            return True, ""
    # Say what the relation was: "the opposite" and "the other axis" are different failures to fix.
    return False, f"objects right but not {spec.relation} (found {' and '.join(sorted(held)) or 'no clear relation'}): {found}"


def score_image(image: Image.Image | np.ndarray, prompt: str, scorer: str = DEFAULT_SCORER) -> tuple[bool, str]:
    return judge(parse_prompt(prompt), detect(image, scorer))


# ----------------------------------------------------------------------------------------------- score
def tally_kinds(records: Iterable[tuple[str, bool]], parse: Callable[[str], Any], kinds: Iterable[str]) -> dict:
    """Per-kind accuracy over non-novel prompts, their unweighted mean (`overall`), and `novel` apart; `parse`
    gives a prompt's spec (its `kind` and `novel`): ShapesBench's captions, or VideoBench's."""
    tally: dict[str, list[int]] = {k: [0, 0] for k in (*kinds, "novel")}
    for prompt, ok in records:
        spec = parse(prompt)
        key = "novel" if spec.novel else spec.kind
        tally[key][0] += int(ok)
        tally[key][1] += 1
    rates = {k: (c / n if n else None) for k, (c, n) in tally.items()}
    scored = [v for k, v in rates.items() if k != "novel" and v is not None]
    return {
        "overall": sum(scored) / len(scored) if scored else None,
        "kinds": {k: v for k, v in rates.items() if k != "novel"},
        "novel": rates["novel"],
        "counts": {k: n for k, (_, n) in tally.items()},
    }


def summarize(records: Iterable[tuple[str, bool]], scorer: str = DEFAULT_SCORER) -> dict:
    """ShapesBench's summary: `tally_kinds` of its five kinds, with the scorer's version."""
    return {"version": version(scorer), **tally_kinds(records, parse_prompt, KINDS)}


def read_index(directory: str | Path) -> list[dict]:
    """Read the generated-images contract: DIR/index.jsonl with {file, prompt, seed} per line."""
    directory = Path(directory)
    index = directory / "index.jsonl"
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory; pass the folder that holds index.jsonl and the PNGs")
    if not index.is_file():
        raise UserError(f"{index} not found; a ShapesBench folder needs index.jsonl ({{file, prompt, seed}} per line)")
    rows = []
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{index}:{n}: not valid JSON ({e}); each line is {{file, prompt, seed}}") from None
        if not isinstance(row, dict) or not {"file", "prompt"} <= row.keys():
            raise UserError(f"{index}:{n}: expected a JSON object with 'file' and 'prompt', got {line[:80]!r}")
        rows.append(row)
    if not rows:
        raise UserError(f"{index} is empty; generate images first (t2i generate RUN --prompts-file ...)")
    return rows


def score_dir(directory: str | Path, write: bool = True, progress: bool = True,
              scorer: str = DEFAULT_SCORER) -> dict:
    """Score a generated-images folder; writes DIR/shapesbench.json (summary plus one row per image), or
    DIR/shapesbench-v1.json under another scorer than the default, so an old figure never overwrites a new."""
    from tqdm import tqdm

    version(scorer)
    directory = Path(directory)
    rows = read_index(directory)
    for row in rows:  # validate every prompt and file before spending time on any image
        if row.get("frames", 1) != 1:
            raise UserError(f"{directory / row['file']} is a {row['frames']}-frame clip; ShapesBench scores still "
                            "images (one frame per row)")
        parse_prompt(row["prompt"])
        if not (directory / row["file"]).is_file():
            raise UserError(f"{directory / row['file']} listed in index.jsonl does not exist")
    per_image = []
    for row in tqdm(rows, desc="ShapesBench", disable=not progress, unit="img"):
        path = directory / row["file"]
        try:
            with Image.open(path) as im:
                im.load()
                ok, why = score_image(im, row["prompt"], scorer)
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"cannot decode {path}: {e}; regenerate it or drop it from index.jsonl") from None
        per_image.append({**row, "ok": ok, "reason": why})
    result = summarize(((r["prompt"], r["ok"]) for r in per_image), scorer)
    if write:
        write_result(result_path(directory, "shapesbench", scorer), {**result, "images": per_image})
    return result


def result_path(directory: str | Path, stem: str, scorer: str = DEFAULT_SCORER) -> Path:
    """Where a score of `directory` goes: STEM.json under the default scorer, STEM-SCORER.json under an older
    one, so an old figure never overwrites a new (ShapesBench's and VideoBench's results alike)."""
    version(scorer)
    return Path(directory) / (f"{stem}.json" if scorer == DEFAULT_SCORER else f"{stem}-{scorer}.json")


def write_result(path: Path, payload: dict) -> None:
    """Written whole or not at all: a scoring interrupted mid-write leaves the previous result."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def format_table(result: dict) -> str:
    """A plain-text table of per-kind accuracy, overall and novel."""
    lines = [f"ShapesBench ({result['version']})", f"{'kind':<15}{'accuracy':>9}{'n':>6}"]
    for k, v in result["kinds"].items():
        lines.append(f"{k:<15}{'-' if v is None else f'{v:.3f}':>9}{result['counts'][k]:>6}")
    lines.append(f"{'overall':<15}{'-' if result['overall'] is None else format(result['overall'], '.3f'):>9}")
    nv = result["novel"]
    lines.append(f"{'novel':<15}{'-' if nv is None else f'{nv:.3f}':>9}{result['counts']['novel']:>6}")
    return "\n".join(lines)


def spread(items: list[Any], n: int | None) -> list[Any]:
    """`n` of `items` taken evenly across the whole list (all of them for None or n >= len): prompt lists are
    grouped by kind with the novel ones last, and a partial evaluation must still reach every group. (A
    stride cut to n did not: 100 of VideoBench's 240 took every second prompt up to the 200th, no novel one.)"""
    if n is None or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def spread_prompts(n: int | None = None) -> list[str]:
    """The benchmark prompts, or `n` of them taken evenly across the list so every kind (and novel) is in."""
    return spread(benchmark_prompts(), n)


def quick_score(pipe: Callable[..., list[Image.Image]], n: int = 100, seed: int = 0,
                scorer: str = DEFAULT_SCORER) -> dict[str, float]:
    """ShapesBench on `n` prompts spread over every kind, in memory: the training-time quality probe."""
    prompts = spread_prompts(n)
    images = pipe(prompts, seed=seed)
    res = summarize(((p, score_image(im, p, scorer)[0]) for p, im in zip(prompts, images, strict=True)), scorer)
    out = {"shapesbench": res["overall"] or 0.0}
    out.update({k: v for k, v in res["kinds"].items() if v is not None})
    if res["novel"] is not None:
        out["novel"] = res["novel"]
    return out


def soften(image: Image.Image | np.ndarray, sigma: float, rng: np.random.Generator, noise: float = 8.0) -> np.ndarray:
    """An exact render made to look like a generator's output: a Gaussian blur of `sigma` px per channel and
    pixel noise of std `noise`. The scorer's tests and benchmark hold it to these images (uint8 RGB)."""
    a = np.asarray(image, dtype=np.float32)
    if sigma > 0:
        a = ndimage.gaussian_filter(a, sigma=(sigma, sigma, 0))
    return np.clip(np.rint(a + rng.normal(0.0, noise, a.shape)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- write
GENERATED = ("index.jsonl", "shapesbench*.json", "[0-9][0-9][0-9][0-9][0-9].png", "[0-9][0-9][0-9][0-9][0-9].gif")


def prepare_folder(directory: str | Path, overwrite: bool = False) -> Path:
    """Check an output folder before anything is generated, so no work is thrown away at the end: it must
    not be a file, and one that already holds generated images is refused (their index would no longer
    list them all) unless `overwrite`, which removes exactly those files first."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--out {directory} is a file; give a folder (it gets index.jsonl and one PNG per image)")
    old = sorted({f for pattern in GENERATED for f in directory.glob(pattern)}) if directory.is_dir() else []
    if old and not overwrite:
        raise UserError(f"--out {directory} already holds generated images ({len(old)} files, e.g. {old[0].name}); "
                        "choose another folder, or pass --overwrite to replace them")
    for f in old:
        f.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def write_images(directory: str | Path, items: Iterable[tuple[Any, str, int]],
                 extras: list[dict] | None = None, gif: bool = False) -> int:
    """Write (medium, prompt, seed) triples as the generated-media contract every family produces; `extras`
    (one dict per item) adds fields to each row, e.g. the request fields `--inputs` echoes. A clip is written
    as its PNG strip with `frames` in its row (and a GIF beside it with `gif`), so any reader can cut it.

    Files go first and index.jsonl last, through a temporary name: an interrupted run leaves no index, so
    it can never be scored as if it were complete.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (media, prompt, seed) in enumerate(items):
        name = f"{i:05d}.png"
        save_media(media, directory / name, gif=gif)
        frames = {"frames": frame_count(media)} if frame_count(media) > 1 else {}
        rows.append({**(extras[i] if extras else {}), "file": name, "prompt": prompt, "seed": seed, **frames})
    tmp = directory / "index.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(directory / "index.jsonl")
    return len(rows)


def write_groundtruth(directory: str | Path, size: int = NATIVE_SIZE, seed: int = 0, progress: bool = True) -> int:
    """Exact renders of the benchmark prompts: the ceiling any generator can reach, and a scorer self-check."""
    from tqdm import tqdm

    from t2i.data.shapes import render_prompt

    prompts = benchmark_prompts()
    items = (
        (render_prompt(p, seed=seed * 100_000 + i, size=size)[0], p, seed * 100_000 + i)
        for i, p in enumerate(tqdm(prompts, desc="ground truth", disable=not progress, unit="img"))
    )
    return write_images(directory, items)
