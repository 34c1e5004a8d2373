"""Resolving `bf16` / `fp16` / `tf32` (`auto` detects) into weight dtype and mixed precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from axolotl_weave._errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """How to hold weights and run the forward pass.

    weight_dtype: "bfloat16" or "float32" (a torch dtype name; fp16 keeps fp32 master weights).
    mixed_precision: accelerate's mode: "no", "bf16" or "fp16".
    tf32: allow TensorFloat-32 matmuls.
    """

    weight_dtype: str
    mixed_precision: str
    tf32: bool


def resolve_precision(cfg: Any) -> Precision:
    """The precision the config asks for, with `auto` resolved on this machine's hardware."""
    import torch

    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    bf16 = bf16_ok if cfg.bf16 == "auto" else bool(cfg.bf16)
    fp16 = (cuda and not bf16) if cfg.fp16 == "auto" else bool(cfg.fp16)
    if bf16 and fp16:
        bf16 = cfg.bf16 is True  # an explicit choice beats auto
        fp16 = not bf16
    if fp16 and not cuda:
        raise ConfigError("fp16: true needs a CUDA GPU; on CPU use bf16 or neither")
    tf32 = cuda if cfg.tf32 == "auto" else bool(cfg.tf32)
    if bf16:
        return Precision("bfloat16", "bf16", tf32)
    if fp16:
        return Precision("float32", "fp16", tf32)
    return Precision("float32", "no", tf32)


def apply_tf32(precision: Precision) -> None:
    """Allow (or forbid) TensorFloat-32 matmuls and convolutions on CUDA, as `precision` says."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = precision.tf32
        torch.backends.cudnn.allow_tf32 = precision.tf32
