"""`gptq: true`: LoRA on a GPTQ-quantized checkpoint, through transformers' GPTQ integration.

The checkpoint's own `quantization_config` (written when it was quantized) tells transformers
how to load the packed weights; this plugin checks that the packages that integration needs are
installed (`optimum` and `gptqmodel`; gptqmodel's kernels also run on the CPU), that an adapter
is set (the quantized weights themselves cannot train) and that the family can take it. It gives
whichever plugin loads the model (`model_load_kwargs`) the checkpoint's config and a `GPTQConfig`
on a kernel fit for the purpose (one that can train, for training); its `load_model` wrapper,
innermost, checks that every packed layer loaded as one, then prepares the model for k-bit
training, or, for `weave merge-lora`, dequantizes it (peft cannot merge into packed weights).
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Generator
from typing import Any

from axolotl_weave import (
    CapabilityError,
    ModelFamily,
    PluginConfig,
    WeaveError,
    hookimpl,
    require,
    resolve_precision,
)
from pydantic import Field, model_validator

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")


class GptqSettings(PluginConfig):
    """GPTQ's key (Axolotl's name)."""

    gptq: bool = Field(False, description="The base is a GPTQ checkpoint; train LoRA on it.")

    @model_validator(mode="after")
    def _needs_lora(self) -> GptqSettings:
        if self.gptq and getattr(self, "adapter", None) != "lora":
            raise ValueError(
                "gptq: true trains an adapter on the quantized base: set adapter: lora"
            )
        if self.gptq and (
            getattr(self, "load_in_4bit", False) or getattr(self, "load_in_8bit", False)
        ):
            raise ValueError("gptq: true loads the checkpoint's own quantization: drop load_in_*")
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """GPTQ's key."""
    return GptqSettings


def packed_layer_names(base_model: str) -> list[str]:
    """The layers a local GPTQ checkpoint stores packed (each `NAME.qweight` tensor); empty for
    a hub name not downloaded yet."""
    from pathlib import Path

    from safetensors import safe_open

    names = []
    for shard in sorted(Path(base_model).glob("*.safetensors")):
        with safe_open(str(shard), "pt") as tensors:
            keys = tensors.keys()
            names += [key.removesuffix(".qweight") for key in keys if key.endswith(".qweight")]
    return names


def block_list_name(layer_name: str) -> str | None:
    """The module list a packed layer sits in: `rwkv.blocks` for `rwkv.blocks.0.attention.key`."""
    parts = layer_name.split(".")
    for index, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:index])
    return None


BACKENDS = {"train": "auto_trainable", "merge": "gptq_torch", "infer": "auto"}
"""The gptqmodel kernel per `load_model` purpose: training needs one with a backward (the
inference-only CPU and Marlin kernels have none); a merge dequantizes through the torch one."""

INSTALL = "optimum gptqmodel (GPTQ kernels; a CUDA GPU makes them fast)"


def read_model_config(cfg: Any) -> Any:
    """The checkpoint's model config (`base_model_config` or `base_model`)."""
    from transformers import AutoConfig

    where = cfg.base_model_config or cfg.base_model
    try:
        return AutoConfig.from_pretrained(
            where, revision=cfg.revision_of_model, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise WeaveError(f"cannot read the model config of '{where}': {exc}") from None


def checkpoint_gptq_config(cfg: Any) -> tuple[Any, dict[str, Any]]:
    """The model config of the GPTQ checkpoint `base_model`, and its `quantization_config` as
    written when it was quantized. A checkpoint whose config does not say where its decoder
    blocks are (optimum writes `block_name_to_quantize: null`, then finds only common layouts
    such as `model.layers` again: not MPT's `transformer.blocks` nor RWKV's `rwkv.blocks`) gets
    it from the names of its packed tensors. A checkpoint that is not GPTQ is refused."""
    config = read_model_config(cfg)
    written = getattr(config, "quantization_config", None)
    if not (isinstance(written, dict) and written.get("quant_method") == "gptq"):
        method = written.get("quant_method") if isinstance(written, dict) else None
        raise WeaveError(
            f"gptq: true: base_model '{cfg.base_model}' is not a GPTQ checkpoint (its config's "
            f"quantization_config has quant_method {method!r}, not 'gptq'); point base_model at "
            "one quantized with GPTQ, or drop gptq: true"
        )
    if not written.get("block_name_to_quantize"):
        packed = packed_layer_names(cfg.base_model)
        if packed and block_list_name(packed[0]):
            written = {**written, "block_name_to_quantize": block_list_name(packed[0])}
            config.quantization_config = written
    return config, written


def packages_installed() -> bool:
    """Whether the packages transformers' GPTQ integration needs are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("optimum", "gptqmodel"))


@hookimpl
def model_load_kwargs(cfg: Any, purpose: str, kwargs: dict[str, Any]) -> None:
    """The checkpoint's config (its block list filled in) and a `GPTQConfig` on the kernel
    `BACKENDS` names for `purpose`. Adds nothing when the packages are missing or the
    checkpoint is not GPTQ: the `load_model` wrapper refuses those, after the family's own
    refusal."""
    if not getattr(cfg, "gptq", False) or not packages_installed():
        return
    try:
        config, written = checkpoint_gptq_config(cfg)
    except WeaveError:
        return
    from transformers import GPTQConfig

    kwargs["config"] = config
    kwargs["quantization_config"] = GPTQConfig.from_dict(
        {**written, "backend": BACKENDS.get(purpose, "auto")}
    )


@hookimpl(wrapper=True, trylast=True)
def load_model(
    cfg: Any, family: ModelFamily | None, purpose: str, load_kwargs: dict[str, Any]
) -> Generator[None, Any, Any]:
    """Before the weights load: refuse a family that cannot take a GPTQ checkpoint, missing
    packages, a checkpoint that is not GPTQ. After: every packed layer must have loaded as a
    GPTQ layer (one that did not would be left with random weights); then, for training, the
    model prepared for k-bit training, for a merge the base dequantized."""
    if not getattr(cfg, "gptq", False):
        return (yield)
    reason = family.cannot.get("gptq") if family is not None else None
    if reason:
        raise CapabilityError(
            f"gptq: the '{family.name}' family cannot train on a GPTQ checkpoint: {reason}"
        )
    require("optimum", feature="gptq: true", install=INSTALL)
    require("gptqmodel", feature="gptq: true", install=INSTALL)
    if "quantization_config" not in load_kwargs:
        checkpoint_gptq_config(cfg)  # refuses a checkpoint that is not GPTQ
    with warnings.catch_warnings():  # "loading attributes will be overwritten": as meant
        warnings.filterwarnings("ignore", message=".*already has a `quantization_config`")
        try:
            model = yield
        except (AttributeError, KeyError, RuntimeError) as exc:
            raise WeaveError(
                f"gptq: true: transformers could not load the GPTQ checkpoint "
                f"'{cfg.base_model}': {type(exc).__name__}: {exc}"
            ) from None
    check_every_packed_layer_loaded(cfg, model)
    if purpose == "merge":
        log.info("merge-lora: the GPTQ base is dequantized (the merged model is not quantized)")
        return dequantized(cfg, model)
    if purpose != "train":
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def check_every_packed_layer_loaded(cfg: Any, model: Any) -> None:
    """Refuse a model in which a layer the checkpoint stores packed did not load as a GPTQ
    layer (transformers' integration does not place it in this architecture)."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    loaded = {name for name, module in model.named_modules() if isinstance(module, BaseQuantLinear)}
    missed = [name for name in packed_layer_names(cfg.base_model) if name not in loaded]
    if missed:
        raise WeaveError(
            f"gptq: true: {len(missed)} packed layer(s) of '{cfg.base_model}' did not load as "
            f"GPTQ layers (first: {missed[0]}): transformers' GPTQ integration does not place "
            "them in this architecture, so they would train from random weights"
        )


def dequantized(cfg: Any, model: Any) -> Any:
    """The GPTQ model with each quantized layer replaced by a `torch.nn.Linear` holding its
    dequantized weights, in the training precision: what `weave merge-lora` merges into (peft
    cannot merge into packed GPTQ weights)."""
    import torch
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    dtype = getattr(torch, resolve_precision(cfg).weight_dtype)
    quantized = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, BaseQuantLinear)
    ]
    for name, module in quantized:
        weight = module.dequantize_weight().T.to(dtype)
        linear = torch.nn.Linear(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device=weight.device,
            dtype=dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        model.set_submodule(name, linear)
    model.hf_quantizer.remove_quantization_config(model)
    return model.to(dtype)
