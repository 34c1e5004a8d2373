"""`torch_compile:`: compile the model's decoder layers with `torch.compile`.

Keys read (Axolotl's names):

- `torch_compile`: `false` (default), `true`, or `auto` (compile when a CUDA GPU is there, else
  log a line and run eager).
- `torch_compile_backend`: a `torch.compile` backend (default `inductor`; `aot_eager` traces
  and runs eagerly, a quick check that a model compiles).
- `torch_compile_mode`: inductor's mode: `default`, `reduce-overhead` (CUDA graphs),
  `max-autotune`, `max-autotune-no-cudagraphs`.

What is compiled: each decoder layer, in place (`module.compile()`), found by the model
family's `decoder_layer` class name(s), else as transformers' `GradientCheckpointingLayer`s;
only a model with neither is compiled whole. Regional compilation because the layers are
identical: one graph serves all of them, so compiling takes seconds rather than minutes, and
the parts around them that break graphs (the mask built from `position_ids` for packed rows,
the loss, peft's wrapper) stay eager. transformers checkpoints inside the layer's `forward`, so
with `gradient_checkpointing` the compiled graph holds the checkpointed region (recomputed in the
backward pass, compiled as well). With `gradient_checkpointing: offload` (or
`activation_offloading`) the blocks inside each layer (attention, MLP, norms) are compiled
instead: the offload's saved-tensor hooks around each layer's checkpoint cannot be traced by
dynamo, so a compiled layer would run eager. Compiling in place keeps the modules and their
`state_dict` names, so checkpoints, LoRA saving and merging, and `accelerate.prepare` see the
model they expect.

Shapes: without `pad_to_sequence_len` every micro-batch has its own length (packed bins, rows
padded to the longest), so the layers compile with dynamic shapes from the first call (one
graph for all lengths instead of a static compile, then a recompile); with it the shapes are
fixed and the layers compile static, which is what CUDA graphs (`reduce-overhead`) want (torch
recompiles once with dynamic shapes if a shape still changes, e.g. a smaller last micro-batch).

Applied in `patch_attention` as late as possible (`trylast`), after the other kernel plugins
swapped attention and fused kernels in, so that what is compiled is what runs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any, Literal

from axolotl_weave import (
    ConfigError,
    MissingDependencyError,
    ModelFamily,
    PluginConfig,
    hookimpl,
)
from pydantic import Field, field_validator, model_validator

PLUGIN_KIND = "kernel"
log = logging.getLogger("axolotl_weave")

DEFAULT_BACKEND = "inductor"


class CompileSettings(PluginConfig):
    """torch.compile keys, with Axolotl's names."""

    torch_compile: bool | Literal["auto"] = Field(
        False, description="Compile the decoder layers: true, false, or auto (on a CUDA GPU)."
    )
    torch_compile_backend: str | None = Field(
        None, description="torch.compile backend (default inductor; aot_eager, eager, ...)."
    )
    torch_compile_mode: (
        Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None
    ) = Field(None, description="inductor mode (default: torch's default).")

    @field_validator("torch_compile", mode="before")
    @classmethod
    def _parse_torch_compile(cls, value: Any) -> Any:
        if value is None:
            return False
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"{value!r} is not valid: use true, false or auto")

    @model_validator(mode="after")
    def _check_compile_keys(self) -> CompileSettings:
        backend = self.torch_compile_backend or DEFAULT_BACKEND
        if self.torch_compile_mode is not None and backend != DEFAULT_BACKEND:
            raise ValueError(
                f"torch_compile_mode applies to the inductor backend only, not to "
                f"torch_compile_backend: {backend}; remove one of the two"
            )
        if self.torch_compile and backend != DEFAULT_BACKEND:
            valid = compile_backends()
            if backend not in valid:
                raise ValueError(
                    f"torch_compile_backend: '{backend}' is not a torch.compile backend; "
                    f"valid here: {', '.join(valid)}"
                )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `torch_compile`, `torch_compile_backend` and `torch_compile_mode` keys."""
    return CompileSettings


def compile_backends() -> list[str]:
    """The `torch.compile` backends registered in this environment (torch's debugging and
    testing-only ones left out)."""
    import torch

    names = torch.compiler.list_backends(exclude_tags=())
    return [n for n in names if "TESTING" not in n and "minifier" not in n]


def has_cxx_compiler() -> bool:
    """Whether a C++ compiler is on PATH (inductor needs one to compile for the CPU)."""
    candidates = [os.environ.get("CXX"), "g++", "clang++", "c++"]
    return any(shutil.which(c) for c in candidates if c)


def missing_for(backend: str, on_gpu: bool) -> str | None:
    """What `backend` lacks here to compile (in words), or None when nothing is missing."""
    if backend != DEFAULT_BACKEND:
        return None
    if on_gpu and importlib.util.find_spec("triton") is None:
        return "the package triton (pip install triton), which inductor needs on a GPU"
    if not on_gpu and not has_cxx_compiler():
        return "a C++ compiler (g++ or clang++ on PATH), which inductor needs on the CPU"
    return None


def compile_regions(model: Any, family: ModelFamily | None) -> list[Any]:
    """The modules to compile: the outermost decoder layers, by the family's `decoder_layer`
    class name(s) (comma-separated when the decoder mixes several), else transformers'
    `GradientCheckpointingLayer`s; empty when there are none."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    wanted = {n.strip() for n in (family.decoder_layer or "").split(",")} if family else set()
    wanted.discard("")
    if wanted:
        regions = outermost(model, lambda module: type(module).__name__ in wanted)
        if regions:
            return regions
    return outermost(model, lambda module: isinstance(module, GradientCheckpointingLayer))


def outermost(model: Any, matches: Callable[[Any], bool]) -> list[Any]:
    """The submodules of `model` that `matches`, leaving out those inside another match."""
    found: list[Any] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if matches(module):
            found.append(module)
            inside.append(name)
    return found


def offloads_activations(cfg: Any) -> bool:
    """Whether the `gradient_checkpointing` plugin's offload is asked for: its saved-tensor hooks
    cannot be traced by dynamo, so the blocks inside each layer are compiled instead."""
    return getattr(cfg, "gradient_checkpointing", False) == "offload" or bool(
        getattr(cfg, "activation_offloading", False)
    )


def compile_options(cfg: Any) -> dict[str, Any]:
    """The keyword arguments of `module.compile()`: backend, mode, and dynamic shapes unless
    every micro-batch is padded to `sequence_len`."""
    options: dict[str, Any] = {"backend": cfg.torch_compile_backend or DEFAULT_BACKEND}
    if cfg.torch_compile_mode is not None:
        options["mode"] = cfg.torch_compile_mode
    options["dynamic"] = None if getattr(cfg, "pad_to_sequence_len", False) else True
    return options


@hookimpl(trylast=True)
def patch_attention(model: Any, cfg: Any, family: ModelFamily | None) -> None:
    """Compile the decoder layers in place (the whole model when it has none), last of the
    kernel plugins; `auto` compiles on a CUDA GPU only, logging why it does not."""
    if not cfg.torch_compile:
        return
    import torch

    on_gpu = torch.cuda.is_available()
    options = compile_options(cfg)
    backend = options["backend"]
    if cfg.torch_compile == "auto" and not on_gpu:
        log.info("torch_compile: auto: no CUDA GPU here, so the model runs eager (not compiled)")
        return
    missing = missing_for(backend, on_gpu)
    if missing is not None:
        if cfg.torch_compile == "auto":
            log.info("torch_compile: auto: %s backend lacks %s; running eager", backend, missing)
            return
        raise MissingDependencyError(
            f"torch_compile: the {backend} backend needs {missing}; or set torch_compile: auto "
            "(eager where it cannot compile) or false"
        )
    if not on_gpu and backend == DEFAULT_BACKEND:
        log.info("torch_compile: compiling for the CPU with inductor (the first steps are slow)")
    if options.get("mode") == "reduce-overhead" and options["dynamic"]:
        log.info(
            "torch_compile_mode: reduce-overhead records a CUDA graph per micro-batch shape; "
            "set pad_to_sequence_len: true for one shape"
        )
    regions = compile_regions(model, family)
    what = f"{len(regions)} x {type(regions[0]).__name__}" if regions else "the whole model"
    if regions and offloads_activations(cfg):
        regions = [block for layer in regions for block in layer.children()]
        what = f"the blocks inside {what}"
    try:
        if regions:
            for module in regions:
                module.compile(**options)
        else:
            model.compile(**options)
    except RuntimeError as exc:  # torch refuses the options before any tracing
        raise ConfigError(f"torch_compile: torch.compile refused {options}: {exc}") from None
    log.info(
        "torch_compile: %s compiled (backend %s%s, %s shapes)",
        what,
        backend,
        f", mode {options['mode']}" if "mode" in options else "",
        "dynamic" if options["dynamic"] else "static",
    )
