"""The qwen2 family (Qwen2, Qwen2.5 and Qwen2.5-Coder/Math dense models).

Llama-shaped (RMSNorm, SwiGLU MLP, rotary embeddings, grouped-query attention) with a bias on the
q/k/v projections. The small checkpoints (0.5B-3B) tie the output head to the input embeddings.
The config can turn on sliding-window attention (`use_sliding_window`, `max_window_layers`);
released checkpoints leave it off. The tokenizers have no BOS or `<unk>` token; the chat
models end a turn with `<|im_end|>` (their EOS) and pad with `<|endoftext|>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

QWEN_PAD = "<|endoftext|>"


def prepare_qwen2_tokenizer(tokenizer: Any) -> None:
    """Give a qwen2 tokenizer a pad token if it lacks one: `<|endoftext|>`, else EOS.

    `<|endoftext|>` is what the Qwen2.5 checkpoints pad with; it is not the chat models' EOS
    (`<|im_end|>`), so padding never masks the end of a turn.
    """
    set_pad_token(tokenizer, QWEN_PAD, "eos_token")


def tiny_qwen2_config() -> dict[str, Any]:
    """A two-layer qwen2 with grouped-query attention (4 query heads, 2 key/value heads)."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }


QWEN2 = ModelFamily(
    name="qwen2",
    model_types=("qwen2",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="Qwen2DecoderLayer",
    prepare_tokenizer=prepare_qwen2_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_qwen2_config,
    description="Qwen2 and Qwen2.5 dense models (q/k/v biases; small sizes tie embeddings)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the qwen2 family."""
    register(QWEN2)
