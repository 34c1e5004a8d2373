"""`gptq: true`: LoRA on a GPTQ-quantized checkpoint, through transformers' GPTQ integration.

The checkpoint's own `quantization_config` (written when it was quantized) tells transformers
how to load the packed weights; this plugin checks that the packages that integration needs are
installed (`optimum` and `gptqmodel`; the latter also runs on CPU), that an adapter is set (the
quantized weights themselves cannot train), and prepares the model for k-bit training.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import ModelFamily, PluginConfig, hookimpl, require
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


@hookimpl(tryfirst=True)
def load_model(cfg: Any, tokenizer: Any, family: ModelFamily | None) -> Any:
    """Load the GPTQ checkpoint (transformers reads its quantization_config), ready for LoRA."""
    if not getattr(cfg, "gptq", False):
        return None
    install = "optimum gptqmodel (GPTQ kernels; a CUDA GPU makes them fast)"
    require("optimum", feature="gptq: true", install=install)
    require("gptqmodel", feature="gptq: true", install=install)
    from peft import prepare_model_for_kbit_training

    from axolotl_weave_plugins.models.hf_causal_lm import load_pretrained

    model = load_pretrained(cfg, tokenizer, family)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
