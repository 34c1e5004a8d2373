"""The gemma family (Google Gemma 1: 2B, 7B, and CodeGemma).

Quirks worth knowing: the input embeddings are multiplied by sqrt(hidden_size) before the first
layer, so new token rows added by a resize are scaled too; the output head is tied to the input
embeddings; the RMSNorm scales by (1 + weight), not weight; the MLP is GeGLU (tanh-approximated
GELU); `head_dim` is 256 regardless of the hidden size (2B uses multi-query attention, 7B
multi-head); the 256k vocabulary makes the embedding and the logits large. The models expect a
leading `<bos>`; the tokenizer ships a `<pad>` token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

GEMMA_PAD = "<pad>"


def prepare_gemma_tokenizer(tokenizer: Any) -> None:
    """Give a gemma tokenizer a pad token if it lacks one: `<pad>`, else EOS."""
    set_pad_token(tokenizer, GEMMA_PAD, "eos_token")


def tiny_gemma_config() -> dict[str, Any]:
    """A two-layer gemma with grouped-query attention and 16-wide heads."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 128,
    }


GEMMA = ModelFamily(
    name="gemma",
    model_types=("gemma",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="GemmaDecoderLayer",
    prepare_tokenizer=prepare_gemma_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_gemma_config,
    description="Gemma 1 and CodeGemma (embeddings scaled by sqrt(hidden), tied, 256k vocab)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the gemma family."""
    register(GEMMA)
