"""Optimizer and learning-rate schedule from the config."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NO_DECAY_HINTS = ("bias", "norm", "ln_", "layernorm")


def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.optimizer` over the trainable parameters.

    Weight decay skips biases and normalisation weights, as Hugging Face's Trainer does.
    """
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or any(hint in name.lower() for hint in NO_DECAY_HINTS)
        (no_decay if skip else decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    lr = cfg.learning_rate
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    name = cfg.optimizer
    if name in ("adamw_torch", "adamw"):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.adam_epsilon)
    if name == "adamw_torch_fused":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.adam_epsilon, fused=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=cfg.adam_epsilon)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_steps(cfg: Any, total_steps: int) -> int:
    """`warmup_steps`, or `warmup_ratio` of the total, or 0."""
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    if cfg.warmup_ratio is not None:
        return math.ceil(cfg.warmup_ratio * total_steps)
    return 0


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Linear warm-up then `cfg.lr_scheduler` (cosine, linear or constant) to the last step."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps(cfg, total_steps),
        num_training_steps=total_steps,
    )
