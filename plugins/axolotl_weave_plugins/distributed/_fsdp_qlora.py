"""QLoRA under FSDP2 (Answer.AI's FSDP-QLoRA recipe, as accelerate, TRL and Axolotl apply it):
the packed 4-bit weights are stored in a float dtype (`bnb_4bit_quant_storage`), the dtype FSDP2
gathers the weights in, so that `fully_shard` shards them like any other frozen weight; each
layer's quantization state (scales, code book) stays whole on its module.

FSDP2 casts a floating weight it gathers to `mixed_precision_policy.param_dtype`; a packed weight
stored in another float dtype would be cast as numbers, its bytes destroyed (bitsandbytes then
fails: "shape '[64, 32]' is invalid for input of size 1024"). Integer storage (bitsandbytes'
uint8) is never cast by torch's FSDP2, and shards too.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from axolotl_weave import ConfigError, resolve_precision

log = logging.getLogger("axolotl_weave")

FLOAT_STORAGE = {"bfloat16", "float16", "float32", "float64"}
"""`bnb_4bit_quant_storage` names that FSDP2's mixed precision would cast."""


def storage_name(value: Any) -> str:
    """A dtype (or its name) as torch spells it: `torch.bfloat16` -> `bfloat16`."""
    return str(value).lower().removeprefix("torch.")


def gather_dtype(cfg: Any, settings: Any) -> str:
    """The dtype FSDP2 gathers the weights in: `mixed_precision_policy.param_dtype`, else the
    dtype the weights load in."""
    policy = settings.mixed_precision_policy
    if policy is not None and policy.param_dtype is not None:
        return policy.param_dtype
    return resolve_precision(cfg).weight_dtype


def explicit_storage(cfg: Any) -> str | None:
    """`bnb_config_kwargs.bnb_4bit_quant_storage` as given, or None."""
    value = (getattr(cfg, "bnb_config_kwargs", None) or {}).get("bnb_4bit_quant_storage")
    return None if value is None else storage_name(value)


def refuse_cast_storage(cfg: Any, settings: Any) -> None:
    """A float `bnb_4bit_quant_storage` that FSDP2's mixed precision would cast is refused."""
    given = explicit_storage(cfg)
    policy = settings.mixed_precision_policy
    wanted = policy.param_dtype if policy is not None else None
    if not getattr(cfg, "load_in_4bit", False) or given is None or wanted is None:
        return
    if given in FLOAT_STORAGE and given != wanted:
        raise ConfigError(
            f"bnb_config_kwargs.bnb_4bit_quant_storage: {given} with fsdp_config."
            f"mixed_precision_policy.param_dtype: {wanted}: FSDP2 would cast the packed 4-bit "
            f"weights to {wanted} as numbers, destroying them; set it to {wanted} (or remove it: "
            "under fsdp_version: 2 it is set to the dtype FSDP2 gathers in)"
        )


def set_quant_storage(cfg: Any, settings: Any, kwargs: dict[str, Any]) -> None:
    """Under FSDP2, a 4-bit `quantization_config` stores its packed weights in the dtype FSDP2
    gathers in (unless `bnb_4bit_quant_storage` is given), with a note saying so."""
    import torch

    quantization = kwargs.get("quantization_config")
    if not getattr(quantization, "load_in_4bit", False) or explicit_storage(cfg) is not None:
        return
    dtype = gather_dtype(cfg, settings)
    quantization.bnb_4bit_quant_storage = getattr(torch, dtype)
    log.info(
        "fsdp_version: 2 with load_in_4bit: bnb_4bit_quant_storage set to %s (the dtype FSDP2 "
        "gathers the weights in), so that the packed 4-bit weights shard like the others "
        "(FSDP-QLoRA); bnb_config_kwargs.bnb_4bit_quant_storage chooses another",
        dtype,
    )


def packed_weights(model: Any) -> list[Any]:
    """The 4-bit layers of `model` (bitsandbytes' `Linear4bit`; none when it is not imported)."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return []
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def keep_storage_layout(model: Any) -> None:
    """Before sharding: each 4-bit weight in bitsandbytes' usual packed storage, and kept so.

    On a CPU with AVX512-BF16, a `Linear4bit` run in evaluation mode without gradients repacks
    its weight once, in place, into a layout for its CPU kernel (uint8, the absmax transposed).
    FSDP2 must shard the usual packed storage in the storage dtype it gathers in, so a weight
    already repacked is restored (as bitsandbytes restores it before saving), and the repacking
    is turned off while FSDP2 shards them (`restore_packed` turns it back on)."""
    for layer in packed_weights(model):
        state = getattr(layer.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                layer.weight.data, state
            )
        if getattr(layer, "support_avx512bf16_for_cpu", False):
            layer.support_avx512bf16_for_cpu = False
            layer.weave_repacks_on_cpu = True


def local_bytes(weight: Any) -> int:
    """The bytes of `weight` this process holds (its shard when it is a DTensor)."""
    local = weight.to_local() if hasattr(weight, "to_local") else weight
    return local.numel() * local.element_size()


def report_sharded(model: Any, device: Any) -> None:
    """Log (rank 0) how the packed 4-bit weights were sharded: how many, their parameters, their
    bytes, and the bytes each process holds (collective; nothing when there are none)."""
    import torch
    import torch.distributed as dist

    layers = packed_weights(model)
    if not layers:
        return
    held = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
    held[dist.get_rank()] = sum(local_bytes(layer.weight) for layer in layers)
    dist.all_reduce(held)
    if dist.get_rank() != 0:
        return
    weights = [layer.weight for layer in layers]
    total = sum(w.numel() * w.element_size() for w in weights)
    states = [getattr(layer, "quant_state", None) for layer in layers]
    params = sum(math.prod(state.shape) for state in states if state is not None)
    log.info(
        "fsdp2: %d 4-bit weights (%s parameters, packed in %s bytes of %s storage) sharded: "
        "the processes hold %s bytes",
        len(layers),
        f"{params:,}",
        f"{total:,}",
        storage_name(weights[0].dtype),
        " + ".join(f"{int(b):,}" for b in held.tolist()),
    )


def restore_packed(model: Any) -> None:
    """After gathering: each 4-bit layer's whole weight made bitsandbytes' `Params4bit` again,
    with its module's quantization state (bitsandbytes' own FSDP repair), so that a merge or a
    save reads it as before sharding."""
    layers = packed_weights(model)
    if not layers:
        return
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    for layer in layers:
        fix_4bit_weight_quant_state_from_module(layer)
        if getattr(layer, "weave_repacks_on_cpu", False):  # whole again: as bitsandbytes made it
            layer.support_avx512bf16_for_cpu = True
            del layer.weave_repacks_on_cpu
