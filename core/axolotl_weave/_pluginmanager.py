"""Building the plugin manager: entry points, config-named plugins, blocking, tracing, listing.

A manager is made per run by `make_plugin_manager`; nothing is registered at import time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import pluggy

from axolotl_weave import hookspecs
from axolotl_weave._errors import PluginError

log = logging.getLogger("axolotl_weave")

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
DISTRIBUTION = "axolotl-weave"
DISABLE_AUTOLOAD_ENV = "WEAVE_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "WEAVE_BLOCK_PLUGINS"


def make_plugin_manager(
    *, autoload: bool | None = None, block: list[str] | tuple[str, ...] = (), trace: bool = False
) -> pluggy.PluginManager:
    """A new manager with the hook specs and every entry-point plugin not blocked, checked.

    `autoload=None` reads `WEAVE_DISABLE_PLUGIN_AUTOLOAD`; `block` adds to the comma-separated
    `WEAVE_BLOCK_PLUGINS`; `trace` prints every hook call and its result to stderr.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    blocked = [*block, *filter(None, os.environ.get(BLOCK_ENV, "").split(","))]
    for name in blocked:
        pm.set_blocked(name.strip())
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if autoload:
        load_entry_point_plugins(pm)
    if trace:
        pm.trace.root.setwriter(
            lambda text: sys.stderr.write(
                "".join(f"[hook] {line}" for line in text.splitlines(keepends=True))
            )
        )
        pm.enable_tracing()
    return pm


def load_entry_point_plugins(pm: pluggy.PluginManager) -> None:
    """Register every plugin of the entry-point group; a plugin that fails is named in the error."""
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:  # find which entry point broke, to name it
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
                continue
            try:
                ep.load()
            except Exception as inner:
                dist = f"{ep.dist.name}=={ep.dist.version}" if ep.dist else "?"
                raise PluginError(
                    f"plugin '{ep.name}' ({ep.value}, from {dist}) failed to load: "
                    f"{type(inner).__name__}: {inner}"
                ) from inner
        raise PluginError(f"loading plugins failed: {type(exc).__name__}: {exc}") from exc
    check_plugins(pm)


def check_plugins(pm: pluggy.PluginManager) -> None:
    """Refuse hook implementations without a spec (a misspelt hook name), naming the plugin."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{pm.get_name(exc.plugin)}' is invalid: {exc}") from None


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register one plugin object, turning pluggy's validation errors into a `PluginError`."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{name}' is invalid: {exc}") from None
    except ValueError as exc:
        raise PluginError(f"plugin '{name}' could not be registered: {exc}") from None
    check_plugins(pm)


def axolotl_aliases(pm: pluggy.PluginManager) -> dict[str, str]:
    """Axolotl plugin paths (`AXOLOTL_ALIASES` on a plugin) mapped to our plugin names."""
    aliases: dict[str, str] = {}
    for name, plugin in pm.list_name_plugin():
        for alias in getattr(plugin, "AXOLOTL_ALIASES", ()) if plugin is not None else ():
            aliases[alias] = name
    return aliases


def register_config_plugins(pm: pluggy.PluginManager, paths: list[str]) -> None:
    """Register the plugins a config lists under `plugins:` (module paths or module.Class)."""
    aliases = axolotl_aliases(pm)
    for path in paths:
        if pm.has_plugin(path) or path in dict(pm.list_name_plugin()):
            continue
        if path in aliases:
            log.info("plugin '%s' is provided by the installed plugin '%s'", path, aliases[path])
            continue
        if path.split(".")[0] == "axolotl":
            log.warning(
                "plugin '%s' is an Axolotl plugin with no Axolotl Weave counterpart installed: "
                "it is IGNORED",
                path,
            )
            continue
        register_plugin(pm, import_plugin(path), name=path)


def import_plugin(path: str) -> object:
    """Import `package.module`, or `package.module.Attr` (a class is instantiated)."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        module_path, _, attr = path.rpartition(".")
        if not module_path or not (exc.name and path.startswith(exc.name)):
            raise PluginError(f"plugin '{path}' could not be imported: {exc}") from exc
    except Exception as exc:
        raise PluginError(f"plugin '{path}' failed to import: {type(exc).__name__}: {exc}") from exc
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:
        raise PluginError(f"plugin '{path}' could not be imported: {exc}") from exc
    if not hasattr(module, attr):
        raise PluginError(f"plugin '{path}': module '{module_path}' has no attribute '{attr}'")
    obj = getattr(module, attr)
    return obj() if inspect.isclass(obj) else obj


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
