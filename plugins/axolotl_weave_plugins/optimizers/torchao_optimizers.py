"""torchao's low-bit AdamW by the names Hugging Face's Trainer and Axolotl give them.

`optimizer: adamw_torch_8bit` / `adamw_torch_4bit` (the Trainer's names: torchao's `AdamW8bit` /
`AdamW4bit` with its settings: `block_size` 256, no bf16 stochastic rounding) and `ao_adamw_fp8`
(Axolotl's name: `AdamWFp8`, torchao's defaults). Each gets `learning_rate`, `adam_beta1`,
`adam_beta2` and `adam_epsilon`; weight decay comes with the parameter groups. `optim_args:`
`block_size`, `bf16_stochastic_round`. torchao keeps the moments of tensors of at least 4,096
values in 8 or 4 bits (or float8) and compiles its step with `torch.compile` (on the CPU that
needs a C++ compiler).

They need `torchao` (`pip install 'axolotl-weave[torchao]'`): without it the config is refused
at validation, before anything loads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl, require
from pydantic import field_validator, model_validator

from axolotl_weave_plugins.optimizers._optim_args import boolean, optimizer_args

PLUGIN_KIND = "optimizer"

OPTIMIZER_CLASSES = {
    "adamw_torch_8bit": "AdamW8bit",
    "adamw_torch_4bit": "AdamW4bit",
    "ao_adamw_fp8": "AdamWFp8",
}
"""`optimizer:` name -> class in `torchao.optim`."""

TRAINER_DEFAULTS = {"block_size": 256, "bf16_stochastic_round": False}
"""What Hugging Face's Trainer passes to its two names unless `optim_args` says otherwise."""

OPTIM_ARGS = {"block_size": int, "bf16_stochastic_round": boolean}
"""The `optim_args` these optimizers read."""

INSTALL = "'axolotl-weave[torchao]'"


class TorchaoSettings(PluginConfig):
    """No keys of its own: checks that torchao is installed, and `optim_args`."""

    @field_validator("optimizer", check_fields=False)
    @classmethod
    def _torchao_installed(cls, value: Any) -> Any:
        if value in OPTIMIZER_CLASSES and importlib.util.find_spec("torchao") is None:
            raise ValueError(
                f"{value} needs the package 'torchao', which is not installed: "
                f"pip install {INSTALL}"
            )
        return value

    @model_validator(mode="after")
    def _torchao_optim_args(self) -> TorchaoSettings:
        name = getattr(self, "optimizer", None)
        if name in OPTIMIZER_CLASSES:
            optimizer_args(name, self, OPTIM_ARGS)
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The checks of the torchao optimizers."""
    return TorchaoSettings


def builder(name: str) -> Callable[[list[dict[str, Any]], Any], Any]:
    """A function building torchao's optimizer `name` over the core's parameter groups."""

    def build(param_groups: list[dict[str, Any]], cfg: Any) -> Any:
        require("torchao", feature=f"optimizer: {name}", install=INSTALL)
        from torchao import optim

        try:
            given = optimizer_args(name, cfg, OPTIM_ARGS)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        settings = {} if name == "ao_adamw_fp8" else dict(TRAINER_DEFAULTS)
        return getattr(optim, OPTIMIZER_CLASSES[name])(
            param_groups,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
            **{**settings, **given},
        )

    return build


@hookimpl
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register torchao's optimizers (whether or not torchao is installed: validation says
    what to install)."""
    for name in OPTIMIZER_CLASSES:
        register(name, builder(name))
