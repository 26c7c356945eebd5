"""NUWA: train the quick preset (BPE, VQ, the multi-task 3D encoder-decoder), then measure what the issue asks.

* VideoBench on every task: text-to-video (240 prompts, with `novel`), video prediction, sketch-to-image and
  image completion (200 requests each), and ShapesBench text-to-image (600 prompts);
* sampling speed (clips/s), and the KV cache's speed-up on 512-token clips with identical samples checked;
* `--ablation attention`: nearby against full and axial attention, each a transformer trained for the same
  steps on the quick run's tokenizer and VQ (`--image-tokenizer`): quality and training samples/s;
* `--ablation tasks`: the multi-task mix against single-task runs of the same steps;
* the training curve (eval.csv);
* `--sweep top_k=1,temperature=0.7`: sampling settings compared on the same weights, every task (repeatable;
  `--n` requests per task).

    .venv/bin/python benchmarks/bench_nuwa.py --train --record
    .venv/bin/python benchmarks/bench_nuwa.py --ablation attention --ablation tasks --record
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from _common import record, train_or_resume

TASK_NAMES = {"t2i": "text-to-image", "t2v": "text-to-video", "predict": "video prediction",
              "sketch": "sketch-to-image", "complete": "image completion"}


def evaluate(run: Path, n: int | None, reuse: bool = False, rescore: bool = False) -> dict:
    """ShapesBench (t2i) and VideoBench (the rest) of `run`, at the preset's sampling settings; with `reuse`,
    the scores an earlier invocation of this function left in RUN/eval/ (an interrupted benchmark's arms); with
    `rescore`, the outputs it left there judged again by today's scorer (sampling speeds as they were timed)."""
    import t2i
    from t2i.eval import shapesbench as sbench
    from t2i.eval import videobench as vbench
    from t2i.eval.runs import evaluate as shapesbench
    from t2i.eval.runs import evaluate_suites

    done = [run / "eval" / f for f in ("shapesbench.json", "videobench.json")]
    if rescore:
        old_sb, old_vb = (json.loads(f.read_text()) for f in done)
        sb = {**sbench.score_dir(run / "eval" / "shapesbench", write=False, progress=False),
              "sampling": old_sb["sampling"]}
        vb = vbench.score_dir(run / "eval" / "videobench", write=False, progress=False)
        seconds = old_vb["sampling"]["seconds"]
    elif reuse and all(f.is_file() for f in done):
        sb, vb = (json.loads(f.read_text()) for f in done)
        seconds = vb["sampling"]["seconds"]
    else:
        pipe = t2i.load(str(run))
        opts = pipe.options(candidates=1)
        sb = shapesbench(run, limit=n, progress=False, candidates=1)
        t0 = time.perf_counter()
        vb = evaluate_suites(run, pipe, opts, limit=n, progress=False)
        seconds = time.perf_counter() - t0
    out = {"t2i": sb["overall"], "t2i_novel": sb["novel"], "t2i_kinds": sb["kinds"],
           "images_per_s": sb["sampling"]["images_per_s"], "video_seconds": seconds}
    for task, s in vb["tasks"].items():
        out[task] = s["overall"]
        if task == "t2v":
            out["t2v_novel"], out["t2v_kinds"] = s["novel"], s["kinds"]
    return out


def clip_speed(run: Path, batch: int = 8) -> tuple[float, float, bool]:
    """Clips/s of text-to-video with and without the KV cache on `batch` clips (512 tokens each at the quick
    preset), and whether the two gave identical clips."""
    import t2i
    from t2i.eval.videobench import video_prompts

    pipe = t2i.load(str(run))
    prompts = video_prompts()[:batch]
    rates, outs = [], []
    for cache in (True, False):
        pipe.use_cache = cache
        t0 = time.perf_counter()
        outs.append(pipe(prompts, seed=0, candidates=1))
        rates.append(batch / (time.perf_counter() - t0))
    pipe.use_cache = True
    same = all(a.strip().tobytes() == b.strip().tobytes() for a, b in zip(*outs, strict=True))
    return rates[0], rates[1], same


def validity() -> list[str]:
    """VideoBench on exact answers (every prompt and 200 requests per task), on frozen, flipped and reversed
    clips, and the dataset's speed: what the scorer and the data must hold before any model figure counts."""
    from t2i.data.video import make_clip, parse_video_prompt, render_video_prompt
    from t2i.eval import videobench as vb
    from t2i.images import Clip

    flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
    prompts = vb.video_prompts()
    tally = {"truth": 0, "frozen": 0, "flipped": 0, "reversed": 0}
    for i, p in enumerate(prompts):
        clip, _ = render_video_prompt(p, seed=i)
        flipped = " and ".join(f"a {m.color} {m.shape} moving {flip[m.direction]}"
                               for m in parse_video_prompt(p).objects)
        tally["truth"] += vb.score_clip(clip, p)[0]
        tally["frozen"] += vb.score_clip(Clip((clip.frames[0],) * len(clip)), p)[0]
        tally["flipped"] += vb.score_clip(clip, flipped)[0]
        tally["reversed"] += vb.score_clip(Clip(clip.frames[::-1]), p)[0]
    tasks = {}
    for task in ("predict", "sketch", "complete"):
        rows = [{**r, "task": task, "file": "-"} for r in vb.task_requests(task, 200)]
        tasks[task] = sum(vb.score_media(task, vb.task_truth(r), r)[0] for r in rows) / len(rows)
    t0 = time.perf_counter()
    for i in range(500):
        make_clip(i)
    rate = 500 / (time.perf_counter() - t0)
    n = len(prompts)
    return [f"- VideoBench on exact clips ({n} prompts): {tally['truth'] / n:.3f}; frozen on the first frame "
            f"{tally['frozen'] / n:.3f}, directions flipped {tally['flipped'] / n:.3f}, played backwards "
            f"{tally['reversed'] / n:.3f}",
            "- exact answers per task (200 requests): " + ", ".join(f"{t} {v:.3f}" for t, v in tasks.items()),
            f"- shapes-video: {rate:.0f} clips/s at 8 x 64 x 64 (one process)"]


def ablation_run(base: Path, name: str, sets: list[str], steps: int) -> Path:
    """A transformer trained for `steps` on `base`'s tokenizer and VQ with `sets`, resumable."""
    run = base.parent / f"{base.name}-{name}"
    extra = ["--image-tokenizer", str(base), "--set", f"stages.transformer.steps={steps}",
             "--set", f"stages.transformer.eval_every={steps}", "--set", f"stages.transformer.sample_every={steps}",
             "--set", "data.cache=8000", "--set", "tasks.clip_cache=3000", *[a for s in sets for a in ("--set", s)]]
    minutes = train_or_resume("nuwa", "quick", run, extra)
    print(f"{run}: {minutes:.1f} min")
    return run


def samples_per_s(run: Path) -> float:
    """Training throughput of the transformer stage in clip-equivalents (16 clips or 128 images a step)."""
    rows = [r for r in csv.DictReader((run / "log.csv").open()) if r["stage"] == "transformer" and r.get("it_per_s")]
    rates = [float(r["it_per_s"]) for r in rows[len(rows) // 4:]]  # past the warm-up
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return sum(rates) / len(rates) * cfg["stages"]["transformer"]["batch_size"]


def heldout_loss(run: Path, n: int = 64) -> dict[str, float]:
    """Cross-entropy per code (nats) on held-out samples, the measure that still tells arms apart where their
    samples all fail VideoBench: `n` captioned clips (t2v), the same clips with the empty caption scored after
    the given frames (predict), and 2n captioned images (t2i)."""
    import torch

    import t2i
    from t2i.data.shapes import make_sample
    from t2i.data.video import make_clip
    from t2i.images import images_to_tensor

    pipe = t2i.load(str(run))
    cfg, net, vq, tok = pipe.cfg, pipe.net.eval(), pipe.vq, pipe.tokenizer
    side = pipe.vq.grid(64)
    clips = [make_clip(i, seed=30_000, split="all", frames=cfg.tasks.frames) for i in range(n)]
    images = [make_sample(i, seed=30_000, split="all") for i in range(2 * n)]
    out = {}
    with torch.no_grad():
        for name, samples, caption, skip in (("t2v", clips, True, 0), ("predict", clips, False, cfg.tasks.context),
                                              ("t2i", images, True, 0)):
            x = images_to_tensor([s.image for s in samples])
            codes = vq.encode(x.flatten(0, 1) if x.dim() == 5 else x).reshape(len(samples), -1)
            ids, mask = tok.encode([s.caption if caption else "" for s in samples], cfg.text.max_len)
            out[name] = float(net.loss(net.prepare(ids, mask), codes, skip * side * side))
    return out


def sketch_fidelity(vq, n: int = 200) -> tuple[float, float]:
    """How much of a sketch survives a VQ round trip, on the `n` sketch-to-image requests of VideoBench:
    the fraction whose outlines read back (`sketch_objects`: same count, each centre within 0.02) and the
    mean IoU of the ink (pixels darker than 160)."""
    import numpy as np
    import torch

    from t2i.data.video import sketch_objects
    from t2i.eval import videobench as vb
    from t2i.images import images_to_tensor, tensor_to_images

    src = [r["image"] for r in vb.task_requests("sketch", n)]
    with torch.no_grad():
        rec = tensor_to_images(vq.decode(vq.encode(images_to_tensor(src))))
    kept, iou = 0, []
    for a, b in zip(src, rec, strict=True):
        ca, cb = sketch_objects(a), sketch_objects(b)
        kept += len(ca) == len(cb) and all(min(np.hypot(x - u, y - v) for u, v in cb) <= 0.02 for x, y in ca)
        ia, ib = (np.asarray(im.convert("L")) < 160 for im in (a, b))
        iou.append((ia & ib).sum() / max((ia | ib).sum(), 1))
    return kept / n, float(np.mean(iou))


def sketch_vq(run: Path, steps: int) -> list[str]:
    """Shared VQ or one of their own for sketches (NUWA used a separate VQ-GAN): the run's image VQ against a
    VQ of the same configuration trained on sketches of `shapes` scenes for `steps` steps (in
    RUN-sketch-vq/, resumable), compared on what a sketch keeps through each."""
    import dataclasses
    from itertools import islice

    from t2i.codecs.vq import ImageTokenizer
    from t2i.data.sources import open_source
    from t2i.data.video import sketch
    from t2i.families import read_config
    from t2i.families.tokens.stages import VQStage
    from t2i.images import images_to_tensor
    from t2i.train.rundir import load_part, write_meta
    from t2i.train.stages import Stages, stage_data

    cfg_family, cfg = read_config(run)
    shared = load_part(ImageTokenizer(cfg.vq), run, "vq")
    own_run = run.parent / f"{run.name}-sketch-vq"
    own_run.mkdir(exist_ok=True)
    if not (own_run / "run.json").is_file():
        write_meta(own_run, {"family": cfg_family.name, "preset": "sketch-vq (bench_nuwa.py)", "stages_done": []})
    stages, tc = Stages(own_run, cfg.seed), dataclasses.replace(cfg.stages.vq, steps=steps, sample_every=0)
    data = stage_data(cfg.data, tc)
    if stages.todo("vq"):
        def sketches(start: int):  # shapes is index-addressed, so `start` resumes exactly
            stream = open_source(data.train_spec(), resolution=data.resolution, seed=cfg.seed, start=start)
            while True:
                yield {"image": images_to_tensor([sketch(s.meta) for s in islice(stream, tc.batch_size)])}
        stages.fit("vq", VQStage(ImageTokenizer(cfg.vq)), tc, {"vq": "vq"}, sketches, None, progress=True)
        stages.finish("vq")
    own = load_part(ImageTokenizer(cfg.vq), own_run, "vq")
    minutes = stages.meta["train_seconds"]["vq"] / 60
    rows = ["| sketch tokens | outlines read back (count, centres within 0.02) | ink IoU |", "|---|---|---|"]
    for label, vq in ((f"shared: the run's image VQ ({cfg.stages.vq.steps} steps on scenes and frames)", shared),
                      (f"their own: the same VQ trained on sketches, {steps} steps ({minutes:.1f} min)", own)):
        kept, iou = sketch_fidelity(vq)
        rows.append(f"| {label} | {kept:.3f} | {iou:.3f} |")
    return rows


def parse_setting(text: str) -> dict[str, float | int]:
    """'top_k=1,temperature=0.7' -> {'top_k': 1, 'temperature': 0.7}; an empty text is the preset's settings."""
    out: dict[str, float | int] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise SystemExit(f"--sweep {text!r}: write KEY=VALUE pairs of numbers joined by commas, e.g. "
                             "top_k=1,temperature=0.7") from None
    return out


def clip_ceiling(pipe, n: int = 60) -> float:
    """VideoBench text-to-video of exact clips after the run's VQ (encode, decode): what the codes can hold."""
    import torch

    from t2i.data.video import render_video_prompt
    from t2i.eval.shapesbench import spread
    from t2i.eval.videobench import score_clip, video_prompts
    from t2i.images import Clip, images_to_tensor, tensor_to_images

    prompts = spread(video_prompts(), n)
    ok = 0
    for i, prompt in enumerate(prompts):
        clip = render_video_prompt(prompt, seed=i)[0]
        with torch.no_grad():
            codes = pipe.vq.encode(images_to_tensor(list(clip.frames)).to(pipe.device))
            frames = tensor_to_images(pipe.vq.decode(codes.flatten(1)))
        ok += score_clip(Clip(tuple(frames)), prompt)[0]
    return ok / len(prompts)


def sweep(run: Path, settings: list[str], n: int | None) -> list[str]:
    """Every task under each sampling setting, on the same weights and seeds, each into RUN/eval/sweep-<i>*."""
    import t2i
    from t2i.eval.runs import evaluate as shapesbench
    from t2i.eval.runs import evaluate_suites

    pipe = t2i.load(str(run))
    preset = pipe.cfg.sample
    rows = [f"Sampling settings on the same weights ({run}; {n or 'all'} requests per task, one candidate; the "
            f"preset's: guidance {preset.guidance}, top-k {preset.top_k}, top-p {preset.top_p}, temperature "
            f"{preset.temperature}):", "",
            "| setting | t2i | t2v | predict | sketch | complete | seconds |", "|---|---|---|---|---|---|---|"]
    from t2i.errors import UserError

    for text in settings:  # every setting checked before the first one runs, so a typo costs no sampling
        try:
            pipe.options(candidates=1, **parse_setting(text))
        except UserError as e:
            raise SystemExit(f"--sweep {text!r}: {e}") from None
    for i, text in enumerate(settings):
        given = {"candidates": 1, **parse_setting(text)}
        t0 = time.perf_counter()
        sb = shapesbench(run, limit=n, progress=False, out_name=f"sweep-{i}-shapesbench", pipe=pipe, **given)
        vb = evaluate_suites(run, pipe, pipe.options(**given), limit=n, progress=False,
                             out_name=f"sweep-{i}-videobench")["tasks"]
        rows.append(f"| {text or 'the preset'} | {fmt(sb['overall'])} | {fmt(vb['t2v']['overall'])} | "
                    + " | ".join(fmt(vb[t]['overall']) if t in vb else "-"
                                                                for t in ("predict", "sketch", "complete"))
                    + f" | {time.perf_counter() - t0:.0f} |")
        print(rows[-1], flush=True)
    ceiling_n = 60
    rows += ["", f"- the run's VQ, exact clips encoded and decoded: text-to-video {fmt(clip_ceiling(pipe, ceiling_n))} "
             f"({ceiling_n} prompts): the codes hold the clips; what fails is the transformer's codes"]
    return rows


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/nuwa-quick")
    p.add_argument("--preset", default="quick")
    p.add_argument("--train", action="store_true", help="train (or resume) the run first")
    p.add_argument("--n", type=int, help="requests per task (default: all prompts, 200 per conditional task)")
    p.add_argument("--ablation", action="append", default=[], choices=["attention", "tasks"])
    p.add_argument("--ablation-steps", type=int, default=250)
    p.add_argument("--ablation-n", type=int, default=48)
    p.add_argument("--skip-main", action="store_true", help="only the ablations")
    p.add_argument("--sketch-vq", type=int, default=0, metavar="STEPS", help="also train a VQ on sketches alone for "
                   "STEPS steps and compare what sketches keep through it and through the run's shared VQ")
    p.add_argument("--only", action="append", default=[], metavar="ARM", help="run only these arms (by run name: "
                   "nearby, full, axial, t2v, t2i, predict); repeatable")
    p.add_argument("--reuse-eval", action="store_true", help="ablation arms: read the scores an interrupted "
                   "invocation left in each arm's eval/ instead of generating again")
    p.add_argument("--rescore", action="store_true", help="judge the outputs the main evaluation left in RUN/eval/ "
                   "again with today's scorer, without generating (speeds are not re-timed)")
    p.add_argument("--sweep", action="append", default=[], metavar="K=V,...", help="compare sampling settings on "
                   "the same weights, every task ('' is the preset's); repeatable; implies --skip-main")
    p.add_argument("--label", default="nuwa quick")
    p.add_argument("--record", action="store_true")
    args = p.parse_args()
    from t2i.eval import shapesbench as sbench

    run = Path(args.run)
    rows: list[str] = []
    current: dict[str, tuple[str, str, str]] = {}
    if args.train:
        minutes = train_or_resume("nuwa", args.preset, run)
        print(f"trained in {minutes:.1f} min (this invocation)")
    meta = json.loads((run / "run.json").read_text())
    total = sum(meta["train_seconds"].values()) / 60
    if not args.skip_main and not args.sweep:
        rows += ["Scorer and data:", "", *validity(), ""]
        res = evaluate(run, args.n, rescore=args.rescore)
        rows += ["| task | score | novel | by kind |", "|---|---|---|---|"]
        rows.append(f"| text-to-image (ShapesBench, 600) | {fmt(res['t2i'])} | {fmt(res['t2i_novel'])} | "
                    + ", ".join(f"{k} {fmt(v)}" for k, v in res["t2i_kinds"].items()) + " |")
        rows.append(f"| text-to-video (240) | {fmt(res.get('t2v'))} | {fmt(res.get('t2v_novel'))} | "
                    + ", ".join(f"{k} {fmt(v)}" for k, v in (res.get("t2v_kinds") or {}).items()) + " |")
        for task in ("predict", "sketch", "complete"):
            rows.append(f"| {TASK_NAMES[task]} (200) | {fmt(res.get(task))} | - | - |")
        rows += ["", f"- training: {total:.1f} min (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in
                                                            meta["train_seconds"].items()) + ")"]
        if args.rescore:
            rows.append(f"- re-scored: the outputs kept in {run}/eval/ judged by {sbench.VERSION}; no sampling timed")
        else:
            cached, plain, same = clip_speed(run)
            rows += [f"- sampling: {cached:.2f} clips/s with the KV cache, {plain:.2f} without ({cached / plain:.1f}x);"
                     f" identical clips: {same}; text-to-image {res['images_per_s']:.1f} images/s",
                     f"- VideoBench generation and scoring: {res['video_seconds']:.0f} s"]
        curve = [r for r in csv.DictReader((run / "eval.csv").open()) if r["stage"] == "transformer"]
        if curve:
            keys = [k for k in ("t2v", "t2i", "predict", "sketch") if k in curve[0]]
            rows += ["", "Training curve (the in-training probe, 24 requests per task, 48 ShapesBench prompts, scored while training):", "",
                     "| step | minutes | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
            rows += [f"| {r['step']} | {float(r['train_minutes']):.1f} | " + " | ".join(fmt(float(r[k])) for k in keys)
                     + " |" for r in curve]
        current[args.label] = (f"t2v {fmt(res.get('t2v'))} (novel {fmt(res.get('t2v_novel'))}), predict "
                               f"{fmt(res.get('predict'))}, t2i {fmt(res['t2i'])}, sketch {fmt(res.get('sketch'))}, "
                               f"complete {fmt(res.get('complete'))}", f"{sbench.DEFAULT_SCORER} per frame",
                               f"{total:.1f} min")
    arms: dict[str, list[tuple[str, str, list[str]]]] = {  # label, run name, settings
        "attention": [("nearby", "nearby", []), ("full", "full", ["net.attention=full"]),
                      ("axial", "axial", ["net.attention=axial"])],
        "tasks": [("multi-task (the nearby arm)", "nearby", []),
                  ("t2v only", "t2v", ["tasks.t2i=0", "tasks.predict=0", "tasks.sketch=0"]),
                  ("t2i only", "t2i", ["tasks.t2v=0", "tasks.predict=0", "tasks.sketch=0"]),
                  ("predict only", "predict", ["tasks.t2i=0", "tasks.t2v=0", "tasks.sketch=0"])],
    }
    for which in args.ablation:
        rows += ["", f"Ablation: {which}, {args.ablation_steps} transformer steps each on {run}'s tokenizer and "
                 f"VQ ({args.ablation_n} requests per task):", "",
                 "| arm | t2v | predict | t2i | sketch | complete | held-out nats/code: t2v, predict, t2i | "
                 "training clips/s |", "|---|---|---|---|---|---|---|---|"]
        for name, dirname, sets in arms[which]:
            if args.only and dirname not in args.only:
                continue
            arm = ablation_run(run, dirname, sets, args.ablation_steps)
            res = evaluate(arm, args.ablation_n, args.reuse_eval)
            loss = heldout_loss(arm)
            rows.append(f"| {name} | " + " | ".join(fmt(res.get(t)) for t in ("t2v", "predict", "t2i", "sketch",
                                                                             "complete"))
                        + f" | {loss['t2v']:.3f}, {loss['predict']:.3f}, {loss['t2i']:.3f} | {samples_per_s(arm):.1f} |")
    if args.sweep:
        rows += ["", *sweep(run, args.sweep, args.n)]
    if args.sketch_vq:
        rows += ["", "Sketch tokens, 200 VideoBench sketch requests through each VQ:", "", *sketch_vq(run, args.sketch_vq)]
    if args.sweep:
        title = "sampling settings"
    elif not args.skip_main:
        title = "VideoBench and ShapesBench on every task"
    else:
        title = "the attention and task ablations" if args.ablation else "the sketch tokenizer"
    record(f"NUWA {args.preset}: {title}", rows, args.record, current)


if __name__ == "__main__":
    main()
