"""FSDP's config spellings turned into FSDP2 settings, without torch: Axolotl's `fsdp_`-prefixed
keys, FSDP1's (the `fsdp:` list, `sharding_strategy`, ...) mapped where FSDP2 has the same
setting, and `mixed_precision_policy`'s dtype names.

A mapping returns the FSDP2 `fsdp_config` and the notes saying what was read as what; a spelling
FSDP2 has no equivalent for raises `ValueError` naming it (the config model turns it into one
clear config error).
"""

from __future__ import annotations

from typing import Any

FSDP1_ONLY = {
    "sharding_strategy": "FSDP2 has reshard_after_forward: true (FULL_SHARD) or false "
    "(SHARD_GRAD_OP)",
    "sync_module_states": "FSDP2 needs none (every process loads the same weights, or "
    "cpu_ram_efficient_loading broadcasts rank 0's)",
    "use_orig_params": "FSDP2 always keeps the original parameters",
    "forward_prefetch": "FSDP2 prefetches by itself",
    "backward_prefetch": "FSDP2 prefetches by itself",
    "limit_all_gathers": "FSDP2 has no all-gather rate limiter",
    "min_num_params": "SIZE_BASED_WRAP is not implemented; layers are wrapped by class",
    "activation_checkpointing_reentrant": "not an FSDP2 setting",
}
"""FSDP1's `fsdp_config` keys, refused with `fsdp_version: 2` (why, and what FSDP2 does)."""

SHARDING = {
    "full_shard": True,
    "shard_grad_op": False,
    "1": True,  # accelerate's numbering of ShardingStrategy
    "2": False,
}
"""FSDP1 sharding strategies FSDP2 has: the `reshard_after_forward` each maps to."""
UNMAPPED_SHARDING = {
    "no_shard": "nothing is sharded (that is DDP: remove the FSDP keys)",
    "hybrid_shard": "sharding within a node and replicating across nodes is not implemented",
    "hybrid_shard_zero2": "sharding within a node and replicating across nodes is not implemented",
    "_hybrid_shard_zero2": "sharding within a node and replicating across nodes is not implemented",
    "3": "NO_SHARD: nothing is sharded (that is DDP: remove the FSDP keys)",
    "4": "HYBRID_SHARD is not implemented",
    "5": "_HYBRID_SHARD_ZERO2 is not implemented",
}
"""FSDP1 sharding strategies with no FSDP2 equivalent here, and why."""
LIST_WORDS = {*SHARDING, *UNMAPPED_SHARDING, "offload", "auto_wrap"}
"""The words of Axolotl's (Hugging Face Trainer's) `fsdp:` list."""

DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "fp8": "bfloat16",  # as accelerate reads it: fp8 training computes FSDP's gathers in bf16
}
"""`mixed_precision_policy` dtype names -> torch dtype names (fp16 is refused: no loss scaler)."""
POLICY_KEYS = ("param_dtype", "reduce_dtype", "output_dtype", "cast_forward_inputs")
"""The keys of `torch.distributed.fsdp.MixedPrecisionPolicy`."""


def unprefixed(data: dict[str, Any]) -> dict[str, Any]:
    """Axolotl's `fsdp_`-prefixed spelling (`fsdp_offload_params`) without the prefix."""
    renamed: dict[str, Any] = {}
    for key, value in data.items():
        bare = key.removeprefix("fsdp_") if key != "fsdp_version" else key
        if bare in renamed and renamed[bare] != value:
            raise ValueError(f"both {bare} and fsdp_{bare} are set, differently: keep one")
        renamed[bare] = value
    return renamed


def dtype_name(value: Any, key: str) -> str:
    """A dtype name as torch spells it; fp16 and unknown names are refused, naming `key`."""
    name = str(value).lower().removeprefix("torch.")
    if name in ("fp16", "float16", "half"):
        raise ValueError(
            f"mixed_precision_policy.{key}: {value} is not implemented under FSDP2 here (its "
            "loss scaler is not): use bfloat16"
        )
    if name not in DTYPES:
        raise ValueError(
            f"mixed_precision_policy.{key}: unknown dtype {value!r} (valid: {', '.join(DTYPES)})"
        )
    return DTYPES[name]


def mixed_precision(value: Any) -> dict[str, Any] | None:
    """`mixed_precision_policy` as `MixedPrecisionPolicy`'s keyword arguments (dtype names):
    a string (`bf16`: parameters and gradient reduction in it, as accelerate reads one) or a
    mapping of `param_dtype`, `reduce_dtype`, `output_dtype`, `cast_forward_inputs`."""
    if value in (None, "", {}):
        return None
    if isinstance(value, str):
        name = dtype_name(value, "param_dtype")
        return {"param_dtype": name, "reduce_dtype": name}
    if not isinstance(value, dict):
        raise ValueError(
            "mixed_precision_policy: a dtype name (bf16) or a mapping of "
            f"{', '.join(POLICY_KEYS)}, not {value!r}"
        )
    unknown = sorted(set(value) - set(POLICY_KEYS))
    if unknown:
        raise ValueError(
            f"mixed_precision_policy: unknown key(s) {', '.join(unknown)} (valid: "
            f"{', '.join(POLICY_KEYS)})"
        )
    policy: dict[str, Any] = {}
    for key, given in value.items():
        if given is None:
            continue
        if key == "cast_forward_inputs":
            if not isinstance(given, bool):
                raise ValueError("mixed_precision_policy.cast_forward_inputs: true or false")
            policy[key] = given
        else:
            policy[key] = dtype_name(given, key)
    return policy


def list_words(fsdp: Any) -> list[str]:
    """Axolotl's `fsdp:` list (or a space-separated string), lower-cased; unknown words refused."""
    words = fsdp.split() if isinstance(fsdp, str) else list(fsdp or [])
    words = [str(word).lower() for word in words]
    unknown = [word for word in words if word not in LIST_WORDS]
    if unknown:
        raise ValueError(
            f"fsdp: unknown option(s) {', '.join(unknown)} (valid: full_shard, shard_grad_op, "
            "offload, auto_wrap)"
        )
    return words


def sharding(value: Any, key: str) -> bool:
    """An FSDP1 sharding strategy as `reshard_after_forward`; one FSDP2 lacks is refused."""
    name = str(value).lower()
    if name in UNMAPPED_SHARDING:
        raise ValueError(f"{key}: {value} has no FSDP2 equivalent here: {UNMAPPED_SHARDING[name]}")
    if name not in SHARDING:
        raise ValueError(f"{key}: unknown sharding strategy {value!r} (FULL_SHARD, SHARD_GRAD_OP)")
    return SHARDING[name]


def read_fsdp1_sharding(
    fsdp: Any, settings: dict[str, Any], strategies: list[tuple[str, Any]]
) -> list[str]:
    """FSDP1's `fsdp:` list words and sharding strategies (`(key, value)` pairs of
    `fsdp_config`) applied to the FSDP2 `settings` in place, as `reshard_after_forward` and
    `offload_params`; returns what was read as what. Spellings that contradict each other (or an
    FSDP2 key already set) are refused, as is a strategy FSDP2 lacks."""
    words = list_words(fsdp)
    said = [("fsdp", word) for word in words if word in SHARDING or word in UNMAPPED_SHARDING]
    said += [(f"fsdp_config.{key}", value) for key, value in strategies if value is not None]
    given = settings.get("reshard_after_forward")
    source = "fsdp_config.reshard_after_forward: " + str(given).lower() if given is not None else ""
    notes = []
    for key, value in said:
        mapped = sharding(value, key)
        if source and settings["reshard_after_forward"] != mapped:
            raise ValueError(f"{key}: {value} and {source} contradict each other: keep one")
        settings["reshard_after_forward"], source = mapped, f"{key}: {value}"
        notes.append(f"{key}: {value} -> reshard_after_forward: {str(mapped).lower()}")
    if "offload" in words:
        if settings.get("offload_params") is False:
            raise ValueError("fsdp: offload and fsdp_config.offload_params: false contradict")
        settings["offload_params"] = True
        notes.append("fsdp: offload -> offload_params: true")
    if "auto_wrap" in words:
        notes.append("fsdp: auto_wrap -> auto_wrap_policy: TRANSFORMER_BASED_WRAP")
    elif words:
        notes.append("without auto_wrap, the decoder layers are still sharded one by one")
    return notes


def from_fsdp1(fsdp: Any, config: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """FSDP1's spelling (the `fsdp:` list, an `fsdp_config` without `fsdp_version: 2`) as an
    FSDP2 `fsdp_config`, and what was mapped (in words). What FSDP2 cannot do is refused."""
    settings = unprefixed(dict(config or {}))
    settings.pop("fsdp_version", None)
    settings.pop("version", None)
    if isinstance(settings.get("reshard_after_forward"), bool):
        raise ValueError(
            "fsdp_config.reshard_after_forward: true/false is FSDP2's spelling, and fsdp_config "
            "is set without fsdp_version: 2 (FSDP1's, mapped to FSDP2): add fsdp_version: 2"
        )
    strategies = [  # FSDP1 takes a strategy as reshard_after_forward too
        (key, settings.pop(key, None)) for key in ("sharding_strategy", "reshard_after_forward")
    ]
    notes = read_fsdp1_sharding(fsdp, settings, strategies)
    notes += fsdp1_only_settings(settings)
    return settings, notes


def fsdp1_beside_fsdp2(
    fsdp: Any, config: dict[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """With `fsdp_version: 2`, FSDP1's `fsdp:` list and `sharding_strategy`, which Axolotl's own
    FSDP2 examples still set beside `reshard_after_forward`, read as FSDP2's settings (refused
    where they contradict them); FSDP1's other keys stay refused (`refuse_fsdp1_only`)."""
    given = dict(config or {})
    settings = unprefixed(given)
    strategies = [("sharding_strategy", settings.pop("sharding_strategy", None))]
    notes = read_fsdp1_sharding(fsdp, settings, strategies)
    kept = {k: v for k, v in given.items() if k.removeprefix("fsdp_") != "sharding_strategy"}
    kept.update(
        {k: settings[k] for k in ("reshard_after_forward", "offload_params") if k in settings}
    )
    return kept, notes


def fsdp1_only_settings(settings: dict[str, Any]) -> list[str]:
    """Remove FSDP1's keys whose value FSDP2 does anyway (noted); refuse the others."""
    notes = []
    if "use_orig_params" in settings:  # FSDP1's flat-parameter layout: not what is trained
        given = settings.pop("use_orig_params")
        notes.append(f"use_orig_params: {given} dropped (FSDP2 keeps the original parameters)")
    dropped_when = {
        "sync_module_states": (True, "true"),
        "forward_prefetch": (False, "false"),
        "backward_prefetch": ("BACKWARD_PRE", "BACKWARD_PRE"),
        "limit_all_gathers": (True, "true"),
    }
    for key, (value, words) in dropped_when.items():
        if key not in settings:
            continue
        given = settings.pop(key)
        if given is None or str(given).lower() == str(value).lower():
            notes.append(f"{key}: {words} dropped (what FSDP2 does)")
            continue
        raise ValueError(
            f"fsdp_config.{key}: {given} has no FSDP2 equivalent ({FSDP1_ONLY[key]}); remove it"
        )
    return notes


def refuse_fsdp1_only(settings: dict[str, Any]) -> None:
    """With `fsdp_version: 2`, FSDP1's keys are refused, naming each as it was spelt."""
    found = [key for key in settings if key.removeprefix("fsdp_") in FSDP1_ONLY]
    if found:
        reasons = "; ".join(f"{key} ({FSDP1_ONLY[key.removeprefix('fsdp_')]})" for key in found)
        raise ValueError(f"FSDP1-only key(s) with fsdp_version: 2: {reasons}; remove them")
