"""Shared by the mixture-of-experts family plugins (mixtral, qwen2_moe, qwen3_moe, gpt_oss,
jamba): the router settings every one of them applies when its model loads.

Not a plugin (no entry point): a helper of the family plugins in this folder.
"""

from __future__ import annotations

from typing import Any


def apply_router_settings(model: Any, cfg: Any) -> None:
    """Switch the router's auxiliary loss on or off and set its weight, as the config asks.

    Keys left unset (or absent, without the mixtral plugin, which declares them) keep what the
    model config says (so `overrides_of_model_config` still works). The weight is set on the
    model as well as its config: the `...ForCausalLM` copies it when it is built.
    """
    wanted = getattr(cfg, "output_router_logits", None)
    coef = getattr(cfg, "router_aux_loss_coef", None)
    if wanted is not None:
        model.config.output_router_logits = wanted
    if coef is not None:
        model.config.router_aux_loss_coef = coef
        if hasattr(model, "router_aux_loss_coef"):
            model.router_aux_loss_coef = coef
