"""The gemma3 family (Google Gemma 3: the text-only 1B and the multimodal 4B, 12B, 27B).

`gemma3_text` loads as `Gemma3ForCausalLM`. A multimodal `gemma3` checkpoint also loads through
`AutoModelForCausalLM`, as `Gemma3ForConditionalGeneration` (SigLIP vision tower and projector
included); text-only batches train it as a language model. The default LoRA target names then
also match the vision tower's q/k/v projections: give `lora_target_modules` a regex such as
`model.language_model.layers.[\\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj` to adapt the
language model only. Under FSDP the vision tower's layers are not wrapped separately.

Gemma's quirks (embeddings scaled by sqrt(hidden_size), tied output head, (1 + weight) RMSNorm,
GeGLU, 262k vocabulary) plus: QK-norm replaces Gemma 2's soft-capping (so SDPA works); five
sliding-window (1024) layers to one global layer, with separate rotary bases (10k local, 1M
global); queries are scaled by `query_pre_attn_scalar`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

GEMMA_PAD = "<pad>"


def prepare_gemma3_tokenizer(tokenizer: Any) -> None:
    """Give a gemma3 tokenizer a pad token if it lacks one: `<pad>`, else EOS."""
    set_pad_token(tokenizer, GEMMA_PAD, "eos_token")


def tiny_gemma3_config() -> dict[str, Any]:
    """A two-layer gemma3 text model: one sliding-window layer, one global."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 128,
    }


GEMMA3 = ModelFamily(
    name="gemma3",
    model_types=("gemma3_text", "gemma3"),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="Gemma3DecoderLayer",
    prepare_tokenizer=prepare_gemma3_tokenizer,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_gemma3_config,
    description="Gemma 3 text and multimodal checkpoints (QK-norm, 5:1 sliding-window layers)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the gemma3 family."""
    register(GEMMA3)
