"""`gradient_checkpointing:`: recompute each decoder layer in the backward pass instead of keeping
its activations, optionally keeping the layers' saved inputs in CPU memory (`offload`).

Keys read (Axolotl's names):

- `gradient_checkpointing`: `false` (default), `true`, or `offload` (checkpointing, and the input
  each checkpointed layer saves goes to CPU memory in the forward pass and comes back in the
  backward pass). Axolotl's `offload_disk` is refused: Weave has no disk offload.
- `gradient_checkpointing_kwargs`: keyword arguments of `torch.utils.checkpoint.checkpoint`:
  `use_reentrant` (default **false**), `preserve_rng_state`, and, non-reentrant only,
  `determinism_check` and `debug`.
- `activation_offloading`: `true` or `legacy` turns the offload on (it needs
  `gradient_checkpointing`, as in Axolotl); `disk` is refused.

Applied in `patch_attention`, on the loaded (possibly peft-wrapped) model, through transformers'
own `activation_checkpointing_enable` (`gradient_checkpointing_enable` on older releases): every
decoder layer (a transformers `GradientCheckpointingLayer`) is checkpointed, the embeddings'
output is made to require grad (LoRA on a frozen base with reentrant checkpointing needs it, or no
gradient reaches the adapters), and `use_cache` is turned off.

Why `use_reentrant: false` by default: it is what PyTorch recommends and transformers picks, it
needs no input that requires grad, takes keyword arguments, and composes with `torch.compile`,
DDP and nested checkpoints. Axolotl's own normalisation writes `use_reentrant: true` when the
key is absent; both give the same loss and gradients, so an Axolotl YAML trains the same model.

How offload works, and why there: transformers wraps each layer's checkpoint call in
`torch.autograd.graph.save_on_cpu(pin_memory=True)`, so exactly what the checkpoint saves, the
hidden states each layer receives (one `batch x length x hidden` tensor per layer; the rotary
tables and mask, shared by all layers, stay where they are), is copied to pinned CPU memory as
the forward pass goes and brought back layer by layer in the backward pass. Wrapping the whole
forward instead (a `build_loss` wrapper) would also copy every weight that a linear layer saves
for its backward (`save_on_cpu` does not skip parameters) and the logits the loss needs at once,
costing transfers and host memory for no GPU memory saved. Without an accelerator the
activations live in CPU memory already: `offload` then checkpoints only, and says so in the log.
Axolotl's `activation_offloading: true` also offloads the few tensors saved outside the layers
(final norm, output head input); here those stay on the GPU. With `torch_compile`, the offload
hooks cannot be traced, so that plugin compiles the blocks inside each layer instead.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Literal

from axolotl_weave import ConfigError, MissingDependencyError, PluginConfig, hookimpl
from pydantic import Field, field_validator, model_validator

PLUGIN_KIND = "kernel"
log = logging.getLogger("axolotl_weave")

CHECKPOINT_KWARGS: dict[str, tuple[type | tuple[Any, ...], str]] = {
    "use_reentrant": (bool, "true or false"),
    "preserve_rng_state": (bool, "true or false"),
    "determinism_check": (("default", "none"), "default or none"),
    "debug": (bool, "true or false"),
}
"""The keys `gradient_checkpointing_kwargs` accepts: their type (or allowed values), in words."""
NON_REENTRANT_ONLY = ("determinism_check", "debug")
"""Keys that `torch.utils.checkpoint.checkpoint` refuses with `use_reentrant: true`."""
NO_DISK = (
    "Axolotl Weave has no disk offload; use gradient_checkpointing: offload (layer inputs in CPU "
    "memory) or gradient_checkpointing: true"
)


class CheckpointingSettings(PluginConfig):
    """Gradient (activation) checkpointing keys, with Axolotl's names."""

    gradient_checkpointing: bool | Literal["offload"] = Field(
        False,
        description="Recompute each layer in the backward pass to save memory; offload: also "
        "keep the layers' saved inputs in CPU memory.",
    )
    gradient_checkpointing_kwargs: dict[str, Any] | None = Field(
        None,
        description="torch.utils.checkpoint options: use_reentrant (default false), "
        "preserve_rng_state, determinism_check, debug.",
    )
    activation_offloading: bool | Literal["legacy"] = Field(
        False,
        description="Keep the checkpointed layers' inputs in CPU memory (needs "
        "gradient_checkpointing); the same as gradient_checkpointing: offload.",
    )

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _parse_gradient_checkpointing(cls, value: Any) -> Any:
        if value is None:
            return False
        if value == "offload_disk":
            raise ValueError(f"offload_disk is not supported: {NO_DISK}")
        if isinstance(value, bool) or value == "offload":
            return value
        raise ValueError(f"{value!r} is not valid: use true, false or offload")

    @field_validator("activation_offloading", mode="before")
    @classmethod
    def _parse_activation_offloading(cls, value: Any) -> Any:
        if value is None:
            return False
        if value == "disk":
            raise ValueError(f"disk is not supported: {NO_DISK}")
        if isinstance(value, bool) or value == "legacy":
            return value
        raise ValueError(f"{value!r} is not valid: use true, false or legacy")

    @field_validator("gradient_checkpointing_kwargs", mode="after")
    @classmethod
    def _check_checkpoint_kwargs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if not value:
            return value
        unknown = sorted(set(value) - set(CHECKPOINT_KWARGS))
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(CHECKPOINT_KWARGS)}"
            )
        for key, given in value.items():
            kind, words = CHECKPOINT_KWARGS[key]
            valid = given in kind if isinstance(kind, tuple) else isinstance(given, kind)
            if not valid:
                raise ValueError(f"{key}: {given!r} is not valid: use {words}")
        if value.get("use_reentrant") and set(value) & set(NON_REENTRANT_ONLY):
            raise ValueError(
                f"{', '.join(k for k in NON_REENTRANT_ONLY if k in value)} apply to "
                "use_reentrant: false only"
            )
        return value

    @model_validator(mode="after")
    def _check_checkpointing_keys(self) -> CheckpointingSettings:
        if self.activation_offloading and not self.gradient_checkpointing:
            raise ValueError(
                "activation_offloading offloads the inputs of checkpointed layers: it needs "
                "gradient_checkpointing: true (or write gradient_checkpointing: offload alone)"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `gradient_checkpointing`, `gradient_checkpointing_kwargs` and
    `activation_offloading` keys."""
    return CheckpointingSettings


def checkpoint_kwargs(cfg: Any) -> dict[str, Any]:
    """The keyword arguments given to `torch.utils.checkpoint.checkpoint`: `use_reentrant`
    false unless `gradient_checkpointing_kwargs` says otherwise."""
    return {"use_reentrant": False, **(cfg.gradient_checkpointing_kwargs or {})}


def wants_offload(cfg: Any) -> bool:
    """Whether the config asks for the checkpointed layers' inputs in CPU memory."""
    return cfg.gradient_checkpointing == "offload" or bool(cfg.activation_offloading)


def accelerator_present() -> bool:
    """Whether an accelerator (CUDA, XPU, MPS...) is there for activations to leave."""
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def enable_checkpointing(model: Any, kwargs: dict[str, Any], offload: bool) -> None:
    """Checkpoint every decoder layer of a transformers `model` (or a peft model around one),
    with `kwargs` for `torch.utils.checkpoint.checkpoint`, offloading the saved layer inputs to
    pinned CPU memory when `offload`. Raises `ConfigError` for a model that cannot."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    name = type(getattr(model, "get_base_model", lambda: model)()).__name__
    if enable is None and offload:
        raise MissingDependencyError(
            "gradient_checkpointing: offload needs a transformers release with "
            "activation_checkpointing_enable(offload=...) (pip install -U transformers); or use "
            "gradient_checkpointing: true"
        )
    if enable is None:
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise ConfigError(
                f"gradient_checkpointing: the model ({name}) is not a transformers model with "
                "checkpointing support; set gradient_checkpointing: false"
            )
        call = {"gradient_checkpointing_kwargs": kwargs}
    else:
        call = {"activation_checkpointing_kwargs": kwargs}
        if offload:
            if "offload" not in inspect.signature(enable).parameters:
                raise MissingDependencyError(
                    "gradient_checkpointing: offload needs a transformers release whose "
                    "activation_checkpointing_enable takes offload (pip install -U "
                    "transformers); or use gradient_checkpointing: true"
                )
            call["offload"] = True
    try:
        enable(**call)
    except ValueError as exc:
        raise ConfigError(
            f"gradient_checkpointing: {name} cannot be checkpointed by transformers ({exc}); "
            "set gradient_checkpointing: false"
        ) from None


@hookimpl
def patch_attention(model: Any, cfg: Any) -> None:
    """Turn on checkpointing (and offload) as the config asks; turn off the KV cache."""
    if not cfg.gradient_checkpointing:
        return
    kwargs = checkpoint_kwargs(cfg)
    offload = wants_offload(cfg)
    if offload and not accelerator_present():
        log.info(
            "gradient_checkpointing: offload: no accelerator here, the activations are in CPU "
            "memory already; checkpointing without offload"
        )
        offload = False
    enable_checkpointing(model, kwargs, offload)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "use_cache", False):
        config.use_cache = False  # a cache is never read in training, and checkpointing refuses it
    log.info(
        "gradient_checkpointing: on (use_reentrant=%s%s)",
        str(kwargs["use_reentrant"]).lower(),
        "; layer inputs offloaded to CPU memory" if offload else "",
    )
