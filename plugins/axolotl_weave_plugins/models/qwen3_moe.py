"""The qwen3_moe family (Qwen3-30B-A3B, Qwen3-235B-A22B and Qwen3-Coder MoE models).

Qwen3 attention (QK-norm, no q/k/v biases, explicit `head_dim`) with a sparse MoE block of many
small experts (128, top-8) and no shared expert. Transformers stores the experts as fused 3-D
parameters (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`), not `nn.Linear` modules, so
`target_modules` cannot name them, and the released checkpoints have no dense MLP layers
(`mlp_only_layers` is empty). The default LoRA targets are therefore the attention projections
only. Naming `gate_proj`/`up_proj`/`down_proj` adapts the experts anyway: peft (0.21, on
transformers 5) rewrites those names, for this model type, to `target_parameters` on the fused
tensors (rank doubled on `gate_up_proj`). Reads the MoE router keys `output_router_logits` and
`router_aux_loss_coef`, which the mixtral plugin declares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

from axolotl_weave_plugins.models._moe import apply_router_settings

PLUGIN_KIND = "model"

QWEN_PAD = "<|endoftext|>"


def prepare_qwen3_moe_tokenizer(tokenizer: Any) -> None:
    """Give a qwen3_moe tokenizer a pad token if it lacks one: `<|endoftext|>`, else EOS."""
    set_pad_token(tokenizer, QWEN_PAD, "eos_token")


def tiny_qwen3_moe_config() -> dict[str, Any]:
    """A two-layer qwen3_moe: 4 experts, top-2 routing, 16-wide heads."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 128,
    }


QWEN3_MOE = ModelFamily(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    adapter_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
    decoder_layer="Qwen3MoeDecoderLayer",
    prepare_tokenizer=prepare_qwen3_moe_tokenizer,
    prepare_model=apply_router_settings,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_qwen3_moe_config,
    description="Qwen3 MoE models (fused experts: default LoRA targets are attention only)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the qwen3_moe family."""
    register(QWEN3_MOE)
