"""`unfrozen_parameters:` (Axolotl's key): train only the parameters whose names match one of the
regexes, every other one frozen (a partial full fine-tune)."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from typing import Any

from axolotl_weave import ConfigError, ModelFamily, PluginConfig, hookimpl
from pydantic import Field

PLUGIN_KIND = "method"


class UnfrozenSettings(PluginConfig):
    """The regexes of the parameters to train."""

    unfrozen_parameters: list[str] = Field(
        default_factory=list,
        description="Regexes of parameter names to train; all others frozen (full fine-tune).",
    )


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`unfrozen_parameters`."""
    return UnfrozenSettings


def apply_unfrozen_parameters(model: Any, patterns: list[str]) -> int:
    """Freeze every parameter whose name matches none of the regexes; return how many train."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"unfrozen_parameters: {pattern!r} is not a regex: {exc}") from None
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(any(c.search(name) for c in compiled))
        count += int(param.requires_grad)
    if count == 0:
        raise ConfigError(
            f"unfrozen_parameters: {patterns} match no parameter (names look like "
            f"{next(n for n, _ in model.named_parameters())!r})"
        )
    return count


class Unfreezer:
    """The run-scoped plugin (registered only when `unfrozen_parameters` is set): for training,
    freeze what the regexes do not name, on the model as every other wrapper left it (this
    wrapper is the outermost)."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns

    @hookimpl(wrapper=True, tryfirst=True)
    def load_model(
        self, cfg: Any, tokenizer: Any, family: ModelFamily | None, purpose: str
    ) -> Generator[None, Any, Any]:
        """Freeze every parameter the patterns do not name (training only)."""
        model = yield
        if purpose == "train":
            apply_unfrozen_parameters(model, self.patterns)
        return model


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `unfrozen_parameters` set, register the `Unfreezer` for this run."""
    if cfg.unfrozen_parameters:
        register(Unfreezer(list(cfg.unfrozen_parameters)), "unfrozen_parameters_run")
