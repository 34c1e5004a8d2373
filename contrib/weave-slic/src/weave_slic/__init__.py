"""`rl: slic`: SLiC-HF's calibration loss on preference pairs, a method from outside the core.

A plugin shipped as its own distribution, the way a third party ships a method: it imports only
the public facade `axolotl_weave`, registers its `rl:` name through `register_rl_methods`, owns
its config keys, and answers `build_loss` and `training_step` when `rl: slic`. The data are the
built-in preference `type:`s (batches of `chosen_*` and `rejected_*` columns).

Per pair, on the response tokens' summed log-probabilities (no reference model):
`max(0, slic_delta - logp(chosen) + logp(rejected)) + slic_lambda * nll(chosen)`, the NLL being
the chosen response's mean per-token negative log-likelihood.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from axolotl_weave import IGNORE_INDEX, PluginConfig, PluginError, hookimpl
from pydantic import Field

PLUGIN_KIND = "method"
METHOD = "slic"

METRICS = ("hinge_loss", "nll_loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies")


class SlicSettings(PluginConfig):
    """`rl: slic`'s keys."""

    slic_delta: float = Field(1.0, gt=0, description="SLiC: the hinge's margin delta.")
    slic_lambda: float = Field(
        0.1, ge=0, description="SLiC: weight of the chosen answers' NLL (0: the hinge alone)."
    )


class SlicObjective:
    """The SLiC loss; its unit is a pair (`count`), `__call__` the loss summed over pairs."""

    def __init__(self, delta: float, weight: float) -> None:
        self.delta = delta
        self.weight = weight

    def count(self, batch: dict[str, Any]) -> Any:
        import torch

        ids = batch["chosen_input_ids"]
        return torch.as_tensor(ids.shape[0], device=ids.device)

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        return self.compute(model, batch)[0]

    def compute(self, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(loss summed over the pairs, metrics summed over the pairs)."""
        import torch

        pairs = batch["chosen_input_ids"].shape[0]
        length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

        def both(column: str, value: int) -> torch.Tensor:
            pad = torch.nn.functional.pad
            return torch.cat(
                [
                    pad(
                        batch[f"{side}_{column}"],
                        (0, length - batch[f"{side}_{column}"].shape[1]),
                        value=value,
                    )
                    for side in ("chosen", "rejected")
                ]
            )

        ids, mask = both("input_ids", 0), both("attention_mask", 0)
        labels = both("labels", IGNORE_INDEX)[:, 1:]
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        trained = labels != IGNORE_INDEX
        targets = torch.where(trained, labels, torch.zeros_like(labels)).unsqueeze(-1)
        token_logps = logits.gather(-1, targets).squeeze(-1) - logits.logsumexp(-1)
        sums = (token_logps * trained).sum(-1)
        chosen, rejected = sums[:pairs], sums[pairs:]
        hinge = torch.relu(self.delta - chosen + rejected)
        nll = -chosen / trained[:pairs].sum(-1).clamp(min=1)
        loss = (hinge + self.weight * nll).sum()
        metrics = {
            "hinge_loss": hinge.detach().sum(),
            "nll_loss": nll.detach().sum(),
            "rewards/chosen": chosen.detach().sum(),
            "rewards/rejected": rejected.detach().sum(),
            "rewards/accuracies": (chosen > rejected).float().sum(),
        }
        return loss, metrics


@hookimpl
def register_rl_methods(register: Callable[[str], None]) -> None:
    """`rl: slic`."""
    register(METHOD)


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`slic_delta`, `slic_lambda`."""
    return SlicSettings


@hookimpl
def build_loss(cfg: Any) -> Any:
    """The SLiC objective when `rl: slic`."""
    if getattr(cfg, "rl", None) != METHOD:
        return None
    return SlicObjective(cfg.slic_delta, cfg.slic_lambda)


@hookimpl
def training_step(
    cfg: Any, strategy: Any, model: Any, objective: Any, window: list[dict[str, Any]]
) -> dict[str, float] | None:
    """One accumulation window: each micro-batch's pair-summed loss divided by the pairs of the
    whole window (every process); the metrics are means over those pairs."""
    if getattr(cfg, "rl", None) != METHOD:
        return None
    if not isinstance(objective, SlicObjective):
        raise PluginError(
            f"rl: slic: another plugin replaced its objective ({type(objective).__name__})"
        )
    import torch

    device = strategy.device
    pairs = sum(int(objective.count(batch)) for batch in window)
    total = strategy.reduce(torch.as_tensor(pairs, device=device), "sum").clamp(min=1)
    scale = strategy.num_processes / total.float()
    sums = torch.zeros(len(METRICS) + 1, device=device)
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        with contextlib.nullcontext() if last else strategy.no_sync(model):
            with strategy.autocast():
                loss, metrics = objective.compute(model, batch)
            strategy.backward(loss * scale)
        values = [loss.detach().float(), *(metrics[name].float() for name in METRICS)]
        sums += torch.stack(values).to(device)
    means = (strategy.reduce(sums, "sum") / total).tolist()
    out = {"loss": means[0], **dict(zip(METRICS, means[1:], strict=True))}
    out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out
