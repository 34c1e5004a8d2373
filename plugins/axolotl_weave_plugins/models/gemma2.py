"""The gemma2 family (Google Gemma 2: 2B, 9B, 27B).

Gemma's quirks (embeddings scaled by sqrt(hidden_size), tied output head, (1 + weight) RMSNorm,
GeGLU, 256k vocabulary) plus: soft-capping of the attention logits (`attn_logit_softcapping`,
50) and of the final logits (`final_logit_softcapping`, 30); layers alternate between sliding-
window (4096) and global attention; queries are scaled by `query_pre_attn_scalar`, not
head_dim; each block has extra norms after attention and after the MLP. Transformers' SDPA
path cannot soft-cap, so the model does not support `sdpa`: use eager (the reference for
training), flash-attention 2 (which soft-caps) or flex attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

GEMMA_PAD = "<pad>"


def prepare_gemma2_tokenizer(tokenizer: Any) -> None:
    """Give a gemma2 tokenizer a pad token if it lacks one: `<pad>`, else EOS."""
    set_pad_token(tokenizer, GEMMA_PAD, "eos_token")


def tiny_gemma2_config() -> dict[str, Any]:
    """A two-layer gemma2: one sliding-window layer, one global, soft-capping on."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 16,
        "max_position_embeddings": 128,
    }


GEMMA2 = ModelFamily(
    name="gemma2",
    model_types=("gemma2",),
    adapter_target_modules=(
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    decoder_layer="Gemma2DecoderLayer",
    prepare_tokenizer=prepare_gemma2_tokenizer,
    attn_implementations=("eager", "flash_attention_2", "flex_attention"),
    kernels=("liger",),
    tiny_config=tiny_gemma2_config,
    description="Gemma 2 (logit soft-capping, so no SDPA; alternating sliding-window layers)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the gemma2 family."""
    register(GEMMA2)
