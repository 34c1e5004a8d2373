"""The falcon family (TII Falcon 7B / 40B / 180B and Falcon 2; Falcon 3 is llama-architecture)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"


def prepare_falcon_tokenizer(tokenizer: Any) -> None:
    """Give a falcon tokenizer (which has no pad token) EOS `<|endoftext|>` as its pad token."""
    set_pad_token(tokenizer, "eos_token")


def tiny_falcon_config() -> dict[str, Any]:
    """A two-layer falcon (Falcon-7B-shaped: multi-query, parallel attention and MLP)."""
    return {
        "hidden_size": 64,
        "ffn_hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


FALCON = ModelFamily(
    name="falcon",
    model_types=("falcon",),
    cannot={
        "sample_packing": (
            "transformers builds its attention mask without position_ids"
            " (packed samples would attend to each other)"
        ),
        "gptq": "transformers' GPTQ integration (optimum) takes only exact torch.nn.Linear "
        "layers, and Falcon's are FalconLinear: none would be quantized or load quantized",
        "load_in_4bit": "transformers' bitsandbytes integration quantizes only exact "
        "torch.nn.Linear layers, and Falcon's are FalconLinear: the base would stay unquantized",
        "load_in_8bit": "transformers' bitsandbytes integration quantizes only exact "
        "torch.nn.Linear layers, and Falcon's are FalconLinear: the base would stay unquantized",
    },
    adapter_target_modules=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    decoder_layer="FalconDecoderLayer",
    prepare_tokenizer=prepare_falcon_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2"),
    tiny_config=tiny_falcon_config,
    description="TII Falcon 7B / 40B / 180B and Falcon 2",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the falcon family."""
    register(FALCON)
