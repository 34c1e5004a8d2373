"""Optimizer and learning-rate schedule from the config."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from axolotl_weave._errors import ConfigError

if TYPE_CHECKING:
    import torch

    from axolotl_weave._hooks import Hooks

NO_DECAY_HINTS = ("bias", "norm", "ln_", "layernorm")


def param_groups(cfg: Any, model: torch.nn.Module) -> list[dict[str, Any]]:
    """The trainable parameters in the `default` group at `learning_rate`, split into
    weight-decayed and not (biases, norms), as Hugging Face's Trainer does."""
    split: dict[bool, list[Any]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            no_decay = param.ndim < 2 or any(hint in name.lower() for hint in NO_DECAY_HINTS)
            split.setdefault(no_decay, []).append(param)
    if not split:
        raise ValueError("the model has no trainable parameters")
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            "lr": cfg.learning_rate,
            "group": "default",
        }
        for no_decay, params in split.items()
    ]


def build_optimizer(cfg: Any, model: torch.nn.Module, hooks: Hooks) -> torch.optim.Optimizer:
    """The optimizer a plugin registered under `cfg.optimizer` (`register_optimizers`; the
    config's validation checked the name) over `param_groups`, as plugins adjusted them
    (`adjust_param_groups`: `lr_groups`, LoRA+)."""
    groups = param_groups(cfg, model)
    hooks.adjust_param_groups(cfg, model, groups)
    groups = [group for group in groups if group["params"]]
    builders = hooks.optimizers()
    if cfg.optimizer not in builders:  # a config validated without the registry
        names = ", ".join(sorted(builders)) or "none (is a plugin blocked? see `weave plugin list`)"
        raise ConfigError(f"optimizer: unknown optimizer {cfg.optimizer!r}; registered: {names}")
    return builders[cfg.optimizer](groups, cfg)


def warmup_steps(cfg: Any, total_steps: int) -> int:
    """`warmup_steps` (below 1: that fraction of the total), or `warmup_ratio` of the total,
    or 0."""
    steps = cfg.warmup_steps
    if steps is not None:
        return math.ceil(steps * total_steps) if steps < 1 else steps
    if cfg.warmup_ratio is not None:
        return math.ceil(cfg.warmup_ratio * total_steps)
    return 0


def build_scheduler(
    cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int, hooks: Hooks
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule `cfg.lr_scheduler` that a plugin registered (`register_lr_schedulers`; the
    config's validation checked the name), with its warm-up, over `total_steps`, times every
    plugin's `lr_multiplier`, as one `LambdaLR`."""
    import torch

    build = hooks.lr_schedulers()[cfg.lr_scheduler]
    schedule = build(cfg, total_steps, warmup_steps(cfg, total_steps))
    multiplier = hooks.lr_multiplier(cfg)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule(step) * multiplier(step)
    )
