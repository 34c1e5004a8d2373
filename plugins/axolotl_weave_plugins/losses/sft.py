"""Supervised fine-tuning loss: next-token cross-entropy over the labelled (unmasked) tokens."""

from __future__ import annotations

from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    HeadCrossEntropy,
    hookimpl,
    logits_cross_entropy,
    next_token_targets,
)

PLUGIN_KIND = "loss"


class CrossEntropy:
    """Summed next-token cross-entropy; its unit is one target token.

    A `HiddenStatesLoss`: a kernel plugin (liger, cut_cross_entropy) computes its
    cross-entropy step, e.g. without materialising the logits.
    """

    unit = "token"

    def count(self, batch: dict[str, Any]) -> Any:
        """Target tokens in the batch (labels shifted by one, masked ones excluded)."""
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

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


def router_aux_coef(model: Any) -> float:
    """`router_aux_loss_coef` of the model's config (a peft-wrapped model's base's), else 0.01."""
    config = getattr(model, "config", None)
    coef = getattr(config, "router_aux_loss_coef", None)
    return 0.01 if coef is None else float(coef)


@hookimpl(trylast=True)
def build_loss(cfg: Any) -> CrossEntropy:
    """The default objective: SFT cross-entropy."""
    return CrossEntropy()
