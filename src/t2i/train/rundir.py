"""The run directory: the unit users pass around.

`config.yaml` rebuilds the model, `run.json` says which family made it and which stages are done, each
trained part is `<part>.safetensors`, `train_state.pt` resumes the stage in progress, `log.csv` has the curves,
`samples/` the grids and `eval/` the reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from t2i.errors import UserError

META = "run.json"


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


def load_part(module: nn.Module, run: str | Path, name: str) -> nn.Module:
    """Load `<name>.safetensors` into `module`, strictly, with an error that names the file."""
    path = Path(run) / f"{name}.safetensors"
    if not path.is_file():
        raise UserError(f"{path} is missing; the run is incomplete — resume it with `t2i train --resume`")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise UserError(f"{path} is unreadable ({e}); retrain this part") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])[:300]
        raise UserError(f"{path} does not match the model in config.yaml ({detail})") from None
    return module.eval().requires_grad_(False)
