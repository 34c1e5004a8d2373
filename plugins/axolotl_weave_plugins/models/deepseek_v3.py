"""The deepseek_v3 family (DeepSeek-V3 / R1 and models built on its architecture: Kimi K2,
Moonlight).

Multi-head latent attention (MLA): queries go through a low-rank bottleneck (`q_a_proj`, a norm,
`q_b_proj`; a plain `q_proj` when `q_lora_rank` is null, as in Moonlight), keys and values are
compressed together (`kv_a_proj_with_mqa`, a norm, `kv_b_proj`), with a separate rotary part of
the query/key heads (`qk_rope_head_dim`) and value heads narrower than query/key heads. The
first `first_k_dense_replace` layers have a dense MLP; the rest a MoE block of many routed
experts (256, top-8, sigmoid scores, group-limited routing) plus shared experts.

Transformers stores the routed experts as fused 3-D parameters (`mlp.experts.gate_up_proj`,
`mlp.experts.down_proj`), not `nn.Linear` modules. The dense layers' and shared experts'
projections are `nn.Linear`, but naming `gate_proj`/`up_proj`/`down_proj` in `target_modules`
does not reach them: peft (0.21, on transformers 5) rewrites those names, for this model type,
to `target_parameters` on the routed experts' fused tensors (rank doubled on `gate_up_proj`), as
transformers 4 checkpoints of adapters expect. The default LoRA targets are therefore the
attention projections only; name the MLP projections to adapt the routed experts on purpose.

DeepSeek-V3 balances its experts without an auxiliary loss (a bias on the routing scores,
`e_score_correction_bias`, which fine-tuning leaves as it is), and `DeepseekV3ForCausalLM`
computes no router auxiliary loss: asking for one (`output_router_logits: true`, the key the
mixtral plugin declares) is refused rather than silently ignored. The released weights are FP8
(block-quantized); the multi-token-prediction layer is skipped on load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ConfigError, ModelFamily, hookimpl, set_pad_token

PLUGIN_KIND = "model"

DEEPSEEK_PAD = "<\uff5c\u2581pad\u2581\uff5c>"  # <｜▁pad▁｜>, id 2 in the DeepSeek-V3 vocabulary


def prepare_deepseek_v3_tokenizer(tokenizer: Any) -> None:
    """Give a deepseek_v3 tokenizer a pad token if it lacks one: `<｜▁pad▁｜>`, else EOS."""
    set_pad_token(tokenizer, DEEPSEEK_PAD, "eos_token")


def check_router_settings(model: Any, cfg: Any) -> None:
    """Refuse `output_router_logits: true`: transformers' DeepSeek-V3 has no auxiliary loss.

    DeepSeek-V3 routes with aux-loss-free balancing, and `DeepseekV3ForCausalLM` never adds a
    router loss to its output, so the key would silently do nothing. `router_aux_loss_coef`
    alone (without `output_router_logits: true`) changes nothing and is let through.
    """
    if getattr(cfg, "output_router_logits", None):
        raise ConfigError(
            "output_router_logits: deepseek_v3 has no router auxiliary loss in transformers "
            "(DeepSeek-V3 balances its experts with a routing bias instead); remove the key"
        )


def tiny_deepseek_v3_config() -> dict[str, Any]:
    """A two-layer deepseek_v3: a dense layer, then a MoE layer of 4 routed experts (top-2)
    and one shared expert, with rank-16 query and key/value bottlenecks."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "first_k_dense_replace": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 16,
        "kv_lora_rank": 16,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "n_group": 1,
        "topk_group": 1,
        "max_position_embeddings": 128,
    }


DEEPSEEK_V3 = ModelFamily(
    name="deepseek_v3",
    model_types=("deepseek_v3",),
    adapter_target_modules=(
        "q_proj",
        "q_a_proj",
        "q_b_proj",
        "kv_a_proj_with_mqa",
        "kv_b_proj",
        "o_proj",
    ),
    decoder_layer="DeepseekV3DecoderLayer",
    prepare_tokenizer=prepare_deepseek_v3_tokenizer,
    prepare_model=check_router_settings,
    attn_implementations=("eager", "sdpa", "flash_attention_2", "flex_attention"),
    tiny_config=tiny_deepseek_v3_config,
    description="DeepSeek-V3/R1, Kimi K2, Moonlight (MLA; fused experts: LoRA on attention)",
)


@hookimpl
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the deepseek_v3 family."""
    register(DEEPSEEK_V3)
