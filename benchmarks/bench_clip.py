"""The lab CLIP's quick preset: zero-shot retrieval on held-out shapes data (target: top-1 >= 0.95).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_clip.py --train --run runs/clip-quick --record

Retrieval: for each of `--groups` groups, 100 held-out samples (a seed no training run uses) with distinct
canonical captions; each sample's own caption (canonical or paraphrase, as in training) ranks the 100
images and a hit means its own image comes first. An untrained CLIP of the same shape is the control
(chance is 0.01). The figure is an accuracy, not a timing: no throughput is recorded.

Minimal pairs (`t2i.families.clip.minimal_pairs`): held-out scenes against their counterfactuals (one
attribute changed); does the scene prefer its own caption (text) and the caption its own scene (image)?
Chance is 0.5. Retrieval cannot see a bag-of-words CLIP; this can. `--preset rerank --run runs/clip-rerank`
measures the token families' reranker.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from _common import record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/clip-quick")
    ap.add_argument("--train", action="store_true", help="train the quick preset into --run first (resumable)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--groups", type=int, default=10, help="groups of 100 candidates (queries = 100 x groups)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    t2i_cli = [sys.executable, "-m", "t2i.cli"]
    if args.train:
        cmd = [*t2i_cli, "train", "--family", "clip", "--preset", args.preset, "--data", "shapes", "--out",
               str(run), "-q"]
        if (run / "run.json").exists():
            cmd = [*t2i_cli, "train", "--resume", "--out", str(run), "-q"]
        subprocess.run(cmd, check=True)

    import t2i
    from t2i.families.clip import CLIP, Scorer, minimal_pairs, zero_shot_retrieval
    from t2i.train.rundir import read_meta

    meta = read_meta(run)
    pipe = t2i.load(run)
    torch.manual_seed(0)
    control = Scorer(pipe.cfg, pipe.tokenizer, CLIP(pipe.cfg, pipe.tokenizer.vocab_size))
    results = [("held-out, train split", zero_shot_retrieval(pipe, groups=args.groups)),
               ("held-out, novel split (hold-out colour/shape pairs)",
                zero_shot_retrieval(pipe, groups=max(args.groups // 2, 1), split="novel")),
               ("control: untrained CLIP, train split", zero_shot_retrieval(control, groups=args.groups))]
    kinds = list(results[0][1]["kinds"])
    tc = pipe.cfg.stages.clip
    rows = [f"run `{run}` (preset `{meta.get('preset')}`): {tc.steps} steps x batch {tc.batch_size}, "
            f"{meta['params']['clip'] / 1e6:.2f} M parameters", "",
            "| candidates from | queries | top-1 | top-5 | " + " | ".join(kinds) + " |",
            "|---|---|---|---|" + "---|" * len(kinds)]
    for name, r in results:
        rows.append(f"| {name} | {r['queries']} | {r['top1']:.3f} | {r['top5']:.3f} | "
                    + " | ".join(f"{r['kinds'].get(k, float('nan')):.3f}" for k in kinds) + " |")
    pairs = [("this run", minimal_pairs(pipe)), ("control: untrained CLIP", minimal_pairs(control))]
    edits = list(pairs[0][1]["edits"])
    rows += ["", "Minimal pairs (held-out scene against its counterfactual; chance 0.5; per edit: text side):", "",
             "| CLIP | pairs | text | image | " + " | ".join(edits) + " |", "|---|---|---|---|" + "---|" * len(edits)]
    for name, r in pairs:
        rows.append(f"| {name} | {r['pairs']} | {r['text']:.3f} | {r['image']:.3f} | "
                    + " | ".join(f"{r['edits'].get(k, float('nan')):.3f}" for k in edits) + " |")
    top1 = results[0][1]["top1"]
    rows += ["", f"- zero-shot retrieval top-1 (caption -> image among 100): {top1:.3f} "
             f"({'meets' if top1 >= 0.95 else 'below'} the 0.95 target)"]
    minutes = sum(meta["train_seconds"].values()) / 60
    record(f"CLIP {meta.get('preset')} preset: zero-shot retrieval and minimal pairs", rows, args.record,
           current={f"clip {meta.get('preset')}": (f"retrieval top-1 {top1:.3f}, minimal pairs {pairs[0][1]['text']:.3f} "
                                                   f"/ {pairs[0][1]['image']:.3f} (text / image)", "-",
                                                   f"{minutes:.1f} min")})


if __name__ == "__main__":
    main()
