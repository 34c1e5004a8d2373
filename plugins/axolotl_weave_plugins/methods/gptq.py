"""`gptq: true`: LoRA on a GPTQ-quantized checkpoint, through transformers' GPTQ integration.

The checkpoint's own `quantization_config` (written when it was quantized) tells transformers
how to load the packed weights; this plugin checks that the packages that integration needs are
installed (`optimum` and `gptqmodel`; gptqmodel's kernels also run on the CPU), that an adapter
is set (the quantized weights themselves cannot train) and that the family can take it, loads
the checkpoint on a kernel that can train, checks that every packed layer loaded as one, and
prepares the model for k-bit training. `weave merge-lora` merges into the dequantized base.
"""

from __future__ import annotations

import warnings
from typing import Any

from axolotl_weave import (
    ConfigError,
    ModelFamily,
    PluginConfig,
    WeaveError,
    hookimpl,
    require,
    resolve_precision,
)
from pydantic import Field, model_validator

PLUGIN_KIND = "method"


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


def checkpoint_gptq_config(cfg: Any) -> tuple[Any, dict[str, Any]]:
    """The model config of the GPTQ checkpoint `base_model`, and its `quantization_config` as
    written when it was quantized. A checkpoint whose config does not say where its decoder
    blocks are (optimum writes `block_name_to_quantize: null`, then finds only common layouts
    such as `model.layers` again: not MPT's `transformer.blocks` nor RWKV's `rwkv.blocks`) gets
    it from the names of its packed tensors. A checkpoint that is not GPTQ is refused."""
    from axolotl_weave_plugins.models.hf_causal_lm import load_config

    config = load_config(cfg)
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


def load_gptq_checkpoint(
    cfg: Any, tokenizer: Any, family: ModelFamily | None, backend: str, **model_kwargs: Any
) -> Any:
    """`base_model` loaded through transformers' GPTQ integration on the gptqmodel kernel
    `backend` (`auto_trainable` for training: the inference-only CPU and Marlin kernels have no
    backward), after checking the packages it needs and that the family can take it. Every
    layer the checkpoint stores packed must load as a GPTQ layer: one that did not would be
    left with random weights."""
    if family is not None and "gptq" in family.unsupported:
        raise ConfigError(
            f"gptq: the '{family.name}' family cannot train on a GPTQ checkpoint: "
            f"{family.unsupported['gptq']}"
        )
    install = "optimum gptqmodel (GPTQ kernels; a CUDA GPU makes them fast)"
    require("optimum", feature="gptq: true", install=install)
    require("gptqmodel", feature="gptq: true", install=install)
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import GPTQConfig

    from axolotl_weave_plugins.models.hf_causal_lm import load_pretrained

    config, written = checkpoint_gptq_config(cfg)
    quantization = GPTQConfig.from_dict({**written, "backend": backend})
    with warnings.catch_warnings():  # "loading attributes will be overwritten": as meant
        warnings.filterwarnings("ignore", message=".*already has a `quantization_config`")
        try:
            model = load_pretrained(
                cfg,
                tokenizer,
                family,
                config=config,
                quantization_config=quantization,
                **model_kwargs,
            )
        except (AttributeError, KeyError, RuntimeError) as exc:
            raise WeaveError(
                f"gptq: true: transformers could not load the GPTQ checkpoint "
                f"'{cfg.base_model}': {type(exc).__name__}: {exc}"
            ) from None
    loaded = {name for name, module in model.named_modules() if isinstance(module, BaseQuantLinear)}
    missed = [name for name in packed_layer_names(cfg.base_model) if name not in loaded]
    if missed:
        raise WeaveError(
            f"gptq: true: {len(missed)} packed layer(s) of '{cfg.base_model}' did not load as "
            f"GPTQ layers (first: {missed[0]}): transformers' GPTQ integration does not place "
            "them in this architecture, so they would train from random weights"
        )
    return model


@hookimpl(tryfirst=True)
def load_model(cfg: Any, tokenizer: Any, family: ModelFamily | None) -> Any:
    """Load the GPTQ checkpoint (transformers reads its quantization_config) on a trainable
    kernel, ready for LoRA."""
    if not getattr(cfg, "gptq", False):
        return None
    model = load_gptq_checkpoint(cfg, tokenizer, family, backend="auto_trainable")
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def load_dequantized(
    cfg: Any, tokenizer: Any, family: ModelFamily | None, **model_kwargs: Any
) -> Any:
    """The GPTQ base with each quantized layer replaced by a `torch.nn.Linear` holding its
    dequantized weights, in the training precision: what `weave merge-lora` merges into (peft
    cannot merge into packed GPTQ weights)."""
    import torch
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    model = load_gptq_checkpoint(cfg, tokenizer, family, backend="gptq_torch", **model_kwargs)
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
