"""ReLoRA: LoRA with periodic merge-and-restart (Lialin et al., 2023), with Axolotl's keys.

Every `relora_steps` steps the adapter is merged into the base weights and started afresh
(A re-initialised, B zero, so the model's function is unchanged at that moment), and the
optimizer state of the adapter is magnitude-pruned (`relora_prune_ratio` of the smallest
values zeroed; a first moment goes with its second, and bitsandbytes' 8-bit states, which hold
quantization codes, are reset whole). Each cycle's learning rate ramps up over
`relora_warmup_steps` after a restart and, with `relora_anneal_steps`, down to zero before the
next one: a factor on the run's schedule (`lr_multiplier`), so the logged rate shows it.
At the end the adapter is merged once more and the whole model is saved: after a restart the
adapter alone no longer describes the model.

Resuming: the core's checkpoint holds the adapter, not the base weights the restarts changed,
so once a restart has happened each checkpoint also holds the merged weights of the adapted
layers (`checkpoint-N/relora/base_weights.safetensors`). Resuming puts them back into the base
layers before the core restores the adapter, optimizer and data position: the run goes on as
if never stopped. A quantized base (QLoRA, 8-bit) cannot resume yet: its merged weights are
re-quantized in place, and the run refuses rather than resuming wrongly.

The run's state lives in a `ReloraRun`, registered (`configure`) only when `relora_steps` is set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from axolotl_weave import PluginConfig, WeaveError, hookimpl
from pydantic import Field, model_validator

from axolotl_weave_plugins.methods._merged_output import save_merged_model

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
    relora: bool | None = Field(
        None, description="Axolotl's switch: ReLoRA, restarting every jagged_restart_steps."
    )
    jagged_restart_steps: int | None = Field(
        None, gt=0, description="With relora: true, merge and restart every N steps."
    )
    jagged_restart_warmup_steps: int | None = Field(
        None, ge=0, description="With relora: true, warm-up after each restart (default 10)."
    )
    jagged_restart_anneal_steps: int | None = Field(
        None, ge=0, description="With relora: true, steps annealed before a restart (default 1)."
    )

    @model_validator(mode="after")
    def _current_axolotl_names(self) -> ReloraSettings:
        """Axolotl's current names (`relora: true` with `jagged_restart_*`, its defaults 10 and
        1) become the `relora_*` settings; the older names keep working."""
        if self.relora is False:
            self.relora_steps = None
            return self
        if self.jagged_restart_steps is not None and not self.relora:
            raise ValueError(
                "jagged_restart_steps without relora: true (learning-rate restarts alone) is "
                "not implemented; set relora: true for ReLoRA's merge-and-restart cycles"
            )
        if self.relora:
            if self.relora_steps is None:
                self.relora_steps = self.jagged_restart_steps
            if self.relora_steps is None:
                raise ValueError("relora: true needs jagged_restart_steps (the restart period)")
            if self.relora_warmup_steps is None:
                warmup = self.jagged_restart_warmup_steps
                self.relora_warmup_steps = 10 if warmup is None else warmup
            if self.relora_anneal_steps is None:
                anneal = self.jagged_restart_anneal_steps
                self.relora_anneal_steps = 1 if anneal is None else anneal
        return self

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
        best_at_end = getattr(self, "load_best_model_at_end", None)
        if best_at_end is None:  # early stopping loads the best model unless told not to
            best_at_end = bool(getattr(self, "early_stopping_patience", None))
        if best_at_end:
            raise ValueError(
                "load_best_model_at_end (or early_stopping_patience) with ReLoRA: the best "
                "checkpoint may come before a restart merged the adapter into the base, whose "
                "earlier weights a checkpoint does not keep; set load_best_model_at_end: false"
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


STATE_DIR = "relora"
BASE_WEIGHTS = "base_weights.safetensors"
"""A checkpoint's `STATE_DIR/BASE_WEIGHTS`: the adapted layers' base weights, once merged into."""


def adapted_base_weights(model: Any) -> dict[str, Any]:
    """`<LoRA layer name>.weight` -> the base weight under that layer (what restarts change)."""
    from peft.tuners.lora import LoraLayer

    return {
        f"{name}.weight": module.get_base_layer().weight
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """A `ReloraRun` for a run with `relora_steps`."""
    if getattr(cfg, "relora_steps", None):
        register(ReloraRun(cfg), "relora-run")


class ReloraRun:
    """One ReLoRA run: the restarts, the cycles' learning-rate factor, the merged base weights
    in checkpoints, and the merged model at the end."""

    def __init__(self, cfg: Any) -> None:
        self.every: int = cfg.relora_steps
        self.warmup: int = cfg.relora_warmup_steps or 0
        self.anneal: int = cfg.relora_anneal_steps or 0
        self.prune_ratio: float = cfg.relora_prune_ratio
        self.on_cpu: bool = cfg.relora_cpu_offload
        self.quantized = bool(
            getattr(cfg, "load_in_4bit", False) or getattr(cfg, "load_in_8bit", False)
        )
        self.restarted = False  # whether the base weights differ from the loaded model's

    @hookimpl
    def lr_multiplier(self, step: int) -> float:
        """The cycle's factor on the rate of the step after the schedule's `step` steps, that is
        after optimizer step `step` (`cycle_factor(step)`); none for the first step."""
        return cycle_factor(step, self.every, self.warmup, self.anneal) if step else 1.0

    @hookimpl
    def on_step_end(self, state: Any, model: Any, optimizer: Any) -> None:
        """Merge and restart at every `relora_steps` (not after the last step)."""
        step = state.global_step
        if step % self.every or step >= state.max_steps:
            return
        params = merge_and_restart(model, on_cpu=self.on_cpu)
        prune_optimizer_state(optimizer, params, self.prune_ratio)
        self.restarted = True
        log.info("relora: merged the adapter into the base and restarted at step %d", step)

    @hookimpl
    def save_checkpoint_state(self, model: Any, folder: Path, strategy: Any) -> None:
        """Once a restart has happened, the adapted layers' merged base weights (unquantized
        only: a quantized base cannot resume)."""
        from safetensors.torch import save_file

        if not self.restarted or self.quantized or not strategy.is_main_process:
            return
        (folder / STATE_DIR).mkdir(exist_ok=True)
        weights = adapted_base_weights(model)
        cpu = {key: w.detach().to("cpu").contiguous() for key, w in weights.items()}
        save_file(cpu, str(folder / STATE_DIR / BASE_WEIGHTS))

    @hookimpl
    def load_checkpoint_state(self, state: Any, model: Any, folder: Path) -> None:
        """Put back the merged base weights the checkpoint holds, before the core restores the
        adapter on them; refuse a checkpoint past a restart without them."""
        import torch
        from safetensors.torch import load_file

        path = folder / STATE_DIR / BASE_WEIGHTS
        if not path.is_file():
            if state.global_step > self.every:  # a restart at `every` happened (the last step
                # of a run is never one, so at `every` itself it cannot be told)
                last = (state.global_step - 1) // self.every * self.every
                raise WeaveError(
                    f"resume_from_checkpoint: {folder} is past ReLoRA's restart at step {last}, "
                    f"whose merged weights ({path}) are missing: without them the adapter would "
                    "resume on the wrong base"
                )
            return
        saved, weights = load_file(str(path)), adapted_base_weights(model)
        if set(saved) != set(weights):
            raise WeaveError(
                f"{path} does not fit this model's adapted layers (another lora_target_modules?)"
            )
        with torch.no_grad():
            for key, weight in weights.items():
                weight.copy_(saved[key].to(weight.device, weight.dtype))
        self.restarted = True
        log.info("relora: restored the merged base weights from %s", path)

    @hookimpl(wrapper=True)
    def post_train(
        self, model: Any, tokenizer: Any, strategy: Any, output_dir: Path
    ) -> Generator[None, None, None]:
        """After the other plugins saved, replace the adapter in `output_dir` by the whole
        merged model (written to a temporary folder, then moved in)."""
        result = yield
        if not strategy.is_main_process:
            return result
        save_merged_model(model, tokenizer, output_dir)
        log.info("relora: saved the merged model to %s", output_dir)
        return result
