"""Append every logged metric to `output_dir/metrics.jsonl`, one JSON object per line, and
record how the run ended in `output_dir/run_status.json` (finished, or failed with the error)."""

from __future__ import annotations

import json
import math
from typing import Any

from axolotl_weave import TrainState, hookimpl, write_atomically

PLUGIN_KIND = "logger"
FILE_NAME = "metrics.jsonl"
STATUS_FILE = "run_status.json"


@hookimpl
def on_train_begin(state: TrainState) -> None:
    """A run from step 0 starts a new metrics file; a resumed run appends to its own."""
    if state.global_step == 0:
        write_atomically(state.output_dir / FILE_NAME, "")


@hookimpl
def on_log(state: TrainState, metrics: dict[str, float]) -> None:
    """Append `{"step": N, ...metrics}` to the run's metrics file; a NaN or infinite value is
    written as null (JSON has no NaN)."""
    state.output_dir.mkdir(parents=True, exist_ok=True)
    record = {k: v if math.isfinite(v) else None for k, v in metrics.items()}
    with (state.output_dir / FILE_NAME).open("a") as handle:
        handle.write(json.dumps({"step": state.global_step, **record}, allow_nan=False) + "\n")


@hookimpl
def on_train_end(state: TrainState, error: BaseException | None) -> None:
    """Write `{"status": "finished" | "failed", "step": N, "error": ...}` (staged, renamed)."""
    status: dict[str, Any] = {"status": "finished" if error is None else "failed"}
    status["step"] = state.global_step
    if error is not None:
        status["error"] = f"{type(error).__name__}: {error}"
    write_atomically(state.output_dir / STATUS_FILE, json.dumps(status) + "\n")


def read_metrics(output_dir: Any) -> list[dict[str, Any]]:
    """The records a run wrote (for tests and scripts)."""
    path = output_dir / FILE_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
