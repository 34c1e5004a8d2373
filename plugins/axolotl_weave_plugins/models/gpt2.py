"""The gpt2 family (GPT-2 and Cerebras-GPT, whose config says `model_type: gpt2`).

Its projections are transformers `Conv1D` layers (weights stored transposed), so LoRA on them
needs `fan_in_fan_out=True` (Axolotl's `lora_fan_in_fan_out: true`); peft switches it on by
itself, with a warning, when it finds a `Conv1D` target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"


def prepare_gpt2_tokenizer(tokenizer: Any) -> None:
    """Give a GPT-2 tokenizer (which has no pad token) EOS `<|endoftext|>` as its pad token."""
    set_pad_token(tokenizer, "eos_token")


def tiny_gpt2_config() -> dict[str, Any]:
    """A two-layer gpt2 (learned positions, tied embeddings), its special tokens in range."""
    return {
        "n_embd": 64,
        "n_inner": 128,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 128,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


GPT2 = ModelFamily(
    name="gpt2",
    model_types=("gpt2",),
    cannot={
        "gptq": "transformers cannot load a GPT-2 GPTQ checkpoint (its GPT-2 weight "
        "initialisation reads `.weight` of the packed GPTQ layers)",
    },
    adapter_target_modules=("c_attn", "c_proj", "c_fc"),
    decoder_layer="GPT2Block",
    prepare_tokenizer=prepare_gpt2_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2"),
    tiny_config=tiny_gpt2_config,
    description="GPT-2 and Cerebras-GPT (Conv1D projections: LoRA needs fan_in_fan_out)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the gpt2 family."""
    register(GPT2)
