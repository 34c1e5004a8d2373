"""Supervised fine-tuning loss: next-token cross-entropy over the labelled (unmasked) tokens.

With `use_eaft: true` (Axolotl's keys `use_eaft`, `eaft_alpha`, `eaft_k`), Entropy-Aware Focal
Training: each target token's cross-entropy is weighted by `H ** eaft_alpha`, H the entropy of
the softmax over the `eaft_k` largest logits at that position (no gradient through the weight),
summed and divided by the target tokens as the plain loss is. Confident predictions (low
entropy) weigh less, uncertain ones more. It needs the logits, so Liger's and cut
cross-entropy's fused losses do not apply to it.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    HeadCrossEntropy,
    PluginConfig,
    hookimpl,
    logits_cross_entropy,
    model_inputs,
    next_token_targets,
)
from pydantic import Field, model_validator

PLUGIN_KIND = "loss"

OTHER_OBJECTIVES = ("rl", "reward_model", "process_reward_model")
"""Keys whose objective replaces the supervised loss (EAFT weighs only the latter)."""


class EaftSettings(PluginConfig):
    """Entropy-Aware Focal Training (Axolotl's keys)."""

    use_eaft: bool = Field(
        False,
        description="EAFT: weight each target token's cross-entropy by the entropy of the "
        "top-k softmax at its position, to the power eaft_alpha.",
    )
    eaft_alpha: float = Field(
        1.0, ge=0, description="EAFT: the exponent of the entropy weight (0: plain loss)."
    )
    eaft_k: int = Field(20, gt=0, description="EAFT: how many largest logits the entropy uses.")

    @model_validator(mode="after")
    def _eaft_is_supervised(self) -> EaftSettings:
        if not self.use_eaft:
            return self
        for key in OTHER_OBJECTIVES:
            value = getattr(self, key, None)
            if value:
                raise ValueError(
                    f"use_eaft with {key}: {value}: EAFT weighs the supervised cross-entropy, "
                    f"which {key} replaces; remove one of them"
                )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`use_eaft`, `eaft_alpha`, `eaft_k`."""
    return EaftSettings


class TargetTokenLoss:
    """A loss summed over the target tokens: its unit is one target token."""

    unit = "token"

    def count(self, batch: dict[str, Any]) -> Any:
        """Target tokens in the batch (labels shifted by one, masked ones excluded)."""
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


class CrossEntropy(TargetTokenLoss):
    """Summed next-token cross-entropy; its unit is one target token.

    A `HiddenStatesLoss`: a kernel plugin (liger, cut_cross_entropy) computes its
    cross-entropy step, e.g. without materialising the logits.
    """

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        """Cross-entropy summed over the batch's target tokens (computed in float32), plus a
        mixture-of-experts router's auxiliary loss when the model returns one."""
        return self.hidden_states_loss(model, batch, logits_cross_entropy)

    def hidden_states_loss(self, model: Any, batch: dict[str, Any], head: HeadCrossEntropy) -> Any:
        """The loss of `__call__` with the forward and cross-entropy computed by `head`."""
        loss, outputs = head(model, batch, next_token_targets(batch["labels"]))
        aux = getattr(outputs, "aux_loss", None)
        if aux is not None:  # a per-batch mean: scaled by the units, as the sum is
            loss = loss + router_aux_coef(model) * aux.float() * self.count(batch)
        return loss


class EntropyWeightedCrossEntropy(TargetTokenLoss):
    """EAFT: the summed next-token cross-entropy with each token weighted by
    `entropy(softmax(top-k logits)) ** alpha`; its unit is one target token. Not a
    `HiddenStatesLoss`: its weights need the logits, which a fused loss never makes."""

    def __init__(self, alpha: float, k: int) -> None:
        self.alpha, self.k = alpha, k

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        """The weighted cross-entropy summed over the target tokens (float32), plus a
        mixture-of-experts router's auxiliary loss as in the plain loss."""
        import torch
        import torch.nn.functional as F

        outputs = model(**model_inputs(batch), use_cache=False)
        targets = next_token_targets(batch["labels"]).reshape(-1).to(outputs.logits.device)
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
        kept = targets != IGNORE_INDEX
        picked = logits[kept].float()
        with torch.no_grad():
            top = picked.topk(min(self.k, picked.shape[-1]), dim=-1).values
            probs = top.softmax(dim=-1)
            entropy = -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)
            weights = entropy.pow(self.alpha)
        loss = (F.cross_entropy(picked, targets[kept], reduction="none") * weights).sum()
        aux = getattr(outputs, "aux_loss", None)
        if aux is not None:
            loss = loss + router_aux_coef(model) * aux.float() * self.count(batch)
        return loss


def router_aux_coef(model: Any) -> float:
    """`router_aux_loss_coef` of the model's config (a peft-wrapped model's base's), else 0.01."""
    config = getattr(model, "config", None)
    coef = getattr(config, "router_aux_loss_coef", None)
    return 0.01 if coef is None else float(coef)


@hookimpl(trylast=True)
def build_loss(cfg: Any) -> TargetTokenLoss:
    """The default objective: SFT cross-entropy (entropy-weighted with `use_eaft`)."""
    if getattr(cfg, "use_eaft", False):
        return EntropyWeightedCrossEntropy(cfg.eaft_alpha, cfg.eaft_k)
    return CrossEntropy()
