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

Resuming: a checkpoint holds the adapter, not the base weights the restarts changed, so when
the run saves checkpoints each restart also writes the merged weights of the adapted layers to
`OUTPUT_DIR/relora/step-<N>.safetensors` (kept while a checkpoint needs them). Resuming from a
checkpoint first puts back the weights of the last restart at or before it, then the core
restores the adapter, optimizer and data position from the checkpoint: the run goes on as if
never stopped. A quantized base (QLoRA, 8-bit) cannot resume yet: its merged weights are
re-quantized in place, and the run refuses rather than resuming wrongly.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

from axolotl_weave import (
    ModelFamily,
    PluginConfig,
    WeaveError,
    checkpoint_step,
    checkpoints,
    hookimpl,
    resolve_resume,
)
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
        quantized = getattr(self, "load_in_4bit", False) or getattr(self, "load_in_8bit", False)
        if getattr(self, "resume_from_checkpoint", None) and quantized:
            raise ValueError(
                "resume_from_checkpoint with ReLoRA needs an unquantized base (no load_in_4bit "
                "/ load_in_8bit) for now: the restarts re-quantize the merged weights in place, "
                "which checkpoints do not keep"
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


SNAPSHOT_DIR = "relora"
SNAPSHOT_RE = re.compile(r"^step-(\d+)\.safetensors$")


def adapted_base_weights(model: Any) -> dict[str, Any]:
    """`<LoRA layer name>.weight` -> the base weight under that layer (what restarts change)."""
    from peft.tuners.lora import LoraLayer

    return {
        f"{name}.weight": module.get_base_layer().weight
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def snapshots(output_dir: Path) -> dict[int, Path]:
    """Restart step -> the merged-weights file saved at it, for the restarts on disk."""
    folder = output_dir / SNAPSHOT_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = SNAPSHOT_RE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def save_snapshot(model: Any, output_dir: Path, step: int) -> Path:
    """Write the adapted layers' merged base weights for `step` (atomically), then delete the
    snapshots no checkpoint needs any more (each needs the last restart at or before it)."""
    from safetensors.torch import save_file

    folder = output_dir / SNAPSHOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final, tmp = folder / f"step-{step}.safetensors", folder / f".step-{step}.tmp"
    weights = {k: w.detach().to("cpu").contiguous() for k, w in adapted_base_weights(model).items()}
    save_file(weights, str(tmp))
    os.replace(tmp, final)
    on_disk = snapshots(output_dir)
    needed = {step} | {
        max((r for r in on_disk if r <= checkpoint_step(c)), default=-1)
        for c in checkpoints(output_dir)
    }
    for restart, path in on_disk.items():
        if restart not in needed:
            path.unlink(missing_ok=True)
    return final


def restore_snapshot(cfg: Any, model: Any) -> None:
    """When the run resumes from a checkpoint past a restart, put back the merged base weights
    of the last restart at or before it."""
    import torch
    from safetensors.torch import load_file

    output_dir = Path(cfg.output_dir)
    checkpoint = resolve_resume(cfg.resume_from_checkpoint, output_dir)
    if checkpoint is None:
        return
    resumed_at = checkpoint_step(checkpoint)
    last_restart = resumed_at - resumed_at % cfg.relora_steps
    if last_restart == resumed_at == getattr(cfg, "max_steps", None):
        last_restart -= cfg.relora_steps  # the run ended there: no restart at its last step
    if last_restart == 0:
        return  # no restart before the checkpoint: the base is the one just loaded
    path = snapshots(output_dir).get(last_restart)
    if path is None:
        raise WeaveError(
            f"resume_from_checkpoint: {checkpoint} is past ReLoRA's restart at step "
            f"{last_restart}, whose merged weights ({output_dir / SNAPSHOT_DIR}/"
            f"step-{last_restart}.safetensors) are missing: without them the adapter would "
            "resume on the wrong base"
        )
    saved, weights = load_file(str(path)), adapted_base_weights(model)
    if set(saved) != set(weights):
        raise WeaveError(
            f"{path} does not fit this model's adapted layers (another lora_target_modules?)"
        )
    with torch.no_grad():
        for key, weight in weights.items():
            weight.copy_(saved[key].to(weight.device, weight.dtype))
    log.info("relora: restored the weights merged at step %d from %s", last_restart, path)


@hookimpl(wrapper=True, tryfirst=True)
def load_model(cfg: Any, tokenizer: Any, family: ModelFamily | None) -> Generator[None, Any, Any]:
    """Around the LoRA-wrapped model: on resume, the base weights of the last restart."""
    model = yield
    if getattr(cfg, "relora_steps", None) and getattr(cfg, "resume_from_checkpoint", None):
        restore_snapshot(cfg, model)
    return model


def saves_checkpoints(cfg: Any) -> bool:
    """Whether the run writes checkpoints (which then need the restarts' merged weights)."""
    return bool(getattr(cfg, "save_steps", None) or getattr(cfg, "saves_per_epoch", None))


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
        if saves_checkpoints(cfg) and is_main_process():
            save_snapshot(model, Path(cfg.output_dir), step)
    factor = cycle_factor(step, every, cfg.relora_warmup_steps or 0, cfg.relora_anneal_steps or 0)
    if factor != 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= factor


def is_main_process() -> bool:
    """Whether this is the process that writes files (rank 0)."""
    from accelerate import PartialState

    return PartialState().is_main_process


@hookimpl(wrapper=True)
def post_train(
    cfg: Any, model: Any, tokenizer: Any, strategy: Any, output_dir: Path
) -> Generator[None, None, None]:
    """After the other plugins saved, replace the adapter in `output_dir` by the whole merged
    model (written to a temporary folder, then moved in)."""
    result = yield
    if not getattr(cfg, "relora_steps", None) or not strategy.is_main_process:
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
