"""`t2i eval RUN`: generate the ShapesBench prompts with a trained run, score them, keep the numbers."""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from t2i.errors import UserError
from t2i.eval.shapesbench import format_table, score_dir, spread_prompts, write_images


def generate_batched(pipe: Any, prompts: list[str], seeds: list[int], batch_size: int = 64,
                     progress: bool = True, desc: str = "generating", **options: Any) -> list[Any]:
    """Images for many prompts in batches of `batch_size`, with a progress bar; `options` go to the pipe."""
    images: list[Any] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=not progress):
        images += pipe(prompts[i:i + batch_size], seeds=seeds[i:i + batch_size], **options)
    return images


def sampling_options(pipe: Any, steps: int | None = None, guidance: float | None = None,
                     sampler: str | None = None, **options: Any) -> dict[str, Any] | None:
    """Check sampling options against a loaded run before anything is generated.

    Families take different options (token runs: temperature, top_k, ...; diffusion runs: a diffusion
    sampler), so an option the run's pipeline does not take is a one-line error naming its CLI flag, not a
    TypeError halfway through generating. Token runs return their effective decoding options (given values
    over the run's defaults: what `t2i eval` records); diffusion runs return None."""
    from t2i.diffusion.generate import check_options

    accepted = inspect.signature(pipe.__call__).parameters
    for k in options:
        if k not in accepted:
            flag = "--rerank" if k == "clip" else "--" + k.replace("_", "-")
            raise UserError(f"{flag} does not apply to {getattr(pipe, 'family', '?')} runs (it is for token "
                            "families: dalle, parti, maskgit); leave it out")
    if hasattr(pipe, "options"):  # token runs check their own options and sampler name
        return pipe.options(steps=steps, guidance=guidance, sampler=sampler, **options)
    check_options(1, 1.0, sampler or "ddim")  # diffusion runs: one of the diffusion samplers
    return None


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


def evaluate(run: str | Path, steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
             seed: int = 0, limit: int | None = None, batch_size: int = 64, progress: bool = True,
             out_name: str = "shapesbench", **options: Any) -> dict[str, Any]:
    """Writes RUN/eval/<out_name>/ (images + index.jsonl + shapesbench.json) and RUN/eval/<out_name>.json.

    `options` are family-specific sampling options passed on to the pipeline (e.g. top_k for token runs);
    `sampling_options` checks them against the run's family first, so this stays family-neutral."""
    import t2i
    from t2i.diffusion.generate import check_options

    check_options(1 if steps is None else steps, 1.0 if guidance is None else guidance, "ddim")
    run = Path(run)
    pipe = t2i.load(run)
    used = sampling_options(pipe, steps, guidance, sampler, **options)
    prompts = spread_prompts(limit)  # a partial evaluation still covers every kind
    seeds = [seed + i for i in range(len(prompts))]
    n = used.get("candidates", 1) if used else 1
    t0 = time.perf_counter()
    if n > 1:  # reranked: keep every candidate, to report how often any of them is right
        drawn = {k: v for k, v in options.items() if k != "clip"}
        groups = generate_batched(pipe.draw, prompts, seeds, max(1, batch_size // n), progress,
                                  f"eval: generating {n} candidates per prompt", steps=steps, guidance=guidance,
                                  sampler=sampler, **drawn)
        images = pipe.pick(prompts, groups, options.get("clip"))
    else:
        images = generate_batched(pipe, prompts, seeds, batch_size, progress, "eval: generating",
                                  steps=steps, guidance=guidance, sampler=sampler, **options)
    seconds = time.perf_counter() - t0
    out = run / "eval" / out_name
    write_images(out, zip(images, prompts, seeds, strict=True))
    result = score_dir(out, progress=progress)
    if used is None:  # diffusion runs: the given values over the run's defaults
        sc = pipe.cfg.sample
        used = {"steps": steps or sc.steps, "guidance": sc.guidance if guidance is None else guidance,
                "sampler": sampler or sc.sampler}
    result["sampling"] = {**used, "images": len(images), "seconds": round(seconds, 2),
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
