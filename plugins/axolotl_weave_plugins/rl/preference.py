"""`rl: dpo | ipo | orpo | simpo | kto`: preference training (Axolotl's keys).

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

- `rl: kto`: KTO on unpaired rows (a prompt, a completion, a boolean `label`) against a reference
  as for DPO, TRL's `KTOTrainer` loss: desirable rows weighted by `kto_desirable_weight`,
  undesirable ones by `kto_undesirable_weight`, temperature `rl_beta`, and TRL's KL estimate
  from mismatched prompt/completion pairs (completions rotated by one within the micro-batch,
  so `micro_batch_size` must be at least 2). The datasets are Axolotl's KTO `type:`s, which share
  their names with the preference ones (`chatml.argilla`, `chatml.intel`, `chatml.ultra`,
  `llama3.*`, `user_defined.default` with `field_label`...): `rl: kto` makes them build unpaired
  rows. It logs `kl`, `rewards/chosen`, `rewards/rejected`, `rewards/margins`, `logps/chosen`,
  `logps/rejected` (means over the desirable or undesirable rows of the step).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from axolotl_weave import PluginConfig, PluginError, hookimpl
from pydantic import Field, model_validator

from axolotl_weave_plugins.rl._formats import preference_formats
from axolotl_weave_plugins.rl._kto_formats import kto_texts, use_kto_columns

PLUGIN_KIND = "method"

log = logging.getLogger("axolotl_weave")

METHODS = ("dpo", "ipo", "orpo", "simpo", "kto")
"""The `rl:` values this plugin trains."""

PREFERENCE_TYPES = frozenset(fmt.name for fmt in preference_formats())
"""The preference `type:` names (they need `rl:`)."""

KTO_TYPES = frozenset(
    [f"{family}.{name}" for family in ("chatml", "llama3") for name in kto_texts(family)]
    + ["user_defined.default"]
)
"""The `type:` names that build KTO's unpaired rows under `rl: kto`."""

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

    rl_beta: float = Field(
        0.1, gt=0, description="DPO/IPO/SimPO/KTO temperature beta (strength of the preference)."
    )
    kto_desirable_weight: float = Field(
        1.0, gt=0, description="KTO: weight of the desirable (label true) rows' losses."
    )
    kto_undesirable_weight: float = Field(
        1.0, gt=0, description="KTO: weight of the undesirable (label false) rows' losses."
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
        rl = getattr(self, "rl", None)
        if rl not in METHODS:
            for entry in getattr(self, "datasets", None) or []:
                kind = getattr(entry, "type", None)
                if isinstance(kind, str) and kind in PREFERENCE_TYPES:
                    raise ValueError(
                        f"datasets: type: {kind} holds preference pairs: set rl: (one of "
                        f"{', '.join(METHODS)}) to train on them"
                    )
            return self
        for key in ("kto_desirable_weight", "kto_undesirable_weight"):
            if key in self.model_fields_set and rl != "kto":
                raise ValueError(f"{key} applies to rl: kto, not rl: {rl}")
        if rl == "kto":
            if (getattr(self, "micro_batch_size", 2) or 2) < 2:
                raise ValueError(
                    "micro_batch_size: rl: kto needs at least 2 rows per micro-batch: its KL "
                    "estimate pairs each prompt with another row's completion"
                )
            for entry in getattr(self, "datasets", None) or []:
                kind = getattr(entry, "type", None)
                if isinstance(kind, str) and kind in PREFERENCE_TYPES and kind not in KTO_TYPES:
                    raise ValueError(
                        f"datasets: type: {kind} holds preference pairs, not KTO rows; with "
                        f"rl: kto use one of {', '.join(sorted(KTO_TYPES))}"
                    )
        if getattr(self, "sample_packing", False):
            raise ValueError(
                f"sample_packing: true cannot be used with rl: {rl}: preference pairs "
                "(chosen and rejected rows) are never packed; set sample_packing: false"
            )
        types = self.dpo_loss_type
        if rl == "ipo" and types is not None and list(types) != ["ipo"]:
            raise ValueError("dpo_loss_type: rl: ipo is DPO with the loss type ipo only")
        if types is not None and rl not in ("dpo", "ipo"):
            raise ValueError(f"dpo_loss_type applies to rl: dpo, not rl: {rl}")
        if self.dpo_loss_weights is not None:
            count = len(types) if types else 1
            if len(self.dpo_loss_weights) != count:
                raise ValueError(
                    f"dpo_loss_weights: {len(self.dpo_loss_weights)} weight(s) for {count} "
                    "dpo_loss_type value(s): give one weight per loss type"
                )
        if self.dpo_use_weighting and rl not in ("dpo", "ipo"):
            raise ValueError(f"dpo_use_weighting applies to rl: dpo, not rl: {rl}")
        return self


@hookimpl
def register_rl_methods(register: Callable[[str], None]) -> None:
    """`rl: dpo | ipo | orpo | simpo | kto`."""
    for name in METHODS:
        register(name)


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
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """The type names KTO shares with the pairs declare KTO's columns under `rl: kto` (the
    pairs' otherwise), before the data is built or read from its cache."""
    use_kto_columns(getattr(cfg, "rl", None) == "kto")


@hookimpl
def on_train_end(cfg: Any, state: Any, error: BaseException | None) -> None:
    """The shared type names declare the pairs' columns again once a run is over."""
    use_kto_columns(False)


@hookimpl
def build_loss(cfg: Any, model: Any) -> Any:
    """The preference objective when `rl:` names one of ours (its unit: a pair, KTO's a row)."""
    rl = getattr(cfg, "rl", None)
    if rl not in METHODS:
        return None
    if rl == "kto":
        from axolotl_weave_plugins.rl._kto import KTOObjective

        return KTOObjective(cfg, model)
    from axolotl_weave_plugins.rl._objective import PreferenceObjective

    return PreferenceObjective(cfg, model)


@hookimpl
def training_step(
    cfg: Any, strategy: Any, model: Any, objective: Any, window: list[dict[str, Any]]
) -> dict[str, float] | None:
    """Policy (and reference) forward passes over the window's pairs; TRL's metrics."""
    if getattr(cfg, "rl", None) not in METHODS:
        return None
    from axolotl_weave_plugins.rl._kto import KTOObjective, kto_step
    from axolotl_weave_plugins.rl._objective import PreferenceObjective, preference_step

    if cfg.rl == "kto" and isinstance(objective, KTOObjective):
        return kto_step(strategy, model, objective, window)
    if cfg.rl == "kto" or not isinstance(objective, PreferenceObjective):
        raise PluginError(
            f"rl: {cfg.rl}: another plugin replaced the preference objective "
            f"({type(objective).__name__}); remove the loss/kernel option that wraps it"
        )
    return preference_step(strategy, model, objective, window)
