"""The pixel cascade families (GLIDE, Imagen): train the quick preset, then ShapesBench at 64 px.

Reports, on one trained run: the full cascade with the default sampler (the figure of the preset), the base
stage alone (32 px, scored as it is: ShapesBench passes ground truth at every resolution 32..512), a sweep
of the SR stage's noise-augmentation level, a guidance sweep with thresholding on and off, 20-step
DPM-Solver++ against 250-step DDPM per stage, cascade sampling speed, and the training curve of each stage.

    .venv/bin/python benchmarks/bench_cascade.py --family glide --train --record
    .venv/bin/python benchmarks/bench_cascade.py --family imagen --run runs/imagen-quick --record
    .venv/bin/python benchmarks/bench_cascade.py --family imagen --base-arms \
        'uniform=;velocity=base.diffusion.weighting=velocity' --arm-steps 1300 --record

`--train` resumes an interrupted run (the same command again). Each figure takes 600 images of one seed
set unless `--limit` says fewer (the sweeps use --sweep-limit, 200 by default: they compare settings, the
600-image figure of the default settings is the one recorded as the preset's).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from _common import record, train_or_resume


def row(label: str, res: dict, kinds: list[str]) -> str:
    s = res["sampling"]
    return (f"| {label} | " + " | ".join(f"{res['kinds'][k]:.3f}" for k in kinds)
            + f" | {res['overall']:.3f} | {res['novel']:.3f} | {s['images_per_s']:.1f} |")


def preset_changes(run: str | Path) -> str:
    """The run's settings that differ from its preset's, as `--set`s: what an arm changed."""
    from t2i.api import make_config
    from t2i.config import flat
    from t2i.families import read_config
    from t2i.train.rundir import read_meta

    meta = read_meta(run)
    preset = flat(make_config(meta["family"], meta["preset"]))
    ran = flat(read_config(run)[1])
    return ", ".join(f"{k}={v}" for k, v in ran.items() if preset.get(k) != v) or "(the preset)"


def compare(runs: list[str], stop_at: str | None = None, reuse: bool = False) -> list[str]:
    """ShapesBench of each run side by side (all 600 prompts, the run's default sampling). `reuse`: a run's
    evaluation already written by this comparison (RUN/eval/bench_<stage>.json, newer than every weight
    file of the run) is read instead of generated again, so runs that finish at different times can be scored
    as each finishes and recorded together."""
    import json

    from t2i.eval.runs import evaluate
    from t2i.train.rundir import read_meta

    out = ["| run | settings against its preset | text encoder | base stage min (all stages) | "
           + " | ".join(("single", "size", "two", "position", "counting")) + " | overall | novel |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        meta = read_meta(run)
        enc = meta.get("text_encoder", {})
        name = f"bench_{stop_at}" if stop_at else "shapesbench"
        done = Path(run) / "eval" / f"{name}.json"
        weights = [p.stat().st_mtime for p in Path(run).glob("*.safetensors")]
        if reuse and done.is_file() and done.stat().st_mtime > max(weights, default=0):
            res = json.loads(done.read_text())
        else:
            res = evaluate(run, progress=False, **({"stop_at": stop_at, "out_name": name} if stop_at else {}))
        out.append(f"| `{run}` | `{preset_changes(run)}` | {enc.get('kind', '?')} (width {enc.get('width', '?')}) | "
                   f"{meta['train_seconds'].get('base', 0) / 60:.1f} ({sum(meta['train_seconds'].values()) / 60:.1f}) | "
                   + " | ".join(f"{v:.3f}" for v in res["kinds"].values())
                   + f" | {res['overall']:.3f} | {res['novel']:.3f} |")
    return out


def base_arms(family: str, preset: str, arms: str, steps: int, limit: int, root: Path) -> list[str]:
    """The base stage of `preset` trained `steps` steps once per arm, each arm its own `--set`s, every arm from
    the same seed, scored at 32 px: a side-by-side probe of one base-stage choice (loss weighting, t density,
    ...) at a budget several arms fit into. The stages after the base (SR, and GLIDE's noised CLIP and
    inpainting) train 10 steps only so that the run is complete; they are not scored. `arms`:
    'NAME=KEY=VALUE,KEY=VALUE;NAME=...' (an empty list of sets is the preset)."""
    from t2i.eval.runs import evaluate
    from t2i.families import get_family
    from t2i.train.rundir import read_meta

    stages = get_family(family).stages
    after = stages[stages.index("base") + 1:]  # the SR stage and GLIDE's noised CLIP and inpainting: 10 steps

    kinds = ("single", "size", "two", "position", "counting")
    out = [f"{family} `{preset}` base stage, {steps} steps per arm, scored at 32 px on {limit} prompts "
           "(the stages after it are not trained: 10 steps each)", "",
           "| arm | sets | base min | " + " | ".join(kinds) + " | overall | novel |", "|---|" + "---|" * 9]
    for spec in arms.split(";"):
        name, _, sets = spec.partition("=")
        extra = [f"stages.base.steps={steps}", f"stages.base.eval_every={steps}", f"stages.base.sample_every={steps}",
                 *(f"stages.{s}.steps=10" for s in after), *(x for x in sets.split(",") if x)]
        run = root / f"{family}-arm-{name}"
        train_or_resume(family, preset, run, [x for s in extra for x in ("--set", s)])
        res = evaluate(run, limit=limit, progress=False, stop_at="base", out_name="bench_base")
        minutes = read_meta(run)["train_seconds"]["base"] / 60
        out.append(f"| {name} | `{sets or '(preset)'}` | {minutes:.1f} | "
                   + " | ".join(f"{v:.3f}" for v in res["kinds"].values())
                   + f" | {res['overall']:.3f} | {res['novel']:.3f} |")
    return out


def backbone_times(reps: int = 3, only: list[str] | None = None) -> list[str]:
    """Training step time (forward, backward, AdamW) of the pixel backbones considered, under bf16 autocast
    and in fp32: on this CPU's small GEMMs the casts can cost more than bf16 saves. `only`: name filters."""
    import torch

    from t2i.nn.dit import DiT, DiTConfig
    from t2i.nn.unet import UNet, UNetConfig

    text = {"context_dim": 128, "pooled_dim": 128, "text_attention": "concat"}
    cands = [
        ("base 32 px: DiT 256x4, 8x8 patches (16 tokens)", 32, 3, 128,
         lambda: DiT(DiTConfig(3, 3, input_size=32, patch=8, dim=256, depth=4, **text))),
        ("base 32 px: DiT 192x4, 4x4 patches (64 tokens)", 32, 3, 128,
         lambda: DiT(DiTConfig(3, 3, input_size=32, patch=4, dim=192, depth=4, **text))),
        ("base 32 px: DiT 256x4, 4x4 patches (64 tokens)", 32, 3, 128,
         lambda: DiT(DiTConfig(3, 3, input_size=32, patch=4, dim=256, depth=4, **text))),
        ("base 32 px: ADM UNet 64 ch, mult 1-2-2, attention at 16 and 8 px", 32, 3, 128,
         lambda: UNet(UNetConfig(3, 3, channels=64, channel_mult=(1, 2, 2), attention_levels=(1, 2), **text))),
        ("base 32 px: ADM UNet 64 ch, mult 1-2-3, attention at 8 px", 32, 3, 128,
         lambda: UNet(UNetConfig(3, 3, channels=64, channel_mult=(1, 2, 3), attention_levels=(2,), **text))),
        ("SR 64 px: DiT 256x4, 16x16 patches (16 tokens)", 64, 6, 128,
         lambda: DiT(DiTConfig(6, 3, input_size=64, patch=16, dim=256, depth=4, aug_embed=True, **text))),
        ("SR 64 px: DiT 256x4, 8x8 patches (64 tokens)", 64, 6, 128,
         lambda: DiT(DiTConfig(6, 3, input_size=64, patch=8, dim=256, depth=4, aug_embed=True, **text))),
        ("SR 64 px: UNet 32 ch, mult 1-2-2, attention at 16 px", 64, 6, 128,
         lambda: UNet(UNetConfig(6, 3, channels=32, channel_mult=(1, 2, 2), attention_levels=(2,), aug_embed=True,
                                 **text))),
    ]
    rows = ["| backbone | batch | s/step bf16 autocast | s/step fp32 | params |", "|---|---|---|---|---|"]
    for name, side, inc, batch, make in cands:
        if only and not any(o in name for o in only):
            continue
        torch.manual_seed(0)
        net = make().to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), 1e-4)
        x = torch.randn(batch, inc, side, side).contiguous(memory_format=torch.channels_last)
        kw = {"context": torch.randn(batch, 24, 128), "context_mask": torch.ones(batch, 24, dtype=torch.bool),
              "pooled": torch.randn(batch, 128)}
        if inc == 6:
            kw["aug"] = torch.rand(batch)
        per = {}
        for precision in ("bf16", "fp32"):  # side by side in one process: the machine's noise hits both alike
            times = []
            for i in range(reps + 1):
                t0 = time.perf_counter()
                with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                    loss = net(x, torch.rand(batch), **kw).float().square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                if i:  # the first step warms up
                    times.append(time.perf_counter() - t0)
            per[precision] = sum(times) / len(times)
        rows.append(f"| {name} | {batch} | {per['bf16']:.2f} | {per['fp32']:.2f} ({per['bf16'] / per['fp32']:.2f}x) | "
                    f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f}M |")
    return rows


def inpaint_bench(run: Path, n: int) -> list[str]:
    """Fill the masked object of `n` two-object test scenes (the mask: that object's pixels dilated by 2 px)
    with the scene's canonical caption; the rest must stay within MAE 3/255 of the input."""
    import random

    import numpy as np
    from PIL import Image
    from scipy import ndimage

    from t2i.api import load_generator
    from t2i.data.shapes import BACKGROUND, random_spec, render, scene_for
    from t2i.eval.shapesbench import score_image
    from t2i.families.base import Input

    pipe = load_generator(run)
    rng = random.Random(1234)
    prompts, inputs, keeps = [], [], []
    for _ in range(n):
        spec = random_spec(rng, split="test", kind="two_object")
        objects = scene_for(spec, rng)
        scene = render(objects, 64)
        alone = np.asarray(render([objects[rng.randrange(2)]], 64), dtype=int)
        region = ndimage.binary_dilation(np.abs(alone - np.array(BACKGROUND)).max(-1) > 8, iterations=2)
        prompts.append(spec.canonical())
        inputs.append(Input("inpaint", scene, Image.fromarray((region * 255).astype(np.uint8), "L")))
        keeps.append(~region)
    t = time.perf_counter()
    out = []
    for i in range(0, n, 64):
        out += pipe(prompts[i:i + 64], seeds=list(range(i, min(i + 64, n))), inputs=inputs[i:i + 64])
    sec = time.perf_counter() - t
    mae = [float(np.abs(np.asarray(o, dtype=float) - np.asarray(inp.image, dtype=float))[k].mean())
           for o, inp, k in zip(out, inputs, keeps, strict=True)]
    passed = [score_image(o, p)[0] for o, p in zip(out, prompts, strict=True)]
    return [f"- inpainting ({n} two-object test scenes, one object masked, canonical caption): "
            f"{np.mean(passed):.3f} pass ShapesBench; outside the mask MAE mean {np.mean(mae):.2f}/255, max "
            f"{max(mae):.2f}/255 ({sum(m <= 3 for m in mae)}/{n} within 3/255); {n / sec:.1f} images/s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["glide", "imagen"], default="glide")
    ap.add_argument("--title", default="Imagen's text-encoder comparison (same preset and budget)",
                    help="with --compare: the recorded block's title")
    ap.add_argument("--reuse", action="store_true", help="with --compare: read a run's evaluation this comparison "
                    "already wrote (newer than its weights) instead of generating it again")
    ap.add_argument("--stop-at", default=None, help="with --compare: score this stage's images (base)")
    ap.add_argument("--backbones", action="store_true", help="only time the candidate pixel backbones")
    ap.add_argument("--backbone-filter", help="with --backbones: comma list of name parts, e.g. 'DiT 256x4'")
    ap.add_argument("--batch-reps", type=int, default=3, help="with --backbones: timed steps per backbone")
    ap.add_argument("--compare", help="RUN,RUN,...: only ShapesBench of these runs side by side (e.g. the same "
                    "preset trained with three text encoders)")
    ap.add_argument("--base-arms", help="NAME=KEY=VALUE,...;NAME=...: only train the base stage once per arm "
                    "(--arm-steps steps, its own --sets) and score each at 32 px side by side")
    ap.add_argument("--arm-steps", type=int, default=1300)
    ap.add_argument("--run", default=None, help="default runs/FAMILY-quick")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--set", action="append", default=[], help="extra --set for training")
    ap.add_argument("--train", action="store_true", help="train (or resume) the preset into --run first")
    ap.add_argument("--limit", type=int, default=None, help="prompts for the main figure (default all 600)")
    ap.add_argument("--sweep-limit", type=int, default=200)
    ap.add_argument("--aug-levels", default="0,0.1,0.2,0.3,0.5")
    ap.add_argument("--guidance", default="1,2,3,5,8")
    ap.add_argument("--thresholdings", default=None, help="default: dynamic,none for imagen, none for glide")
    ap.add_argument("--samplers", default="dpmpp-2m,dpmpp-2m-sde",
                    help="base samplers compared at the base stage's steps ('' skips)")
    ap.add_argument("--ddpm-steps", type=int, default=250, help="0 skips the DDPM comparison")
    ap.add_argument("--skip-sweeps", action="store_true")
    ap.add_argument("--inpaint", type=int, default=200, help="inpainting scenes (runs with an inpainting variant)")
    ap.add_argument("--guides", default="cfg,clip,both", help="guidance comparison (runs with a noised CLIP)")
    ap.add_argument("--clip-scales", default="5,20,80", help="CLIP guidance scales for --guide clip and both")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    if args.compare:
        what = f", scored at the {args.stop_at} stage" if args.stop_at else ""
        record(f"{args.title}{what}, 600 prompts each",
               compare(args.compare.split(","), args.stop_at, args.reuse), args.record)
        return
    if args.base_arms:
        record(f"{args.family} base stage, side by side", base_arms(
            args.family, args.preset, args.base_arms, args.arm_steps, args.limit or 200, Path("runs")), args.record)
        return
    if args.backbones:
        only = args.backbone_filter.split(",") if args.backbone_filter else None
        record("Pixel backbones: training step time, bf16 autocast against fp32 (2 threads)",
               backbone_times(args.batch_reps, only), args.record)
        return
    run = Path(args.run or f"runs/{args.family}-quick")
    if args.train:
        minutes = train_or_resume(args.family, args.preset, run, [x for s in args.set for x in ("--set", s)])
        print(f"training wall-clock this invocation: {minutes:.1f} min")

    from t2i.eval.runs import evaluate
    from t2i.train.rundir import read_meta

    meta = read_meta(run)
    secs = meta["train_seconds"]
    # the quick preset's budget covers every stage the samples come from; the inpainting variant is a
    # fine-tune for another task, reported beside it
    train_min = sum(v for k, v in secs.items() if k != "inpaint") / 60
    training = f"{train_min:.1f} min" + (f" (+ inpaint fine-tune {secs['inpaint'] / 60:.1f} min)" if "inpaint" in secs
                                         else "")
    main_res = evaluate(run, limit=args.limit, progress=False)
    base_res = evaluate(run, limit=args.limit, progress=False, stop_at="base", out_name="bench_base")
    kinds = list(main_res["kinds"])
    head = ["| setting | " + " | ".join(kinds) + " | overall | novel | images/s |", "|---|" + "---|" * (len(kinds) + 3)]
    s = main_res["sampling"]
    rows = [f"run `{run}` (family {args.family}, preset `{meta.get('preset')}`), training time {training} "
            f"({', '.join(f'{k} {v / 60:.1f}' for k, v in secs.items())} min)", "", *head,
            row(f"cascade 64 px: {s['sampler']} {s['steps']} + SR {s['sr_sampler']} {s['sr_steps']}, guidance "
                f"{s['guidance']}/{s['sr_guidance']}, aug {s['aug_level']}, thresholding {s['thresholding']}",
                main_res, kinds),
            row("base alone, 32 px", base_res, kinds)]
    if not args.skip_sweeps:
        lim = args.sweep_limit
        for a in (float(x) for x in args.aug_levels.split(",")):
            rows.append(row(f"aug level {a} ({lim} prompts)",
                            evaluate(run, limit=lim, progress=False, aug_level=a, out_name="bench_sweep"), kinds))
        for th in (args.thresholdings or ("dynamic,none" if args.family == "imagen" else "none")).split(","):
            for g in (float(x) for x in args.guidance.split(",")):
                rows.append(row(f"base guidance {g}, thresholding {th} ({lim} prompts)",
                                evaluate(run, limit=lim, progress=False, guidance=g, thresholding=th,
                                         out_name="bench_sweep"), kinds))
        for name in (x for x in args.samplers.split(",") if x):
            rows.append(row(f"base sampler {name} ({lim} prompts)",
                            evaluate(run, limit=lim, progress=False, sampler=name, out_name="bench_sweep"), kinds))
        if args.ddpm_steps:
            ddpm = evaluate(run, limit=lim, progress=False, sampler="ddpm", steps=args.ddpm_steps, sr_sampler="ddpm",
                            sr_steps=args.ddpm_steps, out_name="bench_sweep")
            fast = evaluate(run, limit=lim, progress=False, sampler="dpmpp-2m", steps=20, sr_sampler="dpmpp-2m",
                            sr_steps=20, out_name="bench_sweep")
            rows += [row(f"DDPM {args.ddpm_steps} steps per stage ({lim} prompts)", ddpm, kinds),
                     row(f"DPM-Solver++ 20 steps per stage ({lim} prompts)", fast, kinds),
                     "", f"- 20-step DPM-Solver++ against {args.ddpm_steps}-step DDPM per stage: "
                     f"{fast['overall']:.3f} vs {ddpm['overall']:.3f} ({fast['overall'] - ddpm['overall']:+.3f})"]
    if meta.get("inpaint") and args.inpaint:
        rows += inpaint_bench(run, args.inpaint)
    if "noised_clip" in meta.get("stages_done", []) and not args.skip_sweeps:
        rows += ["", "Guidance on the same weights (base stage; the SR stage as the preset):", "", *head]
        for guide in args.guides.split(","):
            for scale in ([None] if guide == "cfg" else [float(x) for x in args.clip_scales.split(",")]):
                res = evaluate(run, limit=args.sweep_limit, progress=False, guide=guide, clip_scale=scale,
                               out_name="bench_sweep")
                g = res["sampling"]
                rows.append(row(f"--guide {guide} (guidance {g['guidance']}, clip scale {g['clip_scale']}, "
                                f"{args.sweep_limit} prompts)", res, kinds))
    rows += ["", f"- what the SR stage adds: cascade {main_res['overall']:.3f} against the 32 px base alone "
             f"{base_res['overall']:.3f} ({main_res['overall'] - base_res['overall']:+.3f})",
             f"- cascade sampling speed: {s['images_per_s']:.2f} images/s (batch 64, both stages, the preset's steps)"]
    curve = run / "eval.csv"
    if curve.exists():
        rows += ["", "ShapesBench (100-prompt probe) against training minutes (base probes score the 32 px base):", "",
                 "| stage | step | train min | overall | counting | position | novel |", "|---|---|---|---|---|---|---|"]
        with curve.open() as f:
            for r in csv.DictReader(f):
                rows.append(f"| {r.get('stage', '')} | {r['step']} | {float(r['train_minutes']):.1f} | "
                            f"{float(r['shapesbench']):.3f} | {r.get('counting', '')} | {r.get('position', '')} | "
                            f"{r.get('novel', '')} |")
    record(f"{args.family} quick preset (pixel cascade)", rows, args.record, current={
        f"{args.family} {meta.get('preset')}": (
            f"{main_res['overall']:.3f} (novel {main_res['novel']:.3f}; cascade {s['sampler']} {s['steps']} + SR "
            f"{s['sr_steps']} steps; base alone {base_res['overall']:.3f})",
            main_res["version"].removeprefix("shapesbench-"), training)})


if __name__ == "__main__":
    main()
