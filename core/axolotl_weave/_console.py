"""Terminal output: one rich console, logging through it, and the training progress bar."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

PIPED_WIDTH = 160
"""Width of tables and messages when output goes to a file or pipe (rich would use 80)."""

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)
for _console in (console, err_console):
    if not _console.is_terminal:
        _console.soft_wrap = True  # in a pipe or file a message is one line, never wrapped
        if "COLUMNS" not in os.environ:
            _console.width = PIPED_WIDTH


def setup_logging(verbose: bool = False) -> None:
    """Send the `axolotl_weave` logger to stderr through rich (INFO, or DEBUG when verbose)."""
    logger = logging.getLogger("axolotl_weave")
    logger.handlers.clear()
    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(
            console=err_console, show_path=False, show_time=False, markup=False
        )
    else:  # in a pipe or file: plain lines, not padded to the width
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    for noisy in ("datasets", "transformers", "accelerate", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quiet_libraries() -> None:
    """Turn off the libraries' own bars (weight loading, dataset internals) and their deprecation
    chatter; our own bars and messages remain.

    Called when a run starts (not at CLI start-up, which must not import the libraries).
    """
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


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
