"""The gptj family (EleutherAI GPT-J-6B and gptj-architecture models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"


def prepare_gptj_tokenizer(tokenizer: Any) -> None:
    """Give GPT-J's GPT-2 tokenizer (no pad token) EOS `<|endoftext|>` as its pad token."""
    set_pad_token(tokenizer, "eos_token")


def tiny_gptj_config() -> dict[str, Any]:
    """A two-layer gptj (rotary on 8 of each head's 16 dimensions), special tokens in range."""
    return {
        "n_embd": 64,
        "n_inner": 128,
        "n_layer": 2,
        "n_head": 4,
        "rotary_dim": 8,
        "n_positions": 128,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


GPTJ = ModelFamily(
    name="gptj",
    model_types=("gptj",),
    adapter_target_modules=("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"),
    decoder_layer="GPTJBlock",
    prepare_tokenizer=prepare_gptj_tokenizer,
    attn_implementations=("eager", "flash_attention_2"),
    tiny_config=tiny_gptj_config,
    description="EleutherAI GPT-J-6B",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the gptj family."""
    register(GPTJ)
