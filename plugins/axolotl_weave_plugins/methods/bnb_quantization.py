"""`load_in_8bit` / `load_in_4bit`: load the base model quantized by bitsandbytes, for (Q)LoRA.

Answers `load_model` first (`tryfirst`) when one of the two keys is set, loading the weights
through the generic loader with a `transformers.BitsAndBytesConfig` and preparing the model for
k-bit training (`peft.prepare_model_for_kbit_training`: norms and embeddings in float32, the
input gradients a frozen base needs). The `lora` plugin's `load_model` wrapper then wraps the
quantized model. 4-bit defaults are Axolotl's: NF4, double quantization, the compute dtype of
the run's precision; `bnb_config_kwargs` overrides them. bitsandbytes and a CUDA GPU are needed.
"""

from __future__ import annotations

import os
from typing import Any

from axolotl_weave import (
    MissingDependencyError,
    ModelFamily,
    PluginConfig,
    hookimpl,
    resolve_precision,
)
from pydantic import Field, model_validator

from axolotl_weave_plugins.models.hf_causal_lm import load_pretrained

PLUGIN_KIND = "method"

INT8_KEYS = frozenset(
    {
        "llm_int8_threshold",
        "llm_int8_skip_modules",
        "llm_int8_enable_fp32_cpu_offload",
        "llm_int8_has_fp16_weight",
    }
)
"""`bnb_config_kwargs` keys that apply to 8-bit (and 4-bit) loading."""
INT4_KEYS = frozenset(
    {
        "bnb_4bit_compute_dtype",
        "bnb_4bit_quant_type",
        "bnb_4bit_use_double_quant",
        "bnb_4bit_quant_storage",
    }
)
"""`bnb_config_kwargs` keys that apply to 4-bit loading only."""


class BnbSettings(PluginConfig):
    """bitsandbytes quantization keys, with Axolotl's names."""

    load_in_8bit: bool = Field(False, description="Load the base in 8 bits (LoRA on top).")
    load_in_4bit: bool = Field(False, description="Load the base in 4 bits (QLoRA).")
    bnb_config_kwargs: dict[str, Any] | None = Field(
        None,
        description="Overrides of the BitsAndBytesConfig: bnb_4bit_quant_type (nf4 or fp4), "
        "bnb_4bit_use_double_quant, bnb_4bit_compute_dtype, bnb_4bit_quant_storage, llm_int8_*.",
    )

    @model_validator(mode="after")
    def _check_bnb_keys(self) -> BnbSettings:
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("load_in_8bit and load_in_4bit: choose one")
        bits = "load_in_4bit" if self.load_in_4bit else "load_in_8bit"
        if (self.load_in_8bit or self.load_in_4bit) and not getattr(self, "adapter", None):
            raise ValueError(
                f"{bits}: a quantized base cannot be fully fine-tuned: set adapter: qlora "
                "(4-bit) or adapter: lora, or remove the key"
            )
        kwargs = self.bnb_config_kwargs or {}
        unknown = sorted(set(kwargs) - INT8_KEYS - INT4_KEYS)
        if unknown:
            raise ValueError(
                f"bnb_config_kwargs: unknown key(s) {', '.join(unknown)} (load_in_4bit and "
                "load_in_8bit are top-level keys); valid: "
                f"{', '.join(sorted(INT4_KEYS | INT8_KEYS))}"
            )
        if self.load_in_8bit and set(kwargs) & INT4_KEYS:
            raise ValueError(
                f"bnb_config_kwargs: {', '.join(sorted(set(kwargs) & INT4_KEYS))} apply to "
                "load_in_4bit, not load_in_8bit"
            )
        quant_type = kwargs.get("bnb_4bit_quant_type", "nf4")
        if quant_type not in ("nf4", "fp4"):
            raise ValueError(
                f"bnb_config_kwargs.bnb_4bit_quant_type: '{quant_type}' is not nf4 or fp4"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The quantization keys."""
    return BnbSettings


def quantization_kwargs(cfg: Any) -> dict[str, Any]:
    """The `BitsAndBytesConfig` arguments for the config: Axolotl's defaults, then
    `bnb_config_kwargs`."""
    overrides = dict(cfg.bnb_config_kwargs or {})
    if cfg.load_in_8bit:
        return {"load_in_8bit": True, **overrides}
    precision = resolve_precision(cfg)
    compute = {"bf16": "bfloat16", "fp16": "float16"}.get(
        precision.mixed_precision, precision.weight_dtype
    )
    return {
        "load_in_4bit": True,
        "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False,
        "bnb_4bit_compute_dtype": compute,
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_quant_storage": "bfloat16",
        **overrides,
    }


def require_bitsandbytes(cfg: Any) -> None:
    """Raise one `MissingDependencyError` naming what is missing: bitsandbytes, a CUDA GPU."""
    import torch

    missing = []
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        missing.append("bitsandbytes (not installed)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible)")
    if missing:
        key, bits = ("load_in_4bit", 4) if cfg.load_in_4bit else ("load_in_8bit", 8)
        raise MissingDependencyError(
            f"{key}: {bits}-bit quantization needs the package bitsandbytes (pip install "
            f"bitsandbytes) and a CUDA GPU; missing here: {' and '.join(missing)}. Without a "
            "GPU, train with adapter: lora and no load_in_4bit / load_in_8bit"
        )


@hookimpl(tryfirst=True)
def load_model(cfg: Any, tokenizer: Any, family: ModelFamily | None) -> Any:
    """Load the base quantized when `load_in_8bit` or `load_in_4bit` is set; else None."""
    if not (cfg.load_in_8bit or cfg.load_in_4bit):
        return None
    require_bitsandbytes(cfg)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    kwargs: dict[str, Any] = {"quantization_config": BitsAndBytesConfig(**quantization_kwargs(cfg))}
    if "device_map" not in (getattr(cfg, "overrides_of_model_kwargs", None) or {}):
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # this process's GPU
    model = load_pretrained(cfg, tokenizer, family, **kwargs)
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=bool(getattr(cfg, "gradient_checkpointing", False))
    )
