"""The preference objective: forward passes over chosen and rejected, the reference, the loss.

Its unit is a pair: `count(batch)` is the pairs of a micro-batch and `__call__` returns the loss
summed over them, so the step divides by the pairs of the whole accumulation window. Terms that
TRL averages over the tokens of a micro-batch (the chosen NLL of ORPO and SimPO's `cpo_alpha`,
the `sft` loss type) count as that mean for each pair of the micro-batch: with one micro-batch a
step is exactly TRL's loss, with several of equal size it is TRL's gradient accumulation.

A micro-batch is either padded (the `chosen_*` and `rejected_*` columns, concatenated into one
forward pass) or packed by `sample_packing` (`input_ids`, `position_ids` and `sequence_ids`:
each sequence's log-probabilities are summed from the packed forward pass by its id). With
`precompute_ref_log_probs`, the reference's summed log-probabilities come with the batch
(`ref_chosen_logps`, `ref_rejected_logps`) and no reference model is kept.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from axolotl_weave import IGNORE_INDEX, PluginError

from axolotl_weave_plugins.rl._losses import (
    PairLogps,
    dpo_losses,
    orpo_odds_ratio,
    simpo_losses,
)

REFERENCE_METHODS = ("dpo", "ipo")
"""The methods that compare with a reference model."""

REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
"""The per-pair columns of precomputed reference log-probabilities (`precompute_ref_log_probs`)."""


def pad_to(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
    """Right-pad the last dimension of `tensor` to `length` with `value`."""
    missing = length - tensor.shape[1]
    if missing <= 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, missing), value=value)


def concatenated(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels): the chosen rows, then the rejected ones, one batch."""
    length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    parts = []
    for column, value in (("input_ids", 0), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        parts.append(
            torch.cat(
                [
                    pad_to(batch[f"chosen_{column}"], length, value),
                    pad_to(batch[f"rejected_{column}"], length, value),
                ]
            )
        )
    return parts[0], parts[1], parts[2]


class Forward:
    """The per-token log-probabilities of one forward pass over the concatenated pairs."""

    def __init__(
        self,
        logits: torch.Tensor,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        logits = logits[:, :-1].float()
        labels = labels[:, 1:]
        targets = input_ids[:, 1:]
        self.response = labels != IGNORE_INDEX  # the trained (response) tokens
        self.attended = mask[:, 1:].bool()  # every real token (ORPO's NLL counts the prompt)
        targets = torch.where(self.response, labels, targets)
        self.logits = logits
        self.token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(
            -1
        )
        self.pairs = input_ids.shape[0] // 2

    def sums(self) -> torch.Tensor:
        """Each sequence's summed response log-probability."""
        return (self.token_logps * self.response).sum(-1)

    def tokens(self) -> torch.Tensor:
        """Each sequence's response tokens."""
        return self.response.sum(-1).float()

    def means(self) -> torch.Tensor:
        """Each sequence's mean response log-probability."""
        return self.sums() / self.tokens().clamp(min=1.0)

    def chosen_nll(self, mask: torch.Tensor) -> torch.Tensor:
        """The mean negative log-likelihood of the chosen rows' tokens under `mask`."""
        chosen = mask[: self.pairs]
        return -(self.token_logps[: self.pairs] * chosen).sum() / chosen.sum().clamp(min=1)

    def wpo_weights(self) -> torch.Tensor:
        """WPO's per-sequence weight: exp of the mean aligned log-probability (no gradient)."""
        with torch.no_grad():
            log_sum_sq = torch.logsumexp(2 * torch.log_softmax(self.logits, -1), -1)
            aligned = (self.token_logps - log_sum_sq) * self.response
            return torch.exp(aligned.sum(-1) / self.tokens().clamp(min=1.0))


class PackedForward(Forward):
    """The per-token log-probabilities of one forward pass over packed pairs (`sequence_ids`
    numbers the chosen sequence of pair k as k and its rejected one as pairs + k, -1 padding);
    every per-sequence quantity is summed by sequence id, so it equals the unpadded `Forward`'s."""

    def __init__(
        self,
        logits: torch.Tensor,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor,
        sequence_ids: torch.Tensor,
        pairs: int,
    ) -> None:
        logits = logits[:, :-1].float()
        labels = labels[:, 1:]
        sequence = sequence_ids[:, 1:]
        # a sequence's first token is predicted by nothing of its own sequence
        sequence = torch.where(position_ids[:, 1:] == 0, -1, sequence)
        self.response = (labels != IGNORE_INDEX) & (sequence >= 0)
        self.attended = sequence >= 0
        targets = torch.where(self.response, labels, input_ids[:, 1:])
        self.logits = logits
        self.token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(
            -1
        )
        self.pairs = pairs
        self.sequence = sequence
        self.chosen = self.attended & (sequence < pairs)

    def per_sequence(self, values: torch.Tensor) -> torch.Tensor:
        """`values` (one per token) summed over each of the 2 x pairs sequences."""
        out = values.new_zeros(2 * self.pairs)
        index = self.sequence.clamp(min=0).flatten()
        return out.index_add(0, index, (values * self.attended).flatten())

    def sums(self) -> torch.Tensor:
        """Each sequence's summed response log-probability."""
        return self.per_sequence(self.token_logps * self.response)

    def tokens(self) -> torch.Tensor:
        """Each sequence's response tokens."""
        return self.per_sequence(self.response.float())

    def chosen_nll(self, mask: torch.Tensor) -> torch.Tensor:
        """The mean negative log-likelihood of the chosen sequences' tokens under `mask`."""
        chosen = mask & self.chosen
        return -(self.token_logps * chosen).sum() / chosen.sum().clamp(min=1)

    def wpo_weights(self) -> torch.Tensor:
        """WPO's per-sequence weight: exp of the mean aligned log-probability (no gradient)."""
        with torch.no_grad():
            log_sum_sq = torch.logsumexp(2 * torch.log_softmax(self.logits, -1), -1)
            aligned = self.per_sequence((self.token_logps - log_sum_sq) * self.response)
            return torch.exp(aligned / self.tokens().clamp(min=1.0))


def is_packed(batch: dict[str, Any]) -> bool:
    """Whether a micro-batch holds packed pairs (`sample_packing`) rather than padded ones."""
    return "sequence_ids" in batch


class AgainstReference:
    """What the paired (DPO-style) and KTO objectives share: a reference model (the policy
    with its adapter disabled, no copy; or a frozen copy of a full fine-tune, taken before
    training), placed by the strategy at the first step, and a loss summed over the rows of
    the micro-batch (counted by the column `ROWS`)."""

    ROWS = "chosen_input_ids"
    unit = "pair"

    def __init__(self, model: Any, adapter: Any, needs_reference: bool) -> None:
        self.uses_adapter = hasattr(model, "disable_adapter") and bool(adapter)
        self.built_on_start = needs_reference and not self.uses_adapter
        self.reference: Any = None
        self.strategy: Any = None
        self.placed = False
        self.unwrap = lambda m: getattr(m, "module", m)
        if needs_reference and not self.uses_adapter:
            self.reference = copy.deepcopy(model).requires_grad_(False).eval()

    def place(self, strategy: Any) -> None:
        """Once: put the frozen reference where the strategy says (inference only)."""
        if self.placed:
            return
        self.placed = True
        self.strategy = strategy
        self.unwrap = strategy.unwrap
        if self.reference is not None:
            self.reference = strategy.prepare_frozen(self.reference)

    def count(self, batch: dict[str, Any]) -> torch.Tensor:
        """The rows (pairs for DPO-style methods) of a micro-batch."""
        if "num_pairs" in batch:  # packed pairs
            return torch.as_tensor(batch["num_pairs"])
        ids = batch[self.ROWS]
        return torch.as_tensor(ids.shape[0], device=ids.device)

    def __call__(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The loss summed over the micro-batch's rows."""
        return self.compute(model, batch)[0]

    def compute(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The summed loss and the metrics of a micro-batch (each objective's own)."""
        raise NotImplementedError

    def reference_model(self, model: Any) -> tuple[Any, Any]:
        """(the model to run, the context to run it in) for the reference's passes."""
        if self.uses_adapter:
            return model, self.unwrap(model).disable_adapter()
        reference = self.reference
        if not self.placed:  # evaluated before any step: beside the model
            reference = reference.to(next(self.unwrap(model).parameters()).device)
        return reference, contextlib.nullcontext()


class PreferenceObjective(AgainstReference):
    """DPO (and its loss types), IPO, ORPO or SimPO, as `cfg.rl` says."""

    def __init__(self, cfg: Any, model: Any) -> None:
        def key(name: str, default: Any = None) -> Any:
            """A method's key: each method's plugin adds its own (absent when it is blocked)."""
            value = getattr(cfg, name, None)
            return default if value is None else value

        self.method = cfg.rl
        self.beta = key("rl_beta", 0.1)
        self.loss_types = list(key("dpo_loss_type") or ["sigmoid"])
        if self.method == "ipo":
            self.loss_types = ["ipo"]
        self.loss_weights = list(key("dpo_loss_weights") or [1.0] * len(self.loss_types))
        self.label_smoothing = key("dpo_label_smoothing", 0.0)
        self.use_weighting = bool(key("dpo_use_weighting"))
        self.orpo_alpha = key("orpo_alpha", 0.1)
        self.simpo_gamma = key("simpo_gamma", 0.5)
        self.cpo_alpha = key("cpo_alpha", 1.0)
        self.precomputed = bool(key("precompute_ref_log_probs")) and (
            self.method in REFERENCE_METHODS
        )
        needs_copy = self.method in REFERENCE_METHODS and not self.precomputed
        super().__init__(model, cfg.adapter, needs_copy)
        # precomputed or not, the reference is the model training starts from
        self.built_on_start = self.method in REFERENCE_METHODS and not self.uses_adapter

    def forward(self, model: Any, batch: dict[str, Any]) -> Forward:
        """The policy's (or the reference's) log-probabilities over the micro-batch's pairs."""
        if is_packed(batch):
            logits = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits
            return PackedForward(
                logits,
                batch["input_ids"],
                batch["labels"],
                batch["position_ids"],
                batch["sequence_ids"],
                int(batch["num_pairs"]),
            )
        input_ids, mask, labels = concatenated(batch)
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        return Forward(logits, input_ids, mask, labels)

    def reference_logps(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The reference's summed response log-probabilities: the base with the adapter
        disabled (no copy), or the frozen copy of a full fine-tune; with
        `precompute_ref_log_probs`, the batch's columns of them (no reference runs)."""
        if self.precomputed:
            missing = [c for c in REFERENCE_COLUMNS if c not in batch]
            if missing:
                raise PluginError(
                    f"precompute_ref_log_probs: the micro-batch has no {missing[0]} column: the "
                    "reference log-probabilities were not computed before training (a batch "
                    "plugin that drops per-pair columns?)"
                )
            return torch.cat([batch[c] for c in REFERENCE_COLUMNS]).float()
        reference, context = self.reference_model(model)
        with torch.no_grad(), context:
            return self.forward(reference, batch).sums()

    def initial_reference_logps(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The reference's summed response log-probabilities computed from the model before it
        trains (`precompute_ref_log_probs`): the base with the adapter disabled, or the model
        itself for a full fine-tune (so no copy is made)."""
        context = self.unwrap(model).disable_adapter() if self.uses_adapter else None
        with torch.no_grad(), context or contextlib.nullcontext():
            return self.forward(model, batch).sums()

    def compute(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """(loss summed over the pairs, metrics summed over the pairs)."""
        policy = self.forward(model, batch)
        n = policy.pairs
        if self.method in REFERENCE_METHODS:
            logps, tokens = policy.sums(), policy.tokens()
            ref = self.reference_logps(model, batch)
            weights = policy.wpo_weights() if self.use_weighting else None
            pairs = PairLogps(
                chosen=logps[:n],
                rejected=logps[n:],
                ref_chosen=ref[:n],
                ref_rejected=ref[n:],
                chosen_tokens=tokens[:n],
                rejected_tokens=tokens[n:],
                sft_nll=policy.chosen_nll(policy.response) if "sft" in self.loss_types else None,
                chosen_weights=None if weights is None else weights[:n],
                rejected_weights=None if weights is None else weights[n:],
            )
            losses = dpo_losses(
                pairs, self.loss_types, self.loss_weights, self.beta, self.label_smoothing
            )
            chosen_rewards = self.beta * (pairs.chosen - pairs.ref_chosen).detach()
            rejected_rewards = self.beta * (pairs.rejected - pairs.ref_rejected).detach()
            loss = losses.sum()
            extra: dict[str, Any] = {}
        elif self.method == "orpo":
            means = policy.means()
            nll = policy.chosen_nll(policy.attended)
            odds, ratio, log_odds = orpo_odds_ratio(means[:n], means[n:], self.orpo_alpha)
            loss = nll * n - odds.sum()
            logps = means
            chosen_rewards = self.orpo_alpha * means[:n].detach()
            rejected_rewards = self.orpo_alpha * means[n:].detach()
            extra = {
                "nll_loss": nll.detach() * n,
                "log_odds_ratio": ratio.detach().sum(),
                "log_odds_chosen": log_odds.detach().sum(),
            }
        else:  # simpo
            means = policy.means()
            losses = simpo_losses(means[:n], means[n:], self.beta, self.simpo_gamma)
            nll = policy.chosen_nll(policy.response) if self.cpo_alpha else losses.new_zeros(())
            loss = losses.sum() + self.cpo_alpha * nll * n
            logps = means
            chosen_rewards = self.beta * means[:n].detach()
            rejected_rewards = self.beta * means[n:].detach()
            extra = {"nll_loss": nll.detach() * n}
        if self.method in REFERENCE_METHODS:
            logps = policy.sums()
        metrics = {
            "rewards/chosen": chosen_rewards.sum(),
            "rewards/rejected": rejected_rewards.sum(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().sum(),
            "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
            "logps/chosen": logps[:n].detach().sum(),
            "logps/rejected": logps[n:].detach().sum(),
            **extra,
        }
        return loss, metrics

    def measures(
        self, model: Any, batch: dict[str, Any], strategy: Any
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The summed loss and metrics of a held-out micro-batch (every metric is a sum over
        its pairs)."""
        return self.compute(model, batch)


def preference_step(
    strategy: Any, model: Any, objective: PreferenceObjective, window: list[dict[str, Any]]
) -> dict[str, float]:
    """One accumulation window: each micro-batch's pair-summed loss divided by the pairs of the
    whole window (every process), as the supervised step divides by tokens; metrics are means
    over the window's pairs."""
    objective.place(strategy)
    device = strategy.device
    pairs = sum(int(objective.count(batch)) for batch in window)
    total_pairs = strategy.reduce(torch.as_tensor(pairs, device=device), "sum").clamp(min=1)
    scale = strategy.num_processes / total_pairs.float()
    summed = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        sync = contextlib.nullcontext() if last else strategy.no_sync(model)
        with sync:
            with strategy.autocast():
                loss_sum, metrics = objective.compute(model, batch)
            strategy.backward(loss_sum * scale)
        summed += loss_sum.detach().float()
        for name, value in metrics.items():
            sums[name] = sums.get(name, torch.zeros((), device=device)) + value.float()
    names = sorted(sums)
    stacked = torch.stack([summed, *(sums[name] for name in names)])
    reduced = strategy.reduce(stacked, "sum") / total_pairs
    out = {"loss": float(reduced[0])}
    out.update({name: float(value) for name, value in zip(names, reduced[1:], strict=True)})
    return out


def checked_preference_step(
    rl: str, strategy: Any, model: Any, objective: Any, window: list[dict[str, Any]]
) -> dict[str, float]:
    """`preference_step`, once sure the objective is still ours (a kernel plugin could have
    replaced it)."""
    if not isinstance(objective, PreferenceObjective):
        raise PluginError(
            f"rl: {rl}: another plugin replaced the preference objective "
            f"({type(objective).__name__}); remove the loss/kernel option that wraps it"
        )
    return preference_step(strategy, model, objective, window)
