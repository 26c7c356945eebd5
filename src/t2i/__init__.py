"""t2i: a text-to-image lab. Every family of the survey, trained from scratch, measured exactly.

    import t2i
    pipe = t2i.load("runs/ldm-quick")
    images = pipe(["a red circle left of a blue square"], steps=20, guidance=4, seed=0)

Training from Python: `t2i.api.train("ldm", "runs/x", preset="quick")` (the `t2i.train` package holds the
trainer itself).
"""

from typing import Any

__version__ = "0.1.0"


def load(run: str) -> Any:
    """A trained run as a pipeline (imports torch on first use, so `import t2i` stays light)."""
    from t2i.api import load as _load

    return _load(run)

