"""`adapter: lora`: wrap the loaded model in a peft LoRA adapter (only the adapter trains)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Literal

from axolotl_weave import ConfigError, ModelFamily, PluginConfig, hookimpl
from pydantic import Field

PLUGIN_KIND = "method"


class LoraSettings(PluginConfig):
    """LoRA keys, with Axolotl's names."""

    adapter: Literal["lora"] | None = Field(None, description="lora: train a LoRA adapter.")
    lora_model_dir: str | None = Field(None, description="Continue training this saved adapter.")
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | str | None = Field(
        None, description="Module names (or a regex) to adapt; default: the family's."
    )
    lora_target_linear: bool = Field(False, description="Adapt every linear layer but lm_head.")


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """LoRA's config keys."""
    return LoraSettings


def target_modules(cfg: Any, family: ModelFamily | None) -> list[str] | str:
    """What to adapt: all linear layers, the config's list, or the family's default."""
    if cfg.lora_target_linear:
        return "all-linear"
    if cfg.lora_target_modules:
        return cfg.lora_target_modules
    if family is not None and family.lora_target_modules:
        return list(family.lora_target_modules)
    raise ConfigError(
        "adapter: lora needs lora_target_modules (or lora_target_linear: true): no model-family "
        "plugin gives a default for this architecture"
    )


@hookimpl(wrapper=True)
def load_model(cfg: Any, family: ModelFamily | None) -> Generator[None, Any, Any]:
    """Wrap the loaded model with a new LoRA adapter, or the one in `lora_model_dir`."""
    model = yield
    if cfg.adapter != "lora":
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.lora_model_dir:
        return PeftModel.from_pretrained(model, cfg.lora_model_dir, is_trainable=True)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules(cfg, family),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"lora_target_modules: {exc}") from None
