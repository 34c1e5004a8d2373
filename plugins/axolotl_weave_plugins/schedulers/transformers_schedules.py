"""Learning-rate schedules of Hugging Face transformers, by the names `lr_scheduler:` gives.

`cosine` (the default), `linear`, `constant` (constant after the linear warm-up, as Axolotl
means it: transformers' `constant_with_warmup`), `constant_with_warmup`, `cosine_with_restarts`
(transformers' hard restarts, one cycle), `polynomial` (linear decay to 1e-7, transformers'
defaults) and `inverse_sqrt`. Each factor is the very function transformers' `LambdaLR` runs, so
learning rates match Hugging Face's Trainer step for step. Schedules that need settings this
project has no keys for (`cosine_with_min_lr`, `warmup_stable_decay`, `reduce_lr_on_plateau`,
`greedy`) are not registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ConfigError, hookimpl

PLUGIN_KIND = "scheduler"

SCHEDULES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "constant_with_warmup": "constant_with_warmup",
    "cosine_with_restarts": "cosine_with_restarts",
    "polynomial": "polynomial",
    "inverse_sqrt": "inverse_sqrt",
}
"""`lr_scheduler:` name -> transformers' `SchedulerType` name."""


def builder(hf_name: str) -> Callable[[Any, int, int], Callable[[int], float]]:
    """A schedule builder: transformers' `hf_name` schedule's factor of the step."""

    def build(cfg: Any, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
        import torch
        from transformers import get_scheduler

        # the factor transformers' LambdaLR applies; the optimizer's lr is what `polynomial`
        # decays from (as in the Trainer, the optimizer's default lr is `learning_rate`)
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate)
        try:
            scheduler = get_scheduler(
                hf_name,
                optimizer=probe,
                num_warmup_steps=warmup_steps,
                num_training_steps=total_steps,
            )
        except ValueError as exc:
            raise ConfigError(f"lr_scheduler: {cfg.lr_scheduler}: {exc}") from None
        (factor,) = scheduler.lr_lambdas
        return factor

    return build


@hookimpl
def register_lr_schedulers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register transformers' schedules that need no settings beyond the warm-up and length."""
    for name, hf_name in SCHEDULES.items():
        register(name, builder(hf_name))
