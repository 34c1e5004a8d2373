"""The phi family (Microsoft phi-1, phi-1.5 and phi-2; Phi-3 and Phi-4 are the phi3 family)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"


def prepare_phi_tokenizer(tokenizer: Any) -> None:
    """Give a phi tokenizer (CodeGen's, no pad token) EOS `<|endoftext|>` as its pad token."""
    set_pad_token(tokenizer, "eos_token")


def tiny_phi_config() -> dict[str, Any]:
    """A two-layer phi (parallel attention and MLP, partial rotary)."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
    }


PHI = ModelFamily(
    name="phi",
    model_types=("phi",),
    adapter_target_modules=("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    decoder_layer="PhiDecoderLayer",
    prepare_tokenizer=prepare_phi_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    tiny_config=tiny_phi_config,
    description="Microsoft phi-1, phi-1.5 and phi-2",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the phi family."""
    register(PHI)
