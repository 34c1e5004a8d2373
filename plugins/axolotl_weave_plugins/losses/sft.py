"""Supervised fine-tuning loss: next-token cross-entropy over the labelled (unmasked) tokens."""

from __future__ import annotations

from typing import Any

from axolotl_weave import IGNORE_INDEX, hookimpl, model_inputs

PLUGIN_KIND = "loss"


class CrossEntropy:
    """Summed next-token cross-entropy; its unit is one target token."""

    def count(self, batch: dict[str, Any]) -> Any:
        """Target tokens in the batch (labels shifted by one, masked ones excluded)."""
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        """Cross-entropy summed over the batch's target tokens (computed in float32), plus a
        mixture-of-experts router's auxiliary loss when the model returns one."""
        import torch.nn.functional as F

        outputs = model(**model_inputs(batch), use_cache=False)
        logits = outputs.logits[:, :-1, :]
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
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
