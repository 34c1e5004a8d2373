"""LISA, Layerwise Importance Sampled AdamW (Pan et al., 2024), with Axolotl's keys
`lisa_n_layers`, `lisa_step_interval` and `lisa_layers_attribute`.

A full fine-tune in which the decoder layers (the list at `lisa_layers_attribute`, default
`model.layers`) are all frozen but `lisa_n_layers` of them, drawn at random afresh every
`lisa_step_interval` steps; the rest of the model (embeddings, final norm, head) trains
throughout, as in Axolotl. Every layer trains when the optimizer is built and the model is
wrapped for its devices, so the optimizer holds every layer and DDP reduces every layer's
gradient (DDP leaves out a parameter frozen when it wraps the model: a layer drawn later would
then train on each process's own gradient, and the processes drift apart). The draw is applied
before each step's forward pass (`training_step`, on every process); AdamW skips a parameter
without gradient, and DDP leaves the gradient of a parameter no process used untouched, so a
frozen layer keeps its weights and its moments until it is drawn again. Under DDP this needs
`ddp_find_unused_parameters` (on by default) and non-reentrant checkpointing (the default).

The draw of interval k is a function of `seed` and k alone, so a resumed run draws the same
layers. The core's checkpoints hold only the parameters that train at that moment; each
checkpoint also holds the frozen layers' weights (`checkpoint-N/lisa/frozen_layers.safetensors`),
which a resume puts back before the core restores the rest.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, WeaveError, hookimpl
from pydantic import Field, model_validator

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")

STATE_DIR = "lisa"
FROZEN_WEIGHTS = "frozen_layers.safetensors"
"""A checkpoint's `STATE_DIR/FROZEN_WEIGHTS`: the layers frozen when it was written."""


class LisaSettings(PluginConfig):
    """LISA's keys (Axolotl's names)."""

    lisa_n_layers: int | None = Field(
        None, gt=0, description="LISA: how many decoder layers train at a time."
    )
    lisa_step_interval: int | None = Field(
        None, gt=0, description="LISA: draw the training layers afresh every N steps."
    )
    lisa_layers_attribute: str = Field(
        "model.layers", description="LISA: the path of the decoder layer list in the model."
    )

    @model_validator(mode="after")
    def _check_lisa_keys(self) -> LisaSettings:
        if self.lisa_n_layers is None and self.lisa_step_interval is None:
            return self
        if self.lisa_n_layers is None or self.lisa_step_interval is None:
            given = "lisa_n_layers" if self.lisa_n_layers is not None else "lisa_step_interval"
            missing = "lisa_step_interval" if given == "lisa_n_layers" else "lisa_n_layers"
            raise ValueError(f"{given} needs {missing} too (LISA is on when both are set)")
        adapter = getattr(self, "adapter", None)
        if adapter:
            raise ValueError(
                f"lisa_n_layers with adapter: {adapter}: LISA is a full fine-tune of the "
                "base's layers; remove the adapter (or the lisa_* keys)"
            )
        if getattr(self, "ddp_find_unused_parameters", None) is False:
            raise ValueError(
                "lisa_n_layers with ddp_find_unused_parameters: false: the frozen layers get "
                "no gradient, which DDP must be told to expect; remove the key"
            )
        checkpointing = getattr(self, "gradient_checkpointing_kwargs", None) or {}
        if getattr(self, "gradient_checkpointing", False) and checkpointing.get("use_reentrant"):
            raise ValueError(
                "lisa_n_layers with gradient_checkpointing_kwargs.use_reentrant: true: "
                "re-entrant checkpointing cannot skip the frozen layers' gradients under DDP; "
                "use use_reentrant: false (the default)"
            )
        keys = ("unfrozen_parameters", "spectrum_top_fraction", "deepspeed", "fsdp")
        for key in (*keys, "fsdp_config"):
            if getattr(self, key, None):
                raise ValueError(f"lisa_n_layers with {key} is not supported")
        if not self.lisa_layers_attribute.strip() or any(
            not part.isidentifier() for part in self.lisa_layers_attribute.split(".")
        ):
            raise ValueError(
                f"lisa_layers_attribute: {self.lisa_layers_attribute!r} is not a dotted "
                "attribute path such as model.layers"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """LISA's keys."""
    return LisaSettings


def draw_layers(seed: int, interval: int, total: int, count: int) -> list[int]:
    """The indices (sorted) of the `count` layers out of `total` that train during interval
    `interval` (steps `interval * lisa_step_interval + 1` onwards) of a run seeded `seed`."""
    return sorted(random.Random(f"lisa:{seed}:{interval}").sample(range(total), count))


def find_layers(model: Any, attribute: str) -> Any:
    """The layer list at the dotted `attribute` path of the model (or of the model a wrapper
    such as torch.compile holds), naming the key when it is missing."""
    for root in (model, getattr(model, "_orig_mod", None)):
        if root is None:
            continue
        try:
            layers = functools.reduce(getattr, attribute.split("."), root)
        except AttributeError:
            continue
        if hasattr(layers, "__len__") and hasattr(layers, "__getitem__"):
            return layers
    raise ConfigError(
        f"lisa_layers_attribute: {type(model).__name__} has no layer list at '{attribute}'"
    )


class LisaRun:
    """One LISA run: which layers train, the redraws, and the frozen layers' weights in
    checkpoints."""

    def __init__(self, cfg: Any) -> None:
        self.count: int = cfg.lisa_n_layers
        self.every: int = cfg.lisa_step_interval
        self.attribute: str = cfg.lisa_layers_attribute
        self.seed: int = cfg.seed if cfg.seed is not None else 0
        self.layers: Any = None
        self.interval: int | None = None
        self.active: list[int] = []

    def activate(self, interval: int) -> list[int]:
        """Freeze every layer but the ones drawn for `interval`; the drawn indices."""
        self.interval = interval
        self.active = draw_layers(self.seed, interval, len(self.layers), self.count)
        chosen = set(self.active)
        for index, layer in enumerate(self.layers):
            layer.requires_grad_(index in chosen)
        return self.active

    def layer_params(self) -> list[Any]:
        """Every parameter of the decoder layers."""
        return [param for layer in self.layers for param in layer.parameters()]

    @hookimpl(wrapper=True)
    def load_model(self, purpose: str) -> Generator[None, Any, Any]:
        """Find the layer list; every layer trains until the first step's draw."""
        model = yield
        if purpose != "train":
            return model
        self.layers = find_layers(model, self.attribute)
        if self.count > len(self.layers):
            raise ConfigError(
                f"lisa_n_layers: {self.count} exceeds the {len(self.layers)} layers at "
                f"'{self.attribute}'"
            )
        log.info(
            "lisa: %d of %d layers train at a time, drawn every %d steps",
            self.count,
            len(self.layers),
            self.every,
        )
        return model

    @hookimpl(wrapper=True)
    def training_step(self, state: Any) -> Generator[None, Any, Any]:
        """Before the step's forward pass: the layers drawn for its interval train."""
        interval = state.global_step // self.every
        if self.layers is not None and interval != self.interval:
            active = self.activate(interval)
            log.info("lisa: layers %s train from step %d", active, state.global_step + 1)
        return (yield)

    def frozen_weights(self, model: Any) -> dict[str, Any]:
        """Name -> parameter of every frozen layer parameter (what the core's checkpoint
        leaves out)."""
        frozen = {id(param) for param in self.layer_params() if not param.requires_grad}
        return {name: param for name, param in model.named_parameters() if id(param) in frozen}

    @hookimpl
    def save_checkpoint_state(self, model: Any, folder: Path, strategy: Any) -> None:
        """The frozen layers' weights (the trainable ones are in the core's files)."""
        from safetensors.torch import save_file

        if self.layers is None or not strategy.is_main_process:
            return
        weights = self.frozen_weights(model)
        (folder / STATE_DIR).mkdir(exist_ok=True)
        cpu = {name: w.detach().to("cpu").contiguous() for name, w in weights.items()}
        save_file(cpu, str(folder / STATE_DIR / FROZEN_WEIGHTS))

    @hookimpl
    def load_checkpoint_state(self, state: Any, model: Any, folder: Path) -> None:
        """Make the layers that trained in the checkpoint's last step the training ones (the
        next step draws afresh if it starts an interval), and put back the frozen layers'
        weights, before the core restores the trainable ones."""
        import torch
        from safetensors.torch import load_file

        if self.layers is None:
            return
        path = folder / STATE_DIR / FROZEN_WEIGHTS
        if not path.is_file():
            raise WeaveError(
                f"resume_from_checkpoint: {folder} has no {STATE_DIR}/{FROZEN_WEIGHTS}: it was "
                "not written by a LISA run, whose frozen layers' weights it needs"
            )
        self.activate(max(state.global_step - 1, 0) // self.every)  # the draw it was saved under
        saved, weights = load_file(str(path)), self.frozen_weights(model)
        if set(saved) != set(weights):
            raise WeaveError(
                f"{path} does not fit this run's frozen layers (another seed, "
                "lisa_n_layers or lisa_step_interval?)"
            )
        with torch.no_grad():
            for name, weight in weights.items():
                weight.copy_(saved[name].to(weight.device, weight.dtype))
        log.info("lisa: resumed; the checkpoint's last step trained layers %s", self.active)


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `lisa_n_layers` and `lisa_step_interval`, register the `LisaRun` for this run."""
    if getattr(cfg, "lisa_n_layers", None) and getattr(cfg, "lisa_step_interval", None):
        register(LisaRun(cfg), "lisa-run")
