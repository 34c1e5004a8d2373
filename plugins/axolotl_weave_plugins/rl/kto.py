"""`rl: kto`: KTO on unpaired rows against a reference model (Axolotl's keys, TRL's formulas).

TRL's `KTOTrainer` loss: desirable rows weighted by `kto_desirable_weight`, undesirable ones by
`kto_undesirable_weight`, temperature `rl_beta`, and TRL's KL estimate from mismatched
prompt/completion pairs (completions rotated by one within the micro-batch, so
`micro_batch_size` must be at least 2). The reference is as for DPO (the adapter disabled, or a
frozen copy). The data are Axolotl's KTO `type:`s of `rl.preference_data`, which share their
names with the preference ones and build unpaired rows under `rl: kto`. It logs `kl`,
`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `logps/chosen`, `logps/rejected`
(means over the desirable or undesirable rows of the step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import PluginConfig, PluginError, hookimpl
from pydantic import Field, model_validator

from axolotl_weave_plugins.rl._formats import preference_formats
from axolotl_weave_plugins.rl._kto_formats import KTO_TYPES

PLUGIN_KIND = "method"

METHODS = ("kto",)
"""The `rl:` values this plugin trains."""

PAIRS_ONLY = frozenset(fmt.name for fmt in preference_formats()) - KTO_TYPES
"""The preference `type:` names that hold pairs only (no KTO rows)."""


class KTOSettings(PluginConfig):
    """KTO's keys (Axolotl's names)."""

    kto_desirable_weight: float = Field(
        1.0, gt=0, description="KTO: weight of the desirable (label true) rows' losses."
    )
    kto_undesirable_weight: float = Field(
        1.0, gt=0, description="KTO: weight of the undesirable (label false) rows' losses."
    )

    @model_validator(mode="after")
    def _kto_keys(self) -> KTOSettings:
        rl = getattr(self, "rl", None)
        if rl is None:
            return self
        if rl != "kto":
            for key in ("kto_desirable_weight", "kto_undesirable_weight"):
                if key in self.model_fields_set:
                    raise ValueError(f"{key} applies to rl: kto, not rl: {rl}")
            return self
        if (getattr(self, "micro_batch_size", 2) or 2) < 2:
            raise ValueError(
                "micro_batch_size: rl: kto needs at least 2 rows per micro-batch: its KL "
                "estimate pairs each prompt with another row's completion"
            )
        for entry in getattr(self, "datasets", None) or []:
            kind = getattr(entry, "type", None)
            if isinstance(kind, str) and kind in PAIRS_ONLY:
                raise ValueError(
                    f"datasets: type: {kind} holds preference pairs, not KTO rows; with "
                    f"rl: kto use one of {', '.join(sorted(KTO_TYPES))}"
                )
        return self


@hookimpl
def register_rl_methods(register: Callable[[str], None]) -> None:
    """`rl: kto`."""
    for name in METHODS:
        register(name)


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `kto_*` keys."""
    return KTOSettings


@hookimpl
def build_loss(cfg: Any, model: Any) -> Any:
    """KTO's objective (its unit: a row) when `rl: kto`."""
    if getattr(cfg, "rl", None) not in METHODS:
        return None
    from axolotl_weave_plugins.rl._kto import KTOObjective

    return KTOObjective(cfg, model)


@hookimpl
def training_step(
    cfg: Any, strategy: Any, model: Any, objective: Any, window: list[dict[str, Any]]
) -> dict[str, float] | None:
    """Policy and reference forward passes over the window's rows and KL pairs; TRL's metrics."""
    if getattr(cfg, "rl", None) not in METHODS:
        return None
    from axolotl_weave_plugins.rl._kto import KTOObjective, kto_step

    if not isinstance(objective, KTOObjective):
        raise PluginError(
            f"rl: {cfg.rl}: another plugin replaced the preference objective "
            f"({type(objective).__name__}); remove the loss/kernel option that wraps it"
        )
    return kto_step(strategy, model, objective, window)
