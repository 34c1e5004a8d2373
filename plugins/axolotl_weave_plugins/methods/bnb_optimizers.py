"""bitsandbytes optimizers by the names Axolotl and Hugging Face's Trainer give them.

`optimizer: adamw_bnb_8bit` (or `adamw_8bit`, `paged_adamw_8bit`, `paged_adamw_32bit`,
`paged_adamw`, `lion_8bit`, `lion_32bit`, `paged_lion_8bit`, `paged_lion_32bit`): 8-bit optimizer
states take a quarter of AdamW's memory; paged ones spill to CPU memory under pressure (on the CPU,
bitsandbytes runs them unpaged, and says so). They need `bitsandbytes` (on a CUDA GPU, or on the CPU
from 0.50 on): without it the run stops naming what to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import hookimpl, require

from axolotl_weave_plugins.methods._bnb import quiet_hub_kernel_notice

PLUGIN_KIND = "method"

quiet_hub_kernel_notice()  # before anything imports bitsandbytes, as bnb_quantization does

OPTIMIZER_CLASSES = {
    "adamw_bnb_8bit": "AdamW8bit",
    "adamw_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
    "paged_adamw": "PagedAdamW",
    "lion_8bit": "Lion8bit",
    "lion_32bit": "Lion32bit",
    "paged_lion_8bit": "PagedLion8bit",
    "paged_lion_32bit": "PagedLion32bit",
}
"""`optimizer:` name -> class in `bitsandbytes.optim`."""


def builder(class_name: str) -> Callable[[list[dict[str, Any]], Any], Any]:
    """A function building `bitsandbytes.optim.<class_name>` over the core's parameter groups."""

    def build(param_groups: list[dict[str, Any]], cfg: Any) -> Any:
        bnb = require(
            "bitsandbytes",
            feature=f"optimizer: {cfg.optimizer}",
            install="'bitsandbytes>=0.50' (CUDA GPUs, and the CPU from 0.50 on)",
        )
        optimizer_class = getattr(bnb.optim, class_name)
        betas = (cfg.adam_beta1, cfg.adam_beta2)
        if class_name.startswith(("Lion", "PagedLion")):
            return optimizer_class(param_groups, lr=cfg.learning_rate, betas=betas)
        return optimizer_class(
            param_groups, lr=cfg.learning_rate, betas=betas, eps=cfg.adam_epsilon
        )

    return build


@hookimpl
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register the bitsandbytes optimizers."""
    for name, class_name in OPTIMIZER_CLASSES.items():
        register(name, builder(class_name))
