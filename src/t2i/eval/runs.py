"""`t2i eval RUN`: generate the ShapesBench prompts with a trained run, score them, keep the numbers."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from t2i.errors import OptionError
from t2i.eval.shapesbench import format_table, score_dir, spread, spread_prompts, write_images
from t2i.families.base import check_seeds


def generate_batched(pipe: Any, prompts: list[str], seeds: list[int], batch_size: int = 64,
                     progress: bool = True, desc: str = "generating", method: str = "__call__",
                     inputs: list[Any] | None = None, **kwargs: Any) -> list[Any]:
    """`pipe.<method>` over many prompts in batches of `batch_size`, with a progress bar and ETA."""
    if batch_size < 1:
        raise OptionError("batch_size", f"must be at least 1, got {batch_size}")
    fn = getattr(pipe, method)
    out: list[Any] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=not progress):
        out += fn(prompts[i:i + batch_size], seeds=seeds[i:i + batch_size],
                  inputs=None if inputs is None else inputs[i:i + batch_size], **kwargs)
    return out


def describe_sampling(s: dict[str, Any]) -> str:
    """How a result's images were sampled, as one phrase: sampler, steps and guidance, then the token
    families' filters when they are on, since top-k alone moved ShapesBench by up to 0.07 (docs/tokens.md)."""
    parts = [str(s["sampler"]), f"{s['steps']} steps", f"guidance {s['guidance']}"]
    if s.get("top_k"):
        parts.append(f"top-k {s['top_k']}")
    if s.get("top_p") not in (None, 1.0):
        parts.append(f"top-p {s['top_p']}")
    if s.get("temperature") not in (None, 1.0):
        parts.append(f"temperature {s['temperature']}")
    return ", ".join(parts)


def judge_candidates(prompts: list[str], groups: list[list[Any]]) -> dict[str, Any]:
    """ShapesBench of the first candidate alone and of "any candidate right" per prompt.

    The gap between what reranking picks and "any" is the reranker's share of the error, the gap between
    "first" and "any" is what drawing more candidates can buy: the two levers of best-of-N, told apart."""
    from t2i.eval.shapesbench import score_image, summarize

    oks = [[score_image(im, p)[0] for im in g] for p, g in zip(prompts, groups, strict=True)]
    return {"n": len(groups[0]), "first": summarize(zip(prompts, (o[0] for o in oks), strict=True)),
            "any": summarize(zip(prompts, (any(o) for o in oks), strict=True))}


def evaluate(run: str | Path, seed: int = 0, limit: int | None = None, batch_size: int = 64, progress: bool = True,
             out_name: str = "shapesbench", pipe: Any = None, **given: Any) -> dict[str, Any]:
    """Writes RUN/eval/<out_name>/ (images + index.jsonl + shapesbench.json) and RUN/eval/<out_name>.json.

    `given` are sampling options by name (steps, guidance, top_k, candidates, rerank, ...); the run's own
    pipeline checks them (`pipe.options`) before anything is generated, and what it returns is recorded.
    `pipe`: the run's pipeline, when the caller has loaded it already."""
    from t2i.api import load_generator

    run = Path(run)
    pipe = pipe or load_generator(run)
    options = pipe.picking(pipe.options(**given))
    prompts = spread_prompts(limit)  # a partial evaluation still covers every kind
    seeds = [seed + i for i in range(len(prompts))]
    check_seeds(seeds)
    if batch_size < 1:
        raise OptionError("batch_size", f"must be at least 1, got {batch_size}")
    n = options.candidates
    t0 = time.perf_counter()
    if n > 1:  # reranked: keep every candidate, to report how often any of them is right
        groups = generate_batched(pipe, prompts, seeds, max(1, batch_size // n), progress,
                                  f"eval: generating {n} candidates per prompt", method="draw", options=options)
        images = pipe.pick(prompts, groups, options.rerank)
    else:
        images = generate_batched(pipe, prompts, seeds, batch_size, progress, "eval: generating", options=options)
    seconds = time.perf_counter() - t0
    out = run / "eval" / out_name
    write_images(out, zip(images, prompts, seeds, strict=True))
    result = score_dir(out, progress=progress)
    result["sampling"] = {**dataclasses.asdict(options), "images": len(images), "seconds": round(seconds, 2),
                          "images_per_s": round(len(images) / seconds, 2)}
    if n > 1:
        result["candidates"] = judge_candidates(prompts, groups)
    (run / "eval" / f"{out_name}.json").write_text(json.dumps(result, indent=1))
    if progress:
        print(format_table(result))
        s = result["sampling"]
        print(f"sampling: {describe_sampling(s)}: {s['images_per_s']} images/s ({s['images']} in {s['seconds']} s)")
        if n > 1:
            c, f = result["candidates"], lambda x: "-" if x is None else f"{x:.3f}"
            print(f"candidates: best of {n} by CLIP {f(result['overall'])}; the first alone "
                  f"{f(c['first']['overall'])}; any of the {n} right {f(c['any']['overall'])} (a perfect reranker)")
    return result


def evaluate_suites(run: str | Path, pipe: Any, options: Any, limit: int | None = None, seed: int = 0,
                    batch_size: int = 64, progress: bool = True,
                    out_name: str = "videobench") -> dict[str, Any] | None:
    """The run's other benchmarks (`pipe.suites()`: VideoBench's text-to-video and conditional tasks) into
    RUN/eval/<out_name>/, one folder scored by `t2i bench score`; None when the pipeline has none.
    `limit` caps the requests per task (default: 240 clip prompts, 200 requests per task)."""
    from t2i.eval import videobench as vb
    from t2i.families.base import Input

    suites = pipe.suites()
    if not suites:
        return None
    prompts, inputs, extras = [], [], []
    for task, at in suites.items():
        if task == "t2v":
            ps = vb.video_prompts()
            ps = spread(ps, limit)
            prompts += ps
            inputs += [None] * len(ps)
            extras += [{}] * len(ps)
            continue
        for r in vb.task_requests(task, limit or 200, seed, at["frames"], at["size"]):
            prompts.append(r["prompt"])
            inputs.append(Input(task, r["image"]))
            extras.append({"task": task, "truth": r["truth"]})
    seeds = [seed + i for i in range(len(prompts))]
    t0 = time.perf_counter()
    media = generate_batched(pipe, prompts, seeds, batch_size, progress, "eval: VideoBench", options=options,
                             inputs=inputs)
    seconds = time.perf_counter() - t0
    out = Path(run) / "eval" / out_name
    write_images(out, zip(media, prompts, seeds, strict=True), extras)
    result = vb.score_dir(out, progress=progress)
    result["sampling"] = {"items": len(media), "seconds": round(seconds, 2)}
    (Path(run) / "eval" / f"{out_name}.json").write_text(json.dumps(result, indent=1))
    if progress:
        print(vb.format_video_table(result))
    return result
