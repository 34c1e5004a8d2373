"""TensorBoard, with Axolotl's key: `use_tensorboard: true` writes event files to
`OUTPUT_DIR/runs` (`tensorboard --logdir OUTPUT_DIR/runs`).

Every metric of each logging step is a scalar at that step (`train/loss`, `train/learning_rate`,
`eval/loss` for `eval_loss`); the resolved config (secrets redacted) is the run's hparams and a
`config` text. A run resumed from a checkpoint writes on into the same folder from its step
(later events of the stopped run are dropped: TensorBoard's purge step), and how the run ended
(`finished`, or `failed` with the error) is its `status` text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from axolotl_weave import PluginConfig, TrainState, hookimpl
from pydantic import Field

from axolotl_weave_plugins.loggers._tracking import (
    config_params,
    end_status,
    error_text,
    flat_params,
    require_tracker,
)

PLUGIN_KIND = "logger"
LOG_DIR = "runs"


class TensorboardSettings(PluginConfig):
    """TensorBoard's key (Axolotl's name)."""

    use_tensorboard: bool = Field(False, description="Write TensorBoard events to OUTPUT_DIR/runs.")


def scalar_name(key: str) -> str:
    """`eval_loss` -> `eval/loss`, `loss` -> `train/loss` (as Hugging Face's trainer names them)."""
    return f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"


class TensorboardRun:
    """The event writer of one training run (main process only); registered when on."""

    def __init__(self) -> None:
        require_tracker("tensorboard", "tensorboard", "use_tensorboard (TensorBoard)")
        self.writer: Any = None

    @hookimpl
    def on_train_begin(self, cfg: Any, state: TrainState) -> None:
        """Open the writer from the run's step (dropping a stopped run's later events) and
        write the config."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(  # events after this step, of a stopped run, are dropped
            log_dir=str(state.output_dir / LOG_DIR), purge_step=state.global_step + 1
        )
        params = config_params(cfg)
        text = json.dumps(params, indent=2)
        self.writer.add_text("config", f"```\n{text}\n```", state.global_step)
        for summary in hparams(flat_params(params), {}):
            self.writer.file_writer.add_summary(summary, state.global_step)

    @hookimpl
    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(scalar_name(key), value, state.global_step)
        self.writer.flush()

    @hookimpl
    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        if self.writer is None:
            return
        status = end_status(error)
        text = status if error is None else f"{status}: {error_text(error)}"
        self.writer.add_text("status", text, state.global_step)
        self.writer.close()
        self.writer = None


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    return TensorboardSettings


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """On with `use_tensorboard: true`: the package must be installed (checked now)."""
    if cfg.use_tensorboard:
        register(TensorboardRun(), "tensorboard-run")
