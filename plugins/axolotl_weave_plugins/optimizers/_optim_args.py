"""`optim_args:` as Axolotl takes it, shared by the optimizer plugins of this folder: a mapping,
or Hugging Face's string `key=value,key=value`; each optimizer names the keys it reads and how to
convert them (the string form gives strings).

Not a plugin (no entry point): a helper of the plugins in this folder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Converters = dict[str, Callable[[Any], Any]]
"""An optimizer's `optim_args` keys -> the function converting a given value."""


def keys_set(cfg: Any) -> set[str]:
    """The config keys the user set (pydantic's record; every attribute of a stand-in without
    one): an optimizer built as Axolotl builds it takes a key only when it is set."""
    return set(cfg.model_fields_set) if hasattr(cfg, "model_fields_set") else set(vars(cfg))


def given_optim_args(cfg: Any) -> dict[str, Any]:
    """The config's `optim_args` as a mapping (empty when unset); ValueError when malformed."""
    raw = getattr(cfg, "optim_args", None)
    if not raw:
        return {}
    if isinstance(raw, dict):
        return dict(raw)
    parsed: dict[str, Any] = {}
    for item in str(raw).replace(" ", "").split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"optim_args: {item!r} is not key=value (give key=value,key=value)")
        parsed[key] = value
    return parsed


def optimizer_args(name: str, cfg: Any, converters: Converters) -> dict[str, Any]:
    """The `optim_args` optimizer `name` reads, converted; ValueError naming a key it does not
    read (Hugging Face's Trainer would silently ignore it) or a value that does not convert."""
    given = given_optim_args(cfg)
    unknown = sorted(set(given) - set(converters))
    if unknown:
        takes = ", ".join(sorted(converters)) if converters else "no optim_args"
        raise ValueError(
            f"optim_args: optimizer {name} does not read {', '.join(unknown)} (it takes {takes})"
        )
    converted = {}
    for key, value in given.items():
        try:
            converted[key] = converters[key](value)
        except (TypeError, ValueError):
            raise ValueError(
                f"optim_args: {key}={value!r} for optimizer {name} is not a valid "
                f"{getattr(converters[key], '__name__', 'value')}"
            ) from None
    return converted


def boolean(value: Any) -> bool:
    """A YAML boolean, or the strings true/false, yes/no, 1/0 (the string form of optim_args)."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(value)
