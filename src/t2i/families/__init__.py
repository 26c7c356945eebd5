"""Model families: each one short module wiring shared parts together.

A family module provides `NAME`, `STAGES`, a `Config` dataclass, `train(cfg, run_dir, progress)` and a
`Pipeline` with `Pipeline.load(run_dir, cfg)` and `pipe(prompts, ...) -> list[PIL.Image]`.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from t2i.errors import UserError

FAMILIES = {"ldm": "t2i.families.ldm", "clip": "t2i.families.clip"}
FAMILIES.update(dalle="t2i.families.dalle", parti="t2i.families.parti", maskgit="t2i.families.maskgit")


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        near = difflib.get_close_matches(name, list(FAMILIES), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise UserError(f"unknown family {name!r}{hint}; available: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])
