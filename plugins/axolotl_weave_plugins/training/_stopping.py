"""Stopping a run safely: a non-finite loss or gradient, the loss watchdog, SIGTERM and SIGINT.

A fault stops the run before the optimizer step that would apply it, so the last checkpoint is
the last good state. A signal lets the current step finish; the trainer then writes a
checkpoint and stops with `Interrupted` (exit 128 + the signal's number, as a shell reports it).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator
from typing import Any

from axolotl_weave import TrainingFault

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While training, SIGTERM and SIGINT only ask the run to stop after the current step
    (`requested` holds the signal); a second one acts at once, as it normally would."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self.previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        """Record the first signal and give the next one its usual effect back."""
        self.requested = signum
        signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """The handlers, for the block (only in the main thread, where Python delivers signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.signal(signum, self.handle)
        try:
            yield self
        finally:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)


def check_finite(step: int, name: str, value: float, cfg: Any, last_checkpoint: str) -> None:
    """Raise a `TrainingFault` when `value` (the loss, the gradient norm) is NaN or infinite."""
    if math.isfinite(value):
        return
    raise TrainingFault(
        f"step {step}: the {name} is {value}: training stopped before applying it; no model was "
        f"saved and the last checkpoint ({last_checkpoint}) is kept. Lower learning_rate "
        f"(now {cfg.learning_rate:g}), keep max_grad_norm set, or check that step's rows"
    )


class LossWatchdog:
    """Axolotl's loss watchdog: stop when the loss is above `loss_watchdog_threshold` for
    `loss_watchdog_patience` steps in a row."""

    def __init__(self, threshold: float | None, patience: int) -> None:
        self.threshold, self.patience, self.above = threshold, patience, 0

    def check(self, step: int, loss: float, last_checkpoint: str) -> None:
        """Count a step above the threshold (a step below resets the count); stop at patience."""
        if self.threshold is None:
            return
        self.above = self.above + 1 if loss > self.threshold else 0
        if self.above >= self.patience:
            raise TrainingFault(
                f"step {step}: loss_watchdog_threshold: the loss stayed above {self.threshold:g} "
                f"for {self.patience} steps (now {loss:.4g}); training stopped, the last "
                f"checkpoint ({last_checkpoint}) is kept"
            )
