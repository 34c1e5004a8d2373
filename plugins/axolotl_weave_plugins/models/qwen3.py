"""The qwen3 family (Qwen3 dense models, 0.6B-32B).

Like qwen2 but without q/k/v biases and with QK-norm: an RMSNorm over each head of the queries
and keys (`q_norm`, `k_norm`) before the rotary embedding. `head_dim` is set explicitly (128),
not derived from the hidden size. The 0.6B, 1.7B and 4B checkpoints tie the output head to the
input embeddings. The chat template has a thinking mode (`<think>...</think>`); the tokenizers
pad with `<|endoftext|>` and end a chat turn with `<|im_end|>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

QWEN_PAD = "<|endoftext|>"


def prepare_qwen3_tokenizer(tokenizer: Any) -> None:
    """Give a qwen3 tokenizer a pad token if it lacks one: `<|endoftext|>`, else EOS."""
    set_pad_token(tokenizer, QWEN_PAD, "eos_token")


def tiny_qwen3_config() -> dict[str, Any]:
    """A two-layer qwen3 with grouped-query attention and 16-wide heads (QK-norm included)."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 128,
    }


QWEN3 = ModelFamily(
    name="qwen3",
    model_types=("qwen3",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="Qwen3DecoderLayer",
    prepare_tokenizer=prepare_qwen3_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_qwen3_config,
    description="Qwen3 dense models (QK-norm, explicit head_dim; small sizes tie embeddings)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the qwen3 family."""
    register(QWEN3)
