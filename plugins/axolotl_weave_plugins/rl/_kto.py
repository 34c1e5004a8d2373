"""KTO (`rl: kto`): the objective and the training step, as TRL's `KTOTrainer` computes them.

Its unit is a row (a prompt, a completion and a boolean label): `__call__` returns the weighted
KTO losses summed over a micro-batch's rows, and the step divides by the rows of the window,
which is TRL's `losses.nanmean()` for one micro-batch.

The KL estimate is TRL's: each row's prompt paired with another row's completion, the
completions rotated by one within the micro-batch -- (x1, yn), (x2, y1), ..., (xn, yn-1) --
then `kl = mean(policy_KL_logps - reference_KL_logps)`, detached, averaged over the processes
and clamped at 0. TRL rotates within each `per_device_train_batch_size` chunk of a sequentially
read dataset; here the mismatched sequences are built in the step from the collated micro-batch
(any sampler), which is the same sequences for the same micro-batch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from axolotl_weave import IGNORE_INDEX

from axolotl_weave_plugins.rl._losses import kto_losses
from axolotl_weave_plugins.rl._objective import AgainstReference, Forward, pad_to

METRIC_SUMS = (
    "rewards/chosen",
    "rewards/rejected",
    "logps/chosen",
    "logps/rejected",
    "count/chosen",
    "count/rejected",
    "kl",
)
"""What `KTOObjective.compute` returns per micro-batch (sums; `kl` the micro-batch's value)."""


def kl_sequences(
    batch: dict[str, Any], max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of the mismatched pairs: row i's prompt followed by
    row i-1's completion (row 0 takes the last row's), right-padded, cut at `max_length` as
    TRL's collator cuts them."""
    ids, mask = batch["completion_input_ids"], batch["completion_attention_mask"]
    labels = batch["completion_labels"]
    rows = []
    for i in range(ids.shape[0]):
        length = int(mask[i].sum())
        trained = (labels[i, :length] != IGNORE_INDEX).nonzero()
        cut = int(trained[0]) if len(trained) else length
        rows.append((ids[i, :cut], ids[i, cut:length]))
    pieces = []
    for i, (prompt, _) in enumerate(rows):
        completion = rows[i - 1][1]
        seq = torch.cat([prompt, completion])
        label = torch.cat([torch.full_like(prompt, IGNORE_INDEX), completion])
        if max_length is not None:
            seq, label = seq[:max_length], label[:max_length]
        pieces.append((seq, label))
    longest = max(len(seq) for seq, _ in pieces)
    kl_ids = torch.stack([pad_to(seq[None], longest, 0)[0] for seq, _ in pieces])
    kl_labels = torch.stack([pad_to(lab[None], longest, IGNORE_INDEX)[0] for _, lab in pieces])
    kl_mask = torch.stack([pad_to(torch.ones_like(seq)[None], longest, 0)[0] for seq, _ in pieces])
    return kl_ids, kl_mask, kl_labels


class KTOObjective(AgainstReference):
    """KTO against a reference model (the adapter disabled, or a frozen copy)."""

    ROWS = "completion_input_ids"
    unit = "row"

    def __init__(self, cfg: Any, model: Any) -> None:
        self.method = "kto"
        self.beta = cfg.rl_beta
        desirable = getattr(cfg, "kto_desirable_weight", None)
        undesirable = getattr(cfg, "kto_undesirable_weight", None)
        self.desirable_weight = 1.0 if desirable is None else desirable
        self.undesirable_weight = 1.0 if undesirable is None else undesirable
        self.max_length = getattr(cfg, "sequence_len", None)
        super().__init__(model, cfg.adapter, needs_reference=True)

    @staticmethod
    def forward(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Any:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return Forward(logits, ids, mask, labels)

    def reference_logps(
        self, model: Any, main: tuple[torch.Tensor, ...], kl: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's summed completion log-probabilities on the rows and on the KL
        pairs, in one forward pass."""
        length = max(main[0].shape[1], kl[0].shape[1])
        both = [
            torch.cat([pad_to(a, length, value), pad_to(b, length, value)])
            for a, b, value in zip(main, kl, (0, 0, IGNORE_INDEX), strict=True)
        ]
        reference, context = self.reference_model(model)
        with torch.no_grad(), context:
            sums = self.forward(reference, *both).sums()
        n = main[0].shape[0]
        return sums[:n], sums[n:]

    def compute(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """(loss summed over the rows, metrics summed over the rows; `kl` the micro-batch's)."""
        main = (
            batch["completion_input_ids"],
            batch["completion_attention_mask"],
            batch["completion_labels"],
        )
        kl_inputs = kl_sequences(batch, self.max_length)
        with torch.no_grad():  # TRL: the policy's KL log-probabilities carry no gradient
            policy_kl = self.forward(model, *kl_inputs).sums()
        logps = self.forward(model, *main).sums()
        ref_logps, ref_kl = self.reference_logps(model, main, kl_inputs)
        kl = (policy_kl - ref_kl).mean().detach()
        strategy = self.strategy
        if strategy is not None and strategy.num_processes > 1:
            kl = strategy.reduce(kl, "sum") / strategy.num_processes
        kl = kl.clamp(min=0)
        desirable = batch["label"].to(device=logps.device, dtype=torch.bool)
        logratios = logps - ref_logps
        losses = kto_losses(
            logratios, desirable, kl, self.beta, self.desirable_weight, self.undesirable_weight
        )
        rewards = self.beta * logratios.detach()
        chosen, rejected = desirable.float(), (~desirable).float()
        metrics = {
            "rewards/chosen": (rewards * chosen).sum(),
            "rewards/rejected": (rewards * rejected).sum(),
            "logps/chosen": (logps.detach() * chosen).sum(),
            "logps/rejected": (logps.detach() * rejected).sum(),
            "count/chosen": chosen.sum(),
            "count/rejected": rejected.sum(),
            "kl": kl,
        }
        return losses.sum(), metrics

    def measures(
        self, model: Any, batch: dict[str, Any], strategy: Any
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """A held-out micro-batch's summed loss and TRL's KTO metrics: the desirable rows'
        and the undesirable rows' mean reward and log-probability, each over its own rows
        (`(sum, count)`), and the KL estimate."""
        loss, sums = self.compute(model, batch)
        chosen, rejected = sums["count/chosen"], sums["count/rejected"]
        rows = self.count(batch)
        return loss, {
            "rewards/chosen": (sums["rewards/chosen"], chosen),
            "rewards/rejected": (sums["rewards/rejected"], rejected),
            "logps/chosen": (sums["logps/chosen"], chosen),
            "logps/rejected": (sums["logps/rejected"], rejected),
            "kl": (sums["kl"] * rows, rows),
        }

    @staticmethod
    def summarize(metrics: dict[str, float], units: int) -> dict[str, float]:
        """TRL's `rewards/margins`: the desirable rows' mean reward minus the others'."""
        if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
            margin = metrics["rewards/chosen"] - metrics["rewards/rejected"]
            metrics = {**metrics, "rewards/margins": margin}
        return metrics


def kto_step(
    strategy: Any, model: Any, objective: KTOObjective, window: list[dict[str, Any]]
) -> dict[str, float]:
    """One accumulation window: each micro-batch's row-summed loss divided by the rows of the
    whole window (every process). Metrics as TRL logs them, pooled over the window:
    `rewards/*` and `logps/*` are means over the desirable (chosen) or undesirable (rejected)
    rows (left out when there are none), `rewards/margins` their difference, `kl` the mean of
    the micro-batches' estimates."""
    objective.place(strategy)
    device = strategy.device
    rows = sum(int(objective.count(batch)) for batch in window)
    total_rows = strategy.reduce(torch.as_tensor(rows, device=device), "sum").clamp(min=1)
    scale = strategy.num_processes / total_rows.float()
    sums = torch.zeros(len(METRIC_SUMS) + 1, device=device)
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        sync = contextlib.nullcontext() if last else strategy.no_sync(model)
        with sync:
            with strategy.autocast():
                loss_sum, metrics = objective.compute(model, batch)
            strategy.backward(loss_sum * scale)
        values = [loss_sum.detach().float(), *(metrics[name].float() for name in METRIC_SUMS)]
        sums += torch.stack(values).to(device)
    reduced = strategy.reduce(sums, "sum")
    total = dict(zip(METRIC_SUMS, reduced[1:].tolist(), strict=True))
    out = {
        "loss": float(reduced[0] / total_rows),
        "kl": total["kl"] / (len(window) * strategy.num_processes),
    }
    for side in ("chosen", "rejected"):
        if total[f"count/{side}"] > 0:
            out[f"rewards/{side}"] = total[f"rewards/{side}"] / total[f"count/{side}"]
            out[f"logps/{side}"] = total[f"logps/{side}"] / total[f"count/{side}"]
    if "rewards/chosen" in out and "rewards/rejected" in out:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out
