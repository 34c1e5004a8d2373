"""`rl: simpo`: SimPO, no reference model (Axolotl's keys, TRL's `CPOTrainer`, loss simpo).

SimPO on length-averaged log-probabilities with margin `simpo_gamma` and temperature `rl_beta`,
plus `cpo_alpha` times the chosen NLL (`cpo_alpha: 0` is pure SimPO). The data are the
preference `type:`s of `rl.preference_data`. The step logs TRL's metrics and `nll_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field

PLUGIN_KIND = "method"

METHODS = ("simpo",)
"""The `rl:` values this plugin trains."""


class SimPOSettings(PluginConfig):
    """SimPO's keys (Axolotl's names)."""

    simpo_gamma: float | None = Field(
        None, ge=0, description="SimPO: target reward margin gamma (default 0.5)."
    )
    cpo_alpha: float | None = Field(
        None, ge=0, description="SimPO/CPO: weight of the chosen NLL (default 1; 0: pure SimPO)."
    )


@hookimpl
def register_rl_methods(register: Callable[[str], None]) -> None:
    """`rl: simpo`."""
    for name in METHODS:
        register(name)


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`simpo_gamma`, `cpo_alpha`."""
    return SimPOSettings


@hookimpl
def build_loss(cfg: Any, model: Any) -> Any:
    """SimPO's objective (its unit: a pair) when `rl: simpo`."""
    if getattr(cfg, "rl", None) not in METHODS:
        return None
    from axolotl_weave_plugins.rl._objective import PreferenceObjective

    return PreferenceObjective(cfg, model)


@hookimpl
def training_step(
    cfg: Any, strategy: Any, model: Any, objective: Any, window: list[dict[str, Any]]
) -> dict[str, float] | None:
    """Policy forward passes over the window's pairs; TRL's metrics."""
    if getattr(cfg, "rl", None) not in METHODS:
        return None
    from axolotl_weave_plugins.rl._objective import checked_preference_step

    return checked_preference_step(cfg.rl, strategy, model, objective, window)
