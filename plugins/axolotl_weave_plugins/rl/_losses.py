"""The preference losses, per pair, on sequence log-probabilities: TRL's formulas.

DPO's loss types follow `trl.trainer.dpo_trainer.DPOTrainer._compute_loss` (TRL 1.16, reverse
KL); ORPO follows `trl.experimental.orpo.ORPOTrainer.odds_ratio_loss`; SimPO follows
`trl.experimental.cpo.CPOTrainer.cpo_loss` with `loss_type="simpo"`. Every function returns a
tensor of one loss per pair; the caller sums them (and divides by the pairs of the window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLogps:
    """What the losses read, each of shape (pairs,) unless said.

    `*_logps` are summed over the response tokens; `*_tokens` count them; `sft_nll` is the mean
    negative log-likelihood of the chosen responses' tokens over the micro-batch (a scalar, as
    TRL's `sft` loss type takes it); `*_weights` are WPO's per-sequence weights or None.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    sft_nll: torch.Tensor | None = None
    chosen_weights: torch.Tensor | None = None
    rejected_weights: torch.Tensor | None = None


def dpo_losses(
    p: PairLogps,
    loss_types: list[str],
    loss_weights: list[float],
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO's per-pair loss: the weighted sum of every `loss_types` entry (TRL's formulas)."""
    chosen_logratios = p.chosen - p.ref_chosen
    rejected_logratios = p.rejected - p.ref_rejected
    delta = chosen_logratios - rejected_logratios
    chosen_len = p.chosen_tokens.clamp(min=1.0)
    rejected_len = p.rejected_tokens.clamp(min=1.0)
    total = torch.zeros_like(delta)
    for loss_type, weight in zip(loss_types, loss_weights, strict=True):
        if loss_type == "sigmoid":
            loss = -F.logsigmoid(beta * delta)
        elif loss_type == "hinge":
            loss = torch.relu(1 - beta * delta)
        elif loss_type == "ipo":
            ipo_delta = chosen_logratios / chosen_len - rejected_logratios / rejected_len
            loss = (ipo_delta - 1 / (2 * beta)) ** 2
        elif loss_type == "robust":
            clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
            flipped = -label_smoothing * F.logsigmoid(-beta * delta)
            loss = (clean - flipped) / (1 - 2 * label_smoothing)
        elif loss_type == "bco_pair":
            loss = -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-beta * rejected_logratios)
        elif loss_type == "nca_pair":
            chosen_rewards = beta * chosen_logratios
            rejected_rewards = beta * rejected_logratios
            loss = (
                -F.logsigmoid(chosen_rewards)
                - 0.5 * F.logsigmoid(-chosen_rewards)
                - 0.5 * F.logsigmoid(-rejected_rewards)
            )
        elif loss_type == "sppo_hard":
            loss = (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
        elif loss_type == "apo_zero":
            loss = (1 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(
                beta * rejected_logratios
            )
        elif loss_type == "apo_down":
            loss = torch.sigmoid(beta * chosen_logratios) + (
                1 - torch.sigmoid(beta * (chosen_logratios - rejected_logratios))
            )
        elif loss_type == "sigmoid_norm":
            norm_delta = chosen_logratios / chosen_len - rejected_logratios / rejected_len
            loss = -F.logsigmoid(beta * norm_delta)
        elif loss_type == "sft":
            if p.sft_nll is None:
                raise ValueError("dpo_loss_type sft needs the chosen responses' NLL")
            loss = p.sft_nll.expand_as(delta)
        else:
            raise ValueError(f"dpo_loss_type: unknown loss type {loss_type!r}")
        if p.chosen_weights is not None and p.rejected_weights is not None:
            loss = loss * p.chosen_weights * p.rejected_weights
        total = total + loss * weight
    return total


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (TRL's)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_odds_ratio(
    chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO's per-pair `beta * log sigmoid(log odds ratio)` (to be subtracted from the NLL), the
    log-sigmoid ratio and the log odds, on length-averaged log-probabilities."""
    chosen = chosen_mean_logps.float()
    rejected = rejected_mean_logps.float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    ratio = F.logsigmoid(log_odds)
    return beta * ratio, ratio, log_odds


def simpo_losses(
    chosen_mean_logps: torch.Tensor,
    rejected_mean_logps: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """SimPO's per-pair loss on length-averaged log-probabilities, margin `gamma` (TRL's CPO)."""
    logits = chosen_mean_logps - rejected_mean_logps - gamma / beta
    return (
        -F.logsigmoid(beta * logits) * (1 - label_smoothing)
        - F.logsigmoid(-beta * logits) * label_smoothing
    )


def kto_losses(
    logratios: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO's per-row loss (TRL's `KTOTrainer`, loss type `kto`): a desirable row
    `w_d * (1 - sigmoid(beta * (logratio - kl)))`, an undesirable one
    `w_u * (1 - sigmoid(beta * (kl - logratio)))`; `logratios` are the policy's minus the
    reference's summed completion log-probabilities, `kl` the (detached, clamped) KL estimate."""
    chosen = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    rejected = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    return torch.where(desirable, chosen, rejected)
