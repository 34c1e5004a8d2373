"""NEFTune, noisy embeddings for fine-tuning (Jain et al., 2023), with Axolotl's key
`neftune_noise_alpha` (and its older name `noisy_embedding_alpha`).

While the model trains, uniform noise is added to the output of its input embeddings: each
value of a batch's `(rows, length, width)` embeddings gets its own draw from
`U(-a, a)`, `a = neftune_noise_alpha / sqrt(length * width)`, as transformers'
`neftune_post_forward_hook` draws it (the same arithmetic, the same torch random stream; the
paper tries alpha 5 to 15). With an adapter (LoRA), the noise goes on the base model's input
embeddings, as transformers puts it.

The noise is added only inside a training step (`training_step`) and only while the embeddings
are in training mode: the forward hook is attached to the input embeddings when a step starts
and removed when it ends, so evaluation during training, `weave evaluate`, `weave inference`
and everything after training see the model without it, and no checkpoint nor the saved model
holds anything of it. Axolotl passes the key only to its supervised trainer (and the reward
model's): with `rl:` it is refused here, since Axolotl would ignore it, and GRPO generates its
completions inside the training step, in training mode, where the noise would reach the
sampling too.

`noisy_embedding_alpha` stands for `neftune_noise_alpha` (a warning says so); both set to
different values is refused. Either must be a finite number above 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl
from pydantic import Field, ValidationInfo, field_validator, model_validator

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")


class NeftuneSettings(PluginConfig):
    """NEFTune's key (Axolotl's name) and its older alias."""

    neftune_noise_alpha: float | None = Field(
        None,
        description="NEFTune: the scale of the uniform noise added to the input embeddings "
        "while training (the paper uses 5 to 15).",
    )
    noisy_embedding_alpha: float | None = Field(
        None, description="The older name of neftune_noise_alpha (Axolotl's deprecated key)."
    )

    @field_validator("neftune_noise_alpha", "noisy_embedding_alpha")
    @classmethod
    def _check_neftune_alpha(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise ValueError(
                f"{info.field_name} must be a number > 0 (NEFTune's noise scale; the paper "
                f"uses 5 to 15), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _map_noisy_embedding_alpha(self) -> NeftuneSettings:
        old, new = self.noisy_embedding_alpha, self.neftune_noise_alpha
        if old is not None:
            if new is not None and new != old:
                raise ValueError(
                    f"noisy_embedding_alpha ({old}) and neftune_noise_alpha ({new}) are set to "
                    "different values: noisy_embedding_alpha is the older name of "
                    "neftune_noise_alpha; remove it"
                )
            log.warning("noisy_embedding_alpha is deprecated: use neftune_noise_alpha")
            self.neftune_noise_alpha, self.noisy_embedding_alpha = old, None
        rl = getattr(self, "rl", None)
        if self.neftune_noise_alpha is not None and rl:
            key = "noisy_embedding_alpha" if old is not None else "neftune_noise_alpha"
            raise ValueError(
                f"{key} with rl: {rl}: NEFTune applies to supervised fine-tuning (Axolotl "
                "ignores it under rl:, and GRPO would sample its completions from the noisy "
                "model); remove the key"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`neftune_noise_alpha` and `noisy_embedding_alpha`."""
    return NeftuneSettings


def neftune_noise(output: Any, alpha: float) -> Any:
    """`output` (the embeddings, `(rows, length, width)`) plus NEFTune's uniform noise of
    scale `alpha`: transformers' `neftune_post_forward_hook`, draw for draw."""
    import torch

    dims = torch.tensor(output.size(1) * output.size(2))
    mag_norm = alpha / torch.sqrt(dims)
    return output + torch.zeros_like(output).uniform_(-mag_norm, mag_norm)


def input_embeddings(model: Any) -> Any:
    """The input embeddings module of a model, or of the base model of a peft model (whose
    `get_input_embeddings` reaches the same module)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return inner.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        raise ConfigError(
            f"neftune_noise_alpha: {type(inner).__name__} has no input embeddings "
            "(get_input_embeddings) to add the noise to"
        ) from None


class Neftune:
    """The run-scoped plugin (registered only with `neftune_noise_alpha`): noise on the input
    embeddings during each training step."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.announced = False

    def hook(self, module: Any, args: Any, output: Any) -> Any:
        """The embeddings' forward hook: the output with noise while the module trains."""
        if not module.training:
            return None  # the output as it is
        return neftune_noise(output, self.alpha)

    @hookimpl(wrapper=True)
    def training_step(self, strategy: Any, model: Any) -> Generator[None, Any, Any]:
        """Attach the noise to the input embeddings for this step's forward passes (and the
        backward passes that follow them); detach it when the step ends, however it ends."""
        embeddings = input_embeddings(strategy.unwrap(model))
        if not self.announced:
            log.info(
                "neftune: noise of alpha %g on %s while training",
                self.alpha,
                type(embeddings).__name__,
            )
            self.announced = True
        handle = embeddings.register_forward_hook(self.hook)
        try:
            return (yield)
        finally:
            handle.remove()


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `neftune_noise_alpha` (or `noisy_embedding_alpha`), register the `Neftune` run
    plugin."""
    alpha = getattr(cfg, "neftune_noise_alpha", None)
    if alpha is not None:
        register(Neftune(alpha), "neftune-run")
