"""ShapesBench validity and speed, every scorer side by side (v1, v2, v2.1; issue targets: ground truth 1.000 at every resolution
32..512, shuffled captions <= 0.02, same-kind wrong captions on generated images <= 0.01, blurred and noisy
truth >= 0.97 per kind at sigma 1.5 and >= 0.99 at sigma <= 1.2, >= 300 images/s scoring on one core).

    .venv/bin/python benchmarks/bench_shapesbench.py --record
    .venv/bin/python benchmarks/bench_shapesbench.py --generated runs/ldm-quick/eval/shapesbench ... --record

Ground truth is rendered for the fixed prompt set with several layout seeds; the shuffled control gives each
image another prompt of the set. Soft truth is what a generator's output looks like: exact renders blurred
by a Gaussian of sigma px per channel, plus noise of std 8. Speed is timed on decoded images and for the
whole `score_dir` over PNG files (decode included).

`--generated DIR ...` re-scores folders of generated images (`t2i eval` writes RUN/eval/NAME/) under every
scorer: where each older one disagrees with the default and in which direction, and how often a wrong caption
passes. Two kinds of wrong caption: one attribute changed (`shapes.minimal_edit`), which also passes, rightly,
whenever the generator drew exactly that change (a count off by one); and another benchmark prompt of the same
kind. "both pass" counts images where the caption and its one-attribute edit both pass: they contradict each
other, so every such image is a scorer error.
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
    ap.add_argument("--training", action="append", default=[], metavar="[PRESET=]TEXT",
                    help="with --generated PRESET=DIR: the training-time cell of the preset's current row (the "
                         "re-scored run's own time, if it was timed on an idle machine); repeat per preset")
    ap.add_argument("--note", action="append", default=[], metavar="[PRESET=]TEXT",
                    help="with --generated PRESET=DIR: how the images were made, kept in the preset's figure cell "
                         "(e.g. the sampler and steps); repeat per preset")
    ap.add_argument("--record", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = ap.parse_args()
    pin_one_core()
    if args.generated:
        rows, current = rescore(args.generated, args.training, args.note)
        record("ShapesBench's scorers on the same generated images", rows, args.record, current)
        return
    rows, summary = validity(args.seeds, args.scenes)
    from t2i.eval.shapesbench import DEFAULT_SCORER

    record("ShapesBench validity and speed, every scorer", rows, args.record,
           {"ShapesBench validity": (summary, DEFAULT_SCORER, "-")})


def _cells(res: dict, kinds) -> str:
    return " | ".join(f"{res['kinds'][k]:.3f}" for k in kinds) + f" | {res['overall']:.3f} | {res['novel']:.3f}"


def validity(seeds: int, n_scenes: int) -> tuple[list[str], str]:
    from t2i.data.shapes import KINDS, random_spec, render, render_prompt, scene_for
    from t2i.eval import shapesbench as sb

    default = sb.DEFAULT_SCORER
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
            if scorer == default:
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
            if scorer == default and sigma == max(SIGMAS):
                worst["soft"] = min(acc.values())

    rows += ["", "Ground truth at other resolutions (every 4th prompt, resized to 64 with a box filter):", "",
             "| scorer | " + " | ".join(str(s) for s in RESOLUTIONS) + " |", "|---" * (len(RESOLUTIONS) + 1) + "|"]
    sub = prompts[::4]
    renders = {size: [render_prompt(p, seed=i, size=size)[0] for i, p in enumerate(sub)] for size in RESOLUTIONS}
    for scorer in sb.SCORERS:
        cells = [np.mean([sb.score_image(im, p, scorer)[0] for p, im in zip(sub, renders[s], strict=True)])
                 for s in RESOLUTIONS]
        rows.append(f"| {scorer} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")

        if scorer == default:
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
    v2_rate = rate[default][1] / rate[default][0]
    summary = (f"ground truth >= {worst['truth']:.3f} per kind (32-512 px: >= {worst['resolutions']:.3f}), shuffled "
               f"captions <= {worst['shuffled']:.3f}, soft truth (blur {max(SIGMAS)} px + noise) >= {worst['soft']:.3f} "
               f"per kind, {v2_rate:,.0f} images/s")
    return rows, summary


def _same_kind_other(prompts: list[str], seed: int = 0) -> list[str]:
    """For each prompt, another prompt of the benchmark of the same kind (drawn, never the prompt itself)."""
    from t2i.data.shapes import parse_prompt

    rng, by_kind = random.Random(seed), {}
    for p in sorted(set(prompts)):
        by_kind.setdefault(parse_prompt(p).kind, []).append(p)
    out = []
    for p in prompts:
        pool = by_kind[parse_prompt(p).kind]
        q = p
        while q == p and len(pool) > 1:
            q = rng.choice(pool)
        out.append(q)
    return out


def _per_preset(values: list[str], label: str, default: str) -> str:
    """The value of `--training`/`--note` for a preset: its own `PRESET=TEXT`, else one given without a preset."""
    own = [v.partition("=")[2] for v in values if v.partition("=")[0] == label and "=" in v]
    common = [v for v in values if "=" not in v]
    return (own or common or [default])[-1]


def rescore(specs: list[str], training: list[str] | None = None, note: list[str] | None = None
            ) -> tuple[list[str], dict[str, tuple[str, str, str]]]:
    from PIL import Image

    from t2i.data.shapes import KINDS, minimal_edit, parse_prompt
    from t2i.eval import shapesbench as sb

    default = sb.DEFAULT_SCORER
    rows = ["| images | scorer | " + " | ".join(KINDS) + " | overall | novel | wrong: one attribute | "
            "wrong: same kind | both pass |", "|---" * (len(KINDS) + 7) + "|"]
    notes, current = [], {}
    for spec in specs:
        label, _, d = spec.rpartition("=")
        index = sb.read_index(d)
        prompts = [r["prompt"] for r in index]
        others = _same_kind_other(prompts)
        images = []
        for r in index:
            with Image.open(Path(d) / r["file"]) as im:
                images.append(im.convert("RGB"))
        edits = random.Random(0)
        edited = [minimal_edit(parse_prompt(p), edits).canonical() for p in prompts]
        oks, overall = {}, {}
        for scorer in sb.SCORERS:
            dets = [sb.detect(im, scorer) for im in images]
            oks[scorer] = [sb.judge(parse_prompt(p), ds)[0] for p, ds in zip(prompts, dets, strict=True)]
            one = [sb.judge(parse_prompt(w), ds)[0] for w, ds in zip(edited, dets, strict=True)]
            kind = np.mean([sb.judge(parse_prompt(w), ds)[0] for w, ds in zip(others, dets, strict=True)])
            both = sum(a and b for a, b in zip(oks[scorer], one, strict=True))
            res = sb.summarize(zip(prompts, oks[scorer], strict=True), scorer)
            overall[scorer] = res
            rows.append(f"| `{d}` | {scorer} | {_cells(res, KINDS)} | {np.mean(one):.3f} | {kind:.3f} | {both} |")
        for old in (s for s in sb.SCORERS if s != default):
            up = sum(b and not a for a, b in zip(oks[old], oks[default], strict=True))
            down = sum(a and not b for a, b in zip(oks[old], oks[default], strict=True))
            notes.append(f"- `{d}`: {old} and {default} disagree on {(up + down) / len(prompts):.1%} of {len(prompts)} "
                         f"images: {up} pass only under {default}, {down} only under {old}")
        if label:
            res = overall[default]
            olds = ", ".join(f"{s} {overall[s]['overall']:.3f}" for s in reversed(sb.SCORERS) if s != default)
            how = _per_preset(note or [], label, "")
            current[label] = (f"{res['overall']:.3f} (novel {res['novel']:.3f}, counting {res['kinds']['counting']:.2f}"
                              f"{'; ' + how if how else ''}; the same images under {olds})", default,
                              _per_preset(training or [], label, "-"))
    return [*rows, "", *notes], current


if __name__ == "__main__":
    main()
