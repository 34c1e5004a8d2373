"""bitsandbytes optimizers by the names Axolotl and Hugging Face's Trainer give them.

`optimizer: adamw_bnb_8bit` (or `adamw_8bit`, `paged_adamw_8bit`, `paged_adamw_32bit`,
`paged_adamw`, `lion_8bit`, `lion_32bit`, `paged_lion_8bit`, `paged_lion_32bit`, `ademamix`,
`ademamix_8bit`, `paged_ademamix_32bit`, `paged_ademamix_8bit`, `rmsprop_bnb`,
`rmsprop_bnb_8bit`, `rmsprop_bnb_32bit`): 8-bit optimizer states take a quarter of AdamW's
memory; paged ones spill to CPU memory under pressure (on the CPU, bitsandbytes runs them
unpaged, and says so). They need `bitsandbytes` (on a CUDA GPU, or on the CPU from 0.50 on):
without it the run stops naming what to install.

Each is built as the Trainer builds it: `learning_rate`; the AdamW and AdEMAMix ones
`adam_beta1`, `adam_beta2`, `adam_epsilon`; Lion the two betas; weight decay with the parameter
groups. `optim_args:` (a mapping, or `key=value,...`) gives AdEMAMix `beta1`, `beta2`, `beta3`
(0.9999), `alpha` (5), `eps`, `t_alpha`, `t_beta3`, and RMSprop `alpha`, `eps`, `weight_decay`,
`momentum`, `centered`; the others read none, and a key the optimizer does not read is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl, require
from pydantic import model_validator

from axolotl_weave_plugins.methods._bnb import quiet_hub_kernel_notice

PLUGIN_KIND = "method"

quiet_hub_kernel_notice()  # before anything imports bitsandbytes, as bnb_quantization does

OPTIMIZER_CLASSES = {
    "adamw_bnb_8bit": "AdamW8bit",
    "adamw_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
    "paged_adamw": "PagedAdamW",
    "lion_8bit": "Lion8bit",
    "lion_32bit": "Lion32bit",
    "paged_lion_8bit": "PagedLion8bit",
    "paged_lion_32bit": "PagedLion32bit",
    "ademamix": "AdEMAMix",  # not AdEMAMix32bit, whose CPU step fails (bitsandbytes 0.50)
    "ademamix_8bit": "AdEMAMix8bit",
    "paged_ademamix_32bit": "PagedAdEMAMix",
    "paged_ademamix_8bit": "PagedAdEMAMix8bit",
    "rmsprop_bnb": "RMSprop32bit",
    "rmsprop_bnb_8bit": "RMSprop8bit",
    "rmsprop_bnb_32bit": "RMSprop32bit",
}
"""`optimizer:` name -> class in `bitsandbytes.optim`."""


def _boolean(value: Any) -> bool:
    """A YAML boolean, or true/false, yes/no, 1/0 as strings (the string form of optim_args)."""
    text = str(value).lower()
    if isinstance(value, bool) or text in ("true", "false", "1", "0", "yes", "no"):
        return value if isinstance(value, bool) else text in ("true", "1", "yes")
    raise ValueError(value)


ADEMAMIX_ARGS = {
    "beta1": float, "beta2": float, "beta3": float, "alpha": float, "eps": float,
    "t_alpha": int, "t_beta3": int,
}  # fmt: skip
RMSPROP_ARGS = {
    "alpha": float, "eps": float, "weight_decay": float, "momentum": float, "centered": _boolean,
}  # fmt: skip


def accepted_args(name: str) -> dict[str, Callable[[Any], Any]]:
    """The `optim_args` optimizer `name` reads (as the Trainer does), with their types."""
    if "ademamix" in name:
        return ADEMAMIX_ARGS
    return RMSPROP_ARGS if "rmsprop" in name else {}


def optim_args(name: str, cfg: Any) -> dict[str, Any]:
    """The config's `optim_args` (a mapping, or `key=value,...`) that optimizer `name` reads,
    converted; ValueError for a key it does not read or a value that does not convert."""
    raw = getattr(cfg, "optim_args", None) or {}
    if isinstance(raw, str):
        pairs = [item.partition("=") for item in raw.replace(" ", "").split(",")]
        if any(not sep or not key for key, sep, _ in pairs):
            raise ValueError(f"optim_args: {raw!r} is not key=value,key=value")
        raw = {key: value for key, _, value in pairs}
    accepted = accepted_args(name)
    unknown = sorted(set(raw) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no optim_args"
        raise ValueError(
            f"optim_args: optimizer {name} does not read {', '.join(unknown)} (it takes {takes})"
        )
    try:
        return {key: accepted[key](value) for key, value in raw.items()}
    except (TypeError, ValueError):
        raise ValueError(f"optim_args: a value for optimizer {name} does not convert") from None


class BnbOptimizerSettings(PluginConfig):
    """No keys of its own: checks `optim_args` for a bitsandbytes optimizer."""

    @model_validator(mode="after")
    def _bnb_optim_args(self) -> BnbOptimizerSettings:
        name = getattr(self, "optimizer", None)
        if name in OPTIMIZER_CLASSES:
            optim_args(name, self)
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The check of the bitsandbytes optimizers' `optim_args`."""
    return BnbOptimizerSettings


def builder(class_name: str) -> Callable[[list[dict[str, Any]], Any], Any]:
    """A function building `bitsandbytes.optim.<class_name>` over the core's parameter groups."""

    def build(param_groups: list[dict[str, Any]], cfg: Any) -> Any:
        bnb = require(
            "bitsandbytes",
            feature=f"optimizer: {cfg.optimizer}",
            install="'bitsandbytes>=0.50' (CUDA GPUs, and the CPU from 0.50 on)",
        )
        try:
            extra = optim_args(cfg.optimizer, cfg)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        optimizer_class = getattr(bnb.optim, class_name)
        lr = cfg.learning_rate
        betas = (cfg.adam_beta1, cfg.adam_beta2)
        if "Lion" in class_name:
            return optimizer_class(param_groups, lr=lr, betas=betas)
        if "RMSprop" in class_name:
            return optimizer_class(param_groups, lr=lr, **extra)
        if "AdEMAMix" in class_name:
            # the Trainer's settings: optim_args' betas, alpha and eps over the Adam keys
            extra = {
                "betas": (
                    extra.pop("beta1", betas[0]),
                    extra.pop("beta2", betas[1]),
                    extra.pop("beta3", 0.9999),
                ),
                "alpha": extra.pop("alpha", 5.0),
                "eps": extra.pop("eps", cfg.adam_epsilon),
                **extra,
            }
            return optimizer_class(param_groups, lr=lr, **extra)
        return optimizer_class(param_groups, lr=lr, betas=betas, eps=cfg.adam_epsilon)

    return build


@hookimpl
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register the bitsandbytes optimizers."""
    for name, class_name in OPTIMIZER_CLASSES.items():
        register(name, builder(class_name))
