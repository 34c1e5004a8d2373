"""`lr_groups:` (Axolotl's key): parameters of named modules train at their own learning rate.

Each item names a group, the substrings of parameter names it takes (`modules`) and its peak
`lr`; a parameter goes to the first item one of whose substrings its name contains, the rest
stay in the `default` group at `learning_rate`. The weight-decay split is kept inside each
group. It answers `adjust_param_groups` first (`tryfirst`), so that other plugins (LoRA+) split
the groups it made. An item that takes no trainable parameter is refused.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl
from pydantic import BaseModel, ConfigDict, Field

PLUGIN_KIND = "optimizer"


class LrGroup(BaseModel):
    """One `lr_groups:` item: parameters whose name contains one of `modules` train at `lr`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A name for the group (shown in logs).")
    modules: list[str] = Field(min_length=1, description="Substrings of parameter names.")
    lr: float = Field(gt=0, description="The group's peak learning rate.")


class LrGroupSettings(PluginConfig):
    """The `lr_groups` key."""

    lr_groups: list[LrGroup] = Field(
        default_factory=list, description="Own learning rates for parameters of named modules."
    )


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`lr_groups`."""
    return LrGroupSettings


@hookimpl(tryfirst=True)
def adjust_param_groups(cfg: Any, model: Any, groups: list[dict[str, Any]]) -> None:
    """Split every group by the `lr_groups` item that takes each parameter."""
    items = getattr(cfg, "lr_groups", None) or []
    if not items:
        return
    names = {id(param): name for name, param in model.named_parameters()}
    rates = {g.name: g.lr for g in items}
    split: list[dict[str, Any]] = []
    for group in groups:
        owners: dict[str, list[Any]] = {}
        for param in group["params"]:
            name = names.get(id(param), "")
            owner = next((g.name for g in items if any(m in name for m in g.modules)), None)
            owners.setdefault(owner or group["group"], []).append(param)
        for owner, params in owners.items():
            lr = rates.get(owner, group["lr"])
            split.append({**group, "params": params, "lr": lr, "group": owner})
    unused = [g.name for g in items if not any(s["group"] == g.name for s in split)]
    if unused:
        raise ConfigError(
            f"lr_groups: {', '.join(unused)} match(es) no trainable parameter; check `modules`"
        )
    groups[:] = split
