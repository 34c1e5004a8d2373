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
    """`loss_fn` over `batches` without gradients: the summed loss divided by the units of every
    process together, and the metrics of its optional `measures(model, batch, strategy)`: a
    tensor summed over the units is reported per unit; a pair `(sum, count)` as its sum over
    its own count (a mean over some of the rows, e.g. KTO's desirable ones), left out where
    that count is 0. The objective's optional `summarize(metrics, units)` then derives what
    is not a mean (a difference of two means, a standard deviation) from them."""
    import torch

    device = strategy.device
    measures = getattr(loss_fn, "measures", None)
    sums: dict[str, Any] = {}
    counts: dict[str, Any] = {}
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
                total, count = value if isinstance(value, tuple) else (value, None)
                sums[name] = sums.get(name, 0) + total.detach().double()
                if count is not None:
                    counts[name] = counts.get(name, 0) + torch.as_tensor(count).double()
            units += loss_fn.count(batch)
    names, counted = sorted(sums) or [""], sorted(counts)
    values = [sums.get(n, 0.0) for n in names] + [counts[n] for n in counted] + [units]
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    reduced = strategy.reduce(stacked, "sum").tolist()
    total_sums = dict(zip(names, reduced, strict=False))
    divisors = dict(zip(counted, reduced[len(names) :], strict=False))
    total_units = reduced[-1]
    means = {
        name: total / max(divisors.get(name, total_units), 1)
        for name, total in total_sums.items()
        if divisors.get(name, 1) > 0
    }
    loss = means.pop("", 0.0)
    summarize = getattr(loss_fn, "summarize", None)
    if summarize is not None:
        means = summarize(means, int(total_units))
    return Measurement(loss, int(total_units), unit_of(loss_fn), means)
