"""The gpt_oss family (OpenAI gpt-oss-20b and gpt-oss-120b mixture-of-experts models).

Attention has learned per-head sinks (an extra logit each head's softmax can spill into), biases
on every projection, and alternates sliding-window (128) and full layers; rotary embeddings use
YaRN to 131k positions. Transformers' SDPA path cannot add the sinks, so the model does not
support `sdpa`; and the flash-attn 2 package silently drops them, so `flash_attention_2` is not
listed either: use eager, flex attention (GPU only with sinks), or a sink-aware kernel from the
kernels hub (`attn_implementation: kernels-community/vllm-flash-attn3`, as Axolotl's gpt-oss
examples do). The MoE block (32 or 128 experts, top-4, a router with a bias, a clamped SwiGLU)
keeps its experts as fused 3-D parameters with biases (`mlp.experts.gate_up_proj`,
`mlp.experts.down_proj`), not `nn.Linear` modules: the default LoRA targets are the attention
projections only (peft's `target_parameters` can reach the experts). The released weights are
MXFP4; without the MXFP4 kernels transformers loads them dequantized to bf16. The chat format
is OpenAI's harmony (the tokenizer's own template). Reads the MoE router keys
`output_router_logits` and `router_aux_loss_coef`, which the mixtral plugin declares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

from axolotl_weave_plugins.models._moe import apply_router_settings

PLUGIN_KIND = "model"

GPT_OSS_PAD = "<|endoftext|>"


def prepare_gpt_oss_tokenizer(tokenizer: Any) -> None:
    """Give a gpt_oss tokenizer a pad token if it lacks one: `<|endoftext|>`, else EOS."""
    set_pad_token(tokenizer, GPT_OSS_PAD, "eos_token")


def tiny_gpt_oss_config() -> dict[str, Any]:
    """A two-layer gpt_oss: a sliding-window layer and a full one, 4 experts, top-2 routing.

    `max_position_embeddings` keeps its default: the YaRN scaling is defined relative to it.
    """
    return {
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "sliding_window": 16,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
    }


GPT_OSS = ModelFamily(
    name="gpt_oss",
    model_types=("gpt_oss",),
    cannot={
        "sample_packing": (
            "transformers builds its attention masks without position_ids"
            " (packed samples would attend to each other)"
        ),
    },
    adapter_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
    decoder_layer="GptOssDecoderLayer",
    prepare_tokenizer=prepare_gpt_oss_tokenizer,
    prepare_model=apply_router_settings,
    attn_implementations=("eager", "flex_attention"),
    tiny_config=tiny_gpt_oss_config,
    description="gpt-oss 20b/120b (attention sinks: no SDPA; fused experts: LoRA on attention)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the gpt_oss family."""
    register(GPT_OSS)
