"""`fix_untrained_tokens` (Axolotl's key): embedding rows a base model never trained start at
the mean of the trained ones.

Some base models ship tokens they never trained (Llama 3's reserved and chat special tokens):
their input-embedding and output-layer rows are zeros, or close enough, and a fine-tune that
starts using them (a chat template's turn markers) begins from a degenerate row. With `true`,
every row whose largest absolute value is at most 1e-16 in the input embedding and in the
output layer (where the two are separate) is set to the mean of the other rows, each matrix its
own mean; a token id (or a list of them) also sets those rows whatever they hold.

It is applied to the base model as it loads for training, before an adapter wraps it. With an
adapter the base stays frozen and is saved as the user's `base_model`, so the fixed rows must
travel in the adapter: `lora_modules_to_save` must hold the input embedding and the output
layer (`embed_tokens` and `lm_head` on most models), whose trainable copies peft saves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl
from pydantic import Field, field_validator, model_validator

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")

UNTRAINED_EPS = 1e-16
"""A row whose largest absolute value is at most this counts as never trained."""


class UntrainedTokenSettings(PluginConfig):
    """The `fix_untrained_tokens` key."""

    fix_untrained_tokens: bool | int | list[int] | None = Field(
        None,
        description="true: rows of never-trained tokens start at the mean of the others; a "
        "token id or list of ids: those rows too.",
    )

    @field_validator("fix_untrained_tokens")
    @classmethod
    def _ids_are_ids(cls, value: Any) -> Any:
        ids = value if isinstance(value, list) else [value]
        if any(not isinstance(i, bool) and i < 0 for i in ids if i is not None):
            raise ValueError(f"token ids are 0 or more, got {value}")
        return value

    @model_validator(mode="after")
    def _fixed_rows_are_saved(self) -> UntrainedTokenSettings:
        adapter = getattr(self, "adapter", None)
        if not switched_on(self.fix_untrained_tokens) or not adapter:
            return self
        saved = set(getattr(self, "lora_modules_to_save", None) or [])
        if not {"embed_tokens", "lm_head"} <= saved:
            raise ValueError(
                f"fix_untrained_tokens with adapter: {adapter}: the fixed embedding rows must "
                "be saved with the adapter; add embed_tokens and lm_head (the model's input "
                "embedding and output layer) to lora_modules_to_save"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`fix_untrained_tokens`."""
    return UntrainedTokenSettings


def switched_on(value: bool | int | list[int] | None) -> bool:
    """Whether the key asks for anything (token id 0 does; `false` and unset do not)."""
    return value is not None and value is not False and value != []


def requested_ids(value: bool | int | list[int]) -> list[int]:
    """The token ids the key names (none for `true`)."""
    if isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def untrained_rows(weight: Any) -> Any:
    """A boolean per row: whether its largest absolute value is at most `UNTRAINED_EPS`."""
    return weight.detach().abs().amax(dim=1).float() <= UNTRAINED_EPS


def fix_untrained_rows(model: Any, extra_ids: list[int]) -> list[int]:
    """Set the never-trained rows (and `extra_ids`) of the input embedding and the output
    layer to each matrix's mean over the other rows; the ids set, ascending."""
    import torch

    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not matrices[0]:
        matrices.append(head.weight)
    rows = matrices[0].shape[0]
    unknown = [i for i in extra_ids if i >= rows]
    if unknown:
        raise ConfigError(
            f"fix_untrained_tokens: token id(s) {unknown} beyond the {rows} embedding rows"
        )
    chosen = untrained_rows(matrices[0])
    for weight in matrices[1:]:
        chosen &= untrained_rows(weight)[:rows]
    chosen[extra_ids] = True
    if bool(chosen.all()):
        raise ConfigError("fix_untrained_tokens: every embedding row is untrained; no mean")
    with torch.no_grad():
        for weight in matrices:
            mean = weight[: len(chosen)][~chosen].float().mean(dim=0)
            weight[: len(chosen)][chosen] = mean.to(weight.dtype)
    return chosen.nonzero().flatten().tolist()


class UntrainedTokenFix:
    """The run-scoped plugin (registered only with `fix_untrained_tokens` set)."""

    def __init__(self, value: bool | int | list[int]) -> None:
        self.extra_ids = requested_ids(value)

    @hookimpl(wrapper=True, trylast=True)
    def load_model(self, purpose: str) -> Generator[None, Any, Any]:
        """Fix the training model's rows as it comes from the loader, before an adapter
        wraps it (its saved copies of the embeddings then hold the fixed rows)."""
        model = yield
        if purpose == "train":
            fixed = fix_untrained_rows(model, self.extra_ids)
            shown = ", ".join(map(str, fixed[:10])) + (" ..." if len(fixed) > 10 else "")
            log.info(
                "fix_untrained_tokens: %d row(s) set to the mean of the others%s",
                len(fixed),
                f" (ids {shown})" if fixed else "",
            )
        return model


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `fix_untrained_tokens`, register the `UntrainedTokenFix` for this run."""
    value = getattr(cfg, "fix_untrained_tokens", None)
    if switched_on(value):
        register(UntrainedTokenFix(value), "untrained-tokens-run")
