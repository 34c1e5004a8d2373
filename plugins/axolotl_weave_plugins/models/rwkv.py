"""The rwkv family (RWKV-4 in transformers' native `RwkvForCausalLM`).

A recurrent model with no attention layers: the eager implementation is the only one, and the
LoRA targets are the time-mix and channel-mix projections (`key`, `value`, `receptance` occur in
both) and the time-mix `output`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

NEOX_PAD = "<|padding|>"


def prepare_rwkv_tokenizer(tokenizer: Any) -> None:
    """Give RWKV-4's GPT-NeoX tokenizer a pad token: its reserved `<|padding|>`, else EOS."""
    set_pad_token(tokenizer, NEOX_PAD, "eos_token")


def tiny_rwkv_config() -> dict[str, Any]:
    """A two-layer rwkv."""
    return {
        "hidden_size": 64,
        "attention_hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "context_length": 128,
    }


RWKV = ModelFamily(
    name="rwkv",
    model_types=("rwkv",),
    cannot={
        "sample_packing": "it is recurrent: its state carries from one packed sample into the next",
        "gptq": "switching to eval, RWKV divides its output layers' weights in place "
        "(rescale_every), which packed GPTQ weights cannot take",
        "load_in_4bit": "switching to eval, RWKV divides its output layers' weights in place "
        "(rescale_every), which bitsandbytes' 4-bit weights cannot take",
        "load_in_8bit": "switching to eval, RWKV divides its output layers' weights in place "
        "(rescale_every), which bitsandbytes' 8-bit weights cannot take",
    },
    adapter_target_modules=("key", "value", "receptance", "output"),
    decoder_layer="RwkvBlock",
    prepare_tokenizer=prepare_rwkv_tokenizer,
    attn_implementations=("eager",),
    tiny_config=tiny_rwkv_config,
    description="RWKV-4 (recurrent, no attention)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the rwkv family."""
    register(RWKV)
