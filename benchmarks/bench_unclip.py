"""DALL-E 2 / unCLIP: train the quick preset (BPE, CLIP, prior, decoder, SR), then measure what the issue asks.

* ShapesBench at 64 px (600 prompts) of the whole chain, and of the 32 px base alone;
* the paper's ablation on the same weights and budget: the decoder given the prior's sampled image
  embedding (the preset), the caption's CLIP text embedding zero-shot (`embedding=text`), and, with
  `--ablation RUN`, a decoder trained on text embeddings (`decoder.condition=text`, no prior);
* variation faithfulness: variations of exact renders of ShapesBench prompts, scored against their source
  captions, with the mean pixel distance to the source beside that of another exact render of the same
  caption (so that copying shows as a distance near 0, and a fresh scene of the same content as the other);
* the prior alone: mean cosine of sampled and true image embeddings on held-out captions (and novel ones)
  against the caption's text embedding; a prior-guidance and candidates sweep; `--prior-scales` trains the
  prior again at each embedding scale (0 = sqrt(d); the paper's 17.2) from the run's CLIP;
* sampling speed with the prior, decoder and SR at the preset's steps; the training curves.

    .venv/bin/python benchmarks/bench_unclip.py --train --record                        # the quick preset
    .venv/bin/python benchmarks/bench_unclip.py --preset pixel --run runs/unclip-pixel --train --record
    .venv/bin/python benchmarks/bench_unclip.py --train-ablation --record   # also trains the no-prior decoder
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np

from _common import record, train_or_resume

KINDS = ["single_object", "size", "two_object", "position", "counting"]
HEAD = ["| setting | " + " | ".join(KINDS) + " | overall | novel | images/s |", "|---|" + "---|" * (len(KINDS) + 3)]


def row(label: str, res: dict) -> str:
    return (f"| {label} | " + " | ".join(f"{res['kinds'][k]:.3f}" for k in KINDS)
            + f" | {res['overall']:.3f} | {res['novel']:.3f} | {res['sampling']['images_per_s']:.1f} |")


def variations(run: Path, n: int) -> list[str]:
    """Variations of `n` exact renders (ShapesBench prompts spread over every kind), one per source and seed."""
    import t2i
    from t2i.data.shapes import render_prompt
    from t2i.eval.shapesbench import spread_prompts
    from t2i.families.base import Input

    pipe = t2i.load(str(run))
    prompts = spread_prompts(n)
    sources = [render_prompt(p, seed=i, size=64)[0] for i, p in enumerate(prompts)]
    others = [render_prompt(p, seed=50_000 + i, size=64)[0] for i, p in enumerate(prompts)]
    images = pipe([""] * n, seeds=list(range(n)), inputs=[Input("variation", s) for s in sources])

    def dist(a: list, b: list) -> float:
        return float(np.mean([np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)).mean()
                              for x, y in zip(a, b, strict=True)]))

    def line(label: str, ims: list, folder: str) -> str:
        res = scored(ims, prompts, run / "eval" / folder)
        return (f"| {label} | " + " | ".join(f"{res['kinds'][k]:.3f}" for k in KINDS)
                + f" | {res['overall']:.3f} | {res['novel']:.3f} |")

    return ["", f"Variation faithfulness ({n} exact renders of ShapesBench prompts, each varied once, scored "
            "against its source caption; the prompt is not shown to the model):", "",
            "| images | " + " | ".join(KINDS) + " | overall | novel |", "|---|" + "---|" * (len(KINDS) + 2),
            line("variations", images, "bench_variations"), line("the sources themselves", sources, "bench_sources"),
            "", f"- mean absolute pixel distance to the source (0-255, 64 px): variations {dist(images, sources):.1f}; "
            f"another exact render of the same caption {dist(others, sources):.1f}; a copy would be 0"]


def scored(images: list, prompts: list[str], out: Path) -> dict:
    from t2i.eval.shapesbench import score_dir, write_images

    shutil.rmtree(out, ignore_errors=True)
    write_images(out, zip(images, prompts, range(len(images)), strict=True))
    return score_dir(out, progress=False)


def prior_table(run: Path, n: int, scales: list[float]) -> list[str]:
    """The prior alone, on held-out training-split captions and on novel-split ones."""
    import t2i
    from t2i.data.shapes import make_sample
    from t2i.families.unclip import Prior, prior_fit
    from t2i.train.stages import stage_data, take

    pipe = t2i.load(str(run))
    cfg = pipe.cfg
    held = take(stage_data(cfg.data, cfg.stages.prior), n, cfg.seed + 1)  # not the stage's own probe samples
    novel = [make_sample(i, seed=4242, size=stage_data(cfg.data, cfg.stages.prior).resolution, split="novel")
             for i in range(n // 2)]
    rows = ["", f"The prior alone: mean cosine of the sampled image embedding with the true image's ({len(held)} "
            f"held-out captions, {len(novel)} novel-split ones), against the caption's own CLIP text embedding:", "",
            "| prior | guidance | candidates | held-out: prior | held-out: text embedding | novel: prior | "
            "novel: text embedding |", "|---|---|---|---|---|---|---|"]

    def line(label: str, prior: Prior, g: float, k: int) -> str:
        a = prior_fit(_with(prior, g, k), held)
        b = prior_fit(_with(prior, g, k), novel)
        return (f"| {label} | {g} | {k} | {a['prior_cosine']:.3f} | {a['text_cosine']:.3f} | {b['prior_cosine']:.3f} "
                f"| {b['text_cosine']:.3f} |")

    scale = cfg.prior.scale or "sqrt(d)"
    for g, k in ((cfg.prior.sample.guidance, cfg.prior.candidates), (1.0, 1), (1.0, 2), (4.0, 2)):
        rows.append(line(f"the run's (scale {scale})", pipe.prior, g, k))
    for s in scales:
        rows.append(line(f"retrained at scale {s or 'sqrt(d)'}", _retrain_prior(run, pipe, s), cfg.prior.sample.guidance,
                         cfg.prior.candidates))
    return rows


def _with(prior, guidance: float, k: int):
    """The same prior sampled at another guidance and candidate count."""
    import dataclasses

    from t2i.families.unclip import Prior

    cfg = dataclasses.replace(prior.cfg, prior=dataclasses.replace(
        prior.cfg.prior, candidates=k, sample=dataclasses.replace(prior.cfg.prior.sample, guidance=guidance)))
    return Prior(cfg, prior.clip, prior.net)


def _retrain_prior(run: Path, pipe, scale: float):
    """The prior stage again at `scale`, from the run's CLIP and with its budget, in a folder of its own
    (resumed if it exists)."""
    import dataclasses

    from t2i.families.unclip import Prior, train_prior
    from t2i.train.rundir import write_meta
    from t2i.train.stages import Stages

    folder = run.parent / f"{run.name}-prior-scale{scale:g}"
    folder.mkdir(exist_ok=True)
    if not (folder / "run.json").exists():
        write_meta(folder, {"family": "unclip", "stages_done": ["tokenizer", "clip"]})
    cfg = dataclasses.replace(pipe.cfg, prior=dataclasses.replace(pipe.cfg.prior, scale=scale))
    net = train_prior(cfg, Stages(folder, cfg.seed), pipe.clip, progress=False)
    return Prior(cfg, pipe.clip, net)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/unclip-quick")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--set", action="append", default=[], help="extra --set for training (KEY=VALUE)")
    ap.add_argument("--train", action="store_true", help="train (or resume) the preset into --run first")
    ap.add_argument("--ablation", default=None, help="a run trained with decoder.condition=text (the no-prior "
                    "decoder); default RUN-textcond when it exists")
    ap.add_argument("--train-ablation", action="store_true", help="train (or resume) that run first")
    ap.add_argument("--ablation-only", action="store_true", help="only score the ablation run beside the preset's "
                    "figure already recorded")
    ap.add_argument("--limit", type=int, default=None, help="prompts for the main figures (default all 600)")
    ap.add_argument("--sweep-limit", type=int, default=200)
    ap.add_argument("--variations", type=int, default=200)
    ap.add_argument("--prior-n", type=int, default=1000)
    ap.add_argument("--prior-scales", default="", help="e.g. 0,17.2: retrain the prior at these scales")
    ap.add_argument("--guidance", default="1,3,5", help="decoder guidance sweep (base stage)")
    ap.add_argument("--label", default=None, help="the current-figures row (default: unclip PRESET-of-the-run)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    run = Path(args.run)
    if args.train:
        minutes = train_or_resume("unclip", args.preset, run, [x for s in args.set for x in ("--set", s)])
        print(f"training wall-clock this invocation: {minutes:.1f} min")
    ablation = Path(args.ablation or f"{run}-textcond")
    if args.train_ablation:
        minutes = train_or_resume("unclip", args.preset, ablation, ["--set", "decoder.condition=text"])
        print(f"ablation training wall-clock this invocation: {minutes:.1f} min")

    from t2i.eval.runs import evaluate
    from t2i.train.rundir import read_meta

    if args.ablation_only:
        am = read_meta(ablation)
        res = evaluate(ablation, limit=args.limit, progress=False, stop_at="base", out_name="bench_base")
        record(f"unclip ablation: a decoder trained on CLIP text embeddings (no prior), beside `{run}`", [
            f"run `{ablation}`: the preset of `{run}` with `decoder.condition=text`, training time "
            f"{sum(am['train_seconds'].values()) / 60:.1f} min ({', '.join(f'{k} {v / 60:.1f}' for k, v in am['train_seconds'].items())} min)",
            "", *HEAD, row("decoder trained on text embeddings, given the caption's text embedding", res)], args.record)
        return
    meta = read_meta(run)
    secs = meta["train_seconds"]
    training = f"{sum(secs.values()) / 60:.1f} min"
    has_sr = meta.get("sr", True)  # a latent decoder makes 64 px itself: no SR stage
    main_res = evaluate(run, limit=args.limit, progress=False)
    base_res = (evaluate(run, limit=args.limit, progress=False, stop_at="base", out_name="bench_base") if has_sr
                else main_res)
    s = main_res["sampling"]
    decoder = (f"decoder {s['sampler']} {s['steps']} (guidance {s['guidance']}) -> SR {s['sr_steps']}" if has_sr else
               f"latent decoder {s['sampler']} {s['steps']} (guidance {s['guidance']}), 64 px")
    where = "the 32 px base" if has_sr else "64 px"
    rows = [f"run `{run}` (preset `{meta.get('preset')}`), training time {training} "
            f"({', '.join(f'{k} {v / 60:.1f}' for k, v in secs.items())} min); the prior's own probe at the end: "
            f"{json.dumps({k: round(v, 3) for k, v in meta.get('prior_fit', {}).items()})}", "", *HEAD,
            row(f"prior {s['prior_steps']} steps (guidance {s['prior_guidance']}, best of {s['prior_candidates']}) -> "
                + decoder, main_res)]
    if has_sr:
        rows.append(row("the same, 32 px base alone", base_res))
    rows += ["", f"The paper's ablation at lab scale (same CLIP and budget; scored at {where}, where the "
             "embedding acts):", "", *HEAD, row("prior + decoder (the preset)", base_res),
             row("decoder given the caption's CLIP text embedding, zero-shot (no prior)",
                 evaluate(run, limit=args.limit, progress=False, stop_at="base", embedding="text",
                          out_name="bench_textemb"))]
    if (ablation / "run.json").exists():
        am = read_meta(ablation)
        rows.append(row(f"decoder trained on text embeddings (`{ablation}`, {sum(am['train_seconds'].values()) / 60:.1f}"
                        " min)", evaluate(ablation, limit=args.limit, progress=False, stop_at="base",
                                          out_name="bench_base")))
    lim, scales = args.sweep_limit, [float(x) for x in args.guidance.split(",") if x]
    if scales:
        rows += ["", f"Decoder guidance ({where}, {lim} prompts):", "", *HEAD]
    for g in scales:
        rows.append(row(f"guidance {g}", evaluate(run, limit=lim, progress=False, stop_at="base", guidance=g,
                                                  out_name="bench_sweep")))
    if args.variations:
        rows += variations(run, args.variations)
    rows += prior_table(run, args.prior_n, [float(x) for x in args.prior_scales.split(",") if x])
    rows += ["", f"- sampling speed: {s['images_per_s']:.2f} images/s (batch 64, prior + decoder"
             + (" + SR" if has_sr else "") + " at the preset's steps)"]
    curve = run / "eval.csv"
    if curve.exists():
        rows += ["", f"Training probes against minutes (base probes score {where}; the prior's are cosines):", "",
                 "| stage | step | train min | overall / prior cosine | counting | position | novel |",
                 "|---|---|---|---|---|---|---|"]
        with curve.open() as f:
            for r in csv.DictReader(f):
                first = r.get("shapesbench") or r.get("prior_cosine") or ""
                rows.append(f"| {r.get('stage', '')} | {r['step']} | {float(r['train_minutes']):.1f} | "
                            f"{float(first):.3f} | {r.get('counting', '')} | {r.get('position', '')} | "
                            f"{r.get('novel', '')} |")
    label = args.label or f"unclip {meta.get('preset')}"
    record(f"{label} preset (CLIP, prior, {'pixel-cascade' if has_sr else 'latent'} decoder)", rows, args.record,
           current={label: (
            f"{main_res['overall']:.3f} (novel {main_res['novel']:.3f}; prior {s['prior_steps']} + decoder "
            f"{s['steps']} steps" + (f" + SR {s['sr_steps']}; base alone {base_res['overall']:.3f})" if has_sr else
                                    ", latent decoder)"),
            main_res["version"].removeprefix("shapesbench-"), training)})


if __name__ == "__main__":
    main()
