"""The cohere family (Cohere Command R and Command R+, and Aya 23 / Aya Expanse).

Each block runs attention and the MLP in parallel on the same normed input and adds both to
the residual (one LayerNorm per block, without bias). The logits are multiplied by
`logit_scale` (0.0625 for Command R), which a fused cross-entropy kernel must apply too. The
output head is tied to the input embeddings, and the 256k vocabulary makes both large. Command
R+ adds per-head QK LayerNorm (`use_qk_norm`). The tokenizer ships `<PAD>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

COHERE_PAD = "<PAD>"


def prepare_cohere_tokenizer(tokenizer: Any) -> None:
    """Give a cohere tokenizer a pad token if it lacks one: `<PAD>`, else EOS."""
    set_pad_token(tokenizer, COHERE_PAD, "eos_token")


def tiny_cohere_config() -> dict[str, Any]:
    """A two-layer cohere with grouped-query attention (special token ids kept small)."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


COHERE = ModelFamily(
    name="cohere",
    model_types=("cohere",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="CohereDecoderLayer",
    prepare_tokenizer=prepare_cohere_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    tiny_config=tiny_cohere_config,
    description="Command R / R+ and Aya (parallel attention+MLP blocks, scaled tied logits)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the cohere family."""
    register(COHERE)
