"""`rl: orpo`: ORPO, no reference model (Axolotl's keys, TRL's `ORPOTrainer`).

The loss is the chosen responses' NLL (prompt tokens included, as TRL's) plus `orpo_alpha`
times the odds-ratio loss on length-averaged log-probabilities. The data are the preference
`type:`s of `rl.preference_data` (`chat_template.argilla` is ORPO's own). The step logs TRL's
metrics, `nll_loss` and `log_odds_ratio`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field

PLUGIN_KIND = "method"

METHODS = ("orpo",)
"""The `rl:` values this plugin trains."""


class ORPOSettings(PluginConfig):
    """ORPO's key (Axolotl's name)."""

    orpo_alpha: float | None = Field(
        None, ge=0, description="ORPO: weight of the odds-ratio loss (default 0.1)."
    )


@hookimpl
def register_rl_methods(register: Callable[[str], None]) -> None:
    """`rl: orpo`."""
    for name in METHODS:
        register(name)


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`orpo_alpha`."""
    return ORPOSettings


@hookimpl
def build_loss(cfg: Any, model: Any) -> Any:
    """ORPO's objective (its unit: a pair) when `rl: orpo`."""
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
