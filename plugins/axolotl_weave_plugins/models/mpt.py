"""The mpt family (MosaicML MPT-7B / MPT-30B, in transformers' native `MptForCausalLM`).

ALiBi position bias inside the attention, so only the eager attention implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

NEOX_PAD = "<|padding|>"


def prepare_mpt_tokenizer(tokenizer: Any) -> None:
    """Give MPT's GPT-NeoX tokenizer a pad token: its reserved `<|padding|>`, else EOS."""
    set_pad_token(tokenizer, NEOX_PAD, "eos_token")


def tiny_mpt_config() -> dict[str, Any]:
    """A two-layer mpt (ALiBi, MLP twice the width)."""
    return {
        "d_model": 64,
        "n_heads": 4,
        "n_layers": 2,
        "expansion_ratio": 2,
        "max_seq_len": 128,
    }


MPT = ModelFamily(
    name="mpt",
    model_types=("mpt",),
    cannot={
        "sample_packing": (
            "its ALiBi bias and attention mask ignore position_ids"
            " (packed samples would attend to each other)"
        ),
    },
    adapter_target_modules=("Wqkv", "out_proj", "up_proj", "down_proj"),
    decoder_layer="MptBlock",
    prepare_tokenizer=prepare_mpt_tokenizer,
    attn_implementations=("eager",),
    tiny_config=tiny_mpt_config,
    description="MosaicML MPT-7B / MPT-30B",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the mpt family."""
    register(MPT)
