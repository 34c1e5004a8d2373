"""`load_in_8bit` / `load_in_4bit`: load the base model quantized by bitsandbytes, for (Q)LoRA.

When one of the two keys is set, it gives whichever plugin loads the model (`load_model`) a
`transformers.BitsAndBytesConfig` and a device map (`model_load_kwargs`), for training and
inference (`weave merge-lora` loads the base unquantized). Its `load_model` wrapper, innermost,
refuses a family that cannot be quantized before the weights load, and afterwards prepares the
model for k-bit training (`peft.prepare_model_for_kbit_training`: norms and embeddings in
float32, the input gradients a frozen base needs); the `lora` plugin's wrapper then wraps the
quantized model. 4-bit defaults are Axolotl's: NF4, double quantization, the compute dtype of
the run's precision; `bnb_config_kwargs` overrides them. bitsandbytes is needed: on a CUDA GPU,
or on the CPU from bitsandbytes 0.50 on (its CPU backend quantizes, trains and merges there: the
CPU cells of the support matrix run QLoRA and 8-bit LoRA in CI).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator
from typing import Any

from axolotl_weave import (
    CapabilityError,
    MissingDependencyError,
    ModelFamily,
    PluginConfig,
    hookimpl,
    resolve_precision,
)
from pydantic import Field, model_validator

from axolotl_weave_plugins.methods._bnb import quiet_hub_kernel_notice

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")

CPU_MIN_VERSION = "0.50"
"""The first bitsandbytes whose CPU backend was checked here to quantize, train and merge."""
INSTALL = f"pip install 'bitsandbytes>={CPU_MIN_VERSION}'"

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
    """Raise one `MissingDependencyError` naming what is missing: bitsandbytes, or (without a
    CUDA GPU) a bitsandbytes recent enough to quantize on the CPU."""
    import torch
    from packaging.version import Version

    key, bits = ("load_in_4bit", 4) if cfg.load_in_4bit else ("load_in_8bit", 8)
    try:
        import bitsandbytes
    except ImportError as exc:
        raise MissingDependencyError(
            f"{key}: {bits}-bit quantization needs the package bitsandbytes, which is not "
            f"installed: {INSTALL} (it runs on CUDA GPUs, and on the CPU from "
            f"{CPU_MIN_VERSION} on)"
        ) from exc
    found = Version(bitsandbytes.__version__)
    if not torch.cuda.is_available() and found < Version(CPU_MIN_VERSION):
        raise MissingDependencyError(
            f"{key}: no CUDA GPU is visible, and bitsandbytes {found} was not checked to "
            f"quantize on the CPU; bitsandbytes {CPU_MIN_VERSION} and later do: {INSTALL} -U"
        )


quiet_hub_kernel_notice()  # before anything imports bitsandbytes


def keep_cpu_layers_differentiable(model: Any) -> Any:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit layers; return the model.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a `Linear4bit`'s weights for a bf16
    inference kernel the first time the layer runs in eval mode with an input that needs no
    gradient, and from then on runs the layer through that kernel, which has no backward. A
    training step after an evaluation would then get no gradient through the frozen base (no
    LoRA weight would learn), and an eval-mode forward differs from the training one (bf16).
    Without the repacking every forward dequantizes and multiplies in the compute dtype, the
    same in training and evaluation (tests/test_lora_methods.py checks both)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def flatten_int8_inputs(model: Any) -> Any:
    """Give every 8-bit layer its input as (rows, features), and its output back in the
    input's leading shape; return the model.

    bitsandbytes' 8-bit matmul (0.50) flattens 3-D inputs to rows but not 4-D ones, whose
    outlier columns it then finds along the wrong dimension and fails on (deepseek_v3's
    attention feeds `kv_b_proj` 4-D latents)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            module.register_forward_pre_hook(_flatten_input)
            module.register_forward_hook(_restore_output_shape)
    return model


def _flatten_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: an input of more than 3 dimensions as rows (its shape remembered)."""
    if args[0].dim() <= 3:
        return None
    module._leading_shape = args[0].shape[:-1]
    return (args[0].reshape(-1, args[0].shape[-1]), *args[1:])


def _restore_output_shape(module: Any, args: tuple[Any, ...], output: Any) -> Any:
    """Forward hook: the output in the leading shape `_flatten_input` remembered."""
    shape = module.__dict__.pop("_leading_shape", None)
    return None if shape is None else output.reshape(*shape, output.shape[-1])


def device_map() -> dict[str, Any]:
    """Every module on this process's GPU (LOCAL_RANK), or on the CPU without one."""
    import torch

    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"": "cpu"}


QUANTIZED_PURPOSES = ("train", "infer")
"""The `load_model` purposes that load the base quantized (a merge folds into full weights)."""


def quantized_key(cfg: Any, purpose: str) -> str | None:
    """`load_in_4bit` or `load_in_8bit` when the base loads quantized for `purpose`, else None."""
    if purpose not in QUANTIZED_PURPOSES:
        return None
    if cfg.load_in_4bit:
        return "load_in_4bit"
    return "load_in_8bit" if cfg.load_in_8bit else None


@hookimpl
def model_load_kwargs(cfg: Any, purpose: str, kwargs: dict[str, Any]) -> None:
    """The `BitsAndBytesConfig`, and every module on this process's device unless
    `overrides_of_model_kwargs` places them, when the base loads quantized."""
    if quantized_key(cfg, purpose) is None:
        if purpose == "merge" and (cfg.load_in_4bit or cfg.load_in_8bit):
            log.info("merge-lora: the base loads unquantized (the merged model is not quantized)")
        return
    from transformers import BitsAndBytesConfig

    kwargs["quantization_config"] = BitsAndBytesConfig(**quantization_kwargs(cfg))
    if "device_map" not in (getattr(cfg, "overrides_of_model_kwargs", None) or {}):
        kwargs["device_map"] = device_map()


@hookimpl(wrapper=True, trylast=True)
def load_model(cfg: Any, family: ModelFamily | None, purpose: str) -> Generator[None, Any, Any]:
    """Before the weights load: refuse a family that cannot be quantized, and a missing
    bitsandbytes. After: the quantized layers fixed for training and, for training, the model
    prepared for k-bit training (innermost: before an adapter wraps it)."""
    key = quantized_key(cfg, purpose)
    if key is None:
        return (yield)
    reason = family.cannot.get(key) if family is not None else None
    if reason:
        raise CapabilityError(
            f"{key}: the '{family.name}' family cannot be quantized by bitsandbytes: {reason}"
        )
    require_bitsandbytes(cfg)
    model = yield
    model = flatten_int8_inputs(keep_cpu_layers_differentiable(model))
    if purpose != "train":
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=bool(getattr(cfg, "gradient_checkpointing", False))
    )
