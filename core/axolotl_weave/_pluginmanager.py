"""Building the plugin manager: entry points, config-named plugins, blocking, tracing.

A manager is made per run by `make_plugin_manager`; nothing is registered at import time.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import logging
import os
import sys
from typing import Any

import pluggy

from axolotl_weave import hookspecs
from axolotl_weave._errors import PluginError

log = logging.getLogger("axolotl_weave")

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
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
        refuse_unknown_blocks(pm, blocked)
    if trace:
        pm.add_hookcall_monitoring(trace_call, trace_result)
        setattr(pm, TRACING, True)  # for the registries' per-plugin calls (`Hooks._collect`)
    return pm


TRACING = "weave_tracing"
"""The attribute that marks a manager made with `trace=True`."""


def summary(value: Any, width: int = 60) -> str:
    """A short, one-line description of a hook argument or result: a model, tokenizer or
    config by its class (and size), anything else by its repr, cut to `width` characters."""
    if hasattr(value, "named_parameters"):
        count = sum(p.numel() for p in value.parameters())
        return f"<{type(value).__name__}: {count:,} parameters>"
    if hasattr(value, "model_dump") or hasattr(value, "vocab_size"):
        return f"<{type(value).__name__}>"
    text = " ".join(repr(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def trace_call(hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
    """`--trace-hooks`: one line per hook call, its plugins and short argument summaries."""
    names = ", ".join(impl.plugin_name for impl in impls)
    args = ", ".join(f"{key}={summary(value)}" for key, value in kwargs.items())
    sys.stderr.write(f"[hook] {hook_name}({args}) -> [{names}]\n")


def trace_result(outcome: Any, hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
    """`--trace-hooks`: the hook's result (or exception), summarised."""
    exc = outcome.exception
    result = f"raised {type(exc).__name__}" if exc else summary(outcome.get_result())
    sys.stderr.write(f"[hook] {hook_name} = {result}\n")


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


def refuse_unknown_blocks(pm: pluggy.PluginManager, blocked: list[str]) -> None:
    """`-p no:NAME` must name an installed plugin (or, with a dot, a config's plugin path):
    a misspelt name would otherwise block nothing, silently."""
    installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for name in (n.strip() for n in blocked):
        if name and "." not in name and name not in installed:
            close = difflib.get_close_matches(name, sorted(installed), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PluginError(
                f"-p no:{name}: no installed plugin is named '{name}'{hint} "
                "(`weave plugin list` shows the names)"
            )


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
