"""ReLoRA: LoRA with periodic merge-and-restart (Lialin et al., 2023), with Axolotl's keys.

Every `relora_steps` steps the adapter is merged into the base weights and started afresh
(A re-initialised, B zero, so the model's function is unchanged at that moment), and the
optimizer state of the adapter is magnitude-pruned (`relora_prune_ratio` of the smallest
values zeroed; a first moment goes with its second, and bitsandbytes' 8-bit states, which hold
quantization codes, are reset whole). Each cycle's learning rate ramps up over
`relora_warmup_steps` after a restart and, with `relora_anneal_steps`, down to zero before the
next one, on top of the run's schedule.
At the end the adapter is merged once more and the whole model is saved: after a restart the
adapter alone no longer describes the model.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field, model_validator

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")


class ReloraSettings(PluginConfig):
    """ReLoRA's keys (Axolotl's names)."""

    relora_steps: int | None = Field(None, gt=0, description="Merge and restart every N steps.")
    relora_warmup_steps: int | None = Field(
        None, ge=0, description="Learning-rate warm-up steps after each restart."
    )
    relora_anneal_steps: int | None = Field(
        None, ge=0, description="Steps before each restart over which the rate falls to 0."
    )
    relora_prune_ratio: float = Field(
        0.9, ge=0, le=1, description="Fraction of the adapter's optimizer state zeroed."
    )
    relora_cpu_offload: bool = Field(False, description="Merge on the CPU (saves GPU memory).")

    @model_validator(mode="after")
    def _needs_an_adapter(self) -> ReloraSettings:
        if self.relora_steps is None:
            return self
        if getattr(self, "adapter", None) not in ("lora", "qlora"):
            raise ValueError("relora_steps needs adapter: lora or qlora")
        if getattr(self, "resume_from_checkpoint", None):
            raise ValueError(
                "resume_from_checkpoint is not supported with ReLoRA yet: checkpoints hold the "
                "adapter, not the base weights the restarts changed"
            )
        warm, anneal = self.relora_warmup_steps or 0, self.relora_anneal_steps or 0
        if warm + anneal > self.relora_steps:
            raise ValueError(
                f"relora_warmup_steps + relora_anneal_steps ({warm + anneal}) exceed "
                f"relora_steps ({self.relora_steps})"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """ReLoRA's keys."""
    return ReloraSettings


def cycle_factor(step: int, every: int, warmup: int, anneal: int) -> float:
    """The multiplier of the learning rate used for step `step + 1` within ReLoRA's cycles.

    The first cycle has no extra warm-up (the run's own schedule does it).
    """
    position = step % every
    if warmup and step >= every and position < warmup:
        return (position + 1) / (warmup + 1)
    if anneal and position >= every - anneal:
        return (every - position) / (anneal + 1)
    return 1.0


def lora_layers(model: Any) -> list[Any]:
    """The peft LoRA layers of a model."""
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def merge_and_restart(model: Any, *, on_cpu: bool = False) -> list[Any]:
    """Merge every LoRA layer into its base weight, then re-initialise it (B = 0): the model's
    function is unchanged. Returns the re-initialised parameters."""
    import torch

    fresh = []
    with torch.no_grad():
        for layer in lora_layers(model):
            for adapter in list(layer.lora_A):
                device = layer.lora_A[adapter].weight.device
                if on_cpu:
                    layer.to("cpu")
                layer.merge(adapter_names=[adapter])
                layer.merged_adapters.clear()  # the delta is in the base now; train afresh
                layer.reset_lora_parameters(adapter, init_lora_weights=True)
                if on_cpu:
                    layer.to(device)
                fresh += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    return fresh


MOMENT_PAIRS = (("exp_avg", "exp_avg_sq"), ("state1", "state2"))
"""(first moment, second moment) state keys of Adam-type optimizers: torch's, bitsandbytes'."""


def prune_optimizer_state(optimizer: Any, params: list[Any], ratio: float) -> None:
    """ReLoRA's partial optimizer reset for `params`: zero the smallest `ratio` of each
    floating-point state tensor (the moments), by magnitude.

    Where a second moment was zeroed, the first moment is zeroed too: kept alone, Adam would
    divide it by ~eps and move that weight by thousands (a re-initialised LoRA A gets no
    gradient until B moves). A state stored quantized (bitsandbytes' 8-bit optimizers: uint8
    codes into a quantization map, not magnitudes, beside the map itself) cannot be pruned
    that way and is reset whole: the optimizer starts it afresh at the next step."""
    import torch

    for param in params:
        state = optimizer.state.get(param)
        if not state:
            continue
        if any(torch.is_tensor(v) and not v.is_floating_point() for v in state.values()):
            optimizer.state[param] = {}
            continue
        for value in state.values():
            if torch.is_tensor(value) and value.ndim > 0:  # not the step count
                _prune_smallest(value, ratio)
        for first, second in MOMENT_PAIRS:
            if first in state and second in state:
                state[first].masked_fill_(state[second] == 0, 0)


def _prune_smallest(value: Any, ratio: float) -> None:
    """Zero the smallest `ratio` of `value`'s entries (by magnitude), in place."""
    if ratio >= 1:
        value.zero_()
        return
    magnitude = value.abs().flatten().float()
    k = int(ratio * magnitude.numel())
    if k == 0:
        return
    threshold = magnitude.kthvalue(k).values
    value.masked_fill_(value.abs() <= threshold, 0)


@hookimpl
def on_step_end(cfg: Any, state: Any, model: Any, optimizer: Any) -> None:
    """Restart at every `relora_steps`; scale the learning rate of the step to come."""
    every = getattr(cfg, "relora_steps", None)
    if not every:
        return
    step = state.global_step
    if step % every == 0 and step < state.max_steps:
        params = merge_and_restart(model, on_cpu=cfg.relora_cpu_offload)
        prune_optimizer_state(optimizer, params, cfg.relora_prune_ratio)
        log.info("relora: merged the adapter into the base and restarted at step %d", step)
    factor = cycle_factor(step, every, cfg.relora_warmup_steps or 0, cfg.relora_anneal_steps or 0)
    if factor != 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= factor


@hookimpl(wrapper=True)
def post_train(
    cfg: Any, model: Any, tokenizer: Any, accelerator: Any, output_dir: Path
) -> Generator[None, None, None]:
    """After the other plugins saved, replace the adapter in `output_dir` by the whole merged
    model (written to a temporary folder, then moved in)."""
    result = yield
    if not getattr(cfg, "relora_steps", None) or not accelerator.is_main_process:
        return result
    merged = model.merge_and_unload()
    staging = output_dir / ".saving-relora"
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        (output_dir / name).unlink(missing_ok=True)
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()
    log.info("relora: saved the merged model to %s", output_dir)
    return result
