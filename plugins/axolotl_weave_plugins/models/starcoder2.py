"""The starcoder2 family (BigCode StarCoder2 3B, 7B, 15B code models).

Not llama-shaped: LayerNorm with biases, biases on every projection (`use_bias`), and a plain
two-matrix GELU MLP (`c_fc`, `c_proj`) instead of a gated one, so the LoRA targets differ. Uses
grouped-query attention and sliding-window attention (4096) in the released checkpoints. The
output head is tied to the input embeddings. The tokenizer has no pad token; it pads with
`<|endoftext|>` (its EOS).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"


def prepare_starcoder2_tokenizer(tokenizer: Any) -> None:
    """Give a starcoder2 tokenizer (which ships none) a pad token: EOS."""
    set_pad_token(tokenizer, "eos_token")


def tiny_starcoder2_config() -> dict[str, Any]:
    """A two-layer starcoder2 with grouped-query attention (special token ids kept small)."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


STARCODER2 = ModelFamily(
    name="starcoder2",
    model_types=("starcoder2",),
    adapter_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
    decoder_layer="Starcoder2DecoderLayer",
    prepare_tokenizer=prepare_starcoder2_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    tiny_config=tiny_starcoder2_config,
    description="StarCoder2 code models (biased LayerNorm/projections, ungated GELU MLP)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the starcoder2 family."""
    register(STARCODER2)
