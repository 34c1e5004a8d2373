"""`true | auto | false` switches: one policy for a plugin's optional feature keys.

A switch is a config key (a kernel, a fused loss...) that is

- `true`: required. When it cannot apply, the run is refused with an error naming the key and
  what is missing: `MissingDependencyError` (with what to install) when this machine lacks
  something, `ConfigError` when the config or the model rules it out;
- `auto`: applied where it can; otherwise one logged line (``KEY: auto: not used, WHY``) and
  the run goes on without it;
- `false` (the default): off.

A plugin declares the key as ``key: Switch = Field(False, ...)``, reads it with `switch_value`
and asks `switch_applies` each time something could stop it (a missing package, an unsupported
model, the objective), so every plugin words its refusals and fallbacks the same way::

    value = switch_value(cfg, "my_kernel")
    if value and switch_applies("my_kernel", value, missing_here(), needs="pip install my-kernel"):
        ...  # apply it
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from axolotl_weave._errors import ConfigError, MissingDependencyError

log = logging.getLogger("axolotl_weave")

Switch = bool | Literal["auto"]
"""The type of a switch key's field: `True`, `False` or `"auto"`."""


def switch_value(cfg: Any, key: str) -> Switch:
    """The switch `key` of `cfg`: True, "auto", or False (unset, false, or anything else)."""
    value = getattr(cfg, key, False)
    return value if value is True or value == "auto" else False


def switch_applies(
    key: str, value: Switch, problem: str | None, *, needs: str | None = None
) -> bool:
    """Whether switch `key` (set to `value`) applies, given why it could not (`problem`, None
    when nothing stops it).

    A `false` switch never applies (False, nothing logged). Otherwise, without a problem: True.
    With one: for `auto`, False and one logged line ``KEY: auto: not used, PROBLEM``; for
    `true`, an error. Pass `needs` (what the feature needs, e.g. ``"the package x (pip install
    x) and a GPU"``) when `problem` is something this machine lacks: the error is then a
    `MissingDependencyError` naming it, otherwise a `ConfigError`; both say how to set the key
    to `auto` or `false`.
    """
    if not value:
        return False
    if problem is None:
        return True
    if value == "auto":
        log.info("%s: auto: not used, %s", key, problem)
        return False
    if needs is not None:
        raise MissingDependencyError(
            f"{key}: needs {needs}; missing here: {problem}. Set {key}: auto to use it only "
            "where it can run, or false"
        )
    raise ConfigError(
        f"{key}: {problem}; set {key}: false (or auto to skip it where it cannot apply)"
    )
