"""The Python API: `t2i.load(run_dir)` gives a callable pipeline, `t2i.train(...)` makes a run."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from t2i import runtime
from t2i.config import from_dict, load_yaml, override, save_yaml, to_dict
from t2i.errors import UserError
from t2i.families import get_family, load_run, run_family
from t2i.train.rundir import read_meta, write_meta


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
    and `mask` (PNG files in DIR), `frames` (the image is a clip's strip of that many frames) and `strength`. Returns per row its prompt, seed, `Input` (None for plain
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
    known = {"prompt", "seed", "task", "image", "mask", "strength", "frames"}
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
                        files[key] = im.convert("L") if key == "mask" else from_stored(im, stored_frames(row))
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
        _merge(data, yaml.safe_load(text) or {}, preset)
    cfg = from_dict(fam.config, data)
    return override(cfg, overrides or [])


def _merge(base: dict, new: dict, where: str) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, where)
        else:
            base[k] = v


def train(family: str | None, out: str | Path, preset: str | None = None, data: str | None = None,
          overrides: list[str] | None = None, resume: bool = False, progress: bool = True,
          uses: dict[str, str] | None = None) -> Path:
    """Train every stage of a family into `out`. A new run refuses an existing folder unless `resume`.

    `uses` names other runs the family builds on (`Family.uses`, e.g. ``{"image_tokenizer": "runs/dalle"}``)."""
    runtime.init()
    out = Path(out)
    if resume:
        if uses:
            raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in uses)} applies to a new run; a resumed "
                            "run keeps the runs it was started with")
        meta = read_meta(out)
        fam = get_family(meta["family"])
        cfg = load_yaml(fam.config, out / "config.yaml")
        if overrides:
            cfg = override(cfg, overrides)
            if runtime.is_main():
                save_yaml(cfg, out / "config.yaml")  # the run's config must describe what it trains
            runtime.barrier()
    else:
        if (out / "run.json").exists():
            raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
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
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not empty; choose a new --out (t2i never overwrites files)")
        runtime.barrier()
        if runtime.is_main():
            out.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, out / "config.yaml")
            write_meta(out, {"family": fam.name, "preset": preset, "stages_done": []})
        runtime.barrier()
    fam.train(cfg, out, progress)
    return out


__all__ = ["load", "load_generator", "make_config", "preset_names", "read_requests", "train"]
