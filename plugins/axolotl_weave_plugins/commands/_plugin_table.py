"""The rows of `weave plugin list`: every registered or blocked plugin, where it comes from
and the hooks it implements (read from the plugin manager)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pluggy

DISTRIBUTION = "axolotl-weave"
"""The distribution whose plugins count as built in."""


@dataclass(frozen=True)
class PluginInfo:
    """One row of `weave plugin list`."""

    name: str
    kind: str
    distribution: str
    builtin: bool
    blocked: bool
    hooks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON form for `weave plugin list --json`."""
        return {
            "name": self.name,
            "kind": self.kind,
            "distribution": self.distribution,
            "builtin": self.builtin,
            "blocked": self.blocked,
            "hooks": list(self.hooks),
        }


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every registered or blocked plugin with its kind, distribution and implemented hooks."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            rows.append(PluginInfo(name, "?", "?", False, True, ()))
            continue
        dist = dists.get(id(plugin))
        if dist is not None:
            dist_text = f"{dist.project_name}=={dist.version}"
            builtin = dist.project_name == DISTRIBUTION
        else:
            dist_text, builtin = "(local, from config or code)", False
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        kind = getattr(plugin, "PLUGIN_KIND", "other")
        rows.append(PluginInfo(name, kind, dist_text, builtin, False, hooks))
    return sorted(rows, key=lambda r: (not r.builtin, r.kind, r.name))
