"""Command-line overrides: `--key value`, `--key=value`, nested `--datasets.0.path x`."""

from __future__ import annotations

from typing import Any

import yaml

from axolotl_weave._errors import ConfigError


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """Turn `['--lr', '3', '--bf16=false', '--flag']` into `[('lr', 3), ('bf16', False), ...]`.

    Values are read as YAML scalars (numbers, booleans, null, [lists]); a bare `--flag` is true.
    Dashes in keys become underscores (`--micro-batch-size` is `micro_batch_size`).
    """
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument '{arg}': overrides look like --key value")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                raw = args[i + 1]
                i += 1
            else:
                raw = "true"
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((key.replace("-", "_"), value))
        i += 1
    return pairs


def bare_flags(args: list[str]) -> list[str]:
    """The keys given as a bare `--flag` (no value), which only a true/false key may be."""
    return [
        arg[2:].replace("-", "_")
        for i, arg in enumerate(args)
        if arg.startswith("--")
        and "=" not in arg
        and (i + 1 == len(args) or args[i + 1].startswith("--"))
    ]


def refuse_valueless_flags(cfg: Any, args: list[str]) -> None:
    """A bare `--key` is `true`: refused, naming the key, where the key is not true/false
    (`--learning_rate` alone would otherwise read as 1.0)."""
    for key in bare_flags(args):
        value: Any = cfg
        for part in key.split("."):
            if isinstance(value, list) and part.isdigit():
                value = value[int(part)]
            else:
                value = getattr(value, part, None)
        if not isinstance(value, bool):
            raise ConfigError(
                f"override --{key} has no value, and {key} is not a true/false key: "
                f"give one, as in --{key} VALUE or --{key}=VALUE"
            )


def apply_overrides(data: dict[str, Any], args: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with the overrides set; list items are addressed by index."""
    result = yaml.safe_load(yaml.safe_dump(data)) if data else {}
    for key, value in parse_overrides(args):
        target: Any = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            target = _child(target, part, ".".join(parts[: depth + 1]))
        _assign(target, parts[-1], value, key)
    return result


def _child(container: Any, part: str, where: str) -> Any:
    if isinstance(container, list):
        index = _index(container, part, where)
        return container[index]
    if isinstance(container, dict):
        return container.setdefault(part, {})
    raise ConfigError(f"override --{where}: '{part}' is inside a value that is not a mapping")


def _assign(container: Any, part: str, value: Any, key: str) -> None:
    if isinstance(container, list):
        container[_index(container, part, key)] = value
    elif isinstance(container, dict):
        container[part] = value
    else:
        raise ConfigError(f"override --{key}: the parent is not a mapping or list")


def _index(items: list[Any], part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(
            f"override --{where}: '{part}' is not an index of a list of {len(items)} item(s)"
        )
    return int(part)
