"""The LoRA plugin's checks of peft's options that Axolotl passes under its own names
(`lora_rank_pattern`, `lora_alpha_pattern`, `peft_layer_replication`, `peft_init_lora_weights`,
`peft_trainable_token_indices`): what the config alone can tell is wrong with them, and which
initialisations rewrite the base weights (their adapter is saved converted, see `lora.py`)."""

from __future__ import annotations

import re
from typing import Any

PLAIN_INITS = ("gaussian", "orthogonal", "mica")
"""`peft_init_lora_weights` strings that leave the base weights alone (as true and false do)."""
PISSA_NITER = re.compile(r"^pissa_niter_\d+$")
"""Fast-SVD PiSSA with N subspace iterations."""
REFUSED_INITS = {
    "eva": "initialises the adapter from activations of training batches (peft's "
    "initialize_lora_eva_weights), which no plugin runs",
    "corda": "initialises the adapter from covariances of training data (peft's "
    "preprocess_corda, with a corda_config), which no plugin runs",
    "lora_ga": "initialises the adapter from gradients of training batches (peft's "
    "preprocess_loraga), which no plugin runs",
    "loftq": "is set with peft: {loftq_config: {loftq_bits: 4}} (the loftq plugin)",
}
"""peft's initialisations that need data or their own config, with why they are refused."""
VALID_INITS = "true or false (unquoted), gaussian, orthogonal, mica, pissa, pissa_niter_<n>, olora"
QUANTIZED_INIT_REASONS = {
    "orthogonal": "gives the adapter the base weights' dtype, an integer one once quantized",
    "mica": "takes an SVD of the base weights, which peft refuses on quantized ones",
    "pissa": "rewrites the base weights from their SVD, which peft refuses on quantized ones",
    "olora": "rewrites the base weights and quantizes them again, so the adapter converted for "
    "base_model would not reproduce the trained model",
}
"""Why an initialisation that reads or rewrites the base weights needs an unquantized base."""
INITIAL_ADAPTER = "weave_initial_adapter"
"""The folder (and peft adapter name) of a PiSSA / OLoRA adapter as initialised."""


def rewrites_base(init: bool | str | None) -> bool:
    """Whether `peft_init_lora_weights` rewrites the base weights (PiSSA, OLoRA): the adapter
    is then saved converted to a plain LoRA of the original base."""
    return init in ("pissa", "olora") or (isinstance(init, str) and bool(PISSA_NITER.match(init)))


PEFT_OPTIONS = (
    "lora_rank_pattern",
    "lora_alpha_pattern",
    "peft_layer_replication",
    "peft_init_lora_weights",
    "peft_trainable_token_indices",
)
"""The keys passed to peft's `LoraConfig` under their own names (`peft_option_problem`)."""


def peft_option_problem(settings: Any) -> str | None:
    """What is wrong with the patterns, the layer replication or the token rows in `settings`
    (with the keys around them), or None."""
    for key in PEFT_OPTIONS:
        if getattr(settings, key) is not None and settings.adapter is None:
            return f"{key} needs adapter: lora or qlora"
    for key in ("lora_rank_pattern", "lora_alpha_pattern"):
        for pattern, value in (getattr(settings, key) or {}).items():
            try:
                re.compile(pattern)
            except re.error as exc:
                return f"{key}: '{pattern}' is not a regular expression ({exc})"
            if value <= 0:
                return f"{key}: '{pattern}': {value} is not a positive number"
    for start, end in settings.peft_layer_replication or []:
        if not 0 <= start < end:
            return (
                f"peft_layer_replication: [{start}, {end}] is not a range [start, end) of "
                "layers (0 <= start < end)"
            )
    merging = {  # the plugins that merge the adapter into the base while training
        "relora": getattr(settings, "relora", None) or getattr(settings, "relora_steps", None),
        "peft.loftq_config": getattr(getattr(settings, "peft", None), "loftq_config", None),
    }
    for key, value in merging.items():
        if value and settings.peft_layer_replication:
            return (
                f"peft_layer_replication with {key}: the replicated layers share their base "
                "weights, into which an adapter cannot be merged"
            )
    indices = settings.peft_trainable_token_indices
    by_module = indices if isinstance(indices, dict) else {"the list": indices or []}
    for name, ids in by_module.items():
        if not ids and isinstance(indices, dict):
            return f"peft_trainable_token_indices: '{name}' lists no token"
        if any(i < 0 for i in ids):
            return f"peft_trainable_token_indices: {name} holds a negative token id"
    return None


def init_problem(settings: Any) -> str | None:
    """What is wrong with `peft_init_lora_weights` in `settings` (with the keys around it),
    or None."""
    init = settings.peft_init_lora_weights
    if init is None or isinstance(init, bool):
        return None
    if init in REFUSED_INITS:
        return f"peft_init_lora_weights: {init} {REFUSED_INITS[init]}; valid here: {VALID_INITS}"
    if init not in PLAIN_INITS and not rewrites_base(init):
        return f"peft_init_lora_weights: '{init}' is not one of {VALID_INITS}"
    peft = getattr(settings, "peft", None)
    if peft is not None and getattr(peft, "loftq_config", None) is not None:
        return (
            f"peft_init_lora_weights: {init} and peft.loftq_config both initialise the "
            "adapter: remove one of them"
        )
    method = "pissa" if rewrites_base(init) and init != "olora" else init
    for key in ("load_in_4bit", "load_in_8bit", "gptq"):
        if getattr(settings, key, False) and method in QUANTIZED_INIT_REASONS:
            return (
                f"peft_init_lora_weights: {init} needs an unquantized base (remove {key}, "
                f"adapter: lora): it {QUANTIZED_INIT_REASONS[method]}; on a quantized base use "
                "true, false or gaussian"
            )
    ranks = [settings.lora_r, *(settings.lora_rank_pattern or {}).values()]
    if init == "orthogonal" and any(rank % 2 for rank in ranks):
        return (
            "peft_init_lora_weights: orthogonal needs even ranks (lora_r and every "
            f"lora_rank_pattern value), got {ranks}"
        )
    if rewrites_base(init):
        return converted_init_problem(settings, init)
    return None


def converted_init_problem(settings: Any, init: str) -> str | None:
    """Options a base-rewriting initialisation cannot be combined with: its adapter is
    converted at save time into plain LoRA matrices (peft's conversion keeps only those)."""
    conflicts = {
        "peft_use_dora": "the conversion keeps the LoRA matrices, not DoRA's magnitudes",
        "lora_modules_to_save": "the conversion keeps the LoRA matrices, not modules trained "
        "in full",
        "peft_trainable_token_indices": "the conversion keeps the LoRA matrices, not trained "
        "token rows",
        "peft_layer_replication": "the conversion reloads the initial adapter, which would "
        "replicate the layers again",
    }
    for key, reason in conflicts.items():
        if getattr(settings, key, None):
            return f"peft_init_lora_weights: {init} with {key}: {reason}"
    if getattr(settings, "rl", None):
        return (
            f"peft_init_lora_weights: {init} with rl: {settings.rl}: the reference model is the "
            f"policy with its adapter disabled, which after {init} is the rewritten residual "
            "base, not base_model"
        )
    if settings.peft_use_rslora and (settings.lora_rank_pattern or settings.lora_alpha_pattern):
        return (
            f"peft_init_lora_weights: {init} with peft_use_rslora and lora_rank_pattern / "
            "lora_alpha_pattern: peft cannot convert such an adapter to a plain LoRA"
        )
    return None
