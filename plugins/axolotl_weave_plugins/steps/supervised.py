"""The supervised training step: one window of micro-batches, exactly normalised.

The default (`trylast`) of `training_step`. Each micro-batch's loss is summed over its target
units (`objective.count`); every sum is divided by the units of the whole window on every
process, so a step with gradient accumulation (and data parallelism) equals one step on the
concatenated micro-batches, whatever their lengths. Methods with a reference model or with
generation answer `training_step` before it when their config is on.
"""

from __future__ import annotations

import contextlib
from typing import Any

from axolotl_weave import LossFunction, Strategy, hookimpl

PLUGIN_KIND = "step"


@hookimpl(trylast=True)
def training_step(
    strategy: Strategy, model: Any, objective: LossFunction, window: list[dict[str, Any]]
) -> dict[str, float]:
    """Forward and backward over the window; `loss` is the mean over its target units."""
    import torch

    device = strategy.device
    units = sum(objective.count(batch) for batch in window)
    total_units = strategy.reduce(torch.as_tensor(units, device=device), "sum")
    scale = strategy.num_processes / total_units.clamp(min=1).float()
    summed = torch.zeros((), device=device)
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        sync = contextlib.nullcontext() if last else strategy.no_sync(model)
        with sync:
            with strategy.autocast():
                loss_sum = objective(model, batch)
            strategy.backward(loss_sum * scale)
        summed += loss_sum.detach().float()
    mean_loss = strategy.reduce(summed, "sum") / total_units.clamp(min=1)
    return {"loss": float(mean_loss)}
