"""The `t2i` command: data, benchmark and demo jobs.

Every subcommand is a thin layer over the Python API; a `UserError` anywhere becomes one line on stderr and
exit code 2, so bad input never shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from t2i.errors import OptionError, UserError

# ------------------------------------------------------------------------------------------------- data
DATASETS = ("shapes", "shapes-video")


def cmd_data_render(args: argparse.Namespace) -> None:
    from t2i.data.sources import write_shards

    if args.dataset not in DATASETS:
        raise UserError(f"unknown --dataset {args.dataset!r}; datasets are {', '.join(DATASETS)}")
    if args.n <= 0:
        raise UserError(f"--n must be positive, got {args.n}")
    if args.dataset == "shapes-video":
        from t2i.data.video import iter_clips

        samples = iter_clips(n=args.n, seed=args.seed, size=args.size, split=args.split, frames=args.frames)
    else:
        from t2i.data.shapes import iter_samples

        samples = iter_samples(n=args.n, seed=args.seed, size=args.size, split=args.split)
    shards = write_shards(samples, args.out, shard_size=args.shard_size, progress=not args.quiet)
    print(f"wrote {args.n} {args.dataset} samples in {len(shards)} shard(s) to {args.out}")


def cmd_data_preview(args: argparse.Namespace) -> None:
    from t2i.data.sources import SkipStats, open_source
    from t2i.images import Clip, preview_grid

    stats = SkipStats()
    samples = list(open_source(args.source, resolution=args.resolution, n=args.n, seed=args.seed, stats=stats))
    if not samples:
        raise UserError(f"{args.source} yielded no readable samples ({stats}); check the path and its contents")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(samples, cols=args.cols).save(out)
    print(f"wrote a grid of {len(samples)} samples to {out}")
    if args.gif:
        clips = [(i, s) for i, s in enumerate(samples) if isinstance(s.image, Clip)]
        if not clips:
            raise UserError(f"--gif: {args.source} holds no clips (a still image has nothing to animate)")
        for i, s in clips:
            s.image.save_gif(out.with_name(f"{out.stem}-{i:03d}.gif"))
        print(f"wrote {len(clips)} GIFs beside it ({out.stem}-000.gif, ...)")


# ------------------------------------------------------------------------------------------------ bench
def cmd_bench_prompts(args: argparse.Namespace) -> None:
    if args.suite == "video":
        from t2i.eval.videobench import PROMPT_SET, video_prompts

        prompts = video_prompts()
    else:
        from t2i.eval.shapesbench import PROMPT_SET, benchmark_prompts

        prompts = benchmark_prompts()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(prompts) + "\n")
    print(f"wrote the {len(prompts)} prompts of {PROMPT_SET} (the same for every scorer version) to {out}")


def cmd_bench_inputs(args: argparse.Namespace) -> None:
    from t2i.eval.videobench import write_task_inputs

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    n = write_task_inputs(args.out, args.task, args.n, args.seed, args.frames, args.size)
    print(f"wrote {n} {args.task} requests to {args.out} (use: t2i generate RUN --inputs {args.out} --out OUT; "
          "then t2i bench score OUT)")


def cmd_bench_groundtruth(args: argparse.Namespace) -> None:
    from t2i.eval.shapesbench import write_groundtruth

    n = write_groundtruth(args.out, size=args.size, seed=args.seed, progress=not args.quiet)
    print(f"wrote {n} ground-truth images and index.jsonl to {args.out}")


def cmd_bench_score(args: argparse.Namespace) -> None:
    from t2i.eval.shapesbench import format_table, read_index, result_path, score_dir

    rows = read_index(args.dir)
    if any(r.get("frames", 1) > 1 or r.get("task") in ("predict", "sketch", "complete") for r in rows):
        from t2i.eval.videobench import format_video_table
        from t2i.eval.videobench import score_dir as score_video

        print(format_video_table(score_video(args.dir, progress=not args.quiet, scorer=args.scorer)))
        print(f"wrote {result_path(args.dir, 'videobench', args.scorer)}")
        return
    print(format_table(score_dir(args.dir, progress=not args.quiet, scorer=args.scorer)))
    print(f"wrote {result_path(args.dir, 'shapesbench', args.scorer)}")


# ------------------------------------------------------------------------------------------ models
def cmd_train(args: argparse.Namespace) -> None:
    from t2i.api import train

    if not args.resume and not args.family:
        raise UserError("--family is required for a new run (e.g. --family ldm); --resume reads it from the run")
    uses = {u.name: getattr(args, u.name) for u in _uses() if getattr(args, u.name, None)}
    if args.tokenizer:  # the old name of --image-tokenizer
        print("t2i: --tokenizer is deprecated; use --image-tokenizer RUN", file=sys.stderr)
        uses.setdefault("image_tokenizer", args.tokenizer)
    if args.redo and not args.resume:
        raise UserError("--redo STAGE retrains a stage of an existing run: add --resume")
    out = train(args.family, args.out, preset=args.preset, data=args.data, overrides=list(args.set),
                resume=args.resume, progress=not args.quiet, uses=uses, redo=args.redo)
    from t2i.families import run_family

    if run_family(out).kind == "scorer":
        print(f"run complete: {out} (use it: t2i eval GENERATOR_RUN --clip {out})")
    else:
        print(f"run complete: {out} (try: t2i generate {out} \"a red circle\" --out grid.png)")


def _read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompts file {p} not found; write one prompt per line (t2i bench prompts --out {p})")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts file {p} has no prompts")
    return prompts


def _option_fields() -> dict[str, object]:
    """Every sampling option any generator family takes, by name: the CLI's sampling flags."""
    from dataclasses import fields

    from t2i.families import all_families

    out: dict[str, object] = {}
    for fam in all_families():
        for f in fields(fam.options) if fam.options else ():
            out.setdefault(f.name, f)
    return out


def _uses() -> list:
    """Every other-run dependency any family declares (`Family.uses`): the CLI's `--NAME RUN` flags."""
    from t2i.families import all_families

    return list({u.name: u for fam in all_families() for u in fam.uses}.values())


def _given_options(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in _option_fields() if getattr(args, name, None) is not None}


def cmd_generate(args: argparse.Namespace) -> None:
    from t2i.api import load_generator, read_requests
    from t2i.eval.runs import generate_batched
    from t2i.eval.shapesbench import prepare_folder, write_images
    from t2i.families.base import PROMPTLESS_TASKS, Input, check_seeds
    from t2i.images import grid, save_media

    task = args.task or ("inpaint" if args.mask else "variation" if args.text_diff else "img2img")
    if args.task and not args.init_image:
        raise UserError(f"--task {args.task} works on --init-image; give one (with --inputs, put `task` in each row)")
    if args.prompt is None and task in PROMPTLESS_TASKS and args.init_image and not (args.prompts_file or args.inputs):
        args.prompt = ""  # the image is the content
    if sum(x is not None for x in (args.prompt, args.prompts_file, args.inputs)) != 1:
        raise UserError("give one of: a prompt, --prompts-file FILE, --inputs DIR")
    if args.n < 1 or args.per_prompt < 1:
        raise UserError("-n and --per-prompt must be at least 1")
    if args.mask and not args.init_image:
        raise UserError("--mask says which part of --init-image to regenerate; give --init-image too")
    if args.strength is not None and not args.init_image:
        raise UserError("--strength sets how much of --init-image to keep; give --init-image too (with --inputs, "
                        "put `strength` in each request)")
    if args.prompts_file or args.inputs:  # the output is checked before anything is generated
        prepare_folder(args.out, args.overwrite)
    else:
        out = Path(args.out)
        if out.is_dir() or out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".gif"):
            raise UserError(f"--out {out}: one prompt writes one image file; give a name ending in .png, .jpg, "
                            ".webp or .gif (a clip as a GIF) (a folder is for --prompts-file / --inputs)")
        if out.exists() and not args.overwrite:
            raise UserError(f"--out {out} exists; choose another name or pass --overwrite")
    init = None
    if args.init_image:  # sugar for one img2img request per image drawn
        if args.inputs:
            raise UserError("--init-image is for a single prompt; with --inputs give `image` per row")
        from PIL import Image

        files = {}
        for flag, path in (("--init-image", args.init_image), ("--mask", args.mask)):
            if path:
                try:
                    with Image.open(path) as im:
                        im.load()
                        files[flag] = im if flag == "--mask" else im.convert("RGB")
                except (OSError, ValueError) as e:
                    raise UserError(f"cannot read {flag} {path}: {e}") from None
        init = Input(task, files["--init-image"], files.get("--mask"),
                     strength=0.6 if args.strength is None else args.strength)
    extras: list[dict] | None = None
    if args.inputs:
        requests = read_requests(args.inputs)
        prompts, seeds = [r["prompt"] for r in requests], [r["seed"] for r in requests]
        inputs, extras = [r["input"] for r in requests], [r["echo"] for r in requests]
    elif args.prompts_file:
        prompts = [p for p in _read_prompts(args.prompts_file) for _ in range(args.per_prompt)]
        seeds, inputs = [args.seed + i for i in range(len(prompts))], [init] * len(prompts)
    else:
        prompts = [args.prompt] * args.n
        seeds, inputs = [args.seed + i for i in range(args.n)], [init] * args.n
    check_seeds(seeds)
    pipe = load_generator(args.run)
    options = pipe.options(**_given_options(args))  # every option and request checked before anything is generated
    pipe.check_inputs(inputs, len(prompts))
    images = generate_batched(pipe, prompts, seeds, args.batch_size, not args.quiet, options=options, inputs=inputs)
    if args.prompts_file or args.inputs:
        n = write_images(args.out, zip(images, prompts, seeds, strict=True), extras, gif=args.gif)
        print(f"wrote {n} images and index.jsonl to {args.out} (score: t2i bench score {args.out})")
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.n == 1 and out.suffix.lower() == ".gif":
        from t2i.images import Clip

        (images[0] if isinstance(images[0], Clip) else Clip((images[0],))).save_gif(out)
    elif args.n == 1:
        save_media(images[0], out, gif=args.gif)
    else:
        grid(images, [f"seed {s}" for s in seeds], cols=min(args.n, 8)).save(out)
    print(f"wrote {out}")


def cmd_interpolate(args: argparse.Namespace) -> None:
    """Equal steps from one image's embedding to the other's: a variation request per step, `mix` apart."""
    from PIL import Image

    from t2i.api import load_generator
    from t2i.eval.runs import generate_batched
    from t2i.families.base import Input
    from t2i.images import grid

    if args.steps < 2:
        raise UserError(f"--steps {args.steps}: an interpolation has at least 2 images (both ends)")
    out = Path(args.out)
    if out.suffix.lower() != ".png" or out.is_dir():
        raise UserError(f"--out {out}: the strip is one image; give a name ending in .png")
    if out.exists() and not args.overwrite:
        raise UserError(f"--out {out} exists; choose another name or pass --overwrite")
    ends = []
    for path in args.images:
        try:
            with Image.open(path) as im:
                ends.append(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
    pipe = load_generator(args.run)
    if "variation" not in pipe.tasks:
        from t2i.families import families_with_task

        raise UserError(f"{pipe.family} runs cannot interpolate between images: that takes task variation "
                        f"(families that can: {', '.join(families_with_task('variation'))})")
    options = pipe.options(**{**_given_options(args), "interp_noise": args.noise})
    mixes = [k / (args.steps - 1) for k in range(args.steps)]
    inputs = [Input("variation", ends[0], toward=ends[1], mix=m) for m in mixes]
    images = generate_batched(pipe, [""] * args.steps, [args.seed] * args.steps, args.batch_size, not args.quiet,
                              options=options, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(images, [f"{m:.2f}" for m in mixes], cols=args.steps).save(out)
    print(f"wrote {out}")


def cmd_eval(args: argparse.Namespace) -> None:
    from t2i.eval.report import parse_metrics, report
    from t2i.eval.runs import evaluate

    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    options = _given_options(args)  # checked against the run's family by `evaluate` before generating
    if args.name != "shapesbench":  # a named ShapesBench-only folder, as before the report existed
        if args.metrics or args.clip or args.inception:
            raise UserError("--name writes a plain ShapesBench folder; drop it to get the report with --metrics")
        evaluate(args.run, seed=args.seed, limit=args.n, batch_size=args.batch_size, progress=not args.quiet,
                 out_name=args.name, **options)
        return
    metrics = parse_metrics(args.metrics, args.clip is not None, args.inception is not None)
    report(args.run, metrics, clip=args.clip, inception=args.inception, fid_features=args.fid_features, n=args.n,
           seed=args.seed, batch_size=args.batch_size, progress=not args.quiet, **options)


def cmd_families(args: argparse.Namespace) -> None:
    """Every registered family, read from its contract record: what `--family` takes."""
    from dataclasses import fields

    from t2i.api import preset_names
    from t2i.families import all_families

    for fam in all_families():
        line = f"stages: {' -> '.join(fam.stages)}; presets: {', '.join(preset_names(fam.name)) or '-'}"
        if fam.options:
            line += (f"; tasks beyond text-to-image: {', '.join(fam.tasks) or 'none'}; options: "
                     + ", ".join(f.name for f in fields(fam.options)))
        line += "".join(f"; --{u.name.replace('_', '-')} RUN" for u in fam.uses)
        print(f"{fam.name:<8} {fam.kind:<9} {fam.summary}\n{'':<18} {line}")


def cmd_compare(args: argparse.Namespace) -> None:
    from t2i.eval.report import compare

    compare(args.runs, args.out)


def cmd_curves(args: argparse.Namespace) -> None:
    from t2i.eval.report import curves

    print(f"wrote {curves(args.runs, args.out, smooth=args.smooth)}")


# ------------------------------------------------------------------------------------------------- demo
def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from t2i.serve.app import serve
    except ImportError as e:
        raise UserError(f"t2i serve needs FastAPI and uvicorn ({e.name} is missing): pip install -e . "
                        "installs them") from None
    serve(args.runs, args.host, args.port, args.out, args.token, args.cors, args.queue, args.threads, args.quiet)


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job on the embedded dataset: look at the data, train LDM's quick preset, score it."""
    from t2i.api import train
    from t2i.data.shapes import iter_samples
    from t2i.data.sources import open_source, write_shards
    from t2i.eval.runs import describe_sampling, evaluate
    from t2i.eval.shapesbench import format_table, score_dir, write_groundtruth
    from t2i.images import preview_grid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] rendering {args.n} shapes samples as WebDataset shards and a preview -> {out / 'preview.png'}")
    if not (out / "shards" / "00000.tar").exists():
        write_shards(iter_samples(n=args.n, seed=args.seed), out / "shards", shard_size=1000, progress=not args.quiet)
    preview_grid(list(open_source(str(out / "shards"), n=32)), cols=8).save(out / "preview.png")
    print("[2/4] ShapesBench on exact renders of its prompts (what a perfect generator scores)")
    write_groundtruth(out / "groundtruth", progress=False)
    gt = score_dir(out / "groundtruth", progress=False)
    print(f"      ground truth overall {gt['overall']:.3f}, novel {gt['novel']:.3f}")
    run = out / f"ldm-{args.preset}"
    print(f"[3/4] training the LDM '{args.preset}' preset from scratch -> {run} (interrupt and rerun to resume)")
    t1 = time.perf_counter()
    train("ldm", run, preset=args.preset, resume=(run / "run.json").exists(), progress=not args.quiet)
    train_min = (time.perf_counter() - t1) / 60
    print("[4/4] generating the ShapesBench prompts and scoring them")
    result = evaluate(run, progress=False)
    print(format_table(result))
    s = result["sampling"]
    print(f"sampling: {describe_sampling(s)}: {s['images_per_s']} images/s")
    (out / "summary.json").write_text(json.dumps(
        {"groundtruth": gt, "ldm": result, "train_minutes_this_invocation": round(train_min, 2)}, indent=1))
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; samples: {run / 'samples'}, "
          f"images: {run / 'eval' / 'shapesbench'}; try: t2i generate {run} \"a red circle\" -n 8 --out grid.png")


# ------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from t2i.families.base import CLIP_TASKS, TASKS

    p = argparse.ArgumentParser(prog="t2i", description="t2i: a text-to-image lab (train, sample, evaluate).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="render, read and preview datasets").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    r = data.add_parser("render", help="write an embedded dataset (shapes, shapes-video) as WebDataset shards")
    r.add_argument("--dataset", default="shapes", help="shapes (images) or shapes-video (clips, stored as PNG strips)")
    r.add_argument("--frames", type=int, default=8, help="shapes-video: frames per clip (2..14)")
    r.add_argument("--n", type=int, required=True, help="number of samples")
    r.add_argument("--out", required=True, help="output folder for 00000.tar, 00001.tar, ...")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--size", type=int, default=64, help="image side in pixels (32..512)")
    r.add_argument("--split", default="train", choices=["train", "all", "novel"],
                   help="train excludes the hold-out colour/shape pairs; novel holds only scenes with them")
    r.add_argument("--shard-size", type=int, default=1000)
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(func=cmd_data_render)
    v = data.add_parser("preview", help="a captioned grid of samples from any source")
    v.add_argument("source", help="shapes | shards (x.tar, dir/, 'd/{00000..00009}.tar') | image folder | coco:ROOT")
    v.add_argument("--out", required=True, help="PNG file to write")
    v.add_argument("--n", type=int, default=32)
    v.add_argument("--cols", type=int, default=8)
    v.add_argument("--resolution", type=int, default=64)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--gif", action="store_true", help="also write each clip as a GIF beside the grid")
    v.set_defaults(func=cmd_data_preview)

    bench = sub.add_parser("bench", help="ShapesBench: prompts, ground truth, scoring").add_subparsers(
        dest="bench_command", required=True, metavar="ACTION")
    bp = bench.add_parser("prompts", help="write the benchmark prompts, one per line")
    bp.add_argument("--out", required=True)
    bp.add_argument("--suite", choices=["images", "video"], default="images", help="images: ShapesBench; video: "
                    "VideoBench's clip captions (100 per kind plus the novel ones)")
    bp.set_defaults(func=cmd_bench_prompts)
    bi = bench.add_parser("inputs", help="write --inputs requests of a conditional task, with the truth to score")
    bi.add_argument("--task", required=True, choices=["predict", "sketch", "complete"])
    bi.add_argument("--out", required=True)
    bi.add_argument("--n", type=int, default=200)
    bi.add_argument("--seed", type=int, default=0)
    bi.add_argument("--frames", type=int, default=8, help="predict: the clip length the truth has")
    bi.add_argument("--size", type=int, default=64, help="side of the requests' images (the run's)")
    bi.set_defaults(func=cmd_bench_inputs)
    bg = bench.add_parser("groundtruth", help="render the benchmark prompts exactly (a perfect generator)")
    bg.add_argument("--out", required=True)
    bg.add_argument("--size", type=int, default=64)
    bg.add_argument("--seed", type=int, default=0)
    bg.add_argument("-q", "--quiet", action="store_true")
    bg.set_defaults(func=cmd_bench_groundtruth)
    bs = bench.add_parser("score", help="score a folder of generated images or clips (index.jsonl + PNGs); rows "
                          "with clips or a predict/sketch/complete task are judged by VideoBench")
    bs.add_argument("dir")
    bs.add_argument("--scorer", default="v2.1", help="v2.1 (default: fits blurred shape templates, a blob between "
                    "two shapes is no shape), v2 (the fit alone: figures of 2026-12-01..02) or v1 (the threshold "
                    "rules of figures before; writes DIR/shapesbench-v1.json)")
    bs.add_argument("-q", "--quiet", action="store_true")
    bs.set_defaults(func=cmd_bench_score)

    t = sub.add_parser("train", help="train a model family from scratch (all stages, resumable)")
    t.add_argument("--family", help="model family, e.g. ldm")
    t.add_argument("--preset", help="a preset name (e.g. quick) or a YAML file")
    t.add_argument("--data", help="data source (default: the preset's, usually shapes)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out (schedule changes only: more "
                   "steps, ckpt_every, ...; see README, Resuming)")
    t.add_argument("--redo", metavar="STAGE", help="with --resume: train this finished stage and every later one "
                   "again (rebuilds a lost weight file)")
    for use in _uses():
        t.add_argument("--" + use.name.replace("_", "-"), dest=use.name, metavar="RUN", help=use.help)
    t.add_argument("--tokenizer", metavar="RUN", help=argparse.SUPPRESS)  # deprecated: --image-tokenizer
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set stages.diffusion.steps=200 (repeatable)")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    option_fields = _option_fields()

    def sampling(q: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        for name, f in option_fields.items():  # every family's options; the run's pipeline checks them
            if name in skip:
                continue
            meta = f.metadata
            q.add_argument(meta.get("flag") or "--" + name.replace("_", "-"), dest=name, type=meta.get("type"),
                           metavar=meta.get("metavar"), nargs=meta.get("nargs"), help=meta.get("help"))
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("-q", "--quiet", action="store_true")

    g = sub.add_parser("generate", help="images from a trained run")
    g.add_argument("run")
    g.add_argument("prompt", nargs="?")
    g.add_argument("-n", type=int, default=1, help="images for the prompt (a grid when > 1)")
    g.add_argument("--prompts-file", help="one prompt per line; writes a ShapesBench folder to --out")
    g.add_argument("--inputs", metavar="DIR", help="DIR/index.jsonl: one request per line ({prompt, seed, task, "
                   "image, mask, strength}); writes a ShapesBench folder to --out, each row's fields echoed")
    g.add_argument("--per-prompt", type=int, default=1)
    g.add_argument("--init-image", help="img2img: start from this image (for the families whose tasks have it)")
    g.add_argument("--strength", type=float, help="img2img: fraction of the noise schedule to run (default 0.6)")
    g.add_argument("--mask", help="inpaint: with --init-image, regenerate where this grayscale mask (the image's "
                   "size) is white")
    g.add_argument("--task", choices=[t for t in TASKS if t not in CLIP_TASKS], help="what to do with --init-image "
                   "(default: inpaint with --mask, variation with --text-diff, else img2img); variation: new images "
                   "of the image's content, no prompt needed; sketch, complete: nuwa runs (a clip to continue, "
                   "task predict, goes in an --inputs row with `frames`)")
    g.add_argument("--overwrite", action="store_true", help="replace the images already in --out")
    g.add_argument("--out", required=True)
    g.add_argument("--gif", action="store_true", help="also write a GIF beside each generated clip (families "
                   "that make video; a clip's PNG strip is always written)")
    sampling(g)
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("interpolate", help="a strip of images between two images (runs with task variation)")
    i.add_argument("run")
    i.add_argument("images", nargs=2, metavar="IMAGE", help="the two ends")
    i.add_argument("--steps", type=int, default=8, help="images in the strip, both ends included (at least 2)")
    i.add_argument("--noise", choices=["fixed", "slerp"], default="fixed", help="fixed: one seed's noise for "
                   "every image; slerp: from --seed's noise to --seed+1's")
    i.add_argument("--out", required=True, help="the strip, a .png")
    i.add_argument("--overwrite", action="store_true")
    i.add_argument("--sample-steps", dest="steps", type=int, help="the decoder's sampler steps (default: the run's)")
    sampling(i, skip=("steps", "interp_noise"))
    i.set_defaults(func=cmd_interpolate)

    e = sub.add_parser("eval", help="generate the ShapesBench prompts with a run, score them, write a report")
    e.add_argument("run")
    e.add_argument("--n", type=int, help="score only N prompts spread over every kind (quick look)")
    e.add_argument("--name", default="shapesbench",
                   help="folder under RUN/eval/; another name writes only that ShapesBench folder, no report")
    e.add_argument("--metrics", help="comma list of shapesbench,clip,fid,kid (default: shapesbench, plus "
                   "clip,fid,kid with --clip)")
    e.add_argument("--clip", metavar="CLIP_RUN", help="a lab CLIP run (t2i train --family clip): CLIP score, "
                   "and the default FID/KID features")
    e.add_argument("--inception", metavar="WEIGHTS", help="local FID Inception weights "
                   "(pt_inception-2015-12-05-6726825d.pth) for standard FID/KID features")
    e.add_argument("--fid-features", choices=["clip", "inception"],
                   help="FID/KID feature extractor (default: clip when --clip is given, else inception)")
    sampling(e)
    e.set_defaults(func=cmd_eval)

    f = sub.add_parser("families", help="the model families, their stages, presets, tasks and options")
    f.set_defaults(func=cmd_families)

    c = sub.add_parser("compare", help="a side-by-side table and a quality-vs-speed plot of evaluated runs")
    c.add_argument("runs", nargs="+", help="run directories, each evaluated with `t2i eval`")
    c.add_argument("--out", default="compare", help="folder for compare.md, compare.json, compare.png")
    c.set_defaults(func=cmd_compare)

    cv = sub.add_parser("curves", help="a plot of training: each stage's loss, and the probe score against minutes")
    cv.add_argument("runs", nargs="+", help="run folders (several overlay, to read arms side by side)")
    cv.add_argument("--out", default="curves.png", help="the PNG to write")
    cv.add_argument("--smooth", type=int, default=10, help="mean over this many logged points (default 10)")
    cv.set_defaults(func=cmd_curves)

    s = sub.add_parser("serve", help="a web page and REST API over trained runs (http://127.0.0.1:7860/)")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run folders to serve (generators, and CLIP runs to "
                   "rerank with)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (another than this machine's needs --token)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--out", default="t2i-served", help="folder for the results (index.jsonl + PNGs, scorable "
                   "with t2i bench score)")
    s.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every API request")
    s.add_argument("--cors", metavar="ORIGIN", help="allow browser requests from this origin (closed by default)")
    s.add_argument("--queue", type=int, default=8, help="jobs waiting per run before requests get 429")
    s.add_argument("--threads", type=int, help="torch threads for generation (default: all cores but one)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="the main job on the embedded dataset (what `make demo` runs)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--n", type=int, default=2000, help="samples to render as shards")
    d.add_argument("--preset", default="quick", help="LDM preset to train (tiny: a seconds-long smoke run)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except OptionError as e:  # the same check as the API's, named by the CLI's flag
        print(f"t2i: error: {e.as_flag()}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"t2i: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("t2i: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
