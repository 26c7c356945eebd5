"""Held-out loss of a token family's transformer after N training images, for config variants on one VQ.

    .venv/bin/python benchmarks/probe_tokens.py --run runs/parti-quick --images 48000 \\
        "" "stages.transformer.lr=5e-3" "stages.transformer.lr=5e-3,net.code_features=true"

Why: a full transformer retrain plus a 300-prompt ShapesBench takes 13 minutes and its figure moves by a few
hundredths between seeds; the held-out loss after a fixed number of images separates learning-rate,
batch-size and architecture choices in 2-3 minutes each. It measures learning per image, not the score:
a variant that lowers it can still memorise a small cache faster and score lower (docs/tokens.md), so
candidates it finds still need the full retrain.

Every variant (a comma list of `--set` overrides over the run's config; "" = the run's own) trains the run's
family net from scratch with the Trainer's optimiser (`t2i.train.trainer.adamw`), bf16 autocast and gradient
clip, at a constant learning rate after the config's warm-up, on one shared cache of `--cache` images encoded by
the run's frozen VQ; the loss is measured on 2,048 other images (data seed 777), caption dropout off. Nothing
else may run meanwhile (the minutes column is wall-clock on both cores).
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import replace
from pathlib import Path

import torch

from _common import record


def probe(run: Path, variants: list[str], images: int, cache_size: int) -> list[str]:
    from t2i.codecs.vq import ImageTokenizer
    from t2i.config import load_yaml, override
    from t2i.data.tokenizer import Tokenizer
    from t2i.families import get_family
    from t2i.families.tokens import TokenStage
    from t2i.runtime import autocast
    from t2i.train.data import DataConfig, encode_cache
    from t2i.train.rundir import load_part, read_meta
    from t2i.train.trainer import adamw, lr_at

    family = get_family(read_meta(run)["family"])
    base = load_yaml(family.config, run / "config.yaml")
    tokenizer = Tokenizer.load(run / "tokenizer.json")
    vq = load_part(ImageTokenizer(base.vq), run, "vq").eval()
    max_len = base.text.max_len

    def encode(x: torch.Tensor) -> torch.Tensor:
        return vq.encode(x).flatten(1)

    train = encode_cache(DataConfig(cache=cache_size, seed=0), encode, tokenizer, max_len)
    held = encode_cache(DataConfig(cache=2048, seed=777), encode, tokenizer, max_len)
    cpu = torch.device("cpu")
    rows = ["| variant | " + " | ".join(f"loss at {images * q // 4:,}" for q in (1, 2, 3, 4))
            + " | minutes |", "|---|---|---|---|---|---|"]
    for variant in variants:
        cfg = override(base, [v for v in variant.split(",") if v])
        torch.manual_seed(0)
        pipeline = importlib.import_module(f"t2i.families.{family.name}").Pipeline
        stage = TokenStage(pipeline.build_net(cfg, tokenizer, vq), vq, tokenizer, max_len, cfg.net.cond_drop)
        tc = replace(cfg.stages.transformer, lr_schedule="constant")  # after the warm-up: no decay to confound the comparison
        opt = adamw(stage, tc, cpu)
        gen = torch.Generator().manual_seed(0)
        seen, step, spent, losses = 0, 0, 0.0, []
        while seen < images:
            t = time.perf_counter()
            idx = torch.randint(0, len(train["latent"]), (tc.batch_size,), generator=gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            with autocast(cpu):
                loss = stage({k: v[idx] for k, v in train.items()}, gen)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(stage.net.parameters(), tc.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            spent += time.perf_counter() - t
            seen, step = seen + tc.batch_size, step + 1
            if seen * 4 // images > len(losses):  # a quarter more of the images: measure
                losses.append(held_out_loss(stage, held))
        name = variant or "(the run's config)"
        rows.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in losses) + f" | {spent / 60:.1f} |")
        print(rows[-1], flush=True)
    return rows


@torch.no_grad()
def held_out_loss(stage: torch.nn.Module, held: dict[str, torch.Tensor]) -> float:
    from t2i.runtime import autocast

    stage.eval()
    drop, stage.cond_drop = stage.cond_drop, 0.0
    total, n = 0.0, len(held["latent"])
    with autocast(torch.device("cpu")):
        for i in range(0, n, 256):
            part = {k: v[i:i + 256] for k, v in held.items()}
            total += stage(part)["loss"].item() * len(part["latent"])
    stage.train()
    stage.cond_drop = drop
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a token-family run whose VQ stage is done")
    ap.add_argument("--images", type=int, default=48000, help="training images per variant")
    ap.add_argument("--cache", type=int, default=40000, help="distinct training images (encoded once)")
    ap.add_argument("--record", action="store_true", help="append the results to benchmarks/RESULTS.md")
    ap.add_argument("variants", nargs="+", help='comma lists of overrides, e.g. "stages.transformer.lr=5e-3" ("" = as is)')
    args = ap.parse_args()
    rows = probe(args.run, args.variants, args.images, args.cache)
    record(f"Token transformer held-out loss probe on `{args.run}`'s VQ ({args.images} images, "
           f"{args.cache}-image cache)", rows, args.record)


if __name__ == "__main__":
    main()
