"""`peft: {loftq_config: {loftq_bits: 4}}` (Axolotl's keys): LoftQ (Li et al., 2023), a LoRA
adapter initialised so that the quantized base plus the adapter approximates the full-precision
weights, instead of the quantized base alone.

For every LoRA layer, with W its full-precision base weight: Q = dequant(quant(W - A B))
and A B = the rank-r SVD of W - Q, alternated `loftq_iter` times (A B = 0 at first); the
base weight becomes Q (the values a 4-bit NF4 or 8-bit load of it holds) and the adapter starts
at A B, so the model starts at Q + A B, near W. The quantizers are bitsandbytes' formats (NF4
in blocks of 64 with absmax scales, or int8 with a scale per row) computed in torch, so it runs
on any device, and the adapter's scale (`lora_alpha / lora_r`, rsLoRA's too) is accounted for.

As in Axolotl, LoftQ needs `adapter: lora` on a base loaded unquantized: the initialisation
reads its full-precision weights. It runs on the adapter the LoRA plugin just built (whose base
weights are still the loaded ones), before training and before a resumed run restores the
adapter (the base it rebuilds is the same). After training the adapter only fits the quantized
base Q, not `base_model`: like ReLoRA, the run merges it and saves the whole model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Literal

from axolotl_weave import ConfigError, PluginConfig, WeaveError, hookimpl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from axolotl_weave_plugins.methods._merged_output import save_merged_model

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")

NF4_CODE = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
"""bitsandbytes' NF4 code values (normal-float quantiles, scaled to [-1, 1])."""
NF4_BLOCK = 64
"""Values per absmax scale: bitsandbytes' default 4-bit block size, which LoftQ uses."""


class LoftqConfig(BaseModel):
    """`peft.loftq_config`: the quantization LoftQ initialises for."""

    model_config = ConfigDict(extra="forbid")

    loftq_bits: Literal[4, 8] = Field(
        4, description="Bits of the quantized base: 4 (NF4) or 8 (int8)."
    )
    loftq_iter: int = Field(
        1, gt=0, description="Alternating quantization / SVD iterations (peft's loftq_iter)."
    )


class PeftSection(BaseModel):
    """Axolotl's `peft:` section (only `loftq_config` exists there)."""

    model_config = ConfigDict(extra="forbid")

    loftq_config: LoftqConfig | None = Field(
        None, description="Initialise the LoRA adapter with LoftQ."
    )


class LoftqSettings(PluginConfig):
    """The `peft:` key."""

    peft: PeftSection | None = Field(
        None, description="peft options: loftq_config: {loftq_bits: 4} for a LoftQ init."
    )

    @model_validator(mode="after")
    def _needs_a_float_lora(self) -> LoftqSettings:
        if self.peft is None or self.peft.loftq_config is None:
            return self
        adapter = getattr(self, "adapter", None)
        if adapter != "lora":
            raise ValueError(
                f"peft.loftq_config needs adapter: lora (got {adapter!r}): LoftQ initialises a "
                "LoRA adapter from the full-precision base, which it quantizes itself"
            )
        for key in ("load_in_4bit", "load_in_8bit", "gptq"):
            if getattr(self, key, False):
                raise ValueError(
                    f"peft.loftq_config and {key}: LoftQ reads the base's full-precision "
                    f"weights; load it unquantized (remove {key})"
                )
        if getattr(self, "lora_model_dir", None):
            raise ValueError(
                "peft.loftq_config and lora_model_dir: LoftQ initialises a new adapter, "
                "lora_model_dir continues a saved one; remove one of them"
            )
        for key in ("peft_use_dora", "lora_target_parameters", "relora_steps", "relora", "qat"):
            if getattr(self, key, None):
                raise ValueError(f"peft.loftq_config with {key} is not supported")
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `peft:` section."""
    return LoftqSettings


# --- the quantizers and LoftQ itself ------------------------------------------------------------


def fake_quantize(weight: Any, bits: int) -> Any:
    """`weight` quantized as bitsandbytes stores it and dequantized again (float32): NF4 in
    blocks of 64 values (over the flattened tensor) with an absmax scale each, or int8 with an
    absmax scale per row (the 8-bit `Int8Params` format)."""
    import torch

    values = weight.detach().float()
    if bits == 8:
        scale = values.abs().amax(dim=-1, keepdim=True)
        codes = torch.round(values * (127.0 / scale.clamp_min(1e-12))).clamp_(-127, 127)
        return codes * (scale / 127.0)
    if bits != 4:
        raise ValueError(f"loftq_bits: {bits} is not 4 or 8")
    flat = values.flatten()
    pad = -flat.numel() % NF4_BLOCK
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, NF4_BLOCK)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    code = torch.tensor(NF4_CODE, device=values.device)
    midpoints = (code[1:] + code[:-1]) / 2
    index = torch.bucketize(blocks / absmax.clamp_min(1e-12), midpoints)
    dequantized = code[index] * absmax
    return dequantized.flatten()[: flat.numel()].view_as(values)


def low_rank(matrix: Any, rank: int) -> tuple[Any, Any]:
    """(L, R) with L @ R the best rank-`rank` approximation of `matrix` (its truncated SVD,
    the singular values split evenly between the two)."""
    import torch

    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def loftq_base(
    weight: Any, bits: int, rank: int, iterations: int = 1, transposed: bool = False
) -> Any:
    """LoftQ's quantized base for one weight (float32, as stored): Q = dequant(quant(W - L @ R))
    with L @ R the rank-`rank` approximation of W - Q of the iteration before (0 at first),
    `iterations` times. `transposed`: the weight is stored (in, out) (Conv1D's layout); it is
    quantized as stored, as a quantized load would."""
    stored = weight.detach().float()
    residual = stored
    for step in range(iterations):
        quantized = fake_quantize(residual, bits)
        if step + 1 == iterations:
            break
        error = stored - quantized
        left, right = low_rank(error.T if transposed else error, rank)
        product = left @ right
        residual = stored - (product.T if transposed else product)
    return quantized


def loftq_initialise(model: Any, bits: int, iterations: int, adapter: str = "default") -> int:
    """Initialise every LoRA linear layer of a peft model with LoftQ from its base weight: the
    base weight becomes its quantized values Q, lora_B @ lora_A * scaling becomes the rank-r
    approximation of W - Q. Returns the number of layers initialised."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    tied = {id(p) for p in model.get_input_embeddings().parameters()}
    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
                continue
            if not isinstance(module, LoraLinear) or adapter in module.lora_embedding_A:
                raise ConfigError(
                    f"peft.loftq_config: {name} is a {type(module).__name__}, not a LoRA linear "
                    "layer; LoftQ here initialises linear layers only (see lora_target_modules)"
                )
            base = module.get_base_layer().weight
            if id(base) in tied:
                raise ConfigError(
                    f"peft.loftq_config: {name} shares its weight with the input embeddings; "
                    "LoftQ would quantize them too: leave it out of lora_target_modules"
                )
            if base.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                raise WeaveError(f"peft.loftq_config: {name}'s base weight is {base.dtype}")
            transposed = module.fan_in_fan_out  # stored (in, out): Conv1D's layout
            rank = module.r[adapter]
            stored = base.detach().float().clone()  # W, kept: the base becomes Q
            base.copy_(loftq_base(stored, bits, rank, iterations, transposed).to(base.dtype))
            error = stored - base.float()  # what the base, as stored, now misses
            left, right = low_rank(error.T if transposed else error, rank)
            root = math.sqrt(module.scaling[adapter])
            lora_a, lora_b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            lora_a.copy_((right / root).to(lora_a.dtype))
            lora_b.copy_((left / root).to(lora_b.dtype))
            count += 1
    return count


# --- the run ----------------------------------------------------------------------------------


class LoftqRun:
    """The run-scoped plugin (registered only with `peft.loftq_config`): LoftQ-initialise the
    adapter the LoRA plugin built, and save the merged model at the end."""

    def __init__(self, bits: int, iterations: int) -> None:
        self.bits = bits
        self.iterations = iterations

    @hookimpl(wrapper=True, tryfirst=True)
    def load_model(self, purpose: str) -> Generator[None, Any, Any]:
        """Initialise the new LoRA adapter of the training model with LoftQ (outermost wrapper:
        LoRA has wrapped the model, its base weights are still the loaded ones)."""
        model = yield
        if purpose != "train":
            return model
        count = loftq_initialise(model, self.bits, self.iterations)
        if count == 0:
            raise WeaveError("peft.loftq_config: the model has no LoRA layer to initialise")
        log.info(
            "loftq: initialised %d LoRA layers for a %d-bit base (%d iteration%s)",
            count,
            self.bits,
            self.iterations,
            "" if self.iterations == 1 else "s",
        )
        return model

    @hookimpl(wrapper=True)
    def post_train(
        self, model: Any, tokenizer: Any, strategy: Any, output_dir: Path
    ) -> Generator[None, None, None]:
        """After the other plugins saved, replace the adapter in `output_dir` by the merged
        model (Q + the adapter): the adapter alone would apply to `base_model`'s W, not Q."""
        result = yield
        if not strategy.is_main_process:
            return result
        save_merged_model(model, tokenizer, output_dir)
        log.info("loftq: saved the merged model (quantized base + adapter) to %s", output_dir)
        return result


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `peft.loftq_config`, register the `LoftqRun` for this run."""
    peft = getattr(cfg, "peft", None)
    if peft is not None and peft.loftq_config is not None:
        settings = peft.loftq_config
        register(LoftqRun(settings.loftq_bits, settings.loftq_iter), "loftq-run")
