"""The llama family (Llama 1-3.x and llama-architecture models such as XGen)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

LLAMA3_PAD = "<|finetune_right_pad_id|>"


def prepare_llama_tokenizer(tokenizer: Any) -> None:
    """Give a llama tokenizer a pad token: Llama 3's reserved pad, else `<unk>`, else EOS."""
    set_pad_token(tokenizer, LLAMA3_PAD, "unk_token", "eos_token")


def tiny_llama_config() -> dict[str, Any]:
    """A two-layer llama with grouped-query attention (4 query heads, 2 key/value heads)."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }


LLAMA = ModelFamily(
    name="llama",
    model_types=("llama",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="LlamaDecoderLayer",
    prepare_tokenizer=prepare_llama_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_llama_config,
    description="Llama 1/2/3.x, XGen and other llama-architecture models",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the llama family."""
    register(LLAMA)
