"""`embedding_lr` / `embedding_lr_scale` (Axolotl's keys): the embeddings train at their own
learning rate.

The input embedding and the output layer (one tensor when tied; for a peft model, the trainable
copies `lora_modules_to_save` makes of them) go to groups named `embeddings` at
`embedding_lr`, or at `learning_rate * embedding_lr_scale`, without weight decay, as Axolotl
groups them; the schedule scales them with every other group. This answers `adjust_param_groups`
after `lr_groups` (an embedding named by an `lr_groups` item goes to `embeddings` all the
same, as in Axolotl). An adapter that leaves the embeddings frozen is refused: the key would do
nothing.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl
from pydantic import Field, model_validator

PLUGIN_KIND = "optimizer"
GROUP = "embeddings"


class EmbeddingLrSettings(PluginConfig):
    """The `embedding_lr` and `embedding_lr_scale` keys."""

    embedding_lr: float | None = Field(
        None, gt=0, description="Peak learning rate of the input embedding and output layer."
    )
    embedding_lr_scale: float | None = Field(
        None,
        gt=0,
        description="The embeddings' peak learning rate as a multiple of learning_rate.",
    )

    @model_validator(mode="after")
    def _one_embedding_rate(self) -> EmbeddingLrSettings:
        if self.embedding_lr is not None and self.embedding_lr_scale is not None:
            raise ValueError(
                "embedding_lr and embedding_lr_scale both set: give one (a rate, or a multiple "
                "of learning_rate)"
            )
        given = "embedding_lr" if self.embedding_lr is not None else "embedding_lr_scale"
        if getattr(self, given) is not None and getattr(self, "loraplus_lr_ratio", None):
            raise ValueError(
                f"{given} with loraplus_lr_ratio: LoRA+ sets the embeddings' rate itself "
                "(loraplus_lr_embedding); remove one of them"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`embedding_lr`, `embedding_lr_scale`."""
    return EmbeddingLrSettings


def embedding_rate(cfg: Any) -> float | None:
    """The embeddings' peak learning rate the config asks for, or None."""
    if getattr(cfg, "embedding_lr", None) is not None:
        return float(cfg.embedding_lr)
    if getattr(cfg, "embedding_lr_scale", None) is not None:
        return float(cfg.learning_rate) * float(cfg.embedding_lr_scale)
    return None


def embedding_parameters(model: Any) -> set[int]:
    """The ids of the input embedding's and output layer's parameters."""
    modules = (model.get_input_embeddings(), model.get_output_embeddings())
    return {id(p) for module in modules if module is not None for p in module.parameters()}


@hookimpl
def adjust_param_groups(cfg: Any, model: Any, groups: list[dict[str, Any]]) -> None:
    """Move the embeddings out of every group into `embeddings` groups at their own rate."""
    rate = embedding_rate(cfg)
    if rate is None:
        return
    embeddings = embedding_parameters(model)
    split: list[dict[str, Any]] = []
    for group in groups:
        moved = [p for p in group["params"] if id(p) in embeddings]
        kept = [p for p in group["params"] if id(p) not in embeddings]
        if kept:
            split.append({**group, "params": kept})
        if moved:
            split.append(
                {**group, "params": moved, "lr": rate, "weight_decay": 0.0, "group": GROUP}
            )
    key = "embedding_lr" if getattr(cfg, "embedding_lr", None) is not None else "embedding_lr_scale"
    if not any(g["group"] == GROUP for g in split):
        raise ConfigError(
            f"{key}: the input embedding and output layer do not train in this run (an adapter "
            "leaves them frozen: add embed_tokens and lm_head to lora_modules_to_save)"
        )
    groups[:] = split
