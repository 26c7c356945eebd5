"""Model families: each one short module wiring shared parts together, ending in a `Family` record
(`t2i.families.base`). Registering a family is one line here."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import fields
from pathlib import Path
from typing import Any

from t2i.errors import UserError
from t2i.families.base import Family

FAMILIES = {
    "ldm": "t2i.families.ldm",
    "clip": "t2i.families.clip",
    "dalle": "t2i.families.dalle",
    "parti": "t2i.families.parti",
    "maskgit": "t2i.families.maskgit",
    "ddpm": "t2i.families.ddpm",
    "glide": "t2i.families.glide",
    "imagen": "t2i.families.imagen",
    "unclip": "t2i.families.unclip",
    "nuwa": "t2i.families.nuwa",
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        near = difflib.get_close_matches(name, list(FAMILIES), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise UserError(f"unknown family {name!r}{hint}; available: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY


def all_families() -> list[Family]:
    return [get_family(n) for n in FAMILIES]


def families_with_option(name: str) -> list[Family]:
    return [f for f in all_families() if f.options is not None and name in {x.name for x in fields(f.options)}]


def families_with_task(task: str) -> list[str]:
    return [f.name for f in all_families() if task in f.tasks]


def run_family(run: str | Path) -> Family:
    from t2i.train.rundir import read_meta

    return get_family(read_meta(run).get("family", "?"))


def read_config(run: str | Path) -> tuple[Family, Any]:
    """A run's family and its `config.yaml` as that family's Config, old keys converted (`Family.upgrade`):
    the one place a run's config is read."""
    from t2i.config import from_dict, read_yaml

    family = run_family(run)
    path = Path(run) / "config.yaml"
    return family, from_dict(family.config, family.upgrade(read_yaml(path), str(path)))


def load_run(run: str | Path) -> Any:
    """A trained run, loaded by its own family: a generator's pipeline or a scorer."""
    family, cfg = read_config(run)
    return family.load(Path(run), cfg)
