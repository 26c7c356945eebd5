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

from t2i.errors import UserError


# ------------------------------------------------------------------------------------------------- data
def cmd_data_render(args: argparse.Namespace) -> None:
    from t2i.data.shapes import iter_samples
    from t2i.data.sources import write_shards

    if args.n <= 0:
        raise UserError(f"--n must be positive, got {args.n}")
    samples = iter_samples(n=args.n, seed=args.seed, size=args.size, split=args.split)
    shards = write_shards(samples, args.out, shard_size=args.shard_size, progress=not args.quiet)
    print(f"wrote {args.n} samples in {len(shards)} shard(s) to {args.out}")


def cmd_data_preview(args: argparse.Namespace) -> None:
    from t2i.data.sources import SkipStats, open_source, preview_grid

    stats = SkipStats()
    samples = list(open_source(args.source, resolution=args.resolution, n=args.n, seed=args.seed, stats=stats))
    if not samples:
        raise UserError(f"{args.source} yielded no readable samples ({stats}); check the path and its contents")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(samples, cols=args.cols).save(out)
    print(f"wrote a grid of {len(samples)} samples to {out}")


# ------------------------------------------------------------------------------------------------ bench
def cmd_bench_prompts(args: argparse.Namespace) -> None:
    from t2i.eval.shapesbench import VERSION, benchmark_prompts

    prompts = benchmark_prompts()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(prompts) + "\n")
    print(f"wrote {len(prompts)} {VERSION} prompts to {out}")


def cmd_bench_groundtruth(args: argparse.Namespace) -> None:
    from t2i.eval.shapesbench import write_groundtruth

    n = write_groundtruth(args.out, size=args.size, seed=args.seed, progress=not args.quiet)
    print(f"wrote {n} ground-truth images and index.jsonl to {args.out}")


def cmd_bench_score(args: argparse.Namespace) -> None:
    from t2i.eval.shapesbench import format_table, score_dir

    result = score_dir(args.dir, progress=not args.quiet)
    print(format_table(result))
    print(f"wrote {Path(args.dir) / 'shapesbench.json'}")


# ------------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> None:
    """The main job on the embedded dataset. Until a model family lands: data, preview, ground-truth score."""
    from t2i.data.shapes import iter_samples
    from t2i.data.sources import open_source, preview_grid, write_shards
    from t2i.eval.shapesbench import format_table, score_dir, write_groundtruth

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] rendering {args.n} shapes samples as WebDataset shards -> {out / 'shards'}")
    write_shards(iter_samples(n=args.n, seed=args.seed), out / "shards", shard_size=1000, progress=not args.quiet)
    print(f"[2/4] reading the shards back through the data layer -> {out / 'preview.png'}")
    samples = list(open_source(str(out / "shards"), n=32))
    preview_grid(samples, cols=8).save(out / "preview.png")
    print(f"[3/4] rendering ground truth for the ShapesBench prompts -> {out / 'groundtruth'}")
    write_groundtruth(out / "groundtruth", progress=not args.quiet)
    print("[4/4] scoring the ground truth with ShapesBench (a perfect generator's score)")
    result = score_dir(out / "groundtruth", progress=not args.quiet)
    print(format_table(result))
    (out / "summary.json").write_text(json.dumps({"shapesbench_groundtruth": result}, indent=1))
    print(f"done in {time.perf_counter() - t0:.1f}s; look at {out / 'preview.png'}")


# ------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t2i", description="t2i: a text-to-image lab (train, sample, evaluate).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="render, read and preview datasets").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    r = data.add_parser("render", help="write the shapes dataset as WebDataset shards")
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
    v.set_defaults(func=cmd_data_preview)

    bench = sub.add_parser("bench", help="ShapesBench: prompts, ground truth, scoring").add_subparsers(
        dest="bench_command", required=True, metavar="ACTION")
    bp = bench.add_parser("prompts", help="write the benchmark prompts, one per line")
    bp.add_argument("--out", required=True)
    bp.set_defaults(func=cmd_bench_prompts)
    bg = bench.add_parser("groundtruth", help="render the benchmark prompts exactly (a perfect generator)")
    bg.add_argument("--out", required=True)
    bg.add_argument("--size", type=int, default=64)
    bg.add_argument("--seed", type=int, default=0)
    bg.add_argument("-q", "--quiet", action="store_true")
    bg.set_defaults(func=cmd_bench_groundtruth)
    bs = bench.add_parser("score", help="score a folder of generated images (index.jsonl + PNGs)")
    bs.add_argument("dir")
    bs.add_argument("-q", "--quiet", action="store_true")
    bs.set_defaults(func=cmd_bench_score)

    d = sub.add_parser("demo", help="the main job on the embedded dataset (what `make demo` runs)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--n", type=int, default=2000, help="samples to render as shards")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except UserError as e:
        print(f"t2i: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("t2i: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
