"""`rl: dpo | ipo`: DPO against a reference model (Axolotl's keys, TRL's formulas).

- `rl: dpo`: the loss types of `dpo_loss_type` (TRL's names, summed, weighted by
  `dpo_loss_weights`), `dpo_label_smoothing` for the robust loss, `dpo_use_weighting` (WPO);
  temperature `rl_beta`.
- `rl: ipo`: DPO with the loss type `ipo`.

The reference is the base with the adapter disabled when `adapter:` is set (no second copy),
else a frozen copy of the loaded model placed by the strategy (`prepare_frozen`). The data are
the preference `type:`s of `rl.preference_data`. The step logs TRL's metrics
(`rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`,
`logps/chosen`, `logps/rejected`).

`precompute_ref_log_probs: true` computes the reference's log-probabilities of every pair once,
before the first step, keeps them as columns beside the tokenized dataset's cache (a second run
on the same cache reads them back), and keeps no reference model while training (`_precompute`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field, model_validator

PLUGIN_KIND = "method"

METHODS = ("dpo", "ipo")
"""The `rl:` values this plugin trains."""

LossType = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "bco_pair",
    "nca_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "sigmoid_norm",
    "sft",
]


class DPOSettings(PluginConfig):
    """DPO's keys (Axolotl's names)."""

    dpo_loss_type: list[LossType] | None = Field(
        None, description="DPO loss types (TRL's names), summed; default [sigmoid]."
    )
    dpo_loss_weights: list[float] | None = Field(
        None, description="Weight of each dpo_loss_type (default 1 each)."
    )
    dpo_label_smoothing: float | None = Field(
        None, ge=0, lt=0.5, description="Label noise of the robust DPO loss (0 to 0.5)."
    )
    dpo_use_weighting: bool | None = Field(
        None, description="WPO: weight each pair's loss by its sequences' probabilities."
    )
    precompute_ref_log_probs: bool | None = Field(
        None,
        description="DPO/IPO: compute the reference log-probs once before training and cache "
        "them with the dataset; no reference model while training.",
    )

    @model_validator(mode="after")
    def _dpo_keys(self) -> DPOSettings:
        rl = getattr(self, "rl", None)
        if rl is None:
            return self
        types = self.dpo_loss_type
        if rl == "ipo" and types is not None and list(types) != ["ipo"]:
            raise ValueError("dpo_loss_type: rl: ipo is DPO with the loss type ipo only")
        if types is not None and rl not in METHODS:
            raise ValueError(f"dpo_loss_type applies to rl: dpo, not rl: {rl}")
        if self.dpo_loss_weights is not None:
            count = len(types) if types else 1
            if len(self.dpo_loss_weights) != count:
                raise ValueError(
                    f"dpo_loss_weights: {len(self.dpo_loss_weights)} weight(s) for {count} "
                    "dpo_loss_type value(s): give one weight per loss type"
                )
        if self.dpo_use_weighting and rl not in METHODS:
            raise ValueError(f"dpo_use_weighting applies to rl: dpo, not rl: {rl}")
        if self.precompute_ref_log_probs and rl not in METHODS:
            raise ValueError(
                f"precompute_ref_log_probs applies to rl: dpo and ipo, not rl: {rl} "
                "(orpo and simpo have no reference; kto and grpo compute theirs while training)"
            )
        return self


@hookimpl(tryfirst=True)  # before the Axolotl compatibility plugin drops rpo_alpha
def adapt_config_data(data: dict[str, Any], known_keys: frozenset[str]) -> list[str] | None:
    """Axolotl's (and TRL's) old `rpo_alpha: a` under `rl: dpo` is what TRL replaced it with:
    the `sft` loss (the chosen answers' NLL) added to the DPO losses with weight `a`."""
    alpha = data.get("rpo_alpha")
    if data.get("rl") != "dpo" or alpha is None or "rpo_alpha" in known_keys:
        return None
    types = list(data.get("dpo_loss_type") or ["sigmoid"])
    if "sft" in types:
        return None  # the NLL has a weight already: rpo_alpha is dropped, with a warning
    weights = list(data.get("dpo_loss_weights") or [1.0] * len(types))
    data["dpo_loss_type"], data["dpo_loss_weights"] = [*types, "sft"], [*weights, alpha]
    del data["rpo_alpha"]
    return [
        f"rpo_alpha: {alpha} is read as TRL's replacement for it: dpo_loss_type "
        f"{data['dpo_loss_type']} with dpo_loss_weights {data['dpo_loss_weights']}"
    ]


@hookimpl
def register_rl_methods(register: Callable[[str], None]) -> None:
    """`rl: dpo | ipo`."""
    for name in METHODS:
        register(name)


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `dpo_*` keys."""
    return DPOSettings


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `precompute_ref_log_probs` under `rl: dpo | ipo`: the run's reference log-probs,
    computed (or read from their cache) before training."""
    if getattr(cfg, "rl", None) in METHODS and getattr(cfg, "precompute_ref_log_probs", None):
        from axolotl_weave_plugins.rl._precompute import ReferencePrecompute

        register(ReferencePrecompute(), "precompute_ref_log_probs")


@hookimpl
def build_loss(cfg: Any, model: Any) -> Any:
    """DPO's objective (its unit: a pair) when `rl:` is dpo or ipo."""
    if getattr(cfg, "rl", None) not in METHODS:
        return None
    from axolotl_weave_plugins.rl._objective import PreferenceObjective

    return PreferenceObjective(cfg, model)


@hookimpl
def training_step(
    cfg: Any, strategy: Any, model: Any, objective: Any, window: list[dict[str, Any]]
) -> dict[str, float] | None:
    """Policy and reference forward passes over the window's pairs; TRL's metrics."""
    if getattr(cfg, "rl", None) not in METHODS:
        return None
    from axolotl_weave_plugins.rl._objective import checked_preference_step

    return checked_preference_step(cfg.rl, strategy, model, objective, window)
