"""The mistral family (Mistral 7B v0.1-v0.3, Mistral NeMo and other mistral-architecture models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"


def prepare_mistral_tokenizer(tokenizer: Any) -> None:
    """Give a mistral tokenizer (which ships none) a pad token: `<unk>`, else EOS."""
    set_pad_token(tokenizer, "unk_token", "eos_token")


def tiny_mistral_config() -> dict[str, Any]:
    """A two-layer mistral with grouped-query attention (4 query heads, 2 key/value heads)."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }


MISTRAL = ModelFamily(
    name="mistral",
    model_types=("mistral",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="MistralDecoderLayer",
    prepare_tokenizer=prepare_mistral_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_mistral_config,
    description="Mistral 7B v0.1-v0.3, Mistral NeMo and other mistral-architecture models",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the mistral family."""
    register(MISTRAL)
