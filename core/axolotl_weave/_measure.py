"""An objective measured over a held-out set: what the loop's evaluation and `weave evaluate`
report (the loss per unit, and the objective's own metrics as means per unit)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from axolotl_weave._batches import to_device
from axolotl_weave._types import LossFunction


@dataclass
class Measurement:
    """`loss` per unit over `units` units (`unit`: what the objective counts, e.g. "token" or
    "pair"), and each of the objective's metrics as a mean per unit."""

    loss: float
    units: int
    unit: str
    metrics: dict[str, float] = field(default_factory=dict)


def unit_of(loss_fn: LossFunction) -> str:
    """What `loss_fn.count` counts: its `unit` attribute, "token" when it has none."""
    return str(getattr(loss_fn, "unit", "token"))


def measure_objective(
    loss_fn: LossFunction, model: Any, batches: Iterable[dict[str, Any]], strategy: Any
) -> Measurement:
    """`loss_fn` over `batches` without gradients: the summed loss (and the summed metrics of
    its optional `measures(model, batch, strategy)`) divided by the units of every process
    together."""
    import torch

    device = strategy.device
    measures = getattr(loss_fn, "measures", None)
    sums: dict[str, torch.Tensor] = {}
    units = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in batches:
            batch = to_device(batch, device)
            with strategy.autocast():
                if measures is not None:
                    loss, metrics = measures(model, batch, strategy)
                else:
                    loss, metrics = loss_fn(model, batch), {}
            for name, value in {"": loss, **metrics}.items():
                sums[name] = sums.get(name, 0) + value.detach().double()
            units += loss_fn.count(batch)
    names = sorted(sums) or [""]
    stacked = torch.stack([torch.as_tensor(sums.get(n, 0.0), device=device) for n in names])
    stacked = torch.cat([stacked.double(), units[None]])
    reduced = strategy.reduce(stacked, "sum")
    total_units = reduced[-1].clamp(min=1)
    means = {name: float(value / total_units) for name, value in zip(names, reduced, strict=False)}
    loss = means.pop("")
    return Measurement(loss, int(reduced[-1]), unit_of(loss_fn), means)
