"""The codec ceilings: ShapesBench of exact renders passed through a run's image codec (the VQ of a token
family, the autoencoder of a latent diffusion family), under every scorer. No model decoding through that
codec can score higher, so a family's "what limits it" starts here.

    .venv/bin/python benchmarks/bench_ceilings.py runs/dalle-quick runs/ldm-quick ... --record

The 600 benchmark prompts are rendered at 64 px (every preset's side) with layout seed i for prompt i, encoded, decoded
(the autoencoder's posterior mode) and scored as generated images are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import pin_one_core, record


def reconstruct(run: str):
    """(label, side, images -> reconstructions) for a run's codec."""
    import torch

    import t2i
    from t2i.images import images_to_tensor, tensor_to_images

    pipe = t2i.load(run)
    vq = getattr(pipe, "vq", None)
    ae = getattr(pipe, "autoencoder", None) or getattr(pipe, "ae", None)
    if vq is not None:
        codec, side = "VQ", 64
        step = lambda x: vq.decode(vq.encode(x))  # noqa: E731
    elif ae is not None:
        codec, side = "autoencoder", 64
        step = lambda x: ae.decode(ae.encode(x).mode())  # noqa: E731
    else:
        raise SystemExit(f"{run}: a {pipe.family} run has no image codec (pixel-space families have no ceiling)")

    @torch.no_grad()
    def apply(images: list) -> list:
        out = []
        for i in range(0, len(images), 64):
            x = images_to_tensor(images[i:i + 64]).to(pipe.device)
            out += tensor_to_images(step(x).float().clamp(-1, 1))
        return out
    return f"{pipe.family} {codec}", side, apply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    pin_one_core()
    from t2i.data.shapes import KINDS, render_prompt
    from t2i.eval import shapesbench as sb

    prompts = sb.benchmark_prompts()
    rows = ["| run | codec | scorer | " + " | ".join(KINDS) + " | overall | novel |", "|---" * (len(KINDS) + 5) + "|"]
    summary = []
    for run in args.runs:
        label, side, apply = reconstruct(run)
        recs = apply([render_prompt(p, seed=i, size=side)[0] for i, p in enumerate(prompts)])
        for scorer in sb.SCORERS:
            res = sb.summarize(((p, sb.score_image(im, p, scorer)[0]) for p, im in zip(prompts, recs, strict=True)),
                               scorer)
            rows.append(f"| `{Path(run).name}` | {label} | {scorer} | " + " | ".join(f"{res['kinds'][k]:.3f}" for k in KINDS)
                        + f" | {res['overall']:.3f} | {res['novel']:.3f} |")
            if scorer == sb.DEFAULT_SCORER:
                summary.append(f"{Path(run).name} {res['overall']:.3f}")
    record("Codec ceilings: exact renders through each run's codec", rows, args.record,
           {"codec ceilings": (", ".join(summary), sb.DEFAULT_SCORER, "-")})


if __name__ == "__main__":
    main()
