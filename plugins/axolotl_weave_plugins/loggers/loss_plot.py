"""At the end of every run, `OUTPUT_DIR/loss.png`: training and eval loss over the steps, and
the learning rate (a resumed run's whole history, kept in its checkpoints). Needs matplotlib
(`pip install 'axolotl-weave[plot]'`); without it the picture is skipped with one log line.
`weave plot` draws the same figure for several runs.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from axolotl_weave import TrainState, hookimpl

from axolotl_weave_plugins.loggers._plot import draw

PLUGIN_KIND = "logger"
FILE_NAME = "loss.png"
log = logging.getLogger("axolotl_weave")


@hookimpl
def on_train_end(cfg: Any, state: TrainState, error: BaseException | None) -> None:
    """Draw the run's logged metrics (a failed run's too: they show what went wrong). A failure
    to draw is a warning: it never hides the run's own outcome."""
    if not state.log_history:
        return
    if importlib.util.find_spec("matplotlib") is None:
        log.warning(
            "%s not written: matplotlib is not installed (pip install 'axolotl-weave[plot]')",
            FILE_NAME,
        )
        return
    title = f"{state.output_dir.name}: step {state.global_step}"
    if error is not None:
        title += f" (stopped: {type(error).__name__})"
    try:
        path = draw(
            [(state.output_dir.name, state.log_history)], state.output_dir / FILE_NAME, title
        )
    except Exception as exc:  # a picture must not turn a finished run into a failed one
        log.warning("%s not written: %s: %s", FILE_NAME, type(exc).__name__, exc)
        return
    log.info("loss curve: %s", path)
