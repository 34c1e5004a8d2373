"""Attention implementation: `attn_implementation:`, or Axolotl's older booleans mapped onto it.

- `attn_implementation`: eager, sdpa, flex_attention, flash_attention_2, flash_attention_3,
  torch_varlen, xformers, or `auto` (the fastest one available here, logged).
- `flash_attention: true`: the flash-attn package (flash_attention_2) when installed, otherwise
  torch's own variable-length flash attention (torch_varlen: torch >= 2.10 on an NVIDIA GPU).
- `flex_attention: true`: FlexAttention with a document block mask (trains on a GPU only).
- `sdp_attention: true`: torch's scaled_dot_product_attention with a block-diagonal mask (the CPU
  path); `xformers_attention: true` when xformers is installed; `eager_attention: true`.

Packed rows stay apart in every one of them: transformers builds the block-diagonal (or document)
mask from `position_ids` for eager, sdpa and flex, and the varlen kernels cut the packed row at
the same places. An implementation the model family does not list, or that this machine cannot
run, is refused before training with what to install or use instead.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from axolotl_weave import ConfigError, MissingDependencyError, PluginConfig, hookimpl
from pydantic import Field, model_validator

PLUGIN_KIND = "kernel"
log = logging.getLogger("axolotl_weave")

BOOLEANS = {
    "flash_attention": "flash_attention_2",
    "flex_attention": "flex_attention",
    "sdp_attention": "sdpa",
    "xformers_attention": "xformers",
    "eager_attention": "eager",
}
"""Axolotl's older switches and the implementation each one means."""

VARLEN = ("torch_varlen", "xformers")
"""Our own packed-attention functions: a family that runs flash_attention_2 runs these."""

AUTO_ORDER = ("flash_attention_2", "torch_varlen", "flex_attention", "sdpa", "eager")
"""What `auto` tries, fastest first (torch_varlen measured ahead of compiled flex on an H100)."""


class AttentionSettings(PluginConfig):
    """The attention implementation, as Axolotl's current configs write it, or its booleans."""

    attn_implementation: str | None = Field(
        None,
        description="eager, sdpa, flex_attention, flash_attention_2, torch_varlen, xformers, "
        "auto...; default: the model's.",
    )
    flash_attention: bool = Field(
        False, description="flash-attn if installed, else torch's varlen flash attention (GPU)."
    )
    flex_attention: bool = Field(False, description="FlexAttention, document mask (GPU).")
    sdp_attention: bool = Field(False, description="torch SDPA, block-diagonal mask when packed.")
    xformers_attention: bool = Field(False, description="xformers memory-efficient attention.")
    eager_attention: bool = Field(False, description="Plain PyTorch attention (slowest).")

    @model_validator(mode="after")
    def one_choice(self) -> AttentionSettings:
        """At most one of the booleans, and not one that contradicts `attn_implementation`."""
        chosen = [key for key in BOOLEANS if getattr(self, key)]
        if len(chosen) > 1:
            raise ValueError(f"{', '.join(chosen)}: choose one attention implementation")
        if chosen and self.attn_implementation not in (None, BOOLEANS[chosen[0]]):
            raise ValueError(
                f"{chosen[0]}: true contradicts attn_implementation: {self.attn_implementation}"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `attn_implementation` key and Axolotl's attention booleans."""
    return AttentionSettings


def requested(cfg: Any) -> str | None:
    """The implementation the config asks for (a boolean mapped onto its name), or None."""
    if cfg.attn_implementation:
        return "torch_varlen" if cfg.attn_implementation == "varlen" else cfg.attn_implementation
    for key, name in BOOLEANS.items():
        if getattr(cfg, key, False):
            return name
    return None


def has_cuda() -> bool:
    """Whether an NVIDIA (or ROCm) GPU is visible to torch."""
    import torch

    return torch.cuda.is_available()


def has_torch_varlen() -> bool:
    """Whether this torch has `torch.nn.attention.varlen.varlen_attn` (torch >= 2.10)."""
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


PACKAGES = {
    "flash_attention_2": ("flash_attn", "pip install flash-attn"),
    "flash_attention_3": ("flash_attn_interface", "flash-attn 3 (hopper/ in flash-attention)"),
    "xformers": ("xformers", "pip install xformers"),
}
"""Implementations that need a package beyond torch: (module, how to install it)."""


def missing_package(name: str) -> str | None:
    """What to install for `name`, or None when nothing is missing."""
    if name in PACKAGES:
        module, install = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            return f"needs the package '{module}', which is not installed: {install}"
    if name == "torch_varlen" and not has_torch_varlen():
        return "needs torch >= 2.10 (torch.nn.attention.varlen): pip install -U torch"
    return None


def missing_hardware(name: str) -> str | None:
    """Why this machine cannot run `name` (it needs a GPU), or None when it can."""
    if name in (*PACKAGES, "torch_varlen") and not has_cuda():
        return "needs an NVIDIA GPU (Ampere or newer); on CPU use sdpa"
    if name == "flex_attention" and not has_cuda():
        return "trains on a GPU only (torch's FlexAttention has no CPU backward); use sdpa on CPU"
    return None


def runs_here(name: str) -> bool:
    """Whether `name` can run on this machine."""
    return missing_package(name) is None and missing_hardware(name) is None


def soft_caps_attention(model: Any) -> bool:
    """Whether the model soft-caps its attention logits (gemma2), which the varlen kernels and
    sdpa cannot do."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None else None
    return bool(getattr(text_config, "attn_logit_softcapping", None))


def supported_by(name: str, family: Any, model: Any = None) -> bool:
    """Whether the model family lists `name` (the varlen functions count as flash attention,
    except for a model that soft-caps attention logits)."""
    if name in VARLEN and model is not None and soft_caps_attention(model):
        return False
    if family is None:
        return True
    listed = family.attn_implementations
    return name in listed or (name in VARLEN and "flash_attention_2" in listed)


def resolve(name: str, family: Any, model: Any = None) -> str:
    """The implementation to set: `auto` picked, flash_attention_2 without the package mapped
    to torch_varlen; raises when the family or the machine cannot run it."""
    family_name = family.name if family is not None else "this model"
    if name == "auto":
        for candidate in AUTO_ORDER:
            if supported_by(candidate, family, model) and runs_here(candidate):
                log.info("attn_implementation auto: %s", candidate)
                return candidate
        raise ConfigError(f"attn_implementation auto: nothing {family_name} supports can run here")
    varlen_fits = supported_by("torch_varlen", family, model) and runs_here("torch_varlen")
    if name == "flash_attention_2" and missing_package(name) and varlen_fits:
        log.info("flash_attention: flash-attn is not installed; using torch's varlen attention")
        name = "torch_varlen"
    if not supported_by(name, family, model):
        listed = ", ".join(family.attn_implementations) if family else "other implementations"
        if name in VARLEN and soft_caps_attention(model):
            listed = "flash_attention_2 (the flash-attn package) or eager: it soft-caps logits"
        raise ConfigError(f"attn_implementation {name}: {family_name} supports {listed}")
    package = missing_package(name)
    if package is not None and name == "flash_attention_2":
        raise MissingDependencyError(
            f"attn_implementation {name}: {package}; without it, torch's varlen attention "
            f"takes its place, which {missing_hardware('torch_varlen') or 'cannot run here'}"
        )
    if package is not None:
        raise MissingDependencyError(f"attn_implementation {name}: {package}")
    hardware = missing_hardware(name)
    if hardware is not None:
        raise ConfigError(f"attn_implementation {name}: {hardware}")
    return name


@hookimpl
def patch_attention(model: Any, cfg: Any, family: Any) -> None:
    """Set the configured implementation on the model (and every sub-model)."""
    name = requested(cfg)
    if name is None:
        return
    name = resolve(name, family, model)
    if name in VARLEN:
        from axolotl_weave_plugins.kernels._varlen_attention import register

        register(name)
    try:
        model.set_attn_implementation(name)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"attn_implementation: {exc}") from None
