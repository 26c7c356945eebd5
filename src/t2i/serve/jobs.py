"""The server's work: served runs, their bounded job queues, one worker thread per run, and the results
folder. Nothing here knows HTTP; `t2i.serve.app` maps requests onto it.

Why one worker per run and one lock across them: a run's pipeline is not re-entrant (its networks and
caches are shared), and two torch computations at once on a 2-core machine ran 10-20x slower than one
after the other (benchmarks/RESULTS.md, the project's machine notes), so runs queue apart but compute in
turn. Every result is written as it is made (PNG through a temporary name, then one appended index line), so
a stop at any moment loses no saved result and the folder stays a ShapesBench folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from t2i.errors import UserError
from t2i.families.base import Input, Options, Pipeline
from t2i.images import Clip, as_stored, frame_count, grid
from t2i.monitor import Cancelled, Monitor, watching

STATES = ("queued", "running", "done", "failed", "cancelled")
KEEP_JOBS = 1000  # finished jobs remembered in memory (their images stay on disk and in the history)


@dataclass
class ServedRun:
    """One run as the server holds it: loaded once at start-up."""

    id: str
    path: Path
    family: Any  # t2i.families.base.Family
    pipe: Any  # a Pipeline for a generator, the scorer for a CLIP run
    summary: dict[str, Any] | None = None  # its last `t2i eval` ShapesBench result
    parameters: dict[str, int] | None = None  # parameter counts by part, from run.json
    queue: queue.Queue | None = None
    worker: threading.Thread | None = None
    held: deque = field(default_factory=deque)  # taken from the queue, waiting for a later call (Engine._batch)

    @property
    def generator(self) -> bool:
        return self.family.kind == "generator"

    def describe(self, limits: dict[str, int], scorers: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "family": self.family.name, "kind": self.family.kind,
                               "summary": self.family.summary, "stages": list(self.family.stages),
                               "eval": self.summary}
        out["parameters"] = self.parameters
        out["curves"] = (self.path / "log.csv").is_file()  # GET /api/v1/runs/{id}/curves.png draws them
        if self.generator:
            out["tasks"] = list(self.pipe.tasks)
            out["options"] = options_schema(self.pipe, limits, scorers)
        return out


@dataclass
class Job:
    id: str
    run: str
    prompt: str
    seeds: list[int]
    options: Options
    given: dict[str, Any]  # the options the request named (the rest are the run's defaults)
    inputs: list[Input | None]
    task: str | None
    group: str | None = None  # the compare request it belongs to
    state: str = "queued"
    progress: float = 0.0
    eta_s: float | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    images: list[str] = field(default_factory=list)
    preview: bytes | None = None
    version: int = 0  # bumped on every change, for the event stream
    monitor: Monitor | None = None
    cancel_requested: bool = False
    shared: int = 1  # jobs in the sampler call that made it (Engine._batch)

    def public(self) -> dict[str, Any]:
        seconds = None if self.started is None else round((self.finished or time.time()) - self.started, 3)
        return {"id": self.id, "run": self.run, "state": self.state, "progress": round(self.progress, 4),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 2), "error": self.error,
                "prompt": self.prompt, "seeds": self.seeds, "task": self.task, "group": self.group,
                "options": dataclasses.asdict(self.options), "created": self.created, "seconds": seconds,
                "images": [f"/api/v1/images/{i}" for i in self.images], "shared_with": self.shared - 1,
                "preview": f"/api/v1/jobs/{self.id}/preview" if self.preview else None}


def options_schema(pipe: Pipeline, limits: dict[str, int], scorers: list[str]) -> dict[str, Any]:
    """A JSON schema of a run's sampling options, from its family's `Options` dataclass: what the web page
    builds its controls from, so a family's options appear without the server naming any family."""
    defaults = pipe.defaults()
    props: dict[str, Any] = {}
    for f in fields(pipe.Options):
        kind = kind_of(f)
        prop: dict[str, Any] = {"type": kind, "description": f.metadata.get("help", ""), "default": defaults.get(f.name)}
        lo, hi = bounds(f.name, kind, limits)
        if kind == "array":  # a fixed number of strings (unCLIP's --text-diff FROM TO), or none
            prop = {**prop, "items": {"type": "string", "maxLength": 200}, "maxItems": f.metadata["nargs"]}
        elif kind != "string":
            prop.update(minimum=lo, maximum=hi)
        else:
            prop["maxLength"] = 200
        if f.name == "rerank":
            prop["enum"] = ["", *scorers]
            prop["description"] += "; one of the CLIP runs this server holds"
        props[f.name] = prop
    return {"type": "object", "properties": props, "additionalProperties": False}


def kind_of(f: Any) -> str:
    """The JSON-schema type of an `Options` field, from the CLI type (and count) its metadata carries."""
    if f.metadata.get("nargs"):
        return "array"
    return {int: "integer", float: "number"}.get(f.metadata.get("type"), "string")


def bounds(name: str, kind: str, limits: dict[str, int]) -> tuple[float, float]:
    """Every numeric option is bounded, so no request can ask for unbounded work or memory."""
    if name.endswith("steps"):
        return 1, limits["steps"]
    if name == "candidates":
        return 1, limits["n"]
    if name == "top_k":
        return 0, 1_000_000
    return (-1000, 1000) if kind == "number" else (0, 1_000_000)


def parameters_text(job: Job, seed: int, image: Image.Image, run: ServedRun) -> str:
    """A1111's `parameters` PNG text: the prompt, then one line of `Key: value` pairs, so an image can be
    re-made from itself (the exact options follow as JSON on a last line)."""
    o = dataclasses.asdict(job.options)
    pairs = {"Steps": o.get("steps"), "Sampler": o.get("sampler"), "CFG scale": o.get("guidance"), "Seed": seed,
             "Size": f"{image.width}x{image.height}", "Model": run.id, "Family": run.family.name}
    if job.task:
        pairs["Task"] = job.task
    line = ", ".join(f"{k}: {v}" for k, v in pairs.items() if v is not None)
    return f"{job.prompt}\n{line}\nt2i: {json.dumps({'run': run.id, 'seed': seed, 'options': o})}"


class Results:
    """The results folder (`--out`): one PNG per image and index.jsonl, appended as images are made."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index = self.dir / "index.jsonl"
        self.rows: OrderedDict[str, dict[str, Any]] = OrderedDict()  # image id -> its index row
        self.lock = threading.Lock()
        if self.index.is_file():  # the history of earlier sessions; a torn last line is skipped
            for line in self.index.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("id"), str) and (self.dir / str(row.get("file"))).is_file():
                    self.rows[row["id"]] = row

    def add(self, media: Any, row: dict[str, Any], parameters: str) -> str:
        image_id = uuid.uuid4().hex[:16]
        name = f"{image_id}.png"
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
        tmp = self.dir / f".{name}.tmp"
        as_stored(media).save(tmp, format="PNG", pnginfo=info)
        tmp.replace(self.dir / name)
        if isinstance(media, Clip):
            media.save_gif(self.dir / f"{image_id}.gif")
        row = {"id": image_id, "file": name, **row}
        if frame_count(media) > 1:
            row["frames"] = frame_count(media)
        line = (json.dumps(row) + "\n").encode()
        with self.lock:
            fd = os.open(self.index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write per line: a stop never leaves half a row
                os.fsync(fd)
            finally:
                os.close(fd)
            self.rows[image_id] = row
        return image_id

    def path(self, image_id: str, gif: bool = False) -> Path | None:
        """The file of an image the server made: looked up by id, never joined from the request."""
        row = self.rows.get(image_id)
        if row is None:
            return None
        p = self.dir / (f"{image_id}.gif" if gif else row["file"])
        return p if p.is_file() else None


class Engine:
    """Served runs, jobs and workers. `submit` queues (or raises `QueueFull`); workers run jobs in turn."""

    def __init__(self, runs: list[ServedRun], results: Results, queue_size: int = 8, preview_every: float = 1.0,
                 batch_images: int = 64):
        self.runs = {r.id: r for r in runs}
        self.batch_images = batch_images  # queued jobs with the same options share one call up to this many images
        self.results = results
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()  # guards `jobs`
        self.compute = threading.Lock()  # one generation at a time on this machine's cores
        self.preview_every = preview_every
        self.accepting = True
        for r in runs:
            if r.generator:
                r.queue = queue.Queue(maxsize=queue_size)
                r.worker = threading.Thread(target=self._work, args=(r,), name=f"t2i-{r.id}", daemon=True)
                r.worker.start()

    # ------------------------------------------------------------------ jobs
    def submit(self, job: Job) -> Job:
        run = self.runs[job.run]
        if not self.accepting:
            raise QueueFull("the server is shutting down")
        with self.lock:
            self.jobs[job.id] = job
            self._forget_old()
        try:
            run.queue.put_nowait(job)
        except queue.Full:
            with self.lock:
                self.jobs.pop(job.id, None)
            raise QueueFull(f"the queue of run {run.id} is full ({run.queue.maxsize} jobs)") from None
        return job

    def cancel(self, job: Job) -> None:
        job.cancel_requested = True
        if job.state == "queued":
            self._finish(job, "cancelled")
        elif job.state == "running" and job.monitor is not None:
            job.monitor.cancel()

    def _forget_old(self) -> None:
        done = [k for k, j in self.jobs.items() if j.state not in ("queued", "running")]
        for k in done[:max(0, len(self.jobs) - KEEP_JOBS)]:
            del self.jobs[k]

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        job.version += 1

    def _work(self, run: ServedRun) -> None:
        while True:
            job = run.held.popleft() if run.held else run.queue.get()
            if job is None:
                break
            if job.state != "queued":  # cancelled while it waited
                continue
            with self.compute:
                batch, stop = self._batch(run, job)
                self._run(run, batch)
            if stop:
                break
        for job in run.held:  # set aside for a later call when the stop came
            self.cancel(job)

    def _batch(self, run: ServedRun, first: Job) -> tuple[list[Job], bool]:
        """`first` and the waiting jobs that can share its sampler call: the same options and no input
        image. Every image depends on its own seed only (never on its batch), so each job of a shared call
        gets exactly the images it would get alone, at the throughput of one larger call. Jobs that cannot
        join wait in `run.held`, in their order, for the next call."""
        batch, skipped, stop = [first], [], False
        images = len(first.seeds)
        waiting = list(run.held)
        run.held.clear()
        while images < self.batch_images:
            if waiting:
                job = waiting.pop(0)
            else:
                try:
                    job = run.queue.get_nowait()
                except queue.Empty:
                    break
            if job is None:
                stop = True
                break
            if job.state != "queued":
                continue
            if (job.options == first.options and all(i is None for i in job.inputs + first.inputs)
                    and images + len(job.seeds) <= self.batch_images):
                batch.append(job)
                images += len(job.seeds)
            else:
                skipped.append(job)
        run.held.extend(skipped + waiting)
        return batch, stop

    def _run(self, run: ServedRun, jobs: list[Job]) -> None:
        for job in [j for j in jobs if j.cancel_requested]:
            self._finish(job, "cancelled")
        jobs = [j for j in jobs if not j.cancel_requested]
        if not jobs:
            return
        for job in jobs:
            job.state, job.started, job.shared = "running", time.time(), len(jobs)
            job.version += 1
        shown: list[Any] = [None]

        def update(m: Monitor) -> None:
            if all(j.cancel_requested for j in jobs):
                m.cancel()
            if m.preview is not None and m.preview is not shown[0]:
                shown[0] = m.preview
                at = 0
                for j in jobs:  # each job previews its own images of the batch
                    j.preview = _png(m.preview[at:at + len(j.seeds)] if isinstance(m.preview, list) else m.preview)
                    at += len(j.seeds)
            for j in jobs:
                j.progress, j.eta_s = m.progress, m.eta_s
                j.version += 1

        mon = Monitor(update, self.preview_every)
        for job in jobs:
            job.monitor = mon
        if all(j.cancel_requested for j in jobs):  # asked between the check above and the monitor's existence
            mon.cancel()
        prompts = [j.prompt for j in jobs for _ in j.seeds]
        seeds = [s for j in jobs for s in j.seeds]
        inputs = [i for j in jobs for i in j.inputs]
        try:
            with watching(mon):
                media = run.pipe(prompts, seeds=seeds, options=jobs[0].options, inputs=inputs)
        except Cancelled:
            for job in jobs:
                self._finish(job, "cancelled")
            return
        except UserError as e:
            for job in jobs:
                self._finish(job, "failed", str(e))
            return
        except Exception as e:  # a bug in generation fails the job, not the server
            for job in jobs:
                self._finish(job, "failed", f"internal error: {type(e).__name__}: {e}")
            return
        at = 0
        for job in jobs:
            mine, at = media[at:at + len(job.seeds)], at + len(job.seeds)
            if job.cancel_requested:  # cancelled while it shared a call with others: nothing of it is kept
                self._finish(job, "cancelled")
                continue
            try:
                for seed, m in zip(job.seeds, mine, strict=True):
                    row = {"prompt": job.prompt, "seed": seed, "run": run.id, "family": run.family.name,
                           "job": job.id, "task": job.task, "options": dataclasses.asdict(job.options),
                           "created": time.time()}
                    job.images.append(self.results.add(m, row, parameters_text(job, seed, as_stored(m), run)))
            except OSError as e:  # a full disk fails this job; the images already written stay listed
                self._finish(job, "failed", f"cannot save the result in {self.results.dir}: {e}")
                continue
            job.progress, job.eta_s = 1.0, 0.0
            self._finish(job, "done")

    def shutdown(self, grace_s: float = 30.0) -> None:
        """Stop taking work, cancel what waits, let what runs finish within `grace_s` (then cancel it)."""
        self.accepting = False
        with self.lock:
            jobs = list(self.jobs.values())
        for j in jobs:
            if j.state == "queued":
                self.cancel(j)
        deadline = time.time() + grace_s
        for r in self.runs.values():
            if r.queue is not None:
                try:
                    r.queue.put_nowait(None)
                except queue.Full:  # only cancelled jobs wait; the worker skips them and then sees the stop
                    threading.Thread(target=r.queue.put, args=(None,), daemon=True).start()
        for j in jobs:
            while j.state == "running" and time.time() < deadline:
                time.sleep(0.05)
            if j.state == "running":
                self.cancel(j)
        for r in self.runs.values():
            if r.worker is not None:
                r.worker.join(timeout=max(0.1, deadline - time.time()) + 5)


class QueueFull(Exception):
    pass


def _png(preview: Any) -> bytes:
    images = preview if isinstance(preview, list) else [preview]
    images = [as_stored(m) for m in images]
    im = images[0] if len(images) == 1 else grid(images, [""] * len(images), cols=min(4, len(images)), cell=96)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def eval_summary(run: Path) -> dict[str, Any] | None:
    """The run's last `t2i eval` ShapesBench result (RUN/eval/shapesbench.json), without its per-image rows."""
    data = _read_json(run / "eval" / "shapesbench.json")
    if not isinstance(data, dict):
        return None
    return {k: data.get(k) for k in ("version", "overall", "novel", "kinds", "sampling")}
