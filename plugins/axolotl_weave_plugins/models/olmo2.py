"""The olmo2 family (AllenAI OLMo 2: 1B, 7B, 13B, 32B, and their Instruct models).

Llama-shaped (SwiGLU MLP, rotary embeddings) with two changes for stability: the RMSNorms sit
after attention and after the MLP (on the branch output, before the residual add) instead of
before them, and QK-norm is an RMSNorm over the whole query and key projections (`q_norm`,
`k_norm`), not per head. The output head is not tied. The tokenizer (cl100k-based) ships
`<|pad|>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

OLMO_PAD = "<|pad|>"


def prepare_olmo2_tokenizer(tokenizer: Any) -> None:
    """Give an olmo2 tokenizer a pad token if it lacks one: `<|pad|>`, else EOS."""
    set_pad_token(tokenizer, OLMO_PAD, "eos_token")


def tiny_olmo2_config() -> dict[str, Any]:
    """A two-layer olmo2 with grouped-query attention (special token ids kept small)."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "pad_token_id": 1,
        "eos_token_id": 2,
    }


OLMO2 = ModelFamily(
    name="olmo2",
    model_types=("olmo2",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="Olmo2DecoderLayer",
    prepare_tokenizer=prepare_olmo2_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_olmo2_config,
    description="OLMo 2 (norms after attention and MLP, whole-projection QK-norm)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the olmo2 family."""
    register(OLMO2)
