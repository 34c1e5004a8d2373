"""The loss figure that `loss_plot` writes at the end of a run and `weave plot` draws for several
runs: training and eval loss over the steps on top, the learning rate below. Drawn with
matplotlib's Agg canvas directly (no pyplot, no global backend switched), so it works without a
display and leaves a notebook's backend alone.
"""

from __future__ import annotations

import json
import math
from io import BytesIO
from pathlib import Path
from typing import Any

from axolotl_weave import DataError, write_atomically

FIGURE_SIZE = (10.0, 7.0)
"""Inches; at `DPI` the PNG is 1000 x 700 pixels."""
DPI = 100

METRICS_FILE = "metrics.jsonl"
"""What the jsonl logger writes in each run's output_dir, one JSON object per logging step."""

Records = list[dict[str, Any]]


def series(records: Records, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have a finite `key`, in step order; where a step was
    logged twice (a run resumed from a checkpoint before it), the later record wins."""
    by_step: dict[int, float] = {}
    for index, record in enumerate(records):
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            by_step[int(record.get("step", index))] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def read_run(folder: Path) -> Records:
    """The metrics a run's output_dir holds (`metrics.jsonl`); `DataError` naming the folder
    when it has none."""
    path = Path(folder) / METRICS_FILE
    if not Path(folder).is_dir():
        raise DataError(f"{folder}: no such folder (give the output_dir of a run)")
    if not path.is_file():
        raise DataError(
            f"{folder}: no {METRICS_FILE} in this folder: is it the output_dir of a run? "
            "(the jsonl logger writes it at each logging step)"
        )
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    if not any(series(records, key)[0] for key in ("loss", "eval_loss")):
        raise DataError(f"{path}: no loss logged yet (the run logs every logging_steps steps)")
    return records


def draw(runs: list[tuple[str, Records]], out: Path, title: str | None = None) -> Path:
    """Write one PNG comparing `runs` ((label, records) pairs): loss (solid: training, dashed
    with dots: eval) and learning rate, one colour per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, lr_axes = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    single = len(runs) == 1
    for index, (label, records) in enumerate(runs):
        colour = f"C{index}"
        prefix = "" if single else f"{label}: "
        steps, values = series(records, "loss")
        if steps:
            loss_axes.plot(steps, values, color=colour, label=f"{prefix}train loss")
        steps, values = series(records, "eval_loss")
        if steps:
            loss_axes.plot(
                steps, values, color=colour, linestyle="--", marker="o", label=f"{prefix}eval loss"
            )
        steps, values = series(records, "learning_rate")
        if steps:
            lr_axes.plot(steps, values, color=colour, label=label)
    loss_axes.set_ylabel("loss")
    loss_axes.grid(alpha=0.3)
    if loss_axes.get_legend_handles_labels()[0]:
        loss_axes.legend(loc="upper right", fontsize="small")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("step")
    lr_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    lr_axes.grid(alpha=0.3)
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if title:
        figure.suptitle(title)
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return write_atomically(Path(out), buffer.getvalue())
