"""ShapesBench validity and speed (issue: ground truth >= 0.995 per kind, shuffled captions <= 0.02,
>= 300 images/s scoring on one core).

Ground truth is rendered for the fixed prompt set with several layout seeds; the shuffled control gives each
image another prompt of the set. Speed is timed twice: detection+judging on decoded images, and the whole
`score_dir` over PNG files (decode included).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from _common import pin_one_core, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=5, help="layout seeds of the ground truth per prompt")
    ap.add_argument("--record", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = ap.parse_args()
    pin_one_core()
    from t2i.data.shapes import KINDS, render_prompt
    from t2i.eval import shapesbench as sb

    prompts = sb.benchmark_prompts()
    rows = ["| check | " + " | ".join(KINDS) + " | overall | novel |", "|---" * (len(KINDS) + 3) + "|"]

    def row(name: str, res: dict) -> str:
        cells = [f"{res['kinds'][k]:.3f}" for k in KINDS]
        return f"| {name} | " + " | ".join(cells) + f" | {res['overall']:.3f} | {res['novel']:.3f} |"

    t_score, n_scored = 0.0, 0
    worst = None
    for seed in range(args.seeds):
        images = [render_prompt(p, seed=seed * 100_000 + i)[0] for i, p in enumerate(prompts)]
        t = time.perf_counter()
        res = sb.summarize((p, sb.score_image(im, p)[0]) for p, im in zip(prompts, images, strict=True))
        t_score += time.perf_counter() - t
        n_scored += len(images)
        if worst is None or res["overall"] < worst[1]["overall"]:
            worst = (seed, res)
        shuffled = prompts[:]
        random.Random(seed).shuffle(shuffled)
        rows.append(row(f"ground truth, seed {seed}", res))
        rows.append(row(f"shuffled captions, seed {seed}", sb.summarize(
            (p, sb.score_image(im, p)[0]) for p, im in zip(shuffled, images, strict=True))))
    with tempfile.TemporaryDirectory() as d:
        sb.write_groundtruth(d, progress=False)
        t = time.perf_counter()
        sb.score_dir(d, progress=False)
        dir_rate = len(prompts) / (time.perf_counter() - t)
    rows += ["", f"- scoring speed, decoded images: {n_scored / t_score:,.0f} images/s on one core "
             f"({n_scored} images)",
             f"- scoring speed, `score_dir` incl. PNG decode and JSON: {dir_rate:,.0f} images/s on one core"]
    record("ShapesBench validity and speed", rows, args.record)


if __name__ == "__main__":
    main()
