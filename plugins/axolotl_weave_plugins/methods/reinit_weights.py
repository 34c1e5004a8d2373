"""`reinit_weights: true` (Axolotl's key): train the model's architecture from random weights
(pretraining from scratch) instead of its pretrained ones.

The model loads as usual (its config, dtype, attention and placement as every other run), then
every module is initialised afresh by the model's own `_init_weights` (transformers'
`init_weights`: normal weights of std `initializer_range`, norms at one, tied weights tied
again), seeded by `seed`, before any adapter or other wrapper sees it. A quantized base
(`load_in_4bit`, `load_in_8bit`, `gptq`) is refused: its weights are no floats to initialise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field, model_validator

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")

QUANTIZED = ("load_in_4bit", "load_in_8bit", "gptq")


class ReinitSettings(PluginConfig):
    """The `reinit_weights` key."""

    reinit_weights: bool | None = Field(
        None, description="Initialise the weights randomly instead of the pretrained ones."
    )

    @model_validator(mode="after")
    def _float_weights(self) -> ReinitSettings:
        if not self.reinit_weights:
            return self
        for key in QUANTIZED:
            if getattr(self, key, False):
                raise ValueError(
                    f"reinit_weights and {key}: a quantized model's weights cannot be "
                    "initialised afresh; remove one of them"
                )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`reinit_weights`."""
    return ReinitSettings


def reinitialize(model: Any) -> None:
    """Initialise every weight of a loaded transformers model afresh, as `from_config` would:
    the flags marking loaded weights as initialised are cleared first, so that
    `init_weights` skips none of them."""
    import torch

    for item in [*model.modules(), *model.parameters(), *model.buffers()]:
        if getattr(item, "_is_hf_initialized", False):
            item._is_hf_initialized = False
    with torch.no_grad():
        model.init_weights()


class Reinitializer:
    """The run-scoped plugin (registered only with `reinit_weights: true`)."""

    @hookimpl(wrapper=True, trylast=True)
    def load_model(self, purpose: str) -> Generator[None, Any, Any]:
        """Re-initialise the training model as it comes from the loader, before the other
        wrappers (an adapter, fake quantization) see it."""
        model = yield
        if purpose == "train":
            reinitialize(model)
            log.info("reinit_weights: training from randomly initialised weights")
        return model


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `reinit_weights: true`, register the `Reinitializer` for this run."""
    if getattr(cfg, "reinit_weights", None):
        register(Reinitializer(), "reinit-weights-run")
