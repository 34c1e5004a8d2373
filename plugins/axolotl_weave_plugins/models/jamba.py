"""The jamba family (AI21 Jamba: hybrid Mamba / attention layers with mixture-of-experts MLPs).

Reads the MoE router keys `output_router_logits` and `router_aux_loss_coef`, which the mixtral
plugin declares. Its decoder has two layer classes (Mamba and attention), so `decoder_layer`
names both, comma-separated, as Axolotl's `fsdp_transformer_layer_cls_to_wrap` does. The expert
weights are fused 3-D parameters; the LoRA targets are the attention, Mamba and dense-MLP
projections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

from axolotl_weave_plugins.models._moe import apply_router_settings

PLUGIN_KIND = "model"


def prepare_jamba_tokenizer(tokenizer: Any) -> None:
    """Give a jamba tokenizer a pad token if it lacks one: `<unk>`, else EOS."""
    set_pad_token(tokenizer, "unk_token", "eos_token")


def tiny_jamba_config() -> dict[str, Any]:
    """A two-layer jamba: a Mamba layer with a dense MLP, then an attention layer with a
    4-expert top-2 MoE."""
    return {
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "mamba_d_state": 8,
        "mamba_expand": 2,
        "max_position_embeddings": 128,
    }


JAMBA = ModelFamily(
    name="jamba",
    model_types=("jamba",),
    cannot={
        "sample_packing": "its Mamba layers carry their state from one packed sample into the next",
    },
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "in_proj",
        "x_proj",
        "out_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="JambaAttentionDecoderLayer,JambaMambaDecoderLayer",
    prepare_tokenizer=prepare_jamba_tokenizer,
    prepare_model=apply_router_settings,
    attn_implementations=("eager", "sdpa", "flash_attention_2"),
    tiny_config=tiny_jamba_config,
    description="AI21 Jamba and Jamba 1.5: hybrid Mamba / attention mixture-of-experts models",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the jamba family."""
    register(JAMBA)
