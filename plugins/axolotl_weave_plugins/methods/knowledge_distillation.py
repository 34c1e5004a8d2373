"""Knowledge distillation from a teacher's top-k log-probabilities (Axolotl's `kd_trainer`).

Offline distillation: the teacher's top-k log-probabilities of every token were computed
beforehand and are read with the rows (`type: axolotl.integrations.kd.chat_template`, see
`_kd_format`). With `kd_trainer: true` the objective, summed over the target tokens (those with a
label, as the supervised loss counts them) and divided by their number by the core, is

    kd_alpha * kd_temperature**2 * KL + kd_ce_alpha * CE

- CE: the usual next-token cross-entropy;
- KL: at each position t whose next token t + 1 has a teacher entry and a label, a divergence
  between the teacher's top-k distribution p (renormalised over the k, at `kd_temperature`, by
  the format) and the student's q, its `log_softmax(logits_t / kd_temperature)` gathered at the
  teacher's k ids (renormalised over those k too with `kd_normalize_topk: true`), as
  `kd_beta` says: 0 (the default) the forward KL `sum_k p_k (log p_k - log q_k)`, 1 the
  reverse `sum_k q_k (log q_k - log p_k)`, between them the generalised Jensen-Shannon
  divergence `beta KL(p || m) + (1 - beta) KL(q || m)`, `m = (1 - beta) q + beta p`.

Those are Axolotl's definitions (its `topk_logprob` loss and fused kernel), the temperature
squared included. One difference: the student's prediction at t is compared with the teacher's
entry of token t + 1, the shift of the labels, as Axolotl's first KD trainer did and its data
step documents ("we shift for causal models in the trainer"); its current fused kernel compares
it with entry t. On held-out rows the two terms are also reported unweighted (`eval_kl`,
`eval_ce`). A mixture-of-experts router's auxiliary loss is not added.

The teacher's columns hold k values per token: the core fits them with the tokens and its
collator pads them with zeros (the mask too), so the padded batches carry them. Refused with
`kd_trainer`: `rl`, reward models, `use_eaft`, `diffusion`, sample packing, datasets of another
type, a streamed `pretraining_dataset`; and Axolotl's keys not implemented here
(`kd_top_k_before_softmax`, `kd_zscore_base_temp`, the online teacher `kd_online_*`,
`kd_temperature_min`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from axolotl_weave import (
    IGNORE_INDEX,
    DatasetFormat,
    PluginConfig,
    hookimpl,
    next_token_targets,
)
from pydantic import Field, model_validator

from axolotl_weave_plugins.methods._kd_format import FORMAT_NAME, kd_format

if TYPE_CHECKING:
    import torch

PLUGIN_KIND = "method"
AXOLOTL_ALIASES = ("axolotl.integrations.kd.KDPlugin",)

OTHER_OBJECTIVES = ("rl", "reward_model", "process_reward_model", "use_eaft", "diffusion")
"""Keys whose objective conflicts with distillation's (refused together with `kd_trainer`)."""

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
"""The batch columns the student's forward takes (not the teacher's)."""

NOT_IMPLEMENTED = {
    "kd_top_k_before_softmax": "the top-k taken of the student's logits before the softmax",
    "kd_zscore_base_temp": "z-scored logits at a base temperature",
    "kd_online_server_base_url": "an online teacher server",
    "kd_online_topk": "an online teacher server",
    "kd_online_server": "an online teacher server",
    "kd_online_timeout": "an online teacher server",
    "kd_temperature_min": "temperature scheduling with an online teacher",
}
"""Axolotl's distillation keys not implemented here -> what they do (refused when set)."""


class KdSettings(PluginConfig):
    """Knowledge distillation (Axolotl's keys)."""

    kd_trainer: bool = Field(
        False, description="Distil from the teacher's top-k log-probabilities in the rows."
    )
    kd_alpha: float = Field(1.0, ge=0, description="Weight of the distillation (KL) term.")
    kd_ce_alpha: float = Field(0.0, ge=0, description="Weight of the cross-entropy term.")
    kd_temperature: float = Field(
        1.0,
        gt=0,
        description="Distillation temperature (teacher and student); the KL is scaled by its "
        "square.",
        json_schema_extra={"affects_data": True},  # the format renormalises the teacher at it
    )
    kd_normalize_topk: bool | None = Field(
        None, description="Renormalise the student's probabilities over the teacher's top-k."
    )
    kd_beta: float | None = Field(
        0.0,
        ge=0,
        le=1,
        description="The divergence: 0 forward KL, 1 reverse KL, between them Jensen-Shannon.",
    )
    kd_top_k_before_softmax: bool | None = Field(None, description="Not implemented (refused).")
    kd_zscore_base_temp: float | None = Field(None, description="Not implemented (refused).")
    kd_online_server_base_url: str | None = Field(None, description="Not implemented (refused).")
    kd_online_topk: int | None = Field(None, description="Not implemented (refused).")
    kd_online_server: str | None = Field(None, description="Not implemented (refused).")
    kd_online_timeout: int | None = Field(None, description="Not implemented (refused).")
    kd_temperature_min: float | None = Field(None, description="Not implemented (refused).")

    @model_validator(mode="after")
    def _distillation_is_consistent(self) -> KdSettings:
        for key, what in NOT_IMPLEMENTED.items():
            if getattr(self, key) not in (None, False):
                raise ValueError(f"{key}: {what} is not implemented here; remove the key")
        kinds = {
            getattr(entry, "type", None)
            for section in ("datasets", "test_datasets")
            for entry in getattr(self, section, None) or []
        }
        if not self.kd_trainer:
            if FORMAT_NAME in kinds:
                raise ValueError(f"datasets: type: {FORMAT_NAME} needs kd_trainer: true")
            return self
        self._refuse_combinations(kinds)
        return self

    def _refuse_combinations(self, kinds: set[str | None]) -> None:
        for key in OTHER_OBJECTIVES:
            value = getattr(self, key, None)
            if value:
                raise ValueError(
                    f"kd_trainer: true cannot be combined with {key}: distillation is the "
                    f"objective, which {key} replaces; remove one of them"
                )
        for key in ("sample_packing", "eval_sample_packing"):
            if getattr(self, key, None):
                raise ValueError(
                    f"{key}: true cannot be used with kd_trainer: true: rows carrying the "
                    f"teacher's log-probabilities are not packed; set {key}: false"
                )
        if getattr(self, "pretraining_dataset", None):
            raise ValueError(
                "kd_trainer: true reads its rows from datasets:, not pretraining_dataset"
            )
        others = sorted(str(kind) for kind in kinds if kind != FORMAT_NAME)
        if others:
            raise ValueError(
                f"kd_trainer: true trains on type: {FORMAT_NAME} rows only (the teacher's "
                f"log-probabilities); found type: {', '.join(others)}"
            )


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`kd_trainer`, `kd_alpha`, `kd_ce_alpha`, `kd_temperature`, `kd_normalize_topk` and the
    refused distillation keys of Axolotl."""
    return KdSettings


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """`axolotl.integrations.kd.chat_template`."""
    register(kd_format())


class TopKDistillation:
    """`kd_alpha * T**2 * KL + kd_ce_alpha * CE`, summed over the target tokens (see the
    module); its unit is one target token."""

    unit = "token"

    def __init__(
        self,
        kd_alpha: float,
        ce_alpha: float,
        temperature: float,
        normalize_topk: bool,
        beta: float = 0.0,
    ) -> None:
        self.kd_alpha, self.ce_alpha = kd_alpha, ce_alpha
        self.temperature, self.normalize_topk = temperature, normalize_topk
        self.beta = beta

    def count(self, batch: dict[str, Any]) -> Any:
        """Target tokens in the batch (labels shifted by one, masked ones excluded)."""
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        """The weighted sum of the summed KL and cross-entropy (float32)."""
        kl, ce = self.terms(model, batch, both=False)
        return self.combine(kl, ce)

    def measures(self, model: Any, batch: dict[str, Any], strategy: Any) -> tuple[Any, dict]:
        """The loss and, for held-out rows, its two terms unweighted (`kl` and `ce`, each
        summed over the target tokens: reported per target token)."""
        kl, ce = self.terms(model, batch, both=True)
        return self.combine(kl, ce), {"kl": kl, "ce": ce}

    def combine(self, kl: Any, ce: Any) -> Any:
        """`kd_alpha * T**2 * kl + kd_ce_alpha * ce`, a term whose weight is 0 left out."""
        loss = kl.new_zeros(())
        if self.ce_alpha:
            loss = loss + self.ce_alpha * ce
        if self.kd_alpha:
            loss = loss + self.kd_alpha * self.temperature**2 * kl
        return loss

    def terms(self, model: Any, batch: dict[str, Any], both: bool) -> tuple[Any, Any]:
        """(KL, CE), each summed over the target tokens, from one forward pass; a term whose
        weight is 0 is not computed (a zero) unless `both`."""
        import torch.nn.functional as F

        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        outputs = model(**inputs, use_cache=False)
        logits = outputs.logits.float()
        kl = ce = logits.new_zeros(())
        if self.ce_alpha or both:
            ce = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                next_token_targets(batch["labels"]).reshape(-1).to(logits.device),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        if self.kd_alpha or both:
            kl = self.top_k_kl(logits[:, :-1], batch)
        return kl, ce

    def top_k_kl(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The divergence (`kd_beta`'s) summed over the positions, the prediction at t against
        the teacher's entry of token t + 1."""
        import torch

        device = logits.device
        ids = batch["target_token_ids"][:, 1:].to(device)
        teacher = batch["target_logprobs"][:, 1:].to(device).float()
        mask = batch["target_mask"][:, 1:].to(device).bool()
        student = (logits / self.temperature).log_softmax(dim=-1).gather(-1, ids)
        if self.normalize_topk:
            kept = student.masked_fill(~mask, float("-inf"))
            total = kept.logsumexp(dim=-1, keepdim=True)
            student = student - torch.where(torch.isfinite(total), total, 0.0)
        teacher, student = teacher[mask], student[mask]
        if self.beta == 0:
            return (teacher.exp() * (teacher - student)).sum()
        if self.beta == 1:
            return (student.exp() * (student - teacher)).sum()
        mean = ((1 - self.beta) * student.exp() + self.beta * teacher.exp()).log()
        to_teacher = (teacher.exp() * (teacher - mean)).sum()
        to_student = (student.exp() * (student - mean)).sum()
        return self.beta * to_teacher + (1 - self.beta) * to_student


@hookimpl
def build_loss(cfg: Any) -> TopKDistillation | None:
    """The distillation objective when `kd_trainer` is on."""
    if not getattr(cfg, "kd_trainer", False):
        return None
    return TopKDistillation(
        cfg.kd_alpha,
        cfg.kd_ce_alpha,
        cfg.kd_temperature,
        bool(cfg.kd_normalize_topk),
        cfg.kd_beta or 0.0,
    )
