"""`quantize_moe_experts: true` (Axolotl's key): quantize a mixture-of-experts model's fused
expert weights with bitsandbytes as they load.

transformers 5 stores a MoE layer's experts as 3-D parameters (`experts.gate_up_proj`, one
slice per expert), not `nn.Linear` layers, so a bitsandbytes load (`load_in_4bit`,
`load_in_8bit`) leaves them in the model's dtype: most of such a model. With this key, each
3-D parameter whose name holds "expert" is quantized the moment transformers sets it (its
bf16 copy freed at once, so the whole model never sits in memory unquantized): 4-bit as
bitsandbytes' parametrization stores it (`bnb_4bit_quant_type`, double quantization as
`bnb_4bit_use_double_quant`), 8-bit as int8 rows with a scale each. The parameter then reads as
its dequantized values wherever the model uses it; its storage is the quantized bytes. Any such
parameter the load left unquantized is quantized right after.

The experts stay frozen: LoRA goes on the linear layers (`lora_target_modules`); peft cannot
put an adapter on a quantized expert parameter (`lora_target_parameters` is refused with it).
Needs `adapter: lora` with `load_in_8bit` or `adapter: qlora` with `load_in_4bit`, and
bitsandbytes (`pip install 'axolotl-weave[bnb]'`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any

from axolotl_weave import PluginConfig, hookimpl, require
from pydantic import Field, model_validator

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")

INSTALL = "'axolotl-weave[bnb]'"


class ExpertQuantizationSettings(PluginConfig):
    """The `quantize_moe_experts` key."""

    quantize_moe_experts: bool = Field(
        False, description="Quantize MoE expert weights (3-D parameters) as they load."
    )

    @model_validator(mode="after")
    def _with_a_bitsandbytes_adapter(self) -> ExpertQuantizationSettings:
        if not self.quantize_moe_experts:
            return self
        adapter = getattr(self, "adapter", None)
        four, eight = getattr(self, "load_in_4bit", False), getattr(self, "load_in_8bit", False)
        if not ((adapter == "qlora" and four) or (adapter == "lora" and (four or eight))):
            raise ValueError(
                "quantize_moe_experts needs adapter: qlora with load_in_4bit: true, or adapter: "
                "lora with load_in_8bit: true (the experts are quantized as the base is)"
            )
        if getattr(self, "lora_target_parameters", None):
            raise ValueError(
                "quantize_moe_experts with lora_target_parameters: peft cannot put an adapter "
                "on a quantized expert parameter; train the linear layers (lora_target_modules)"
            )
        if getattr(self, "lora_target_linear", False):
            raise ValueError(
                "quantize_moe_experts with lora_target_linear (as in Axolotl): name the layers "
                "in lora_target_modules instead"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`quantize_moe_experts`."""
    return ExpertQuantizationSettings


def int8_rows(row_stats: Any, dtype: Any) -> Any:
    """A parametrization reading int8 rows (a scale each) back as floats of `dtype`:
    bitsandbytes' 8-bit vector-wise format, for a 3-D expert parameter (its rows are the last
    dimension's)."""
    import bitsandbytes as bnb
    import torch

    class Int8Rows(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("row_stats", row_stats)

        def forward(self, codes: Any) -> Any:
            rows = codes.reshape(-1, codes.shape[-1])
            values = bnb.functional.int8_vectorwise_dequant(rows, self.row_stats)
            return values.reshape(codes.shape).to(dtype)

    return Int8Rows()


def quantize_expert(module: Any, name: str, bits: int, quant_type: str, double: bool) -> None:
    """Replace `module.name` (a 3-D parameter) by its quantized bytes, read through a
    bitsandbytes parametrization as the dequantized values, in place."""
    import torch
    import torch.nn.utils.parametrize as parametrize

    if bits == 4:
        from bitsandbytes.nn.parametrize import replace_parameter_4bit

        replace_parameter_4bit(module, name, compress_statistics=double, quant_type=quant_type)
        return
    import bitsandbytes as bnb

    original = getattr(module, name)
    rows = original.detach().reshape(-1, original.shape[-1]).to(torch.float16)
    codes, stats, _ = bnb.functional.int8_vectorwise_quant(rows)
    codes = codes.reshape(original.shape)
    setattr(module, name, torch.nn.Parameter(codes, requires_grad=False))
    parametrize.register_parametrization(
        module, name, int8_rows(stats, original.dtype), unsafe=True
    )


def is_expert(name: str, value: Any) -> bool:
    """Whether a parameter is an unquantized fused expert weight: floats, 3-D or more,
    "expert" in its name."""
    floats = getattr(value, "is_floating_point", lambda: False)()
    return floats and getattr(value, "ndim", 0) >= 3 and "expert" in name.lower()


@contextlib.contextmanager
def quantizing_experts_as_they_load(quantize: Callable[[Any, str], None]) -> Iterator[list[str]]:
    """While a `from_pretrained` runs: quantize each expert parameter the moment transformers
    sets it (`quantize(module, name)`), and skip transformers' allocator warm-up, which would
    reserve the unquantized size at once. Yields the names quantized so far."""
    try:
        import transformers.core_model_loading as loading
        import transformers.modeling_utils as modeling
    except ImportError:  # a transformers without them: the post-load pass does the work
        loading = modeling = None

    done: list[str] = []
    set_param = getattr(loading, "set_param_for_module", None)
    warmup = getattr(modeling, "caching_allocator_warmup", None)
    if set_param is None or warmup is None:  # another transformers: quantized after the load
        log.warning(
            "quantize_moe_experts: this transformers has no set_param_for_module to hook; the "
            "experts are quantized after the load (no memory saved while loading)"
        )
        yield done
        return

    def set_and_quantize(model: Any, target_name: str, param_value: Any, *args: Any) -> Any:
        result = set_param(model, target_name, param_value, *args)
        if is_expert(target_name, param_value):
            path, _, name = target_name.rpartition(".")
            module = model.get_submodule(path) if path else model
            if isinstance(getattr(type(module), name, None), property):
                return result  # already parametrized
            quantize(module, name)
            done.append(target_name)
            param_value.data = param_value.data.new_empty(0)  # free the unquantized copy
        return result

    loading.set_param_for_module = set_and_quantize
    modeling.caching_allocator_warmup = lambda *args, **kwargs: None
    try:
        yield done
    finally:
        loading.set_param_for_module = set_param
        modeling.caching_allocator_warmup = warmup


def quantize_the_rest(model: Any, quantize: Callable[[Any, str], None]) -> list[str]:
    """Quantize the expert parameters still unquantized (a load that set them another way)."""
    import torch.nn.utils.parametrize as parametrize

    left = []
    for path, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if is_expert(name if not path else f"{path}.{name}", param):
                if not parametrize.is_parametrized(module, name):
                    quantize(module, name)
                    left.append(f"{path}.{name}")
    return left


class ExpertQuantizer:
    """The run-scoped plugin (registered with `quantize_moe_experts: true`)."""

    def __init__(self, cfg: Any) -> None:
        bnb_kwargs = getattr(cfg, "bnb_config_kwargs", None) or {}
        self.bits = 4 if cfg.load_in_4bit else 8
        self.quant_type = bnb_kwargs.get("bnb_4bit_quant_type", "nf4")
        self.double = bool(bnb_kwargs.get("bnb_4bit_use_double_quant", True))

    def quantize(self, module: Any, name: str) -> None:
        """Quantize one expert parameter in this run's format."""
        quantize_expert(module, name, self.bits, self.quant_type, self.double)

    @hookimpl(wrapper=True, trylast=True)
    def load_model(self, purpose: str) -> Generator[None, Any, Any]:
        """Around the base model's load (innermost): quantize its experts as they load, for
        training and inference (a merge loads the base unquantized)."""
        if purpose == "merge":
            return (yield)
        require("bitsandbytes", feature="quantize_moe_experts", install=INSTALL)
        with quantizing_experts_as_they_load(self.quantize) as done:
            model = yield
        later = quantize_the_rest(model, self.quantize)
        if not done and not later:
            log.warning("quantize_moe_experts: the model has no expert weights (3-D) to quantize")
        else:
            log.info(
                "quantize_moe_experts: %d expert weights in %d-bit (%d as they loaded)",
                len(done) + len(later),
                self.bits,
                len(done),
            )
        return model


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `quantize_moe_experts: true`, register the `ExpertQuantizer`."""
    if getattr(cfg, "quantize_moe_experts", False):
        register(ExpertQuantizer(cfg), "moe-expert-quantization-run")
