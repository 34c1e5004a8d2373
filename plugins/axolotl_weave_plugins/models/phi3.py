"""The phi3 family (Microsoft Phi-3, Phi-3.5 mini and Phi-4, whose config says `phi3`).

Fused projections: `qkv_proj` for attention and `gate_up_proj` for the MLP. Their chat
templates are named in `chat_template:` (`phi_3`, `phi_35`, `phi_4`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"


def prepare_phi3_tokenizer(tokenizer: Any) -> None:
    """Give a phi3 tokenizer a pad token if it lacks one: `<unk>`, else EOS."""
    set_pad_token(tokenizer, "unk_token", "eos_token")


def tiny_phi3_config() -> dict[str, Any]:
    """A two-layer phi3 with grouped-query attention, its special tokens in range."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "original_max_position_embeddings": 128,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


PHI3 = ModelFamily(
    name="phi3",
    model_types=("phi3",),
    adapter_target_modules=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    decoder_layer="Phi3DecoderLayer",
    prepare_tokenizer=prepare_phi3_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_phi3_config,
    description="Microsoft Phi-3, Phi-3.5 mini and Phi-4",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the phi3 family."""
    register(PHI3)
