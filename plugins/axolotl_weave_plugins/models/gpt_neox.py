"""The gpt_neox family (EleutherAI Pythia, GPT-NeoX-20B and other gpt_neox-architecture models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

NEOX_PAD = "<|padding|>"


def prepare_neox_tokenizer(tokenizer: Any) -> None:
    """Give a GPT-NeoX tokenizer a pad token: its reserved `<|padding|>`, else EOS."""
    set_pad_token(tokenizer, NEOX_PAD, "eos_token")


def tiny_neox_config() -> dict[str, Any]:
    """A two-layer gpt_neox (Pythia-shaped: parallel residual, partial rotary)."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
    }


GPT_NEOX = ModelFamily(
    name="gpt_neox",
    model_types=("gpt_neox",),
    adapter_target_modules=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    decoder_layer="GPTNeoXLayer",
    prepare_tokenizer=prepare_neox_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    tiny_config=tiny_neox_config,
    description="EleutherAI Pythia, GPT-NeoX-20B and other gpt_neox-architecture models",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the gpt_neox family."""
    register(GPT_NEOX)
