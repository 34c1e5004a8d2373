"""Optimizers from small PyPI packages, by the names and with the settings Axolotl and Hugging
Face's Trainer give them.

- `came_pytorch` (Axolotl's name; `came-pytorch`'s `CAME`, confidence-guided Adafactor): betas
  `(adam_beta1, adam_beta2, adam_beta3)` and eps `(adam_epsilon, adam_epsilon2)`, each left
  unset taking Axolotl's default (0.9, 0.999, 0.9999; 1e-30, 1e-16): Axolotl passes only the
  keys a config sets.
- `optimi_adamw` (Axolotl's name; `torch-optimi`'s `AdamW`, `foreach` off as Axolotl sets it):
  betas `(adam_beta1, adam_beta2)` when the config sets both and eps `adam_epsilon` when it sets
  it, else optimi's defaults ((0.9, 0.99), 1e-6), as Axolotl builds it.
- `stable_adamw` (the Trainer's name; `torch-optimi`'s `StableAdamW`): the Adam keys, and
  `optim_args` `decouple_lr`, `max_lr`, `kahan_sum`, as the Trainer builds it.
- `grokadamw` (the Trainer's name; `grokadamw`'s `GrokAdamW`): `optim_args` `alpha_init` (0.98),
  `lamb` (2.0), `gamma` (0.1), `grokking_signal_decay_rate` (0.1), `gradient_clipping` (1.0); the
  Trainer gives it no Adam keys (betas (0.9, 0.999), eps 1e-8), and neither does this plugin.

Each gets `learning_rate`; the parameter groups carry their weight decay (`weight_decay` is
also the default of all but GrokAdamW, which the Trainer leaves at its own). Each needs its
package, an extra of this project (`pip install 'axolotl-weave[came]'`, `[optimi]`,
`[grokadamw]`): without it the config is refused at validation. `adam_beta3` and `adam_epsilon2`
apply to `came_pytorch` only; with another optimizer they are ignored with a warning, as Axolotl
ignores them.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl, require
from pydantic import Field, field_validator, model_validator

from axolotl_weave_plugins.optimizers._optim_args import (
    Converters,
    boolean,
    keys_set,
    optimizer_args,
)

PLUGIN_KIND = "optimizer"

log = logging.getLogger("axolotl_weave")

PACKAGES = {
    "came_pytorch": ("came_pytorch", "came"),
    "optimi_adamw": ("optimi", "optimi"),
    "stable_adamw": ("optimi", "optimi"),
    "grokadamw": ("grokadamw", "grokadamw"),
}
"""`optimizer:` name -> (the module it imports, the extra that installs it)."""

OPTIM_ARGS: dict[str, Converters] = {
    "came_pytorch": {},
    "optimi_adamw": {},
    "stable_adamw": {"decouple_lr": boolean, "max_lr": float, "kahan_sum": boolean},
    "grokadamw": {
        "alpha_init": float, "lamb": float, "gamma": float,
        "grokking_signal_decay_rate": float, "gradient_clipping": float,
    },
}  # fmt: skip
"""The `optim_args` each reads."""

GROKADAMW_DEFAULTS = {
    "alpha_init": 0.98,
    "lamb": 2.0,
    "gamma": 0.1,
    "grokking_signal_decay_rate": 0.1,
    "gradient_clipping": 1.0,
}
"""What the Trainer passes to GrokAdamW unless `optim_args` says otherwise."""

CAME_ONLY = ("adam_beta3", "adam_epsilon2")


class PypiOptimizerSettings(PluginConfig):
    """CAME's third beta and second epsilon; the checks of these optimizers."""

    adam_beta3: float | None = Field(
        None, ge=0, lt=1, description="optimizer: came_pytorch's third beta (default 0.9999)."
    )
    adam_epsilon2: float | None = Field(
        None, gt=0, description="optimizer: came_pytorch's second epsilon (default 1e-16)."
    )

    @field_validator("optimizer", check_fields=False)
    @classmethod
    def _package_installed(cls, value: Any) -> Any:
        if value in PACKAGES:
            module, extra = PACKAGES[value]
            if importlib.util.find_spec(module) is None:
                raise ValueError(
                    f"{value} needs the package '{module}', which is not installed: "
                    f"pip install 'axolotl-weave[{extra}]'"
                )
        return value

    @model_validator(mode="after")
    def _settings(self) -> PypiOptimizerSettings:
        name = getattr(self, "optimizer", None)
        if name in OPTIM_ARGS:
            optimizer_args(name, self, OPTIM_ARGS[name])
        if name != "came_pytorch":
            for key in CAME_ONLY:
                if getattr(self, key) is not None:
                    log.warning(
                        "config key '%s' applies to optimizer: came_pytorch only: it is IGNORED",
                        key,
                    )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`adam_beta3`, `adam_epsilon2`, and the checks of these optimizers."""
    return PypiOptimizerSettings


def settings(name: str, cfg: Any) -> dict[str, Any]:
    """The keyword arguments of optimizer `name` beside the parameter groups."""
    try:
        given = optimizer_args(name, cfg, OPTIM_ARGS[name])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    common = {"lr": cfg.learning_rate, "weight_decay": getattr(cfg, "weight_decay", 0.0)}
    chosen = keys_set(cfg)
    if name == "came_pytorch":

        def key(field: str, default: float) -> float:
            value = getattr(cfg, field, None)
            return value if field in chosen and value is not None else default

        betas = (key("adam_beta1", 0.9), key("adam_beta2", 0.999), key("adam_beta3", 0.9999))
        eps = (key("adam_epsilon", 1e-30), key("adam_epsilon2", 1e-16))
        return {**common, "betas": betas, "eps": eps}
    if name == "optimi_adamw":
        adam: dict[str, Any] = {"foreach": False}
        if {"adam_beta1", "adam_beta2"} <= chosen:
            adam["betas"] = (cfg.adam_beta1, cfg.adam_beta2)
        if "adam_epsilon" in chosen:
            adam["eps"] = cfg.adam_epsilon
        return {**common, **adam}
    if name == "stable_adamw":
        adam = {"betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_epsilon}
        stable = {"decouple_lr": False, "max_lr": None, "kahan_sum": None}
        return {**common, **adam, **stable, **given}
    return {"lr": cfg.learning_rate, **GROKADAMW_DEFAULTS, **given}


def builder(name: str) -> Callable[[list[dict[str, Any]], Any], Any]:
    """A function building optimizer `name` over the core's parameter groups."""

    def build(param_groups: list[dict[str, Any]], cfg: Any) -> Any:
        module, extra = PACKAGES[name]
        require(module, feature=f"optimizer: {name}", install=f"'axolotl-weave[{extra}]'")
        kwargs = settings(name, cfg)
        if name == "came_pytorch":
            from came_pytorch import CAME

            return CAME(param_groups, **kwargs)
        if name == "grokadamw":
            from grokadamw import GrokAdamW

            return GrokAdamW(param_groups, **kwargs)
        import optimi

        return (optimi.AdamW if name == "optimi_adamw" else optimi.StableAdamW)(
            param_groups, **kwargs
        )

    return build


@hookimpl
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register CAME, optimi's AdamW and StableAdamW, and GrokAdamW (whether or not their
    packages are installed: validation says what to install)."""
    for name in PACKAGES:
        register(name, builder(name))
