"""The reward models' objectives, their training step and their loader.

- Bradley-Terry (`reward_model: true`), as TRL's `RewardTrainer.compute_loss`: one forward pass
  of the sequence classifier over the chosen rows then the rejected ones, the loss
  `-logsigmoid(r_chosen - r_rejected)` plus `center_rewards_coefficient * (r_chosen +
  r_rejected)^2`. Its unit is a pair: the step divides each micro-batch's pair-summed loss by
  the pairs of the whole window, so one micro-batch a step is exactly TRL's mean. The metrics
  are TRL's: `accuracy`, `margin`, `min_reward`, `mean_reward`, `max_reward`.
- Token classification (`process_reward_model: true`), as TRL's PRMTrainer (the model's own
  loss): cross-entropy of the per-token logits against the step labels; its unit is a labelled
  token, and the supervised step normalises it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from axolotl_weave import (
    IGNORE_INDEX,
    WeaveError,
    fit_embeddings,
    override_model_config,
    resolve_precision,
)


def pad_to(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
    """Right-pad the last dimension of `tensor` to `length` with `value`."""
    missing = length - tensor.shape[1]
    return tensor if missing <= 0 else torch.nn.functional.pad(tensor, (0, missing), value=value)


class BradleyTerry:
    """The pairwise reward loss; `pad_token_id` pads the concatenated chosen/rejected rows."""

    unit = "pair"

    def __init__(self, center_rewards_coefficient: float | None, pad_token_id: int) -> None:
        self.center = center_rewards_coefficient
        self.pad_token_id = pad_token_id

    def count(self, batch: dict[str, Any]) -> torch.Tensor:
        """The pairs of a micro-batch."""
        ids = batch["chosen_input_ids"]
        return torch.as_tensor(ids.shape[0], device=ids.device)

    def rewards(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_chosen, r_rejected): one forward pass over the chosen rows then the rejected."""
        length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
        ids = torch.cat(
            [
                pad_to(batch[f"{s}_input_ids"], length, self.pad_token_id)
                for s in ("chosen", "rejected")
            ]
        )
        mask = torch.cat(
            [pad_to(batch[f"{s}_attention_mask"], length, 0) for s in ("chosen", "rejected")]
        )
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        chosen, rejected = torch.chunk(logits.squeeze(-1).float(), chunks=2)
        return chosen, rejected

    def compute(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss summed over the pairs, and the rewards (detached) for the metrics."""
        chosen, rejected = self.rewards(model, batch)
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).sum()
        if self.center is not None:
            loss = loss + self.center * ((chosen + rejected) ** 2).sum()
        return loss, {"chosen": chosen.detach(), "rejected": rejected.detach()}

    def __call__(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The loss summed over the micro-batch's pairs."""
        return self.compute(model, batch)[0]

    def measures(
        self, model: Any, batch: dict[str, Any], strategy: Any
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The summed loss of a held-out micro-batch and TRL's `accuracy`, `margin` and
        `mean_reward`, each summed over its pairs."""
        loss, rewards = self.compute(model, batch)
        chosen, rejected = rewards["chosen"], rewards["rejected"]
        return loss, {
            "accuracy": (chosen > rejected).float().sum(),
            "margin": (chosen - rejected).sum(),
            "mean_reward": ((chosen + rejected) / 2).sum(),
        }


def bradley_terry_step(
    strategy: Any, model: Any, objective: BradleyTerry, window: list[dict[str, Any]]
) -> dict[str, float]:
    """One accumulation window, normalised by its pairs (every process); TRL's metrics over
    the window's pairs (`min_reward` / `max_reward` over this process's rewards)."""
    device = strategy.device
    pairs = sum(int(objective.count(batch)) for batch in window)
    total = strategy.reduce(torch.as_tensor(pairs, device=device), "sum").clamp(min=1)
    scale = strategy.num_processes / total.float()
    summed = torch.zeros((), device=device)
    chosen, rejected = [], []
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        sync = contextlib.nullcontext() if last else strategy.no_sync(model)
        with sync:
            with strategy.autocast():
                loss_sum, rewards = objective.compute(model, batch)
            strategy.backward(loss_sum * scale)
        summed += loss_sum.detach().float()
        chosen.append(rewards["chosen"])
        rejected.append(rewards["rejected"])
    r_chosen, r_rejected = torch.cat(chosen), torch.cat(rejected)
    sums = torch.stack(
        [
            summed,
            (r_chosen > r_rejected).float().sum(),
            (r_chosen - r_rejected).sum(),
            (r_chosen + r_rejected).sum() / 2,
        ]
    )
    loss, accuracy, margin, mean_reward = (strategy.reduce(sums, "sum") / total).tolist()
    every = torch.cat([r_chosen, r_rejected])
    return {
        "loss": loss,
        "accuracy": accuracy,
        "margin": margin,
        "mean_reward": mean_reward,
        "min_reward": float(every.min()),
        "max_reward": float(every.max()),
    }


class TokenClassification:
    """Cross-entropy of per-token logits against the labels (no shift); unit: a labelled token
    (a step's label, not a next-token prediction: it has no perplexity)."""

    unit = "labelled token"

    def count(self, batch: dict[str, Any]) -> torch.Tensor:
        """The labelled tokens of a micro-batch."""
        return (batch["labels"] != IGNORE_INDEX).sum()

    def __call__(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The cross-entropy summed over the labelled tokens."""
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            use_cache=False,
        ).logits
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            batch["labels"].reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )


def load_classifier(
    cfg: Any, tokenizer: Any, family: Any, purpose: str, load_kwargs: dict[str, Any], kind: str
) -> Any:
    """`AutoModelFor{SequenceClassification,TokenClassification}` (or `model_type`, one such
    class) `.from_pretrained(base_model)`:
    `num_labels` 1 (a reward) or 2 (a step is right or wrong), the tokenizer's pad token id in
    the config (the sequence classifier scores the last token before the padding). As the
    causal-LM loader: `overrides_of_model_config` / `_kwargs`, the plugins' `load_kwargs`, the
    embeddings grown to the tokenizer, the family's `prepare_model`."""
    import transformers
    from transformers import AutoConfig

    loader = getattr(transformers, cfg.model_type or f"AutoModelFor{kind}Classification", None)
    if loader is None or not hasattr(loader, "from_pretrained"):
        raise WeaveError(f"model_type: '{cfg.model_type}' is not a transformers model class")
    model_kwargs = dict(load_kwargs or {})
    config = model_kwargs.pop("config", None)
    where = cfg.base_model_config or cfg.base_model
    if config is None:
        try:
            config = AutoConfig.from_pretrained(
                where, revision=cfg.revision_of_model, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise WeaveError(f"cannot read the model config of '{where}': {exc}") from None
    override_model_config(config, getattr(cfg, "overrides_of_model_config", None))
    config.num_labels = cfg.num_labels or (1 if kind == "Sequence" else 2)
    if tokenizer.pad_token_id is None:
        raise WeaveError(
            "a reward model needs a pad token (it finds each row's last token by it): "
            "set special_tokens: {pad_token: ...}"
        )
    config.pad_token_id = tokenizer.pad_token_id
    kwargs = {
        "dtype": getattr(torch, resolve_precision(cfg).weight_dtype),
        "revision": cfg.revision_of_model,
        **(getattr(cfg, "overrides_of_model_kwargs", None) or {}),
        **model_kwargs,
    }
    try:
        model = loader.from_pretrained(
            cfg.base_model, config=config, trust_remote_code=cfg.trust_remote_code, **kwargs
        )
    except (OSError, ValueError, TypeError) as exc:
        raise WeaveError(
            f"cannot load base_model '{cfg.base_model}' as {loader.__name__}: {exc}"
        ) from None
    fit_embeddings(model, tokenizer, cfg)
    if purpose == "train":
        model.config.use_cache = False
    if family is not None and family.prepare_model is not None:
        family.prepare_model(model, cfg)
    return model
