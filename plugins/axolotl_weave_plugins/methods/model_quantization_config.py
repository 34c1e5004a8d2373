"""`model_quantization_config: Mxfp4Config | FineGrainedFP8Config` with
`model_quantization_config_kwargs` (Axolotl's keys): a transformers quantization config for the
base model's `from_pretrained`.

Axolotl's gpt-oss examples set `Mxfp4Config` with `dequantize: true`: openai's checkpoints store
the experts in MXFP4 (`*_blocks` packed FP4 pairs and `*_scales` exponents), and transformers
decodes them into the floats of the run's dtype as they load, so that they train like any other
weights (a LoRA around the attention, or full fine-tuning). This plugin gives whichever plugin
loads the model (`model_load_kwargs`) `transformers.Mxfp4Config(**kwargs)` (or
`FineGrainedFP8Config`) and refuses there, before any weight loads, what cannot be done
here:

- a checkpoint stored quantized by the other method;
- training MXFP4 layers (without `dequantize: true`): transformers' MXFP4 expert kernels are
  inference-only (its quantizer says the model is not trainable);
- MXFP4 quantization on the fly (a checkpoint not stored in MXFP4, without `dequantize`), which
  needs a CUDA GPU of compute capability 7.5+ (or an Intel XPU) and the packages triton and
  kernels (on the CPU transformers loads the weights unquantized instead);
- FP8 quantization (without `dequantize`) without a CUDA GPU of compute capability 8.9+ or an
  Intel XPU (transformers would raise, or load an FP8 checkpoint dequantized).

`dequantize: true` on a checkpoint not stored in that format has nothing to decode: the base loads
as stored, and no quantization config is passed (transformers would keep an empty quantizer on
the model, and write it into a merged model's config). `weave merge-lora` loads a quantized
checkpoint dequantized (the merged model is not quantized).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Literal

from axolotl_weave import (
    CapabilityError,
    ConfigError,
    MissingDependencyError,
    PluginConfig,
    WeaveError,
    hookimpl,
)
from pydantic import Field, model_validator

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")

KEY = "model_quantization_config"
KWARGS_KEY = "model_quantization_config_kwargs"

QUANT_METHODS = {"Mxfp4Config": "mxfp4", "FineGrainedFP8Config": "fp8"}
"""Each config class -> the `quant_method` a checkpoint stored in its format has in config.json."""

CONFIG_KEYS = {
    "Mxfp4Config": frozenset({"dequantize", "modules_to_not_convert"}),
    "FineGrainedFP8Config": frozenset(
        {
            "activation_scheme",
            "weight_block_size",
            "dequantize",
            "modules_to_not_convert",
            "modules_to_convert",
            "scale_fmt",
            "expert_dtype",
        }
    ),
}
"""The arguments each transformers config class takes (it would silently accept any other)."""

MXFP4_DEVICE = "a CUDA GPU of compute capability 7.5 or later (or an Intel XPU)"
FP8_DEVICE = "a CUDA GPU of compute capability 8.9 or later (H100, L4, RTX 4090...) or an Intel XPU"
DEQUANTIZE_HINT = f"set {KWARGS_KEY}: {{dequantize: true}} to load the weights dequantized"


class ModelQuantizationSettings(PluginConfig):
    """Axolotl's transformers quantization config keys."""

    model_quantization_config: Literal["Mxfp4Config", "FineGrainedFP8Config"] | None = Field(
        None,
        description="A transformers quantization config for loading the base: Mxfp4Config "
        "(gpt-oss's MXFP4 experts) or FineGrainedFP8Config; with dequantize: true in "
        "model_quantization_config_kwargs a checkpoint stored so loads dequantized, to train.",
    )
    model_quantization_config_kwargs: dict[str, Any] | None = Field(
        None,
        description="The arguments of model_quantization_config's class (dequantize, "
        "modules_to_not_convert; for FP8 also activation_scheme, weight_block_size...).",
    )

    @model_validator(mode="after")
    def _check_model_quantization(self) -> ModelQuantizationSettings:
        name = self.model_quantization_config
        kwargs = self.model_quantization_config_kwargs or {}
        if not name:
            if kwargs:
                raise ValueError(f"{KWARGS_KEY} is set without {KEY}: set {KEY} or remove it")
            return self
        for other in ("load_in_8bit", "load_in_4bit", "gptq"):
            if getattr(self, other, False):
                raise ValueError(
                    f"{KEY} and {other} cannot be used together: each gives the base its own "
                    "quantization; remove one"
                )
        unknown = sorted(set(kwargs) - CONFIG_KEYS[name])
        if unknown:
            raise ValueError(
                f"{KWARGS_KEY}: unknown key(s) for {name}: {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(CONFIG_KEYS[name]))}"
            )
        if not isinstance(kwargs.get("dequantize", False), bool):
            raise ValueError(
                f"{KWARGS_KEY}.dequantize: {kwargs['dequantize']!r} is not true or false"
            )
        fsdp = getattr(self, "fsdp_config", None)
        if name == "Mxfp4Config" and getattr(fsdp, "cpu_ram_efficient_loading", False):
            raise ValueError(
                f"{KEY}: Mxfp4Config with fsdp_config.cpu_ram_efficient_loading: true is not "
                "supported (as in Axolotl); remove one of them"
            )
        if (
            name == "FineGrainedFP8Config"
            and not kwargs.get("dequantize")
            and not getattr(self, "adapter", None)
        ):
            raise ValueError(
                f"{KEY}: FineGrainedFP8Config: a base quantized to FP8 cannot be fully "
                f"fine-tuned: set adapter: lora, or {KWARGS_KEY}: {{dequantize: true}}"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`model_quantization_config` and `model_quantization_config_kwargs`."""
    return ModelQuantizationSettings


def stored_quant_method(cfg: Any) -> str | None:
    """The `quant_method` of the quantization the checkpoint `base_model` is stored in (its
    config's `quantization_config`), or None when it is stored unquantized."""
    from transformers import AutoConfig

    where = cfg.base_model_config or cfg.base_model
    try:
        config = AutoConfig.from_pretrained(
            where, revision=cfg.revision_of_model, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise WeaveError(f"cannot read the model config of '{where}': {exc}") from None
    stored = getattr(config, "quantization_config", None)
    if stored is None:
        return None
    method = stored.get("quant_method") if isinstance(stored, dict) else stored.quant_method
    return None if method is None else str(getattr(method, "value", method))


def config_kwargs(cfg: Any, purpose: str, stored: str | None) -> dict[str, Any] | None:
    """The arguments of the quantization config class for `purpose`, given the checkpoint's
    stored `quant_method`; None when no config is to be passed (nothing to dequantize)."""
    kwargs = dict(cfg.model_quantization_config_kwargs or {})
    if purpose == "merge":
        kwargs["dequantize"] = True  # the merged model holds floats
    if kwargs.get("dequantize") and stored != QUANT_METHODS[cfg.model_quantization_config]:
        return None
    return kwargs


def missing_for_mxfp4() -> list[str]:
    """What this machine lacks to quantize to MXFP4 as the weights load (empty: nothing)."""
    import torch

    missing = []
    xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    if not xpu and not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (7, 5)):
        missing.append(MXFP4_DEVICE)
    missing += [
        f"the package {name} (pip install {name})"
        for name in ("triton", "kernels")
        if importlib.util.find_spec(name) is None
    ]
    return missing


def has_fp8_device() -> bool:
    """Whether transformers can quantize to FP8 here: an Intel XPU or a CUDA GPU of compute
    capability 8.9+ (on an older GPU it would load the base unquantized)."""
    import torch

    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def check_loadable(cfg: Any, purpose: str, stored: str | None) -> None:
    """Refuse, before the weights load, what transformers cannot do here (see the module)."""
    name = cfg.model_quantization_config
    method = QUANT_METHODS[name]
    if stored is not None and stored != method:
        raise ConfigError(
            f"{KEY}: {name}: base_model '{cfg.base_model}' is stored quantized with "
            f"quant_method '{stored}', not '{method}'; use the config of its format, or remove "
            f"{KEY}"
        )
    if purpose == "merge" or (cfg.model_quantization_config_kwargs or {}).get("dequantize"):
        return
    if name == "Mxfp4Config" and purpose == "train":
        raise CapabilityError(
            f"{KEY}: Mxfp4Config without dequantize keeps the experts in MXFP4, which "
            "transformers cannot train (its MXFP4 expert kernels are inference-only); "
            f"{DEQUANTIZE_HINT} for training, as Axolotl's gpt-oss examples do"
        )
    if name == "Mxfp4Config" and stored is None:
        missing = missing_for_mxfp4()
        if missing:
            raise MissingDependencyError(
                f"{KEY}: Mxfp4Config: quantizing base_model '{cfg.base_model}' (not stored in "
                f"MXFP4) as it loads needs {MXFP4_DEVICE} and the packages triton and kernels; "
                f"missing here: {'; '.join(missing)}"
            )
    if name == "FineGrainedFP8Config" and not has_fp8_device():
        raise MissingDependencyError(
            f"{KEY}: FineGrainedFP8Config quantizes to FP8 on {FP8_DEVICE}; none is visible "
            f"here. Run on one, or {DEQUANTIZE_HINT} (an FP8 checkpoint then trains in the "
            "run's precision)"
        )


@hookimpl
def model_load_kwargs(cfg: Any, purpose: str, kwargs: dict[str, Any]) -> None:
    """`quantization_config`: the transformers config `model_quantization_config` names, with
    `model_quantization_config_kwargs` (dequantizing for a merge); none when the checkpoint
    is not stored in the format `dequantize` would decode."""
    name = getattr(cfg, "model_quantization_config", None)
    if not name:
        return
    import transformers

    stored = stored_quant_method(cfg)
    check_loadable(cfg, purpose, stored)  # before any weight loads
    options = config_kwargs(cfg, purpose, stored)
    try:  # transformers checks the values (an activation_scheme it does not know...)
        given = options if options is not None else (cfg.model_quantization_config_kwargs or {})
        config = getattr(transformers, name)(**given)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{KWARGS_KEY}: {name}: {exc}") from None
    if stored is not None and stored != QUANT_METHODS[name]:
        return  # check_loadable refused it above
    if options is None:
        log.info(
            "%s: %s: base_model '%s' is not stored in %s: nothing to dequantize, it loads "
            "as stored",
            KEY,
            name,
            cfg.base_model,
            QUANT_METHODS[name].upper(),
        )
        return
    kwargs["quantization_config"] = config
