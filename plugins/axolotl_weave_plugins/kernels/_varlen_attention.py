"""Variable-length attention functions for transformers' `AttentionInterface`.

`torch_varlen` runs torch's own packed flash attention (`torch.nn.attention.varlen.varlen_attn`,
torch >= 2.10, CUDA); `xformers` runs xformers' memory-efficient attention with a block-diagonal
causal bias. Both take a batch the way transformers hands it to any attention function and find
the sequences in it: from the 2D padding mask of a padded batch (padding is dropped), or else from
`position_ids` (a packed row holds several samples; a new one starts where the position does not
go up by one), so that no sample attends to another. The split is computed once per forward pass
and reused by every layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from axolotl_weave import WeaveError


@dataclass
class Segments:
    """Where the sequences of a (batch, length) block lie once flattened to (batch * length)."""

    keep: torch.Tensor | None  # flat indices of the real tokens; None: every token is real
    cu_seqlens: torch.Tensor  # int32 cumulative lengths over the kept tokens: [0, l1, l1+l2...]
    seqlens: list[int]
    max_len: int


_last: dict[str, Any] = {}


def find_segments(
    batch: int, length: int, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
) -> Segments:
    """The sequences of the batch: from a 2D padding mask, else from `position_ids`, else one per
    row. Cached for the mask/position tensors of the last call (every layer passes the same)."""
    key = (batch, length)
    if (
        _last.get("key") == key
        and _last.get("mask") is attention_mask
        and (_last.get("positions") is position_ids)
    ):
        return _last["segments"]
    if attention_mask is not None and attention_mask.dim() == 2:
        mask = attention_mask[:, -length:].bool()
        lengths = mask.sum(-1)
        keep = mask.flatten().nonzero().squeeze(-1)
        seqlens = [int(n) for n in lengths.tolist() if n > 0]
    elif position_ids is not None:
        positions = position_ids.expand(batch, -1)
        starts = torch.ones_like(positions, dtype=torch.bool)
        starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
        start_at = starts.flatten().nonzero().squeeze(-1).tolist() + [batch * length]
        keep = None
        seqlens = [b - a for a, b in zip(start_at, start_at[1:], strict=False)]
    else:
        keep = None
        seqlens = [length] * batch
    device = position_ids if position_ids is not None else attention_mask
    device = device.device if device is not None else torch.device("cpu")
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(seqlens, dtype=torch.int32).cumsum(0)
    segments = Segments(keep, cu.to(device), seqlens, max(seqlens, default=0))
    _last.update(key=key, mask=attention_mask, positions=position_ids, segments=segments)
    return segments


def flatten_tokens(x: torch.Tensor, segments: Segments) -> torch.Tensor:
    """(batch, heads, length, dim) -> (kept tokens, heads, dim)."""
    batch, heads, length, dim = x.shape
    flat = x.transpose(1, 2).reshape(batch * length, heads, dim)
    return flat if segments.keep is None else flat.index_select(0, segments.keep)


def restore_tokens(out: torch.Tensor, segments: Segments, batch: int, length: int) -> torch.Tensor:
    """(kept tokens, heads, dim) -> (batch, length, heads, dim), zeros at dropped padding."""
    if segments.keep is not None:
        full = out.new_zeros(batch * length, *out.shape[1:])
        full.index_copy_(0, segments.keep, out)
        out = full
    return out.reshape(batch, length, *out.shape[1:])


def half_precision(x: torch.Tensor) -> torch.dtype:
    """The dtype the fused kernels compute in: the input's, or the autocast/bf16 one for fp32."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.dtype
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.bfloat16


def refuse_unsupported(name: str, module: Any, dropout: float, softcap: float | None) -> None:
    """Attention dropout in training and logit soft-capping have no varlen kernel here."""
    if softcap:
        raise WeaveError(
            f"attn_implementation {name}: this model soft-caps attention logits, which the kernel "
            "cannot do; use flash_attention_2 (the flash-attn package) or eager"
        )
    if dropout and getattr(module, "training", False):
        raise WeaveError(
            f"attn_implementation {name}: attention dropout ({dropout}) is not supported; set the "
            "model's attention_dropout to 0 (overrides_of_model_config)"
        )


def torch_varlen_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segments: Segments,
    scale: float | None,
    window: int | None,
) -> torch.Tensor:
    """torch's varlen flash attention over packed (tokens, heads, dim) inputs, causal."""
    from torch.nn.attention.varlen import varlen_attn

    left = -1 if window is None else window - 1
    extra = {}
    if q.shape[1] != k.shape[1] and takes_enable_gqa():  # torch 2.11 takes GQA without the flag
        extra["enable_gqa"] = True
    return varlen_attn(
        q,
        k,
        v,
        segments.cu_seqlens,
        segments.cu_seqlens,
        segments.max_len,
        segments.max_len,
        scale=scale,
        window_size=(left, 0),
        **extra,
    )


@functools.cache
def takes_enable_gqa() -> bool:
    """Whether this torch's `varlen_attn` has the `enable_gqa` flag (newer than 2.11)."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    return "enable_gqa" in inspect.signature(varlen_attn).parameters


def xformers_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segments: Segments,
    scale: float | None,
    window: int | None,
) -> torch.Tensor:
    """xformers' memory-efficient attention with a block-diagonal causal bias."""
    from xformers.ops import fmha

    bias = fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens(segments.seqlens)
    if window is not None:
        bias = bias.make_local_attention(window)
    if q.shape[1] != k.shape[1]:  # grouped-query attention: repeat the key/value heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out = fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, scale=scale)
    return out[0]


Kernel = Callable[..., torch.Tensor]


def make_attention(name: str) -> Callable[..., tuple[torch.Tensor, None]]:
    """An `AttentionInterface` function running `KERNELS[name]` on the batch's sequences."""

    def attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        sliding_window: int | None = None,
        softcap: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        refuse_unsupported(name, module, dropout, softcap)
        batch, _, length, _ = query.shape
        segments = find_segments(batch, length, attention_mask, kwargs.get("position_ids"))
        dtype = half_precision(query)
        q, k, v = (flatten_tokens(x, segments).to(dtype) for x in (query, key, value))
        out = KERNELS[name](q, k, v, segments, scaling, sliding_window)
        return restore_tokens(out.to(query.dtype), segments, batch, length), None

    attention.__name__ = f"{name}_attention"
    attention.__doc__ = f"Packed ({name}) attention over the batch's sequences."
    return attention


KERNELS: dict[str, Kernel] = {"torch_varlen": torch_varlen_kernel, "xformers": xformers_kernel}
"""The kernel each registered attention name runs (a test may swap in a reference)."""


def register(name: str) -> None:
    """Register `name` with transformers (attention function, and a 2D padding-mask builder)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(name, make_attention(name))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, flash_attention_mask)
