"""The training progress bar (the latest loss and its recent trend) and the metrics log line."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from axolotl_weave.commands import console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

SPARKS = "▁▂▃▄▅▆▇█"
TREND_STEPS = 24
"""How many recent losses the progress bar's trend shows."""


def loss_trend(losses: list[float]) -> str:
    """The recent losses as a sparkline (lowest ▁, highest █), then ↓, ↑ or → for the mean of the
    newer half against the older half (a change under 1% is →)."""
    finite = [x for x in losses[-TREND_STEPS:] if math.isfinite(x)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    line = "".join(SPARKS[round((x - low) / span * (len(SPARKS) - 1))] for x in finite)
    if len(finite) < 4:
        return line
    half = len(finite) // 2
    older, newer = sum(finite[:half]) / half, sum(finite[half:]) / (len(finite) - half)
    change = (newer - older) / max(abs(older), 1e-12)
    return f"{line} {'↓' if change < -0.01 else '↑' if change > 0.01 else '→'}"


class _Bar:
    """The handle a training loop advances, one optimizer step at a time."""

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self.progress, self.task = progress, task
        self.losses: list[float] = []

    def advance(self, loss: float) -> None:
        """One step done, with its loss (shown with the recent trend)."""
        self.losses = [*self.losses[-TREND_STEPS + 1 :], loss]
        if self.progress is not None and self.task is not None:
            fields = {"loss": f"{loss:.4f}", "trend": loss_trend(self.losses)}
            self.progress.update(self.task, advance=1, **fields)


@contextlib.contextmanager
def progress_bar(total: int, completed: int = 0, *, enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar over optimizer steps, showing the latest loss and the recent trend
    (off on other ranks and when the console is not a terminal)."""
    if not enabled or not console.is_terminal:
        yield _Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} {task.fields[trend]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task("train", total=total, completed=completed, loss="-", trend="")
        yield _Bar(progress, task)
