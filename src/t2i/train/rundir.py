"""The run directory: the unit users pass around.

`config.yaml` rebuilds the model, `run.json` says which family made it and which stages are done, each
trained part is `<part>.safetensors`, `train_state.pt` resumes the stage in progress, `log.csv` has the curves,
`samples/` the grids and `eval/` the reports.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from t2i.errors import UserError

META = "run.json"
LOCK = "run.lock"

log = logging.getLogger("t2i.train")


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def process_age() -> float:
    """Seconds since this process started (imports included: what a user waits for), from /proc on Linux;
    elsewhere 0, and invocations then record no duration."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


class RunLock:
    """One trainer per run folder: `run.lock` holds the PID and host of the process training it.

    Two trainers on one folder interleave log rows and race for the checkpoint file (the first one died on
    a renamed-away temp file while the second said "run complete"). The lock is created exclusively
    (O_EXCL), so of two processes starting together exactly one gets it. A lock whose process is gone (kill
    -9, a crash, a reboot) is stale and taken over with a notice; a lock from another host cannot be
    checked, so it is refused with the command that removes it.
    """

    def __init__(self, run: str | Path):
        self.path = Path(run) / LOCK
        self.held = False

    def __enter__(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserError(f"could not take {self.path}: another process keeps creating it")

    def _refuse_or_clear(self) -> None:
        try:
            held = json.loads(self.path.read_text())
            pid, host, since = int(held["pid"]), str(held["host"]), held.get("since", "?")
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (ValueError, KeyError, TypeError, OSError):
            held, pid, host, since = None, -1, socket.gethostname(), "?"  # half-written or garbage
        if host == socket.gethostname() and (pid < 0 or not _alive(pid)):
            log.warning("%s: taking over a stale lock%s", self.path.parent,
                        f" of PID {pid} (no such process; it started {since})" if held else " (unreadable)")
            self.path.unlink(missing_ok=True)
            return
        where = "" if host == socket.gethostname() else f" on {host}"
        raise UserError(f"{self.path.parent} is being trained by PID {pid}{where} (since {since}); a second trainer "
                        f"would corrupt it: wait for that one to finish or stop it"
                        + (f" (kill {pid})" if not where else f"; if it is gone, delete {self.path}"))

    def __exit__(self, *exc: object) -> None:
        if self.held:
            try:
                if json.loads(self.path.read_text()).get("pid") == os.getpid():
                    self.path.unlink()
            except (OSError, ValueError):
                pass
            self.held = False


def read_log(path: Path) -> list[dict[str, str]]:
    """A CSV log's rows (log.csv, eval.csv) under its header; a column a stage does not log reads ''."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def widen_log(path: Path, fields: list[str]) -> list[str]:
    """Rewrite a CSV log under the header `fields` (its own plus new columns, empty in the old rows),
    atomically; returns `fields`."""
    rows = read_log(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return fields


def truncate_log(path: Path, stage: str, step: int) -> int:
    """Drop the rows of `stage` past `step` from a CSV log: after a resume those steps are trained again, and
    a curve with steps 160-200 three times is a lie. Returns how many rows went."""
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != ["stage", "step"]:
        return 0
    keep = [rows[0]] + [r for r in rows[1:] if not (r and r[0] == stage and int(r[1]) > step)]
    if len(keep) == len(rows):
        return 0
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        csv.writer(f).writerows(keep)
    tmp.replace(path)
    return len(rows) - len(keep)


def read_meta(run: str | Path) -> dict[str, Any]:
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist; train one with `t2i train --out {run}`")
    path = run / META
    if not path.is_file():
        raise UserError(f"{run} is not a t2i run (no {META}); point at a folder made by `t2i train`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is corrupt ({e}); restore it or retrain") from None


def write_meta(run: str | Path, meta: dict[str, Any]) -> None:
    path = Path(run) / META
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path)


def require_complete(run: str | Path, family: str | None, stages: list[str]) -> dict[str, Any]:
    """Meta of a finished run; a clear error if it is from another family or still training."""
    meta = read_meta(run)
    if family is not None and meta.get("family") != family:
        raise UserError(f"{run} is a {meta.get('family')!r} run, not {family!r}")
    missing = [s for s in stages if s not in meta.get("stages_done", [])]
    if missing:
        raise UserError(f"{run} is incomplete (stages not finished: {', '.join(missing)}); "
                        f"finish it with `t2i train --resume --out {run}`")
    return meta


def _rebuild_hint(run: Path, name: str) -> str:
    """The command that makes part `name` again: redo the stage that wrote it (recorded in run.json)."""
    try:
        meta = read_meta(run)
    except UserError:
        return f"retrain the run (t2i train --out {run} ...)"
    stage = next((s for s, parts in meta.get("parts", {}).items() if name in parts), None)
    if stage is None:
        done = meta.get("stages_done", [])
        return (f"rebuild the stage that writes it: `t2i train --resume --out {run} --redo STAGE` "
                f"(stages: {', '.join(done) or 'none done'})")
    return f"rebuild it: `t2i train --resume --out {run} --redo {stage}` (retrains {stage} and every later stage)"


def load_part(module: nn.Module, run: str | Path, name: str) -> nn.Module:
    """Load `<name>.safetensors` into `module`, strictly, with an error that names the file."""
    path = Path(run) / f"{name}.safetensors"
    if not path.is_file():
        raise UserError(f"{path} is missing; {_rebuild_hint(Path(run), name)}")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise UserError(f"{path} is unreadable ({e}); {_rebuild_hint(Path(run), name)}") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])[:300]
        raise UserError(f"{path} does not match the model in config.yaml ({detail})") from None
    return module.eval().requires_grad_(False)
