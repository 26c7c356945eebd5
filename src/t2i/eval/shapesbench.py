"""ShapesBench: an exact compositional benchmark on the shapes dataset (GenEval's categories).

No learned judge: every pixel is explained as a blend of the background and one palette colour (anti-aliased
edges lie on that line, so they keep their object's colour), pixels at least half-covered form connected
components per colour, small specks are dropped, and each component gets a shape (vertical mass balance
picks out triangles, fill ratio splits squares from circles), a size (box side) and a box for GenEval's
relation rule. An image passes when it holds exactly the objects its caption names and nothing else, with the
named attributes and relation. The score is the unweighted mean over kinds (GenEval's convention); prompts
that use a hold-out (colour, shape) pair are reported apart as `novel`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from t2i.data.shapes import (
    BACKGROUND,
    COLORS,
    KINDS,
    NATIVE_SIZE,
    PALETTE,
    SIZES,
    PromptSpec,
    parse_prompt,
    random_spec,
    relations,
)
from t2i.errors import UserError

VERSION = "shapesbench-v1"
PROMPTS_PER_KIND = 100
NOVEL_PER_KIND = 20
MIN_AREA = 20  # px at 64x64: the smallest object (small triangle) covers ~80; specks below this are noise
MAX_RESIDUAL = 60.0  # RGB distance from the nearest background-to-colour line; beyond it a pixel is off-palette
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
    equally often; kinds with many draw distinct prompts. Fixed seeds make the list part of `VERSION`.
    """
    out: list[str] = []
    for split, count in (("train", per_kind), ("novel", novel_per_kind)):
        for kind in KINDS:
            rng = random.Random(f"{VERSION}:{split}:{kind}")
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


def _unmix(px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: nearest palette colour index, its coverage alpha in [0, 1], and the off-line residual."""
    d = px.reshape(-1, 3) - _BG  # (N, 3)
    a = np.clip(d @ _DIRS.T / _DIR_NORM2, 0.0, 1.0)  # (N, K) coverage along each colour's line
    res = ((d[:, None, :] - a[..., None] * _DIRS[None]) ** 2).sum(-1)  # (N, K)
    k = res.argmin(1)
    idx = np.arange(len(k))
    shape = px.shape[:2]
    return k.reshape(shape), a[idx, k].reshape(shape), np.sqrt(res[idx, k]).reshape(shape)


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


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """Every object in an image (resized to 64x64 first), ordered top-left to bottom-right."""
    px = _to_array(image)
    k, alpha, residual = _unmix(px)
    fg = alpha >= 0.5
    off = fg & (residual > MAX_RESIDUAL)
    labels = np.where(off, len(COLORS), k)
    dets: list[Detection] = []
    for ci in range(len(COLORS) + 1):
        comp, n = ndimage.label(fg & (labels == ci))
        if n == 0:
            continue
        for sl, idx in zip(ndimage.find_objects(comp), range(1, n + 1), strict=True):
            mask = comp[sl] == idx
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            side = max(x1 - x0, y1 - y0) / NATIVE_SIZE
            box = (x0 / NATIVE_SIZE, y0 / NATIVE_SIZE, x1 / NATIVE_SIZE, y1 / NATIVE_SIZE)
            color = COLORS[ci] if ci < len(COLORS) else "other"
            dets.append(Detection(color, _shape_of(mask), _size_of(side), box, area))
    dets.sort(key=lambda d: (d.box[1], d.box[0]))
    return dets


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


def score_image(image: Image.Image | np.ndarray, prompt: str) -> tuple[bool, str]:
    return judge(parse_prompt(prompt), detect(image))


# ----------------------------------------------------------------------------------------------- score
def summarize(records: Iterable[tuple[str, bool]]) -> dict:
    """Per-kind accuracy over non-novel prompts, their unweighted mean (`overall`), and `novel` apart."""
    tally: dict[str, list[int]] = {k: [0, 0] for k in (*KINDS, "novel")}
    for prompt, ok in records:
        spec = parse_prompt(prompt)
        key = "novel" if spec.novel else spec.kind
        tally[key][0] += int(ok)
        tally[key][1] += 1
    kinds = {k: (c / n if n else None) for k, (c, n) in tally.items()}
    scored = [v for k, v in kinds.items() if k != "novel" and v is not None]
    return {
        "version": VERSION,
        "overall": sum(scored) / len(scored) if scored else None,
        "kinds": {k: v for k, v in kinds.items() if k != "novel"},
        "novel": kinds["novel"],
        "counts": {k: n for k, (_, n) in tally.items()},
    }


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


def score_dir(directory: str | Path, write: bool = True, progress: bool = True) -> dict:
    """Score a generated-images folder; writes DIR/shapesbench.json (summary plus one row per image)."""
    from tqdm import tqdm

    directory = Path(directory)
    rows = read_index(directory)
    for row in rows:  # validate every prompt and file before spending time on any image
        parse_prompt(row["prompt"])
        if not (directory / row["file"]).is_file():
            raise UserError(f"{directory / row['file']} listed in index.jsonl does not exist")
    per_image = []
    for row in tqdm(rows, desc="ShapesBench", disable=not progress, unit="img"):
        path = directory / row["file"]
        try:
            with Image.open(path) as im:
                im.load()
                ok, why = score_image(im, row["prompt"])
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"cannot decode {path}: {e}; regenerate it or drop it from index.jsonl") from None
        per_image.append({**row, "ok": ok, "reason": why})
    result = summarize((r["prompt"], r["ok"]) for r in per_image)
    if write:
        out = directory / "shapesbench.json"
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**result, "images": per_image}, indent=1))
        tmp.replace(out)
    return result


def format_table(result: dict) -> str:
    """A plain-text table of per-kind accuracy, overall and novel."""
    lines = [f"ShapesBench ({result['version']})", f"{'kind':<15}{'accuracy':>9}{'n':>6}"]
    for k, v in result["kinds"].items():
        lines.append(f"{k:<15}{'-' if v is None else f'{v:.3f}':>9}{result['counts'][k]:>6}")
    lines.append(f"{'overall':<15}{'-' if result['overall'] is None else format(result['overall'], '.3f'):>9}")
    nv = result["novel"]
    lines.append(f"{'novel':<15}{'-' if nv is None else f'{nv:.3f}':>9}{result['counts']['novel']:>6}")
    return "\n".join(lines)


def spread_prompts(n: int | None = None) -> list[str]:
    """The benchmark prompts, or `n` of them taken evenly across the list so every kind (and novel) is in."""
    prompts = benchmark_prompts()
    if n is None:
        return prompts
    return prompts[:: max(len(prompts) // max(n, 1), 1)][:n]


def quick_score(pipe: Callable[..., list[Image.Image]], n: int = 100, seed: int = 0) -> dict[str, float]:
    """ShapesBench on `n` prompts spread over every kind, in memory: the training-time quality probe."""
    prompts = spread_prompts(n)
    images = pipe(prompts, seed=seed)
    res = summarize((p, score_image(im, p)[0]) for p, im in zip(prompts, images, strict=True))
    out = {"shapesbench": res["overall"] or 0.0}
    out.update({k: v for k, v in res["kinds"].items() if v is not None})
    if res["novel"] is not None:
        out["novel"] = res["novel"]
    return out


# ------------------------------------------------------------------------------------------- write
def write_images(directory: str | Path, items: Iterable[tuple[Image.Image, str, int]]) -> int:
    """Write (image, prompt, seed) triples as the generated-images contract every family produces.

    PNGs go first and index.jsonl last, through a temporary name: an interrupted run leaves no index, so
    it can never be scored as if it were complete.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, prompt, seed) in enumerate(items):
        name = f"{i:05d}.png"
        image.save(directory / name)
        rows.append({"file": name, "prompt": prompt, "seed": seed})
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
