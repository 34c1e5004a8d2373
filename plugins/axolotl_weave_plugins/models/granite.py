"""The granite family (IBM Granite 3.x dense language models).

Llama-shaped, with four muP-style scalars from the config that must stay as trained:
`embedding_multiplier` (scales the input embeddings), `attention_multiplier` (the attention
softmax scale, instead of 1/sqrt(head_dim)), `residual_multiplier` (scales each block's output
before the residual add) and `logits_scaling` (the logits are divided by it). A fused
cross-entropy kernel must apply `logits_scaling` too (Liger's granite patch does). The Granite 3
tokenizers pad with their EOS, `<|end_of_text|>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"


def prepare_granite_tokenizer(tokenizer: Any) -> None:
    """Give a granite tokenizer a pad token if it lacks one: EOS (as Granite 3 ships)."""
    set_pad_token(tokenizer, "eos_token")


def tiny_granite_config() -> dict[str, Any]:
    """A two-layer granite with grouped-query attention and non-trivial muP multipliers."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "embedding_multiplier": 12.0,
        "attention_multiplier": 0.0625,
        "residual_multiplier": 0.22,
        "logits_scaling": 8.0,
    }


GRANITE = ModelFamily(
    name="granite",
    model_types=("granite",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="GraniteDecoderLayer",
    prepare_tokenizer=prepare_granite_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_granite_config,
    description="IBM Granite 3.x dense models (muP multipliers; logits divided by a scale)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the granite family."""
    register(GRANITE)
