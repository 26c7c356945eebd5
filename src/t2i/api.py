"""The Python API: `t2i.load(run_dir)` gives a callable pipeline, `t2i.train(...)` makes a run."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from t2i.config import from_dict, load_yaml, override, save_yaml, to_dict
from t2i.errors import UserError
from t2i.families import get_family
from t2i.train import dist
from t2i.train.run import read_meta, write_meta


def load(run: str | Path) -> Any:
    """A trained run as a pipeline: ``pipe(["a red circle"], steps=20, guidance=4, seed=0)`` -> PIL images."""
    meta = read_meta(run)
    family = get_family(meta.get("family", "?"))
    cfg = load_yaml(family.Config, Path(run) / "config.yaml")
    return family.Pipeline.load(run, cfg)


def preset_names(family: str) -> list[str]:
    folder = resources.files("t2i") / "configs" / family
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def make_config(family: str, preset: str | None = None, overrides: list[str] | None = None) -> Any:
    """Family defaults, then a preset (a name in t2i/configs/<family>/ or a YAML path), then key=value overrides."""
    fam = get_family(family)
    data = to_dict(fam.Config())
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
    cfg = from_dict(fam.Config, data)
    return override(cfg, overrides or [])


def _merge(base: dict, new: dict, where: str) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, where)
        else:
            base[k] = v


def train(family: str, out: str | Path, preset: str | None = None, data: str | None = None,
          overrides: list[str] | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train every stage of a family into `out`. A new run refuses an existing folder unless `resume`."""
    dist.init()
    out = Path(out)
    if resume:
        meta = read_meta(out)
        fam = get_family(meta["family"])
        cfg = load_yaml(fam.Config, out / "config.yaml")
        if overrides:
            cfg = override(cfg, overrides)
            if dist.is_main():
                save_yaml(cfg, out / "config.yaml")  # the run's config must describe what it trains
            dist.barrier()
    else:
        if (out / "run.json").exists():
            raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        fam = get_family(family)
        cfg = make_config(family, preset, (overrides or []) + ([f"data.source={data}"] if data else []))
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not empty; choose a new --out (t2i never overwrites files)")
        dist.barrier()
        if dist.is_main():
            out.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, out / "config.yaml")
            write_meta(out, {"family": fam.NAME, "preset": preset, "stages_done": []})
        dist.barrier()
    fam.train(cfg, out, progress=progress)
    return out


__all__ = ["load", "make_config", "preset_names", "train"]
