"""`weave plot OUTPUT_DIR [MORE_DIRS...] [--out FILE]`: the loss and learning-rate curves of one
or more runs in one figure, read from each run's `metrics.jsonl` (the jsonl logger's)."""

from __future__ import annotations

from pathlib import Path

import typer
from axolotl_weave import hookimpl

PLUGIN_KIND = "command"
DEFAULT_OUT = "loss_comparison.png"


def plot_command(
    runs: list[Path] = typer.Argument(
        ..., metavar="OUTPUT_DIR...", help="Output folders of runs (their metrics.jsonl)."
    ),
    out: Path = typer.Option(
        Path(DEFAULT_OUT), "--out", "-o", help="The PNG to write (default ./loss_comparison.png)."
    ),
) -> None:
    """Compare runs: training and eval loss and learning rate, one colour per run."""
    from axolotl_weave import require
    from axolotl_weave.commands import console

    from axolotl_weave_plugins.loggers._plot import draw, read_run

    records = [(label_of(run, runs), read_run(run)) for run in runs]
    require("matplotlib", feature="weave plot", install="'axolotl-weave[plot]'")
    path = draw(records, out, title=None if len(runs) > 1 else str(runs[0]))
    console.print(f"wrote {path} ({len(runs)} run{'s' if len(runs) > 1 else ''})")


def label_of(run: Path, runs: list[Path]) -> str:
    """The run's folder name, or its path where two runs share a name."""
    names = [r.resolve().name for r in runs]
    name = run.resolve().name
    return name if names.count(name) == 1 else str(run)


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave plot`."""
    from axolotl_weave.commands import user_errors

    app.command("plot")(user_errors(plot_command))
