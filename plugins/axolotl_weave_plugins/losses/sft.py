"""Supervised fine-tuning loss: next-token cross-entropy over the labelled (unmasked) tokens."""

from __future__ import annotations

from typing import Any

from axolotl_weave import IGNORE_INDEX, hookimpl

PLUGIN_KIND = "loss"


class CrossEntropy:
    """Summed next-token cross-entropy; its unit is one target token."""

    def count(self, batch: dict[str, Any]) -> Any:
        """Target tokens in the batch (labels shifted by one, masked ones excluded)."""
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        """Cross-entropy summed over the batch's target tokens (computed in float32)."""
        import torch.nn.functional as F

        inputs = {key: value for key, value in batch.items() if key != "labels"}
        logits = model(**inputs, use_cache=False).logits[:, :-1, :]
        labels = batch["labels"][:, 1:]
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )


@hookimpl(trylast=True)
def build_loss(cfg: Any) -> CrossEntropy:
    """The default objective: SFT cross-entropy."""
    return CrossEntropy()
