"""Token families on this machine: the VQ tokenizer's ceiling and codebook usage, KV-cache speedup, parallel
(MaskGIT) vs autoregressive decoding, and each family's quick preset on ShapesBench with its training time.

    .venv/bin/python benchmarks/bench_tokens.py --train --record

`--train` trains the quick presets first (`t2i train --family F --preset quick --out runs/F-quick`, each with
its own tokenizer, so each training time includes it; resumable: rerun after an interruption), and the
reranking CLIP (`t2i train --family clip --preset rerank --out runs/clip-rerank`). Without it, existing runs
are measured. Training uses both cores, every measurement one thread: nothing else may run meanwhile.
`--families dalle` measures a subset.

A family whose preset draws several candidates per prompt (`sample.candidates`) is scored twice: one image
per prompt, and the best of its candidates by the reranking CLIP -- DALL-E's recipe -- whose time then
counts the CLIP's training minute too. Every candidate is judged as well, so the record also says how often
any of them is right: what a perfect reranker would score, the ceiling of the CLIP's pick.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from _common import record, train_or_resume

FAMILIES = ("dalle", "parti", "maskgit")


def vq_figures(run: Path) -> dict[str, float]:
    """ShapesBench of reconstructions of the 600 benchmark prompts, codebook usage and error over 4096 images."""
    import t2i
    from t2i.codecs.vq import ReconstructionPipe, codebook_usage, reconstruction_error
    from t2i.eval.shapesbench import quick_score, spread_prompts
    from t2i.train.data import DataConfig, batches

    pipe = t2i.load(run)
    vq = pipe.vq
    score = quick_score(ReconstructionPipe(vq, pipe.cfg.data.resolution), n=len(spread_prompts()))

    def held_out():
        return (b["image"] for b in itertools.islice(batches(DataConfig(seed=777), 256, 0), 16))

    usage = codebook_usage(vq, held_out())
    return {"shapesbench": score["shapesbench"], "counting": score.get("counting", float("nan")),
            "codes_used": usage["codes_used"], "codebook": vq.cfg.codebook_size, "perplexity": usage["perplexity"],
            "mae": reconstruction_error(vq, held_out())}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_speedup(run: Path, batch: int = 16, reps: int = 2) -> dict[str, float]:
    """Seconds to decode a batch of 64-token images with and without the KV cache (token decoding only, at the
    run's default guidance and filtering; one thread), and whether the tokens are identical."""
    import t2i
    from t2i.tokens.decoding import DecodeOptions, sample_autoregressive

    torch.set_num_threads(1)
    pipe = t2i.load(run)
    o = pipe.options(candidates=1)
    opts = DecodeOptions(o.temperature, o.top_k, o.top_p, o.guidance)
    dev = pipe.device
    ids, mask = (t.to(dev) for t in pipe.tokenizer.encode(["a red circle left of a blue square"] * batch,
                                                           pipe.cfg.text.max_len))
    null_ids, null_mask = (t.to(dev) for t in pipe.tokenizer.encode([""] * batch, pipe.cfg.text.max_len))
    cond, uncond = pipe.net.prepare(ids, mask), pipe.net.prepare(null_ids, null_mask)
    seeds = list(range(batch))
    out, times = {}, {}
    with torch.no_grad():
        for cached in (True, False):
            net = pipe.net
            sample_autoregressive(net.next_state, net.head.slot_logits, cond, uncond, 4, net.slots, seeds, opts,
                                  net.layers, cached, device=dev)
            _sync(dev)
            t = time.perf_counter()
            for _ in range(reps):
                out[cached] = sample_autoregressive(net.next_state, net.head.slot_logits, cond, uncond, net.positions,
                                                    net.slots, seeds, opts, net.layers, use_cache=cached, device=dev)
            _sync(dev)
            times[cached] = (time.perf_counter() - t) / reps
    return {"cached_s": times[True], "uncached_s": times[False], "speedup": times[False] / times[True],
            "identical": bool(torch.equal(out[True], out[False])), "batch": batch}


def throughput(run: Path, batch: int = 64) -> float:
    """Images/s at the run's default decoding options, batch 64, one thread."""
    import t2i

    torch.set_num_threads(1)
    pipe = t2i.load(run)
    prompts = ["two green squares"] * batch
    pipe(prompts[:2], seed=0, candidates=1)
    t = time.perf_counter()
    pipe(prompts, seed=0, candidates=1)
    return batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs", help="folder holding <family>-quick runs")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--train", action="store_true", help="train the quick presets into --runs first")
    ap.add_argument("--record", action="store_true", help="append the results to benchmarks/RESULTS.md")
    ap.add_argument("--rerank", metavar="CLIP_RUN", help="the reranking CLIP run (default: RUNS/clip-rerank)")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    runs = {f: Path(args.runs) / f"{f}-quick" for f in families}
    clip_run = Path(args.rerank or Path(args.runs) / "clip-rerank")
    if args.train:
        todo = [("clip", "rerank", clip_run)] if not args.rerank else []
        for family, preset, run in todo + [(f, "quick", run) for f, run in runs.items()]:
            train_or_resume(family, preset, run, ["--data", "shapes"])

    import t2i
    from t2i.eval.runs import describe_sampling, evaluate
    from t2i.train.rundir import read_meta

    torch.set_num_threads(1)  # every measurement below on one thread, so the figures compare across runs

    rows = ["| family | train min (tokenizer+vq / transformer [+ CLIP]) | params | single | size | two | position | "
            "counting | overall | novel | images/s (batch 64, 1 thread) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    evals, speeds, ceilings = {}, {}, []
    clip_min = sum(read_meta(clip_run)["train_seconds"].values()) / 60 if (clip_run / "run.json").exists() else None

    def row(name: str, res: dict, sec: dict, params: int, speed: str, extra_min: float = 0.0) -> str:
        k = res["kinds"]
        times = f"{(sec['tokenizer'] + sec['vq'] + sec.get('vq_decoder', 0.0)) / 60:.1f} / {sec['transformer'] / 60:.1f}"
        times += f" + {extra_min:.1f}" if extra_min else ""
        return (f"| {name} | {sum(sec.values()) / 60 + extra_min:.1f} ({times}) | {params / 1e6:.1f}M | "
                + " | ".join(f"{k[x]:.3f}" for x in ("single_object", "size", "two_object", "position", "counting"))
                + f" | {res['overall']:.3f} | {res['novel']:.3f} | {speed} |")

    current = {}
    for f, run in runs.items():
        meta = read_meta(run)
        sec, params = meta["train_seconds"], meta["params"]["transformer"]
        res = evaluate(run, progress=False, candidates=1)
        evals[f], speeds[f] = res, throughput(run)
        rows.append(row(f, res, sec, params, f"{speeds[f]:.1f}"))
        scorer = res["version"].removeprefix("shapesbench-")
        current[f"{f} {meta.get('preset')}"] = (f"{res['overall']:.3f} (one image per prompt)", scorer,
                                                f"{sum(sec.values()) / 60:.1f} min")
        n = t2i.load(run).cfg.sample.candidates
        if n > 1 and clip_min is not None:
            rr = evaluate(run, progress=False, out_name="reranked", rerank=str(clip_run))
            rows.append(row(f"{f}, best of {n} by CLIP", rr, sec, params, f"{rr['sampling']['images_per_s']:.1f} "
                            f"(prompts/s: {n} candidates + CLIP)", clip_min))
            c = rr["candidates"]
            current[f"{f} {meta.get('preset')}"] = (
                f"best of {n} by CLIP {rr['overall']:.3f} (first image {res['overall']:.3f}; any of {n} right "
                f"{c['any']['overall']:.3f})", scorer, f"{sum(sec.values()) / 60 + clip_min:.1f} min incl. CLIP")
            ceilings.append(f"- {f}: any of its {n} candidates right (what a perfect reranker would pick) "
                            f"**{c['any']['overall']:.3f}** against {rr['overall']:.3f} picked by CLIP (two objects "
                            f"{c['any']['kinds']['two_object']:.2f}, position {c['any']['kinds']['position']:.2f}, "
                            f"counting {c['any']['kinds']['counting']:.2f})")
    rows += ["", "Decoding options: the runs' defaults (" + "; ".join(
        f"{f}: {describe_sampling(evals[f]['sampling'])}" for f in runs) + ")."]
    if clip_min is not None:
        rows.append(f"Reranking CLIP: `{clip_run}` ({clip_min:.1f} min of training, counted in the reranked rows' "
                    "time).")
    rows += ceilings

    first = next(iter(runs.values()))
    vq = vq_figures(first)
    rows += ["", f"VQ tokenizer of `{first}`: reconstructions of the 600 ShapesBench prompts score "
             f"**{vq['shapesbench']:.3f}** (counting {vq['counting']:.3f}); codebook usage over 4,096 held-out "
             f"images {vq['codes_used']}/{vq['codebook']} codes (perplexity {vq['perplexity']:.0f}); "
             f"mean abs error {vq['mae']:.2f}/255."]
    for f in ("dalle", "parti"):
        if f in runs:
            c = cache_speedup(runs[f])
            rows.append(f"- KV cache ({f}, 64 image tokens, batch {c['batch']}, 1 thread, token decoding only): "
                        f"{c['uncached_s']:.2f} s without vs {c['cached_s']:.2f} s with the cache per batch: "
                        f"**{c['speedup']:.1f}x**; identical samples: {c['identical']}")
    if "maskgit" in runs and "parti" in runs:
        m, p = evals["maskgit"], evals["parti"]
        rows.append(f"- parallel vs autoregressive (maskgit {m['sampling']['steps']} steps vs parti, same widths "
                    f"and tokenizer recipe): {speeds['maskgit']:.1f} vs {speeds['parti']:.1f} images/s "
                    f"({speeds['maskgit'] / speeds['parti']:.1f}x); ShapesBench {m['overall']:.3f} vs "
                    f"{p['overall']:.3f}")
    record("Token families (DALL-E, Parti, MaskGIT) quick presets", rows, args.record, current=current)


if __name__ == "__main__":
    main()
