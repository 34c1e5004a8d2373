"""`attn_implementation:`: switch the model's attention (eager, sdpa, flex_attention, ...)."""

from __future__ import annotations

from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl
from pydantic import Field

PLUGIN_KIND = "kernel"


class AttentionSettings(PluginConfig):
    """The attention implementation, as Axolotl's current configs write it."""

    attn_implementation: str | None = Field(
        None, description="eager, sdpa, flex_attention, flash_attention_2...; default: the model's."
    )


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `attn_implementation` key."""
    return AttentionSettings


@hookimpl
def patch_attention(model: Any, cfg: Any) -> None:
    """Set the configured implementation on the model (and every sub-model)."""
    if not cfg.attn_implementation:
        return
    try:
        model.set_attn_implementation(cfg.attn_implementation)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"attn_implementation: {exc}") from None
