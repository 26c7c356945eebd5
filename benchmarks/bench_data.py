"""Shapes dataset throughput on one core (issue: at least 2,000 samples/s at 64x64).

Measures whole samples (scene, caption, metadata, rendered PIL image) through the generator and through the
data layer's `shapes` source, plus the tensor-producing `SampleDataset` the trainers consume.
"""

from __future__ import annotations

import argparse
import time

from _common import pin_one_core, record


def rate(it, n: int) -> float:
    t = time.perf_counter()
    for _ in zip(range(n), it, strict=False):
        pass
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--record", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = ap.parse_args()
    pin_one_core()
    from t2i.data.shapes import iter_samples
    from t2i.data.sources import SampleDataset, open_source

    rate(iter_samples(seed=99), 500)  # warm-up
    rows = ["| path | size | samples/s (1 core) |", "|---|---|---|"]
    rates = {size: rate(iter_samples(seed=1, size=size), args.n) for size in (64, 128)}
    for size, r in rates.items():
        rows.append(f"| `shapes.iter_samples` | {size} | {r:,.0f} |")
    rows.append(f"| `open_source('shapes')` | 64 | {rate(open_source('shapes', seed=2), args.n):,.0f} |")
    rows.append(f"| `SampleDataset('shapes')` (tensors) | 64 | {rate(iter(SampleDataset('shapes', seed=3)), args.n):,.0f} |")
    record("Shapes dataset throughput", rows, args.record, current={"shapes dataset": (
        f"{rates[64]:,.0f} samples/s at 64 px, {rates[128]:,.0f} at 128 px (1 core)", "-", "-")})


if __name__ == "__main__":
    main()
