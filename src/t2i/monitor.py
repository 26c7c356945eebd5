"""Progress, previews and cancellation for one generation, seen from the step loops that do the work.

A server (or any caller) wants a progress bar with ETA, a preview of the image as it forms, and a way to
stop, for every family. The loops that know how far they are (the diffusion samplers' per-step callback,
autoregressive and parallel token decoding) sit far below the pipeline that a caller holds, so a `Monitor` is
installed for the current context (`with watching(monitor): pipe(...)`) and the loops report to it with
`step(i, n, preview)`, without any argument threaded through the families. With no monitor installed a
report costs one context-variable lookup.

The work of one call is `plan(units)` loops (a pipeline's batches times its stages: a cascade runs base then
super-resolution per batch), so progress is (finished loops + i/n) / units. A loop that starts is one whose
first step (i == 0) is reported. Previews are rendered in the worker's own thread, at most every
`preview_every` seconds, since decoding a latent costs about one denoiser step.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from t2i.errors import UserError


class Cancelled(UserError):
    """The caller asked the work to stop; raised from the next reported step."""


class Monitor:
    """What one generation reports: `progress` in [0, 1], `eta_s`, the latest `preview` (whatever the loop's
    preview callable returns, e.g. a list of PIL images), and `cancel()`. `on_update(monitor)` runs after each
    reported step, in the worker's thread."""

    def __init__(self, on_update: Callable[[Monitor], None] | None = None, preview_every: float = 1.0):
        self.on_update = on_update
        self.preview_every = preview_every
        self.progress = 0.0
        self.eta_s: float | None = None
        self.preview: Any = None
        self.units = 1
        self.started = time.perf_counter()
        self._loops = 0  # loops started so far
        self._last_preview = -float("inf")
        self._cancel = threading.Event()

    def plan(self, units: int) -> None:
        """The work ahead is `units` step loops; called by the pipeline before it starts them."""
        self.units, self._loops, self.started = max(1, units), 0, time.perf_counter()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def step(self, i: int, n: int, preview: Callable[[], Any] | None = None) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled")
        if i == 0:
            self._loops += 1
        done = (min(self._loops, self.units) - 1 + (i + 1) / max(n, 1)) / self.units
        self.progress = min(max(done, self.progress), 1.0 if self._loops <= self.units else 0.99)
        elapsed = time.perf_counter() - self.started
        self.eta_s = elapsed * (1 - self.progress) / self.progress if self.progress > 0 else None
        now = time.perf_counter()
        if preview is not None and now - self._last_preview >= self.preview_every:
            self._last_preview = now
            self.preview = preview()
        if self.on_update is not None:
            self.on_update(self)


_current: contextvars.ContextVar[Monitor | None] = contextvars.ContextVar("t2i_monitor", default=None)


@contextlib.contextmanager
def watching(monitor: Monitor) -> Iterator[Monitor]:
    token = _current.set(monitor)
    try:
        yield monitor
    finally:
        _current.reset(token)


def current() -> Monitor | None:
    return _current.get()


def plan(units: int) -> None:
    """Tell the installed monitor (if any) how many step loops the call ahead runs."""
    if (m := _current.get()) is not None:
        m.plan(units)


def step(i: int, n: int, preview: Callable[[], Any] | None = None) -> None:
    """Step i (0-based) of a loop of n finished; raises `Cancelled` once the caller has cancelled."""
    if (m := _current.get()) is not None:
        m.step(i, n, preview)
