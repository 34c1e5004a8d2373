"""The training progress display: the latest loss and its recent trend, in a terminal."""

from __future__ import annotations

import math

import pytest
from axolotl_weave_plugins.training import _progress
from axolotl_weave_plugins.training._progress import SPARKS, TREND_STEPS, loss_trend, progress_bar
from rich.console import Console


def test_trend_says_which_way_the_loss_goes() -> None:
    falling = loss_trend([4.0, 3.5, 3.0, 2.6, 2.2, 2.0])
    assert falling.endswith("↓") and falling[0] == SPARKS[-1] and falling[5] == SPARKS[0]
    assert loss_trend([1.0, 1.2, 1.5, 1.9, 2.4]).endswith("↑")
    assert loss_trend([2.0, 2.001, 1.999, 2.0]).endswith("→")


def test_trend_shows_only_recent_finite_losses() -> None:
    losses = [float(i) for i in range(100)] + [math.nan]
    line = loss_trend(losses).split(" ")[0]
    assert len(line) == TREND_STEPS - 1  # the newest TREND_STEPS, less the NaN
    assert loss_trend([math.nan]) == "" and loss_trend([]) == ""
    assert loss_trend([3.0, 2.0]) == SPARKS[-1] + SPARKS[0]  # too few for an arrow


def test_terminal_bar_shows_the_trend(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Console(force_terminal=True, record=True, width=120)
    monkeypatch.setattr(_progress, "console", terminal)
    with progress_bar(6) as bar:
        for loss in (3.0, 2.5, 2.1, 1.8, 1.6, 1.5):
            bar.advance(loss)
    shown = terminal.export_text()
    assert "6/6" in shown and "loss 1.5000" in shown
    assert loss_trend([3.0, 2.5, 2.1, 1.8, 1.6, 1.5]) in shown
