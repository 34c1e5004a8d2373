"""`rl: dpo | ipo | orpo | simpo`: preference training on chosen/rejected pairs (Axolotl's keys).

- `rl: dpo`: DPO against a reference model, the loss types of `dpo_loss_type` (TRL's formulas,
  weighted by `dpo_loss_weights`); `rl: ipo` is DPO with the loss type `ipo`. The reference is
  the base with the adapter disabled when `adapter:` is set (no second copy), else a frozen copy
  of the loaded model placed by the strategy (`prepare_frozen`).
- `rl: orpo`: no reference; the chosen NLL plus `orpo_alpha` times the odds-ratio loss (TRL's
  ORPOTrainer).
- `rl: simpo`: no reference; SimPO on length-averaged log-probabilities with margin
  `simpo_gamma`, plus `cpo_alpha` times the chosen NLL (TRL's CPOTrainer, loss_type simpo;
  `cpo_alpha: 0` is pure SimPO).

The datasets are Axolotl's preference `type:`s (`chatml.*`, `llama3.*`, `chat_template.*`,
`user_defined.default`): rows of chosen and rejected columns, never packed. The training step
logs TRL's metrics (`rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
`rewards/margins`, `logps/chosen`, `logps/rejected`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from axolotl_weave import PluginConfig, PluginError, hookimpl
from pydantic import Field, model_validator

from axolotl_weave_plugins.rl._formats import preference_formats

PLUGIN_KIND = "method"

log = logging.getLogger("axolotl_weave")

METHODS = ("dpo", "ipo", "orpo", "simpo")
"""The `rl:` values this plugin trains."""

PREFERENCE_TYPES = frozenset(fmt.name for fmt in preference_formats())
"""The preference `type:` names (they need `rl:`)."""

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


class PreferenceSettings(PluginConfig):
    """The preference methods' keys (Axolotl's names)."""

    rl: Literal["dpo", "ipo", "orpo", "simpo"] | None = Field(
        None, description="Preference training method on chosen/rejected pairs."
    )
    rl_beta: float = Field(
        0.1, gt=0, description="DPO/IPO/SimPO temperature beta (strength of the preference)."
    )
    dpo_beta: float | None = Field(None, gt=0, description="Deprecated: use rl_beta.")
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
    orpo_alpha: float | None = Field(
        None, ge=0, description="ORPO: weight of the odds-ratio loss (default 0.1)."
    )
    simpo_gamma: float | None = Field(
        None, ge=0, description="SimPO: target reward margin gamma (default 0.5)."
    )
    cpo_alpha: float | None = Field(
        None, ge=0, description="SimPO/CPO: weight of the chosen NLL (default 1; 0: pure SimPO)."
    )

    @model_validator(mode="after")
    def _preference_keys(self) -> PreferenceSettings:
        if self.dpo_beta is not None:
            log.warning("config key 'dpo_beta' is deprecated: use rl_beta")
            if "rl_beta" not in self.model_fields_set:
                self.rl_beta = self.dpo_beta
        if self.rl is None:
            for entry in getattr(self, "datasets", None) or []:
                kind = getattr(entry, "type", None)
                if isinstance(kind, str) and kind in PREFERENCE_TYPES:
                    raise ValueError(
                        f"datasets: type: {kind} holds preference pairs: set rl: (one of "
                        f"{', '.join(METHODS)}) to train on them"
                    )
            return self
        if getattr(self, "sample_packing", False):
            raise ValueError(
                f"sample_packing: true cannot be used with rl: {self.rl}: preference pairs "
                "(chosen and rejected rows) are never packed; set sample_packing: false"
            )
        types = self.dpo_loss_type
        if self.rl == "ipo" and types is not None and list(types) != ["ipo"]:
            raise ValueError("dpo_loss_type: rl: ipo is DPO with the loss type ipo only")
        if types is not None and self.rl not in ("dpo", "ipo"):
            raise ValueError(f"dpo_loss_type applies to rl: dpo, not rl: {self.rl}")
        if self.dpo_loss_weights is not None:
            count = len(types) if types else 1
            if len(self.dpo_loss_weights) != count:
                raise ValueError(
                    f"dpo_loss_weights: {len(self.dpo_loss_weights)} weight(s) for {count} "
                    "dpo_loss_type value(s): give one weight per loss type"
                )
        if self.dpo_use_weighting and self.rl not in ("dpo", "ipo"):
            raise ValueError(f"dpo_use_weighting applies to rl: dpo, not rl: {self.rl}")
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The preference keys."""
    return PreferenceSettings


@hookimpl
def register_dataset_formats(register: Callable[[Any], None]) -> None:
    """Axolotl's preference `type:`s."""
    for fmt in preference_formats():
        register(fmt)


@hookimpl
def build_loss(cfg: Any, model: Any) -> Any:
    """The preference objective when `rl:` names one of ours (its unit: a pair)."""
    if getattr(cfg, "rl", None) not in METHODS:
        return None
    from axolotl_weave_plugins.rl._objective import PreferenceObjective

    return PreferenceObjective(cfg, model)


@hookimpl
def training_step(
    cfg: Any, strategy: Any, model: Any, objective: Any, window: list[dict[str, Any]]
) -> dict[str, float] | None:
    """Policy (and reference) forward passes over the window's pairs; TRL's metrics."""
    if getattr(cfg, "rl", None) not in METHODS:
        return None
    from axolotl_weave_plugins.rl._objective import PreferenceObjective, preference_step

    if not isinstance(objective, PreferenceObjective):
        raise PluginError(
            f"rl: {cfg.rl}: another plugin replaced the preference objective "
            f"({type(objective).__name__}); remove the loss/kernel option that wraps it"
        )
    return preference_step(strategy, model, objective, window)
