"""The torchao quantization schemes behind `qat:` and `quantization:` (Axolotl's keys).

A scheme is a weight dtype, an optional activation dtype and a group size. Each names one
torchao post-training quantization config (`ptq_config`); quantization-aware training fakes
*that same* config's numerics with torchao's own derivation (`QATConfig(base, step="prepare")`),
so the model `weave quantize` writes computes what training saw. (Axolotl builds its int4 weight
fake-quantizer by hand, whose rounding differs from the int4 weights it then writes.)

Not a plugin (no entry point): a helper of `methods/qat.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

DTYPE_ALIASES = {
    "int4": "int4",
    "int8": "int8",
    "float8_e4m3fn": "float8_e4m3fn",
    "fp8": "float8_e4m3fn",
    "float8": "float8_e4m3fn",
    "nvfp4": "nvfp4",
    "mxfp4": "mxfp4",
}
"""Axolotl's spellings of the dtypes -> the one used here."""

QuantDtype = Literal["int4", "int8", "float8_e4m3fn", "nvfp4", "mxfp4"]

SCHEMES: dict[tuple[str, str | None], str] = {
    ("int4", "int8"): "int8 dynamic activations, int4 weights in groups (torchao "
    "Int8DynamicActivationIntxWeightConfig; runs on the CPU)",
    ("int8", "int8"): "int8 dynamic activations, int8 weights in groups (torchao "
    "Int8DynamicActivationIntxWeightConfig; runs on the CPU)",
    ("int8", None): "int8 weights in groups (torchao IntxWeightOnlyConfig; runs on the CPU)",
    ("int4", None): "int4 weights in groups (torchao Int4WeightOnlyConfig; a CUDA GPU)",
    ("float8_e4m3fn", "float8_e4m3fn"): "float8 activations and weights (torchao "
    "Float8DynamicActivationFloat8WeightConfig; a GPU of compute capability 8.9 or more)",
    ("int4", "float8_e4m3fn"): "float8 activations, int4 weights (torchao "
    "Float8DynamicActivationInt4WeightConfig; a CUDA GPU)",
    ("nvfp4", "nvfp4"): "NVFP4 activations and weights in blocks of 16 (torchao "
    "NVFP4DynamicActivationNVFP4WeightConfig; a CUDA GPU)",
    ("mxfp4", "mxfp4"): "MXFP4 activations and weights in blocks of 32 (torchao "
    "MXDynamicActivationMXWeightConfig; a CUDA GPU)",
}
"""(weight_dtype, activation_dtype) -> what it is; every other pair is refused."""

FIXED_GROUP = {"nvfp4": 16, "mxfp4": 32}
"""Formats whose block size is part of the format: `group_size` must be it (or unset)."""


def read_dtype(value: Any) -> str | None:
    """Axolotl's dtype spelling -> ours; None stays None; anything else is refused."""
    if value is None:
        return None
    name = DTYPE_ALIASES.get(str(value))
    if name is None:
        raise ValueError(f"{value!r} is not a dtype here; valid: {', '.join(DTYPE_ALIASES)}")
    return name


def check_scheme(weight: str, activation: str | None, group_size: int | None) -> None:
    """Refuse a pair of dtypes with no torchao scheme, or a block format's wrong group size."""
    if (weight, activation) not in SCHEMES:
        valid = "; ".join(
            f"weight_dtype {w}" + (f" with activation_dtype {a}" if a else " alone")
            for w, a in SCHEMES
        )
        raise ValueError(
            f"weight_dtype {weight} with activation_dtype {activation} has no torchao scheme; "
            f"valid: {valid}"
        )
    fixed = FIXED_GROUP.get(weight)
    if fixed and group_size not in (None, fixed):
        raise ValueError(f"{weight} quantizes in blocks of {fixed}: set group_size: {fixed}")


def ptq_config(weight: str, activation: str | None, group_size: int | None) -> Any:
    """The torchao post-training quantization config of a scheme (`check_scheme` passed)."""
    import torch
    from torchao.quantization.granularity import PerGroup

    groups = PerGroup(group_size) if group_size else None
    if activation == "int8":
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig

        kwargs: dict[str, Any] = {"weight_dtype": getattr(torch, weight)}
        if groups is not None:
            kwargs["weight_granularity"] = groups
        return Int8DynamicActivationIntxWeightConfig(**kwargs)
    if (weight, activation) == ("int8", None):
        from torchao.quantization import IntxWeightOnlyConfig

        return IntxWeightOnlyConfig(
            weight_dtype=torch.int8, **({"granularity": groups} if groups else {})
        )
    if (weight, activation) == ("int4", None):
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(**({"group_size": group_size} if group_size else {}))
    if activation == "float8_e4m3fn":
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Float8DynamicActivationInt4WeightConfig,
        )

        if weight == "int4":
            return Float8DynamicActivationInt4WeightConfig()
        return Float8DynamicActivationFloat8WeightConfig()
    if weight == "nvfp4":
        from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig

        return NVFP4DynamicActivationNVFP4WeightConfig()
    from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig

    return MXDynamicActivationMXWeightConfig(
        activation_dtype=torch.float4_e2m1fn_x2, weight_dtype=torch.float4_e2m1fn_x2, block_size=32
    )


def embedding_config(weight: str, group_size: int | None) -> Any:
    """The weight-only config quantizing the input embedding (activations are token ids)."""
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if weight not in ("int4", "int8"):
        raise ValueError(f"quantize_embedding needs weight_dtype int4 or int8, not {weight}")
    kwargs = {"granularity": PerGroup(group_size)} if group_size else {}
    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, weight), **kwargs)


def is_embedding(module: Any, _name: str) -> bool:
    """torchao filter: the embedding layers."""
    import torch

    return isinstance(module, torch.nn.Embedding)


def linear_layers(model: Any, *, output_layer: bool) -> Callable[[Any, str], bool]:
    """torchao filter: the linear layers, the output layer (lm_head) only with `output_layer`.

    The output layer goes with the input embedding (`quantize_embedding`), as transformers'
    `TorchAoConfig(include_input_output_embeddings=...)` treats both; left plain, the fused
    cross-entropy kernels (Liger's, cut cross-entropy), which multiply by its weight
    themselves, still apply.
    """
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def wanted(module: Any, _name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and (output_layer or module is not head)

    return wanted


def fake_quantize(model: Any, base: Any, embedding: Any | None) -> None:
    """Swap the model's linear layers (and, with `embedding`, its input embedding and output
    layer) for torchao's fake-quantized ones, whose forward rounds as `base` (and `embedding`)
    would, in place."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    with_ends = embedding is not None
    quantize_(
        model,
        QATConfig(base, step="prepare"),
        filter_fn=linear_layers(model, output_layer=with_ends),
    )
    if with_ends:
        quantize_(model, QATConfig(embedding, step="prepare"), filter_fn=is_embedding)


def unfake_quantize(model: Any) -> None:
    """Swap torchao's fake-quantized layers back for plain ones, their weights kept, in place."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(step="convert"))
    quantize_(model, QATConfig(step="convert"), filter_fn=is_embedding)


def set_fake_quantization(model: Any, enabled: bool) -> int:
    """Turn every fake-quantizer of the model on or off; return how many there are."""
    from torchao.quantization.qat.embedding import FakeQuantizedEmbedding
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    count = 0
    for module in model.modules():
        if isinstance(module, FakeQuantizedLinear | FakeQuantizedEmbedding):
            for name in ("activation_fake_quantizer", "weight_fake_quantizer"):
                quantizer = getattr(module, name, None)
                if quantizer is not None and hasattr(quantizer, "enabled"):
                    quantizer.enabled = enabled
                    count += 1
    return count


def quantize(model: Any, base: Any, embedding: Any | None) -> None:
    """Quantize the model's linear layers (with `embedding`, its input embedding and output
    layer too) with torchao, in place, and attach
    transformers' torchao quantizer, so `save_pretrained` writes a checkpoint that
    `from_pretrained` loads quantized."""
    from torchao.quantization import quantize_
    from transformers import TorchAoConfig
    from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer

    with_ends = embedding is not None
    quantize_(model, base, filter_fn=linear_layers(model, output_layer=with_ends))
    if with_ends:
        quantize_(model, embedding, filter_fn=is_embedding)
    config = TorchAoConfig(quant_type=base, include_input_output_embeddings=embedding is not None)
    model.config.quantization_config = config
    model.hf_quantizer = TorchAoHfQuantizer(config)
