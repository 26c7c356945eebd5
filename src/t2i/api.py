"""The Python API: `t2i.load(run_dir)` gives a callable pipeline, `t2i.train(...)` makes a run."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from t2i import runtime
from t2i.config import check_config, from_dict, override, save_yaml, to_dict
from t2i.errors import UserError
from t2i.families import get_family, load_run, read_config, run_family
from t2i.train.rundir import RunLock, now_iso, process_age, read_meta, write_meta


def load(run: str | Path) -> Any:
    """A trained run, loaded by its family: a generator's pipeline
    (``pipe(["a red circle"], steps=20, guidance=4, seed=0)`` -> PIL images) or a scorer (the lab's CLIP)."""
    return load_run(run)


def load_generator(run: str | Path) -> Any:
    """`load`, for commands that generate: a scorer run (a CLIP) is a one-line error, not an AttributeError."""
    family = run_family(run)
    if family.kind != "generator":
        raise UserError(f"{run} is a {family.name} run: it scores image-text pairs and cannot generate images; "
                        "pass it as --clip to `t2i eval` or as --rerank")
    return load_run(run)


def read_requests(directory: str | Path) -> list[dict[str, Any]]:
    """`--inputs DIR`: DIR/index.jsonl, one request per line: `prompt`, `seed`, and optionally `task`, `image`
    and `mask` (PNG files in DIR), `frames` (the image is a clip's strip of that many frames), `strength`, and
    `truth` (the source's metadata, echoed for the scorer: `t2i bench inputs` writes it). Returns per row its prompt, seed, `Input` (None for plain
    text-to-image) and the fields to echo into the output's index. Every row is checked before any model runs."""
    import json

    from PIL import Image

    from t2i.families.base import Input
    from t2i.images import from_stored, stored_frames

    directory = Path(directory)
    index = directory / "index.jsonl"
    if not index.is_file():
        raise UserError(f"{index} not found; --inputs DIR needs DIR/index.jsonl with one request per line "
                        "({\"prompt\": ..., \"seed\": 0, \"task\": \"img2img\", \"image\": \"x.png\"})")
    known = {"prompt", "seed", "task", "image", "mask", "strength", "frames", "truth"}
    out = []
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{index}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise UserError(f"{where}: each line is a JSON object with a 'prompt' string")
        if unknown := set(row) - known:
            raise UserError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; fields are {', '.join(sorted(known))}")
        seed = row.get("seed", len(out))
        if not isinstance(seed, int):
            raise UserError(f"{where}: seed must be an integer, got {seed!r}")
        files = {}
        for key in ("image", "mask"):
            if key in row:
                path = directory / str(row[key])
                try:
                    with Image.open(path) as im:
                        im.load()  # the file closes here; an RGB image would otherwise stay a lazy handle
                        files[key] = im if key == "mask" else from_stored(im, stored_frames(row))
                except (OSError, ValueError) as e:
                    raise UserError(f"{where}: cannot read {key} {path}: {e}") from None
                except UserError as e:  # a strip that is not `frames` frames wide
                    raise UserError(f"{where}: {key} {path}: {e}") from None
        inp = None
        if "task" in row or files:
            try:
                inp = Input(row.get("task", "img2img"), files.get("image"), files.get("mask"),
                            float(row.get("strength", 0.6)))
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
            except (TypeError, ValueError):
                raise UserError(f"{where}: strength must be a number in (0, 1], got {row['strength']!r}") from None
        echo = {k: v for k, v in row.items() if k not in ("prompt", "seed")}
        out.append({"prompt": row["prompt"], "seed": seed, "input": inp, "echo": echo})
    if not out:
        raise UserError(f"{index} has no requests")
    return out


def preset_names(family: str) -> list[str]:
    folder = resources.files("t2i") / "configs" / family
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def make_config(family: str, preset: str | None = None, overrides: list[str] | None = None) -> Any:
    """Family defaults, then a preset (a name in t2i/configs/<family>/ or a YAML path), then key=value overrides."""
    fam = get_family(family)
    data = to_dict(fam.config())
    if preset:
        path = Path(preset)
        if not path.is_file():
            res = resources.files("t2i") / "configs" / family / f"{preset}.yaml"
            if not res.is_file():
                raise UserError(f"unknown preset {preset!r} for {family}; available: "
                                f"{', '.join(preset_names(family)) or 'none'} (or give a YAML file)")
            text = res.read_text()
        else:
            text = path.read_text()
        given = yaml.safe_load(text) or {}
        if isinstance(given, dict):
            fam.check_keys([f"{k}.{sub}" if isinstance(v, dict) else k for k, v in given.items()
                            for sub in (v if isinstance(v, dict) else [None])], f"preset {preset}")
        _merge(data, given, preset)
    cfg = from_dict(fam.config, data)
    fam.check_keys([a.split("=", 1)[0].strip() for a in overrides or []], "--set")
    return override(cfg, overrides or [])


def _merge(base: dict, new: dict, where: str) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, where)
        else:
            base[k] = v


def train(family: str | None, out: str | Path, preset: str | None = None, data: str | None = None,
          overrides: list[str] | None = None, resume: bool = False, progress: bool = True,
          uses: dict[str, str] | None = None, redo: str | None = None) -> Path:
    """Train every stage of a family into `out`. A new run refuses an existing folder unless `resume`.

    `uses` names other runs the family builds on (`Family.uses`, e.g. ``{"image_tokenizer": "runs/dalle"}``).
    Everything is checked before anything is written: the whole config, the data (it must yield captioned
    samples), the runs it uses, and on a resume which changes are allowed (`t2i.train.resume`). A new run
    that fails a check leaves no folder; one that fails while training says how to continue or start over.
    One trainer at a time holds a run (`run.lock`). `redo` (with `resume`) trains a finished stage and every
    later one again, e.g. to rebuild a lost weight file."""
    runtime.init()
    out = Path(out)
    if resume:
        fam, cfg, changes, meta = _check_resume(out, family, preset, data, overrides, uses, redo)
    else:
        if redo:
            raise UserError("redo applies to a resumed run (t2i train --resume --out RUN --redo STAGE)")
        fam, cfg = _check_new(out, family, preset, data, overrides, uses)
        changes, meta = {}, {"family": fam.name, "preset": preset, "stages_done": []}
    with _claim(out, create=not resume):
        if runtime.is_main():
            if not resume or changes:  # the run's config must describe what it trains
                save_yaml(cfg, out / "config.yaml")
            meta.setdefault("invocations", []).append(
                {"started": now_iso(), "resume": resume, "changes": changes, "pid": os.getpid(),
                 "host": socket.gethostname(), "world_size": runtime.world_size(), "seconds": round(process_age(), 2)})
            write_meta(out, meta)
        runtime.barrier()
        try:
            final = fam.train(cfg, out, progress)
            if runtime.is_main() and final.get("invocations"):  # the time after the last stage counts too
                final["invocations"][-1]["seconds"] = round(process_age(), 2)
                write_meta(out, final)
        except UserError as e:
            raise UserError(f"{e} -- the run in {out} is kept: fix that, then continue it with `t2i train --resume "
                            f"--out {out}`, or start over (rm -r {out})") from None
        except BaseException:
            if not isinstance(sys.exc_info()[1], KeyboardInterrupt | SystemExit):
                print(f"t2i: training stopped by an internal error; the run in {out} is kept: `t2i train --resume "
                      f"--out {out}` continues from its last checkpoint", file=sys.stderr)
            raise
    return out


def _check_new(out: Path, family: str | None, preset: str | None, data: str | None,
               overrides: list[str] | None, uses: dict[str, str] | None) -> tuple[Any, Any]:
    if (out / "run.json").exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new --out (t2i never overwrites files)")
    fam = get_family(family or "")
    extra = []
    for name, run in (uses or {}).items():
        use = next((u for u in fam.uses if u.name == name), None)
        if use is None:
            from t2i.families import all_families

            takers = ", ".join(f.name for f in all_families() if any(u.name == name for u in f.uses))
            raise UserError(f"--{name.replace('_', '-')} does not apply to {fam.name} runs (it is for "
                            f"{takers or 'no family'})")
        extra.append(f"{use.key}={run}")
    cfg = make_config(fam.name, preset, (overrides or []) + extra + ([f"data.source={data}"] if data else []))
    _check_config(fam, cfg)
    return fam, cfg


def _check_config(fam: Any, cfg: Any) -> None:
    """Every config dataclass's own rules (`validate`, the family's Config included: choices across fields,
    the runs it uses), and data that yields captioned samples."""
    from t2i.train.data import check_readable

    check_config(cfg)
    check_readable(cfg.data)


def _check_resume(out: Path, family: str | None, preset: str | None, data: str | None,
                  overrides: list[str] | None, uses: dict[str, str] | None, redo: str | None
                  ) -> tuple[Any, Any, dict, dict]:
    from t2i.train.resume import plan_resume

    if uses:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in uses)} applies to a new run; a resumed "
                        "run keeps the runs it was started with")
    fam, old = read_config(out)
    meta = read_meta(out)
    for flag, given, have in (("--family", family, fam.name), ("--preset", preset, meta.get("preset")),
                              ("--data", data, old.data.source)):
        if given is not None and given != have:
            raise UserError(f"{flag} {given} does not match the run in {out} ({have}); a resumed run keeps its "
                            f"family, preset and data: drop {flag}, or start a new run")
    cfg = old
    if overrides:
        fam.check_keys([a.split("=", 1)[0].strip() for a in overrides], "--set")
        cfg = override(old, overrides)
        _check_config(fam, cfg)
    changes, reopen = plan_resume(out, old, cfg, meta)
    done = meta.setdefault("stages_done", [])
    if redo is not None:
        if redo not in done:
            raise UserError(f"--redo {redo}: not a finished stage of {out} (finished: {', '.join(done) or 'none'})")
        gone = done[done.index(redo):]
        del done[done.index(redo):]
        (out / "train_state.pt").unlink(missing_ok=True)  # the redone stage starts from scratch
        changes["redo"] = gone
    for stage in reopen:
        done.remove(stage)
    if reopen:
        changes["reopened"] = reopen
    return fam, cfg, changes, meta


@contextlib.contextmanager
def _claim(out: Path, create: bool) -> Iterator[None]:
    """Rank 0 holds the run lock for the whole training; the others wait for it at a barrier."""
    if not runtime.is_main():
        runtime.barrier()
        yield
        return
    if create:
        out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        if create and (out / "run.json").exists():  # another command made a run here meanwhile
            raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        runtime.barrier()
        yield
