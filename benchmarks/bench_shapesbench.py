"""ShapesBench validity and speed, scorer v2 beside v1 (issue targets: ground truth 1.000 at every resolution
32..512, shuffled captions <= 0.02, same-kind wrong captions on generated images <= 0.01, blurred and noisy
truth >= 0.97 per kind at sigma 1.5 and >= 0.99 at sigma <= 1.2, >= 300 images/s scoring on one core).

    .venv/bin/python benchmarks/bench_shapesbench.py --record
    .venv/bin/python benchmarks/bench_shapesbench.py --generated runs/ldm-quick/eval/shapesbench ... --record

Ground truth is rendered for the fixed prompt set with several layout seeds; the shuffled control gives each
image another prompt of the set. Soft truth is what a generator's output looks like: exact renders blurred
by a Gaussian of sigma px per channel, plus noise of std 8. Speed is timed on decoded images and for the
whole `score_dir` over PNG files (decode included).

`--generated DIR ...` re-scores folders of generated images (`t2i eval` writes RUN/eval/NAME/) under both
scorers: where they disagree and in which direction, and how often a same-kind wrong caption (one attribute
changed: `shapes.minimal_edit`) passes, which an exact scorer keeps near 0 whatever the images show.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import pin_one_core, record

SIGMAS = (0.8, 1.2, 1.5)
RESOLUTIONS = (32, 48, 64, 96, 128, 256, 512)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="layout seeds of the ground truth per prompt")
    ap.add_argument("--scenes", type=int, default=100, help="soft-truth scenes per kind and blur")
    ap.add_argument("--generated", nargs="*", default=[], metavar="[PRESET=]DIR",
                    help="folders of generated images to re-score under v1 and v2 (skips the validity checks); "
                         "PRESET= names the current-table row the v2 figure replaces, e.g. 'ldm quick=runs/x/eval/"
                         "shapesbench'")
    ap.add_argument("--training", default="-", help="with --generated PRESET=DIR: the training-time cell of the "
                    "preset's current row (the re-scored run's own time, if it was timed on an idle machine)")
    ap.add_argument("--record", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = ap.parse_args()
    pin_one_core()
    if args.generated:
        rows, current = rescore(args.generated, args.training)
        record("ShapesBench v1 and v2 on the same generated images", rows, args.record, current)
        return
    rows, summary = validity(args.seeds, args.scenes)
    record("ShapesBench validity and speed, v2 beside v1", rows, args.record,
           {"ShapesBench validity": (summary, "v2", "-")})


def _cells(res: dict, kinds) -> str:
    return " | ".join(f"{res['kinds'][k]:.3f}" for k in kinds) + f" | {res['overall']:.3f} | {res['novel']:.3f}"


def validity(seeds: int, n_scenes: int) -> tuple[list[str], str]:
    from t2i.data.shapes import KINDS, random_spec, render, render_prompt, scene_for
    from t2i.eval import shapesbench as sb

    prompts = sb.benchmark_prompts()
    rows = ["| check | scorer | " + " | ".join(KINDS) + " | overall | novel |", "|---" * (len(KINDS) + 4) + "|"]
    rate = {s: [0.0, 0] for s in sb.SCORERS}
    worst: dict[str, float] = {}
    for seed in range(seeds):
        images = [render_prompt(p, seed=seed * 100_000 + i)[0] for i, p in enumerate(prompts)]
        shuffled = prompts[:]
        random.Random(seed).shuffle(shuffled)
        for scorer in sb.SCORERS:
            t = time.perf_counter()
            res = sb.summarize(((p, sb.score_image(im, p, scorer)[0]) for p, im in zip(prompts, images, strict=True)),
                               scorer)
            rate[scorer][0] += time.perf_counter() - t
            rate[scorer][1] += len(images)
            bad = sb.summarize(((p, sb.score_image(im, p, scorer)[0]) for p, im in zip(shuffled, images, strict=True)),
                               scorer)
            rows.append(f"| ground truth, seed {seed} | {scorer} | {_cells(res, KINDS)} |")
            if scorer == "v2":
                worst["truth"] = min(worst.get("truth", 1.0), *res["kinds"].values(), res["novel"])
                worst["shuffled"] = max(worst.get("shuffled", 0.0), bad["overall"])
            rows.append(f"| shuffled captions, seed {seed} | {scorer} | {_cells(bad, KINDS)} |")

    rows += ["", f"Soft truth: {n_scenes} scenes per kind, blurred by sigma px, noise std 8 (pass rate):", "",
             "| sigma | scorer | " + " | ".join(KINDS) + " | wrong captions |", "|---" * (len(KINDS) + 3) + "|"]
    from t2i.data.shapes import minimal_edit

    for sigma in SIGMAS:
        soft = {}
        for kind in KINDS:
            r, noise = random.Random(f"bench-soft:{kind}"), np.random.default_rng(int(sigma * 100))
            specs = [random_spec(r, "all", kind) for _ in range(n_scenes)]
            soft[kind] = [(s, sb.soften(render(scene_for(s, r)), sigma, noise)) for s in specs]
        for scorer in sb.SCORERS:
            acc = {k: np.mean([sb.score_image(im, s.canonical(), scorer)[0] for s, im in v]) for k, v in soft.items()}
            edits = random.Random(0)
            wrong = np.mean([sb.score_image(im, minimal_edit(s, edits).canonical(), scorer)[0]
                             for v in soft.values() for s, im in v])
            rows.append(f"| {sigma} | {scorer} | " + " | ".join(f"{acc[k]:.3f}" for k in KINDS) + f" | {wrong:.3f} |")
            if scorer == "v2" and sigma == max(SIGMAS):
                worst["soft"] = min(acc.values())

    rows += ["", "Ground truth at other resolutions (every 4th prompt, resized to 64 with a box filter):", "",
             "| scorer | " + " | ".join(str(s) for s in RESOLUTIONS) + " |", "|---" * (len(RESOLUTIONS) + 1) + "|"]
    sub = prompts[::4]
    renders = {size: [render_prompt(p, seed=i, size=size)[0] for i, p in enumerate(sub)] for size in RESOLUTIONS}
    for scorer in sb.SCORERS:
        cells = [np.mean([sb.score_image(im, p, scorer)[0] for p, im in zip(sub, renders[s], strict=True)])
                 for s in RESOLUTIONS]
        rows.append(f"| {scorer} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")

        if scorer == "v2":
            worst["resolutions"] = min(cells)
    rows.append("")
    with tempfile.TemporaryDirectory() as d:
        sb.write_groundtruth(d, progress=False)
        for scorer in sb.SCORERS:
            t = time.perf_counter()
            sb.score_dir(d, progress=False, scorer=scorer)
            dir_rate = len(prompts) / (time.perf_counter() - t)
            s, n = rate[scorer]
            rows.append(f"- scoring speed, {scorer}: {n / s:,.0f} images/s on decoded images ({n} images), "
                        f"{dir_rate:,.0f} images/s through `score_dir` incl. PNG decode and JSON; one core")
    v2_rate = rate["v2"][1] / rate["v2"][0]
    summary = (f"ground truth >= {worst['truth']:.3f} per kind (32-512 px: >= {worst['resolutions']:.3f}), shuffled "
               f"captions <= {worst['shuffled']:.3f}, soft truth (blur {max(SIGMAS)} px + noise) >= {worst['soft']:.3f} "
               f"per kind, {v2_rate:,.0f} images/s")
    return rows, summary


def rescore(specs: list[str], training: str = "-") -> tuple[list[str], dict[str, tuple[str, str, str]]]:
    from PIL import Image

    from t2i.data.shapes import KINDS, minimal_edit, parse_prompt
    from t2i.eval import shapesbench as sb

    rows = ["| images | scorer | " + " | ".join(KINDS) + " | overall | novel | wrong captions |",
            "|---" * (len(KINDS) + 5) + "|"]
    notes, current = [], {}
    for spec in specs:
        label, _, d = spec.rpartition("=")
        index = sb.read_index(d)
        prompts = [r["prompt"] for r in index]
        images = []
        for r in index:
            with Image.open(Path(d) / r["file"]) as im:
                images.append(im.convert("RGB"))
        oks, overall = {}, {}
        for scorer in sb.SCORERS:
            edits = random.Random(0)
            oks[scorer] = [sb.score_image(im, p, scorer)[0] for p, im in zip(prompts, images, strict=True)]
            wrong = np.mean([sb.score_image(im, minimal_edit(parse_prompt(p), edits).canonical(), scorer)[0]
                             for p, im in zip(prompts, images, strict=True)])
            res = sb.summarize(zip(prompts, oks[scorer], strict=True), scorer)
            overall[scorer] = res
            rows.append(f"| `{d}` | {scorer} | {_cells(res, KINDS)} | {wrong:.3f} |")
        up = sum(b and not a for a, b in zip(oks["v1"], oks["v2"], strict=True))
        down = sum(a and not b for a, b in zip(oks["v1"], oks["v2"], strict=True))
        notes.append(f"- `{d}`: v1 and v2 disagree on {(up + down) / len(prompts):.1%} of {len(prompts)} images: "
                     f"{up} pass only under v2, {down} only under v1")
        if label:
            v1, v2 = overall["v1"], overall["v2"]
            current[label] = (f"{v2['overall']:.3f} (counting {v2['kinds']['counting']:.2f}; the same images under v1 "
                              f"{v1['overall']:.3f}, counting {v1['kinds']['counting']:.2f})", "v2", training)
    return [*rows, "", *notes], current


if __name__ == "__main__":
    main()
