"""`t2i serve` under hostile and heavy use: a fuzz of malformed requests, then a load of concurrent clients.

    .venv/bin/python benchmarks/bench_serve.py --run runs/ldm-quick --record

Starts a real `t2i serve RUN --token T` in a subprocess (as a user would), then:

* **Fuzz.** `--fuzz` (1,000) malformed or hostile requests, drawn with a fixed seed from: bad JSON, deep
  nesting, wrong types, huge / negative / NaN numbers, megabyte prompts, control and right-to-left
  characters, bad base64, non-image and oversized uploads, a PNG whose header claims 100,000 px, path
  traversal in run, job and image ids, unknown endpoints and methods, oversized bodies, a missing or wrong
  token. Counted: responses of 5xx (must be 0), non-JSON error bodies, the server alive afterwards, and its
  resident memory before and after (from /proc).
* **Load.** `--clients` (32) threads each send `--requests` (10) generate requests of `--n` images and
  follow each to the end; a 429 is an answer. Reported: answered / refused, p50 / p95 latency from POST to
  done (polled every 0.25 s, as the page does), images/s, beside `pipe(...)` throughput on the same run in this process at the server's thread count.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from _common import record

TOKEN = "bench-" + "x" * 24


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def png_bytes(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 20, 200)).save(buf, format=fmt)
    return buf.getvalue()


def bomb_png() -> bytes:
    """A PNG whose header claims 100000 x 100000 px: it must be refused before it is decoded."""
    raw = bytearray(png_bytes((8, 8)))
    raw[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width and height (its CRC is now wrong too)
    return bytes(raw)


def hostile(rng: random.Random, run: str) -> tuple[str, str, dict]:
    """One malformed or hostile request: (method, path, httpx keyword arguments)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = {"run": run, "prompt": "a red circle", "steps": 2}

    def gen(**body: object) -> tuple[str, str, dict]:
        return "POST", "/api/v1/generate", {"json": {**ok, **body}, "headers": auth}

    def raw(content: bytes | str) -> tuple[str, str, dict]:
        return "POST", "/api/v1/generate", {"content": content, "headers": {**auth, "content-type": "application/json"}}

    weird = ["\u202e\u202dabc", "\x00\x01\x1b[31m", "a" * 10_000, "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
             "🟥" * 300, "'; DROP TABLE runs; --", "<script>alert(1)</script>", "\n" * 500]
    choices = [
        lambda: raw(rng.randbytes(rng.randint(1, 200))),
        lambda: raw('{"run": "' + run + '", "prompt": '),
        lambda: raw("[" * 100_000 + "]" * 100_000),
        lambda: raw(f'{{"run": "{run}", "prompt": "x", "guidance": NaN}}'),
        lambda: raw(f'{{"run": "{run}", "prompt": "x", "steps": Infinity}}'),
        lambda: raw(f'{{"run": "{run}", "prompt": "x", "n": 1e400}}'),
        lambda: gen(n=rng.choice([-1, 0, 17, 10**12, "4", None, [1], {"a": 1}, 2.5, True])),
        lambda: gen(steps=rng.choice([-5, 0, 251, 10**18, "20", [], 1e308])),
        lambda: gen(seed=rng.choice([-1, 2**32, 2**64, "0", 1.5, {}])),
        lambda: gen(guidance=rng.choice([1e308, -1e308, "x", [], {}, True])),
        lambda: gen(prompt=rng.choice([123, None, [], {"x": 1}, "x" * 1_000_001, "x" * 1001])),
        lambda: gen(prompt=rng.choice(weird)[:1000], n=1, steps=2),  # valid but strange: may be accepted
        lambda: gen(sampler=rng.choice(["", "../../etc/passwd", "x" * 500, 3, "DDPM"])),
        lambda: gen(rerank=rng.choice(["/etc/passwd", "../runs/clip", "x" * 300])),
        lambda: gen(image=rng.choice(["!!!", "====", b64(rng.randbytes(300)), "data:image/png;base64,@@"])),
        lambda: gen(image=b64(png_bytes((513, 10)))),
        lambda: gen(image=b64(bomb_png())),
        lambda: gen(image=b64(png_bytes((64, 64), "GIF"))),
        lambda: gen(image=b64(png_bytes((64, 64))), mask=b64(png_bytes((32, 32)))),
        lambda: gen(task=rng.choice(["inpaint", "dance", "../x", 7])),
        lambda: gen(**{rng.choice(["bogus", "__class__", "x" * 100]): 1}),
        lambda: ("GET", rng.choice(["/api/v1/jobs/../../etc/passwd", "/api/v1/images/..%2f..%2frun.json",
                                    "/api/v1/images/%2fetc%2fpasswd", "/api/v1/jobs/" + "a" * 5000,
                                    "/api/v1/images/index.jsonl", "/api/v1/nope", "/api/v1/history?limit=abc",
                                    "/api/v1/history?limit=-99999999999999999999"]), {"headers": auth}),
        lambda: ("POST", "/api/v1/jobs/" + rng.choice(["../x", "%00", "a" * 300]) + "/cancel", {"headers": auth}),
        lambda: (rng.choice(["PUT", "DELETE", "PATCH"]), "/api/v1/generate", {"headers": auth}),
        lambda: ("GET", "/api/v1/runs", {"headers": rng.choice([{}, {"Authorization": "Bearer wrong"},
                                                                 {"Authorization": TOKEN}, {"Authorization": "Basic eA=="}])}),
        lambda: ("POST", "/api/v1/generate", {"content": b"x" * rng.choice([9_000_000, 12_000_000]), "headers": auth}),
        lambda: ("POST", "/api/v1/compare", {"json": {"runs": rng.choice([[], ["zzz"], [run] * 50, "x"]), "prompt": "x"},
                                             "headers": auth}),
    ]
    return rng.choice(choices)()


def fuzz(client: httpx.Client, pid: int, run: str, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    before = rss_mb(pid)
    codes: dict[int, int] = {}
    not_json = 0
    server_errors = []
    t0 = time.perf_counter()
    for _ in range(n):
        method, path, kw = hostile(rng, run)
        try:
            r = client.request(method, path, **kw)
        except httpx.HTTPError as e:
            codes[-1] = codes.get(-1, 0) + 1
            server_errors.append(f"{method} {path[:60]}: {type(e).__name__}")
            continue
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            server_errors.append(f"{method} {path[:60]} -> {r.status_code} {r.text[:100]}")
        if r.status_code >= 400:
            try:
                body = r.json()
                if not isinstance(body, dict) or not isinstance(body.get("error"), str):
                    not_json += 1
            except ValueError:
                not_json += 1
    seconds = time.perf_counter() - t0
    time.sleep(1.0)
    alive = client.get("/api/v1/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    return {"n": n, "codes": dict(sorted(codes.items())), "server_errors": server_errors, "not_json": not_json,
            "alive": alive, "rss_before": before, "rss_after": rss_mb(pid), "seconds": seconds}


def load(base: str, run: str, clients: int, requests: int, n: int) -> dict:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    refused = answered = images = 0
    lock = threading.Lock()
    prompts = ["a red circle", "two blue squares", "a green triangle to the left of a yellow circle",
               "a large purple square", "three orange circles"]

    def client_loop(k: int) -> None:
        nonlocal refused, answered, images
        with httpx.Client(base_url=base, timeout=600) as c:
            for i in range(requests):
                t = time.perf_counter()
                r = c.post("/api/v1/generate", headers=auth,
                           json={"run": run, "prompt": prompts[(k + i) % len(prompts)], "n": n, "seed": k * 100 + i})
                if r.status_code == 429:
                    with lock:
                        refused += 1
                    time.sleep(float(r.headers.get("retry-after", "1")) * 0.1)
                    continue
                r.raise_for_status()
                job_id = r.json()["id"]
                while True:
                    job = c.get(f"/api/v1/jobs/{job_id}", headers=auth).json()
                    if job["state"] in ("done", "failed", "cancelled"):
                        break
                    time.sleep(0.25)  # as the web page polls
                with lock:
                    answered += 1
                    if job["state"] == "done":
                        images += len(job["images"])
                        latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"answered": answered, "refused": refused, "images": images, "wall": wall,
            "p50": statistics.median(lat) if lat else float("nan"),
            "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan"),
            "images_per_s": images / wall}


def direct_throughput(run: str, n: int, threads: int, repeats: int = 20) -> dict:
    """`pipe(...)` on the same run in this process, n images a call as the server's jobs, and in one batch
    of 64 as `t2i generate --prompts-file` does."""
    import torch

    import t2i

    torch.set_num_threads(threads)
    pipe = t2i.load(run)
    pipe(["a red circle"] * n, seed=0)  # warm-up
    t = time.perf_counter()
    for i in range(repeats):
        pipe(["a red circle"] * n, seed=i * n)
    per_call = (time.perf_counter() - t)
    t = time.perf_counter()
    pipe(["a red circle"] * 64, seed=0)
    batch = time.perf_counter() - t
    return {"calls": n * repeats / per_call, "batch64": 64 / batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/ldm-quick")
    ap.add_argument("--fuzz", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--n", type=int, default=4, help="images per generate request in the load test")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="the server's torch threads (its default: all cores but one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    run_id = Path(args.run).resolve().name
    port = free_port()
    out = Path(tempfile.mkdtemp(prefix="t2i-serve-bench-"))
    server = subprocess.Popen([sys.executable, "-m", "t2i.cli", "serve", args.run, "--port", str(port), "--out",
                               str(out), "--token", TOKEN, "--threads", str(args.threads), "-q"])
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            for _ in range(600):
                try:
                    if c.get("/api/v1/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    raise SystemExit("t2i serve exited before it served")
                time.sleep(0.2)
            warm = c.post("/api/v1/generate", headers={"Authorization": f"Bearer {TOKEN}"},
                          json={"run": run_id, "prompt": "a red circle", "n": args.n}).json()["id"]
            while c.get(f"/api/v1/jobs/{warm}", headers={"Authorization": f"Bearer {TOKEN}"}).json()["state"] != "done":
                time.sleep(0.1)  # the first generation's one-time allocations are not growth
            f = fuzz(c, server.pid, run_id, args.fuzz, args.seed)
        print(json.dumps(f, indent=1))
        lo = load(base, run_id, args.clients, args.requests, args.n)
        print(json.dumps(lo, indent=1))
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(60)
    d = direct_throughput(args.run, args.n, args.threads)
    growth = f["rss_after"] - f["rss_before"]
    codes = ", ".join(f"{k}: {v}" for k, v in f["codes"].items())
    rows = [
        f"Run `{args.run}`; server with `--token`, `--threads {args.threads}`, queue 8 per run.",
        "",
        "| check | result |",
        "|---|---|",
        f"| fuzz: hostile requests | {f['n']} in {f['seconds']:.1f} s; status codes {codes} |",
        f"| fuzz: 5xx responses / non-JSON errors | {len(f['server_errors'])} / {f['not_json']} |",
        f"| fuzz: server alive afterwards | {'yes' if f['alive'] else 'NO'} |",
        f"| fuzz: resident memory | {f['rss_before']:.0f} MB -> {f['rss_after']:.0f} MB ({growth:+.0f} MB) |",
        f"| load: {args.clients} clients x {args.requests} requests of {args.n} images | {lo['answered']} answered, "
        f"{lo['refused']} answered 429, {lo['answered'] + lo['refused']} of {args.clients * args.requests} |",
        f"| load: latency POST to done, p50 / p95 | {lo['p50']:.2f} s / {lo['p95']:.2f} s |",
        f"| load: throughput | {lo['images_per_s']:.1f} images/s ({lo['images']} images in {lo['wall']:.1f} s) |",
        f"| same run, `pipe(...)` in-process, {args.threads} thread(s) | {d['calls']:.1f} images/s in calls of "
        f"{args.n}; {d['batch64']:.1f} images/s in one batch of 64 (`t2i generate --prompts-file`) |",
        f"| server alive after the load | {'yes' if alive else 'NO'} |",
    ]
    if f["server_errors"]:
        rows += ["", "5xx / transport errors:", *[f"- {e}" for e in f["server_errors"][:20]]]
    record("t2i serve: fuzz and load", rows, args.record,
           {"serve (ldm quick)": (f"fuzz {f['n']}: {len(f['server_errors'])} 5xx, {growth:+.0f} MB; load "
                                  f"{args.clients}x{args.requests}: p50 {lo['p50']:.2f} s, p95 {lo['p95']:.2f} s, "
                                  f"{lo['images_per_s']:.1f} images/s (in-process {d['calls']:.1f})", "-", "-")})


if __name__ == "__main__":
    main()
