"""Append every logged metric to `output_dir/metrics.jsonl`, one JSON object per line."""

from __future__ import annotations

import json
from typing import Any

from axolotl_weave import TrainState, hookimpl

PLUGIN_KIND = "logger"
FILE_NAME = "metrics.jsonl"


@hookimpl
def on_log(state: TrainState, metrics: dict[str, float]) -> None:
    """Append `{"step": N, ...metrics}` to the run's metrics file."""
    state.output_dir.mkdir(parents=True, exist_ok=True)
    with (state.output_dir / FILE_NAME).open("a") as handle:
        handle.write(json.dumps({"step": state.global_step, **metrics}) + "\n")


def read_metrics(output_dir: Any) -> list[dict[str, Any]]:
    """The records a run wrote (for tests and scripts)."""
    path = output_dir / FILE_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
