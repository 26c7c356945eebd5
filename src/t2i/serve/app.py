"""`t2i serve RUN [RUN ...]`: a REST API and a web page over trained runs (FastAPI + uvicorn).

The server talks to every family through the family contract only: a run's options are its `Options`
dataclass (served as a JSON schema the page builds its controls from), its tasks are `pipe.tasks`, and
`pipe.options(**given)` is the one validator of values. It names no family.

Safety, because a model server is a network service: it binds 127.0.0.1 unless given `--token` (then every
`/api/` request needs `Authorization: Bearer TOKEN`, compared in constant time), bodies are capped before
they are parsed, every numeric field is bounded, uploads must be real PNG/JPEG of at most 512 px a side,
ids are looked up in what the server holds (never joined into paths), queues are bounded (429 with
Retry-After), and every error is a JSON `{"error": "..."}` that says what to change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import math
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi import HTTPException as FastAPIHTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from t2i.errors import OptionError, UserError
from t2i.families.base import MAX_SEED, PROMPTLESS_TASKS, TASKS, Input
from t2i.serve.jobs import Engine, Job, QueueFull, Results, ServedRun, bounds, kind_of

LIMITS = {"n": 16, "steps": 250, "prompt": 1000, "upload_bytes": 4 * 2**20, "upload_side": 512, "runs": 8}
MAX_BODY = 2 * (4 * 2**20) * 4 // 3 + 64 * 1024  # an image and a mask of 4 MB each, base64, plus fields
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class Bad(Exception):
    """A request the server refuses: its status and the one-line message the client gets as {"error"}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


# ------------------------------------------------------------------------------------------ requests
class GenerateRequest(BaseModel):
    """A generate request; sampling options go beside these fields, by their names (`steps`, `guidance`,
    `sampler`, ...), and are checked against the run's own `Options`."""

    model_config = ConfigDict(extra="allow")
    run: str = Field(max_length=200)
    prompt: str = Field(max_length=LIMITS["prompt"])
    negative_prompt: str | None = Field(None, max_length=LIMITS["prompt"])
    n: int = Field(1, ge=1, le=LIMITS["n"], strict=True)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, strict=True)  # None: a random seed
    task: str | None = Field(None, max_length=20)
    image: str | None = Field(None, max_length=MAX_BODY)  # base64 PNG/JPEG
    mask: str | None = Field(None, max_length=MAX_BODY)
    strength: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)


class CompareRequest(BaseModel):
    """One prompt and seed across several runs; options a run does not take are left out for that run."""

    model_config = ConfigDict(extra="allow")
    runs: list[str] = Field(min_length=1, max_length=LIMITS["runs"])
    prompt: str = Field(max_length=LIMITS["prompt"])
    n: int = Field(1, ge=1, le=LIMITS["n"], strict=True)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, strict=True)


def _image(data: str, field: str) -> Image.Image:
    """A base64 PNG/JPEG upload, checked before it is decoded in full (size, format, side)."""
    if data.startswith("data:"):  # a data URL from a browser canvas
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Bad(422, f"{field}: not valid base64; send the PNG or JPEG file's bytes base64-encoded") from None
    if len(raw) > LIMITS["upload_bytes"]:
        raise Bad(422, f"{field}: {len(raw)} bytes; an upload must be at most {LIMITS['upload_bytes']} bytes")
    try:
        im = Image.open(io.BytesIO(raw))
        fmt = im.format
        if fmt not in ("PNG", "JPEG"):
            raise Bad(422, f"{field}: a {fmt or 'unknown'} file; send a PNG or JPEG")
        side = LIMITS["upload_side"]
        if im.width > side or im.height > side:
            raise Bad(422, f"{field}: {im.width}x{im.height}; an upload must be at most {side} px a side")
        im.load()
    except Bad:
        raise
    except Exception:  # PIL raises many types on hostile bytes: all mean "not an image"
        raise Bad(422, f"{field}: not a readable PNG or JPEG image") from None
    return im


def _mask(im: Image.Image) -> Image.Image:
    """A browser canvas sends RGBA: its luminance over black is the mask (white = regenerate)."""
    if im.mode in ("L", "1"):
        return im
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "black"), rgba).convert("L")


class App:
    """The request handlers' state: the engine, limits, token."""

    def __init__(self, engine: Engine, token: str | None = None):
        self.engine, self.token = engine, token

    def run(self, run_id: Any) -> ServedRun:
        run = self.engine.runs.get(run_id) if isinstance(run_id, str) else None
        if run is None:
            raise Bad(404, f"no run {str(run_id)[:80]!r} on this server; GET /api/v1/runs lists them")
        if not run.generator:
            raise Bad(422, f"run {run.id} is a {run.family.name} run: it scores images and cannot generate; "
                      "use it as the `rerank` option of a generator")
        return run

    def scorers(self) -> list[str]:
        return [r.id for r in self.engine.runs.values() if not r.generator]

    def job(self, job_id: str) -> Job:
        job = self.engine.jobs.get(job_id)
        if job is None:
            raise Bad(404, f"no job {job_id[:80]!r}; jobs are kept while the server runs (GET /api/v1/history "
                      "lists saved results)")
        return job

    def options(self, run: ServedRun, given: dict[str, Any], strict: bool = True) -> tuple[Any, dict[str, Any]]:
        """The request's option fields, type- and bound-checked here, then by the run's own `pipe.options`."""
        known = {f.name: f for f in fields(run.pipe.Options)}
        checked: dict[str, Any] = {}
        for name, value in given.items():
            f = known.get(name)
            if f is None:
                if not strict:
                    continue
                raise Bad(422, f"unknown field {name[:60]!r}; {run.id} takes run, prompt, n, seed, task, image, "
                          f"mask, strength and its options {', '.join(known)}")
            if value is None:
                continue
            kind = kind_of(f)
            if kind == "string":
                if not isinstance(value, str) or len(value) > 200:
                    raise Bad(422, f"{name}: must be a string of at most 200 characters")
            elif kind == "array":
                n = f.metadata["nargs"]
                if (not isinstance(value, list) or len(value) not in (0, n)
                        or not all(isinstance(v, str) and len(v) <= 200 for v in value)):
                    raise Bad(422, f"{name}: must be a list of {n} strings of at most 200 characters (or [])")
                value = tuple(value)
            else:
                ok = isinstance(value, int) if kind == "integer" else isinstance(value, int | float)
                if isinstance(value, bool) or not ok or not math.isfinite(value):
                    raise Bad(422, f"{name}: must be a{'n integer' if kind == 'integer' else ' finite number'}")
                lo, hi = bounds(name, kind, LIMITS)
                if not lo <= value <= hi:
                    raise Bad(422, f"{name}: {value} is out of bounds; it must be in [{lo}, {hi}]")
                value = int(value) if kind == "integer" else float(value)
            checked[name] = value
        if checked.get("rerank"):
            clip = self.engine.runs.get(checked["rerank"])
            if clip is None or clip.generator:
                raise Bad(422, f"rerank: {checked['rerank'][:80]!r} is not a CLIP run on this server; serve one "
                          f"beside this run (on this server: {', '.join(self.scorers()) or 'none'})")
            checked["rerank"] = str(clip.path)
        while True:
            try:
                return run.pipe.options(**checked), checked
            except OptionError as e:
                if strict or e.name not in checked:
                    raise Bad(422, f"{e.name}: {e.detail}") from None
                del checked[e.name]  # compare: this run does not take that value; it runs with its own default
            except UserError as e:
                raise Bad(422, str(e)) from None

    def make_job(self, run: ServedRun, prompt: str, n: int, seed: int | None, given: dict[str, Any],
                 inp: Input | None, task: str | None, group: str | None = None, strict: bool = True) -> Job:
        if not prompt.strip() and (inp is None or inp.task not in PROMPTLESS_TASKS):
            raise Bad(422, "prompt: empty; describe the image, e.g. \"a red circle\"")
        options, checked = self.options(run, given, strict)
        if inp is not None and inp.task not in run.pipe.tasks:
            raise Bad(422, f"task {inp.task} is not supported by run {run.id} (its tasks: "
                      f"{', '.join(run.pipe.tasks) or 'none'})")
        if seed is None:
            seed = secrets.randbelow(MAX_SEED - LIMITS["n"])
        elif seed + n - 1 > MAX_SEED:  # image i uses seed + i
            raise Bad(422, f"seed: {seed} + n - 1 is over {MAX_SEED}; image i uses seed + i, so give a seed of at most "
                      f"{MAX_SEED - n + 1}")
        return Job(uuid.uuid4().hex[:16], run.id, prompt, [seed + i for i in range(n)], options, checked,
                   [inp] * n, task, group)

    def submit(self, job: Job) -> Job:
        try:
            return self.engine.submit(job)
        except QueueFull as e:
            raise Bad(429, f"{e}; retry in a few seconds", {"Retry-After": "5"}) from None


def _input(req: GenerateRequest) -> Input | None:
    if req.task is not None and req.task not in TASKS:
        raise Bad(422, f"task: unknown task {req.task[:40]!r}; tasks are {', '.join(TASKS)}")
    if req.image is None:
        if req.mask is not None or req.task is not None:
            raise Bad(422, f"task {req.task or 'inpaint'} needs an input image: send `image` (base64 PNG/JPEG)")
        return None
    image = _image(req.image, "image").convert("RGB")
    mask = _mask(_image(req.mask, "mask")) if req.mask is not None else None
    task = req.task or ("inpaint" if mask is not None else "img2img")
    try:
        return Input(task, image, mask, 0.6 if req.strength is None else req.strength)
    except UserError as e:
        raise Bad(422, str(e)) from None


# ------------------------------------------------------------------------------------------ the app
class Guard:
    """The token and the body cap, as plain ASGI around the app: before any handler parses a byte, and
    counting what arrives (a chunked body has no Content-Length to trust)."""

    def __init__(self, app: Any, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.token is not None and scope["path"].startswith("/api/"):
            given = headers.get("authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
                return await _send(send, 401, "missing or wrong token: send the header 'Authorization: Bearer "
                                   "TOKEN' with the token `t2i serve --token` was given", {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return await _send(send, 413, f"request body over {MAX_BODY} bytes; uploads are at most "
                               f"{LIMITS['upload_bytes']} bytes each")
        seen = 0
        started = False

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY:
                    raise _TooBig()
            return message

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except _TooBig:
            if not started:
                await _send(send, 413, f"request body over {MAX_BODY} bytes")


class _TooBig(FastAPIHTTPException):
    """Raised from the body stream: FastAPI passes an HTTPException through as its status."""

    def __init__(self) -> None:
        super().__init__(413, f"request body over {MAX_BODY} bytes; uploads are at most "
                         f"{LIMITS['upload_bytes']} bytes each")


async def _send(send: Any, status: int, error: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def create_app(runs: list[ServedRun], out: str | Path, token: str | None = None, cors: str | None = None,
               queue_size: int = 8, preview_every: float = 1.0, grace_s: float = 30.0) -> FastAPI:
    """The ASGI app over runs loaded by `load_runs`; results go to `out` (index.jsonl + PNGs)."""
    engine = Engine(runs, Results(Path(out)), queue_size, preview_every)
    state = App(engine, token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(engine.shutdown, grace_s)

    app = FastAPI(title="t2i", version="1", lifespan=lifespan, docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.t2i = state
    if cors:
        app.add_middleware(CORSMiddleware, allow_origins=[cors], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(Bad)
    async def bad(request: Request, e: Bad) -> JSONResponse:
        return JSONResponse({"error": e.message}, e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, where = "not valid JSON; send a JSON object", "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return JSONResponse({"error": f"{where}: {msg}{more}"}, 422)

    @app.exception_handler(HTTPException)
    async def http(request: Request, e: HTTPException) -> JSONResponse:
        detail = e.detail if isinstance(e.detail, str) else "request refused"
        if e.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint {request.url.path[:100]!r}; GET /api/docs lists them"
        elif e.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path[:100]}"
        return JSONResponse({"error": detail}, e.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(e).__name__}"}, 500)

    app.add_middleware(Guard, token=token)

    # ----------------------------------------------------------------- endpoints
    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse((resources.files("t2i.serve") / "static" / "index.html").read_text())

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/v1/runs")
    def list_runs() -> dict[str, Any]:
        return {"runs": [r.describe(LIMITS, state.scorers()) for r in engine.runs.values()], "limits": LIMITS}

    @app.post("/api/v1/generate", status_code=202)
    def generate(req: GenerateRequest) -> dict[str, Any]:
        run = state.run(req.run)
        given = dict(req.model_extra or {})
        if req.negative_prompt:
            if not any(f.name == "negative_prompt" for f in fields(run.pipe.Options)):
                raise Bad(422, f"negative_prompt: {run.family.name} runs do not take a negative prompt; leave it out")
            given["negative_prompt"] = req.negative_prompt
        elif "negative_prompt" in given:
            raise Bad(422, "negative_prompt: give it as a string, or leave it out")
        inp = _input(req)
        job = state.make_job(run, req.prompt, req.n, req.seed, given, inp, inp.task if inp else None)
        state.submit(job)
        return {"id": job.id, "url": f"/api/v1/jobs/{job.id}"}

    @app.post("/api/v1/compare", status_code=202)
    def compare(req: CompareRequest) -> dict[str, Any]:
        """The same prompt and seed on each run; each run gets the options it takes (strict=False)."""
        runs = [state.run(r) for r in dict.fromkeys(req.runs)]
        seed = secrets.randbelow(MAX_SEED - LIMITS["n"]) if req.seed is None else req.seed
        group = uuid.uuid4().hex[:12]
        given = dict(req.model_extra or {})
        jobs = [state.make_job(r, req.prompt, req.n, seed, given, None, None, group, strict=False) for r in runs]
        for j in jobs:
            state.submit(j)
        return {"group": group, "seed": seed, "jobs": [{"run": j.run, "id": j.id, "ignored": sorted(set(given) - set(j.given))}
                                                       for j in jobs]}

    @app.get("/api/v1/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return state.job(job_id).public()

    @app.post("/api/v1/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        job = state.job(job_id)
        engine.cancel(job)
        return job.public()

    @app.get("/api/v1/jobs/{job_id}/preview")
    def preview(job_id: str) -> Response:
        job = state.job(job_id)
        if job.preview is None:
            raise Bad(404, f"job {job.id} has no preview yet")
        return Response(job.preview, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/v1/jobs/{job_id}/events")
    async def events(job_id: str) -> StreamingResponse:
        """Server-sent events: the job's state on every change, until it ends."""
        job = state.job(job_id)

        async def stream() -> AsyncIterator[str]:
            seen, last_beat = -1, time.monotonic()
            while True:
                if job.version != seen:
                    seen = job.version
                    yield f"event: job\ndata: {json.dumps(job.public())}\n\n"
                    if job.state in ("done", "failed", "cancelled"):
                        return
                elif time.monotonic() - last_beat > 10:
                    yield ": keep-alive\n\n"
                    last_beat = time.monotonic()
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get("/api/v1/history")
    def history(limit: int = 100, run: str | None = None) -> dict[str, Any]:
        limit = max(1, min(limit, 1000))
        rows = [r for r in reversed(engine.results.rows.values()) if run is None or r.get("run") == run][:limit]
        return {"images": [{**r, "url": f"/api/v1/images/{r['id']}",
                            "gif": f"/api/v1/images/{r['id']}.gif" if r.get("frames", 1) > 1 else None}
                           for r in rows]}

    curves_lock = threading.Lock()  # pyplot's figures are process-wide state; one drawing at a time

    @app.get("/api/v1/runs/{run_id}/curves.png")
    def run_curves(run_id: str) -> FileResponse:
        run = engine.runs.get(run_id)
        if run is None:
            raise Bad(404, f"no run {run_id[:80]!r} on this server; GET /api/v1/runs lists them")
        if not (run.path / "log.csv").is_file():
            raise Bad(404, f"run {run.id} has no log.csv, so no training curves to draw")
        logs = [run.path / n for n in ("log.csv", "eval.csv") if (run.path / n).is_file()]
        png = Path(out) / "curves" / f"{run.id}.png"  # redrawn when the run's logs are newer (a run still training)
        with curves_lock:
            if not png.is_file() or png.stat().st_mtime < max(p.stat().st_mtime for p in logs):
                from t2i.eval.report import curves

                curves([run.path], png)
        return FileResponse(png, media_type="image/png")

    @app.get("/api/v1/images/{image_id}")
    def image(image_id: str) -> FileResponse:
        gif = image_id.endswith(".gif")
        path = engine.results.path(image_id.removesuffix(".gif"), gif)
        if path is None:
            raise Bad(404, f"no image {image_id[:80]!r} on this server")
        return FileResponse(path, media_type="image/gif" if gif else "image/png")

    return app


# ------------------------------------------------------------------------------------------ start-up
def load_runs(paths: list[str]) -> list[ServedRun]:
    """Every run, loaded once; ids are folder names, made unique. A missing or unfinished run is a one-line
    error before anything is served."""
    from t2i.families import load_run, run_family
    from t2i.serve.jobs import eval_summary
    from t2i.train.rundir import require_complete

    out: list[ServedRun] = []
    ids: set[str] = set()
    for p in paths:
        path = Path(p)
        if not (path / "run.json").is_file():
            raise UserError(f"{path} is not a run folder (no run.json); train one with `t2i train --out {path}`")
        family = run_family(path)
        meta = require_complete(path, None, list(family.stages))  # the message every loader gives
        rid, k = path.resolve().name, 2
        while rid in ids:
            rid, k = f"{path.resolve().name}-{k}", k + 1
        ids.add(rid)
        out.append(ServedRun(rid, path, family, load_run(path), eval_summary(path), meta.get("params")))
    return out


def check_port(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None


def serve(runs: list[str], host: str = "127.0.0.1", port: int = 7860, out: str = "t2i-served",
          token: str | None = None, cors: str | None = None, queue_size: int = 8, threads: int | None = None,
          quiet: bool = False) -> None:
    """What `t2i serve` runs: checks, loads, then serves until Ctrl-C."""
    import os

    import torch
    import uvicorn

    if not runs:
        raise UserError("give at least one run folder to serve")
    if host not in LOCAL_HOSTS and not token:
        raise UserError(f"--host {host} exposes the server beyond this machine: give --token TOKEN (clients "
                        "then send 'Authorization: Bearer TOKEN'), or keep the default 127.0.0.1")
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: a port is 1..65535")
    check_port(host, port)
    # Leave a core to the HTTP loop: generation holds every thread torch is given.
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))
    loaded = load_runs(runs)
    app = create_app(loaded, out, token, cors, queue_size)
    if not quiet:
        print(f"t2i: serving {', '.join(r.id for r in loaded)} on http://{host}:{port}/ (results in {out}; "
              "Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=False,
                timeout_graceful_shutdown=35)
