"""Scalable softmax, SSMax (Axolotl's `scaling_softmax`, `scaling_softmax_factor`,
`scaling_softmax_bias`; Nakanishi, 2025, "Scalable-Softmax Is Superior for Attention"): each
attention score of the query at position n (counted from 1 within its sequence, at least 2) is
multiplied by `s * log(n) + b` before the softmax, so that attention does not flatten as the
context grows. `s` is `scaling_softmax_factor` (default 0.43), `b` `scaling_softmax_bias`
(default 0), both fixed, as in Axolotl's patch.

The scores are scaled by scaling each query: the model's own attention (its configured
implementation: eager, sdpa, flash, flex or the packed kernels) runs on the scaled queries, under
a registered name `ssmax_<implementation>` with the same mask builder, on every model loaded
from the config (for training and for inference alike). Positions come from the
batch's position ids (packed sequences restart), as Axolotl's flex score function reads them.
Axolotl requires flex attention for it; here any implementation does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator
from typing import Any

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field

PLUGIN_KIND = "method"

PREFIX = "ssmax_"


class ScalingSoftmaxSettings(PluginConfig):
    """`scaling_softmax` and its two constants (Axolotl's names)."""

    scaling_softmax: bool = Field(
        False, description="SSMax: scale each query's attention scores by s*log(n)+b."
    )
    scaling_softmax_factor: float | None = Field(None, description="SSMax's s (default 0.43).")
    scaling_softmax_bias: float | None = Field(None, description="SSMax's b (default 0).")


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`scaling_softmax`, `scaling_softmax_factor`, `scaling_softmax_bias`."""
    return ScalingSoftmaxSettings


def query_scale(query: Any, factor: float, bias: float, positions: Any) -> Any:
    """`(batch or 1, 1, length, 1)` multipliers `factor * log(max(n, 2)) + bias`, n the query's
    1-based position (`positions`: `(batch, length)` ids, or None for 0, 1, ...)."""
    import torch

    length = query.shape[2]
    if positions is None:
        positions = torch.arange(length, device=query.device).unsqueeze(0)
    n = (positions[..., -length:].to(query.device).float() + 1).clamp(min=2.0)
    return (factor * n.log() + bias)[:, None, :, None]


def base_attention(name: str, module: Any) -> Callable[..., Any]:
    """The attention function `name` stands for on `module` (eager: its model's own)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def scaled_attention(name: str, factor: float, bias: float) -> Callable[..., Any]:
    """An attention function running `name` on the SSMax-scaled queries."""

    def attention(
        module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
    ) -> Any:
        positions = kwargs.get("position_ids")
        scale = query_scale(query, factor, bias, positions)
        scaled = (query.float() * scale).to(query.dtype)
        return base_attention(name, module)(module, scaled, key, value, attention_mask, **kwargs)

    attention.__name__ = f"{PREFIX}{name}"
    return attention


def apply_scaling_softmax(model: Any, factor: float, bias: float) -> str:
    """Put SSMax on `model`'s configured attention; the registered name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    name = model.config._attn_implementation or "eager"
    if name.startswith(PREFIX):
        return name
    wrapped = f"{PREFIX}{name}"
    AttentionInterface.register(wrapped, scaled_attention(name, factor, bias))
    if name in ALL_MASK_ATTENTION_FUNCTIONS:
        ALL_MASK_ATTENTION_FUNCTIONS.register(wrapped, ALL_MASK_ATTENTION_FUNCTIONS[name])
    model.set_attn_implementation(wrapped)
    return wrapped


def apply_configured(model: Any, cfg: Any) -> None:
    """SSMax with the config's constants, when `scaling_softmax` is on."""
    if getattr(cfg, "scaling_softmax", False):
        factor = cfg.scaling_softmax_factor
        bias = cfg.scaling_softmax_bias
        apply_scaling_softmax(model, 0.43 if factor is None else factor, bias or 0.0)


@hookimpl(wrapper=True)
def load_model(cfg: Any) -> Generator[None, Any, Any]:
    """SSMax on every model loaded from the config (training, inference, serving, merging:
    the model was trained with it)."""
    model = yield
    apply_configured(model, cfg)
    return model


@hookimpl(trylast=True)
def patch_attention(model: Any, cfg: Any, family: Any) -> None:
    """SSMax again on the attention another plugin set after loading (`attn_implementation`)."""
    apply_configured(model, cfg)
