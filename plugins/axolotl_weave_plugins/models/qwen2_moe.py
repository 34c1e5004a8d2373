"""The qwen2_moe family (Qwen1.5-MoE-A2.7B and Qwen2-57B-A14B mixture-of-experts models).

Qwen2 attention (q/k/v biases) with a sparse MoE block: many small routed experts (60 or 64,
top-4 or top-8) plus one always-on shared expert, scaled by a sigmoid gate
(`shared_expert_gate`). Transformers stores the routed experts as fused 3-D parameters
(`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`), not `nn.Linear` modules, so
`target_modules` cannot name them (peft's `target_parameters` can). The default LoRA targets
are the attention projections and the shared expert's (and any dense layer's) `nn.Linear`
gate/up/down projections. Reads the MoE router keys `output_router_logits` and
`router_aux_loss_coef`, which the mixtral plugin declares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

from axolotl_weave_plugins.models._moe import apply_router_settings

PLUGIN_KIND = "model"

QWEN_PAD = "<|endoftext|>"


def prepare_qwen2_moe_tokenizer(tokenizer: Any) -> None:
    """Give a qwen2_moe tokenizer a pad token if it lacks one: `<|endoftext|>`, else EOS."""
    set_pad_token(tokenizer, QWEN_PAD, "eos_token")


def tiny_qwen2_moe_config() -> dict[str, Any]:
    """A two-layer qwen2_moe: 4 routed experts, top-2 routing, one shared expert."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 128,
    }


QWEN2_MOE = ModelFamily(
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="Qwen2MoeDecoderLayer",
    prepare_tokenizer=prepare_qwen2_moe_tokenizer,
    prepare_model=apply_router_settings,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_qwen2_moe_config,
    description="Qwen1.5-MoE and Qwen2-MoE: routed experts (fused) plus a gated shared expert",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the qwen2_moe family."""
    register(QWEN2_MOE)
