"""Torch's optimizers and transformers' Adafactor, by the names Axolotl and Hugging Face's Trainer
give them (`optimizer:`), built with the settings the Trainer gives them.

`adamw_torch` (the default; `adamw` is an alias), `adamw_torch_fused`, `adam` (L2 decay, not
decoupled), `sgd`, `adagrad`, `rmsprop` and `adafactor` (transformers' Adafactor with an external
learning rate: `scale_parameter` and `relative_step` off, as the Trainer sets them). Every one
gets `learning_rate`; the Adam ones also `adam_beta1`, `adam_beta2` and `adam_epsilon`; weight
decay comes with the parameter groups.

`optim_args:` (Axolotl's key: a mapping, or the Trainer's string `key=value,key=value`) passes
what the Trainer reads for each: sgd `momentum`, `dampening`, `weight_decay`, `nesterov`;
adagrad `lr_decay`, `weight_decay`, `eps`; rmsprop `momentum`, `alpha`, `eps`, `weight_decay`,
`centered`; nothing for the others. A key the optimizer does not read is refused at validation
(the Trainer would ignore it silently).

The optimizers Axolotl or the Trainer know that nothing here builds (GaLore, LOMO, schedule-free,
Dion...) are refused at validation with the reason, unless another plugin registers the name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl
from pydantic import Field, ValidationInfo, field_validator, model_validator

from axolotl_weave_plugins.optimizers._optim_args import Converters, boolean, optimizer_args

PLUGIN_KIND = "optimizer"

OPTIM_ARGS: dict[str, Converters] = {
    "adamw_torch": {},
    "adamw": {},
    "adamw_torch_fused": {},
    "adam": {},
    "adafactor": {},
    "sgd": {"momentum": float, "dampening": float, "weight_decay": float, "nesterov": boolean},
    "adagrad": {"lr_decay": float, "weight_decay": float, "eps": float},
    "rmsprop": {
        "momentum": float, "alpha": float, "eps": float, "weight_decay": float,
        "centered": boolean,
    },
}  # fmt: skip
"""The optimizers this plugin registers -> the `optim_args` each reads (as the Trainer does)."""

_GALORE = "GaLore (galore-torch) projects the gradients of `optim_target_modules`"
_NOT_HERE = "which Axolotl Weave does not implement"
UNSUPPORTED: dict[str, str] = {
    "adamw_torch_xla": "it needs torch_xla (TPUs)",
    "adamw_torch_npu_fused": "it needs torch_npu (Ascend NPUs)",
    "adamw_apex_fused": "it needs NVIDIA apex; adamw_torch_fused is the fused AdamW here",
    "adamw_anyprecision": "it needs torchdistx",
    "adamw_hf": "transformers' own AdamW is gone from transformers; use adamw_torch",
    **dict.fromkeys(
        [
            "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
            "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "q_galore_adamw8bit",
        ],
        f"{_GALORE}, {_NOT_HERE}",
    ),
    **dict.fromkeys(
        ["apollo_adamw", "apollo_adamw_layerwise"],
        f"APOLLO (apollo-torch) projects the gradients of `optim_target_modules`, {_NOT_HERE}",
    ),
    **dict.fromkeys(
        ["lomo", "adalomo"], f"LOMO updates the weights inside the backward pass, {_NOT_HERE}"
    ),
    **dict.fromkeys(
        ["schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd"],
        f"schedule-free optimizers need train/eval mode switches in the loop, {_NOT_HERE}",
    ),
    "adopt_adamw": f"Axolotl's ADOPT, {_NOT_HERE}",
    "dion": f"Dion (Axolotl's contribs), {_NOT_HERE}",
    "sinkgd": f"Axolotl's SinkGD, {_NOT_HERE}",
    **dict.fromkeys(
        ["flash_adamw", "flash_adam", "flash_sgd", "flash_sgdw", "flash_lion"],
        f"flashoptim's optimizers, {_NOT_HERE}",
    ),
    "ao_adamw_4bit": "deprecated by Axolotl, which no longer builds it: use adamw_torch_4bit",
    "ao_adamw_8bit": "deprecated by Axolotl, which no longer builds it: use adamw_torch_8bit",
    "lion_pytorch": "Axolotl dropped it (0.8): use lion_32bit or lion_8bit (bitsandbytes)",
}  # fmt: skip
"""Optimizer names of Axolotl (0.5 on) and the Trainer that no built-in plugin builds -> why."""


class TorchOptimizerSettings(PluginConfig):
    """`optim_args` (read by every optimizer plugin that takes settings), and the refusal of
    the optimizers nothing here builds."""

    optim_args: dict[str, Any] | str | None = Field(
        None,
        description="Optimizer settings beyond the Adam keys: a mapping, or 'key=value,...'; "
        "each optimizer takes its own (sgd: momentum, nesterov...).",
    )

    @field_validator("optimizer", mode="before", check_fields=False)
    @classmethod
    def _optimizer_supported(cls, value: Any, info: ValidationInfo) -> Any:
        registered = (info.context or {}).get("optimizers") or []
        if isinstance(value, str) and value in UNSUPPORTED and value not in registered:
            raise ValueError(
                f"'{value}' is an optimizer of Axolotl / Hugging Face's Trainer that Axolotl "
                f"Weave does not support: {UNSUPPORTED[value]}; valid: {', '.join(registered)}"
            )
        return value

    @model_validator(mode="after")
    def _torch_optim_args(self) -> TorchOptimizerSettings:
        name = getattr(self, "optimizer", None)
        if name in OPTIM_ARGS:
            optimizer_args(name, self, OPTIM_ARGS[name])
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`optim_args`, and the check of the optimizer names."""
    return TorchOptimizerSettings


def builder(name: str) -> Callable[[list[dict[str, Any]], Any], Any]:
    """A function building optimizer `name` over the core's parameter groups."""

    def build(param_groups: list[dict[str, Any]], cfg: Any) -> Any:
        import torch

        try:
            extra = optimizer_args(name, cfg, OPTIM_ARGS[name])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        lr = cfg.learning_rate
        adam = {"betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_epsilon}
        if name in ("adamw_torch", "adamw"):
            return torch.optim.AdamW(param_groups, lr=lr, **adam)
        if name == "adamw_torch_fused":
            return torch.optim.AdamW(param_groups, lr=lr, **adam, fused=True)
        if name == "adam":
            return torch.optim.Adam(param_groups, lr=lr, **adam)
        if name == "adafactor":
            from transformers.optimization import Adafactor

            return Adafactor(param_groups, lr=lr, scale_parameter=False, relative_step=False)
        classes = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}
        return classes.get(name, torch.optim.RMSprop)(param_groups, lr=lr, **extra)

    return build


@hookimpl
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register torch's optimizers and Adafactor."""
    for name in OPTIM_ARGS:
        register(name, builder(name))
