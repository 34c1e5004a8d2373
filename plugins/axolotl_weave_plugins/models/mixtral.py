"""The mixtral family (Mixtral 8x7B / 8x22B sparse mixture-of-experts models).

Owns the MoE router keys `output_router_logits` and `router_aux_loss_coef`; the other MoE family
plugins read them from the config without declaring them again. Transformers stores Mixtral's
experts as fused 3-D parameters, so the default LoRA targets are the attention projections (the
expert weights are not `nn.Linear` modules that `target_modules` can name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, PluginConfig, hookimpl, set_pad_token
from pydantic import Field

from axolotl_weave_plugins.models._moe import apply_router_settings

PLUGIN_KIND = "model"


class RouterSettings(PluginConfig):
    """The router's auxiliary (load-balancing) loss of mixture-of-experts models."""

    output_router_logits: bool | None = Field(
        None,
        description="Compute the MoE router's load-balancing auxiliary loss (default: as the "
        "model config says, off for released checkpoints).",
    )
    router_aux_loss_coef: float | None = Field(
        None, ge=0, description="Weight of the router's auxiliary loss (default: the model's)."
    )


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The MoE router keys (shared by every MoE family)."""
    return RouterSettings


def prepare_mixtral_tokenizer(tokenizer: Any) -> None:
    """Give a mixtral tokenizer (which ships none) a pad token: `<unk>`, else EOS."""
    set_pad_token(tokenizer, "unk_token", "eos_token")


def tiny_mixtral_config() -> dict[str, Any]:
    """A two-layer mixtral: 4 experts, top-2 routing, grouped-query attention."""
    return {
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 128,
    }


MIXTRAL = ModelFamily(
    name="mixtral",
    model_types=("mixtral",),
    adapter_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
    decoder_layer="MixtralDecoderLayer",
    prepare_tokenizer=prepare_mixtral_tokenizer,
    prepare_model=apply_router_settings,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_mixtral_config,
    description="Mixtral 8x7B / 8x22B sparse mixture-of-experts models",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the mixtral family."""
    register(MIXTRAL)
