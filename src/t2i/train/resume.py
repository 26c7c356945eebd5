"""What `t2i train --resume --set ...` may change, decided before anything is written.

A resumed run must still be the run its folder describes. So a resume takes only changes that leave what
was already trained as it is:

* the remaining schedule of a stage: `stages.<stage>.steps` (more, never fewer than trained), `ckpt_every`,
  `sample_every`, `eval_every`, `log_every`, `tensorboard`;
* anything of a stage that has not started yet (its whole `stages.<stage>` section);
* the sampling defaults, `sample.*`.

Everything else (architecture, data, text, the tokenizer run, the seed) changes what was trained and is
refused, naming the key. Raising the steps of a finished stage reopens it from its checkpoint, as long as
no later stage has trained on its result and `train_state.pt` still holds its optimizer state.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from t2i.config import flat
from t2i.errors import UserError

SCHEDULE_KEYS = ("steps", "ckpt_every", "sample_every", "eval_every", "log_every", "tensorboard")


def checkpoint_position(run: Path) -> tuple[str | None, int]:
    """The stage and step `train_state.pt` would resume (None when there is no readable one)."""
    path = Path(run) / "train_state.pt"
    if not path.is_file():
        return None, 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable state is reported by the trainer, with what to do
        return None, 0
    return state.get("stage"), int(state.get("step", 0))


def plan_resume(run: Path, old: Any, new: Any, meta: dict[str, Any]) -> tuple[dict[str, list], list[str]]:
    """The config changes a resume makes, as {key: [old, new]}, and the finished stages it reopens; a
    `UserError` naming the first key it may not change."""
    a, b = flat(old), flat(new)
    changes = {k: [a.get(k), b.get(k)] for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
    order = [f.name for f in fields(old.stages)]
    done = set(meta.get("stages_done", []))
    state_stage, state_step = checkpoint_position(run)
    started = done | ({state_stage} if state_stage else set())
    reopen: list[str] = []
    for key, (was, now) in changes.items():
        parts = key.split(".")
        if parts[0] == "sample":
            continue
        if parts[0] == "stages" and len(parts) == 3 and parts[1] in order:
            stage, field = parts[1], parts[2]
            if not any(s in started for s in order[order.index(stage):]):
                continue  # nothing of this stage or after it has trained yet
            if field not in SCHEDULE_KEYS:
                raise UserError(f"--set {key}: the {stage} stage has already trained with {was!r}; a resume changes "
                                f"only its schedule ({', '.join(SCHEDULE_KEYS)}); start a new run for this")
            if field != "steps":
                continue
            later = [s for s in order[order.index(stage) + 1:] if s in started]
            if later:
                raise UserError(f"--set {key}: {', '.join(later)} already trained on the {stage} stage's result, so "
                                f"training {stage} longer would not reach them; start a new run for this")
            if stage == state_stage:
                if now < state_step:
                    raise UserError(f"--set {key}={now}: the {stage} stage has trained {state_step} steps already; "
                                    "a resume can add steps, not remove them")
                if stage in done and now > state_step:
                    reopen.append(stage)
                continue
            if stage in done:
                raise UserError(f"--set {key}: the {stage} stage is finished and its optimizer state is gone "
                                "(train_state.pt holds another stage); start a new run to train it longer")
            continue
        raise UserError(f"--set {key}: changes what {run} was trained with ({was!r} -> {now!r}); a resume takes "
                        f"only schedule changes (stages.STAGE.{{{','.join(SCHEDULE_KEYS)}}}), settings of stages not "
                        "yet started, and sample.*; start a new run for this (t2i train --out NEW ...)")
    return changes, reopen
