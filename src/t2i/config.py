"""Typed configs: dataclasses that load from and save to YAML.

A run's `config.yaml` must rebuild its model exactly, so configs are plain data (no class paths, no string
magic). Loading is strict: an unknown key is an error naming the key and the nearest valid ones, because a
typo that is silently ignored costs a whole training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from t2i.errors import UserError

T = TypeVar("T")


def to_dict(cfg: Any) -> Any:
    """A dataclass (nested) as plain dicts/lists, ready for YAML."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def flat(cfg: Any) -> dict[str, Any]:
    """A config as {'stages.base.steps': 6000, ...}: the dotted keys `--set` takes, for comparing two configs."""
    def walk(data: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            return {prefix[:-1]: data}
        return {k: v for key, value in data.items() for k, v in walk(value, f"{prefix}{key}.").items()}
    return walk(to_dict(cfg), "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except (UserError, TypeError, ValueError):
                continue
        raise UserError(f"{where}: {value!r} does not fit {tp}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is Any or origin is list:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise UserError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{where}: expected a number, got {value!r}")
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise UserError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise UserError(f"{where}: expected int, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a dict, strictly: unknown keys and wrong types are `UserError`s."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            near = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(near)}?" if near else f"; valid keys: {', '.join(names)}"
            raise UserError(f"unknown config key {path!r}{hint}")
        kwargs[key] = _convert(hints[key], value, path)
    return cls(**kwargs)


def override(cfg: T, assignments: list[str]) -> T:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a config, with the same strict checking."""
    data = to_dict(cfg)
    for a in assignments:
        if "=" not in a:
            raise UserError(f"override {a!r} must look like key.sub=value (e.g. stages.diffusion.steps=200)")
        key, raw = a.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node:
                raise UserError(f"unknown config key {key!r} in override {a!r}")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node:
            near = difflib.get_close_matches(parts[-1], list(node) if isinstance(node, dict) else [], n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise UserError(f"unknown config key {key!r} in override {a!r}{hint}")
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(type(cfg), data)


def save_yaml(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping of config keys."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config keys")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, read_yaml(path))


def check_config(cfg: Any, where: str = "") -> None:
    """Every value of a config checked before anything trains: each nested dataclass that defines
    `validate(where)` checks its own fields, naming them by their dotted path (`stages.diffusion.steps`).
    A value that is wrong fails here in a second, not after the stages before it trained for an hour."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_config(value, f"{where}{f.name}.")
    if hasattr(cfg, "validate"):
        cfg.validate(where)


def require(ok: bool, where: str, key: str, rule: str, value: Any) -> None:
    """One config rule: a `UserError` naming the key, the rule and the value given."""
    if not ok:
        raise UserError(f"{where}{key} {rule}, got {value!r}")
