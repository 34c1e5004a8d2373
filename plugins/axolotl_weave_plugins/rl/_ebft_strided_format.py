"""Strided EBFT's rows (`type: ebft_strided`, with `transform:`): a transform's tokens.

The transform (Axolotl's contract: `transform(cfg)` returns the row function and options; the
row function takes `(row, tokenizer=...)`) returns `input_ids`, and optionally `labels` (default:
every token labelled), `attention_mask` (right padding, cut off here: Axolotl's transforms pad to
`sequence_len`) and `prompt_length` (its tokens unlabelled). The rows keep `input_ids`, `labels`
and `attention_mask`; the trainer reads where a row's completion starts from its first label.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import IGNORE_INDEX, DatasetFormat, PluginConfig, map_rows
from pydantic import Field

from axolotl_weave_plugins.rl._ebft_config import STRIDED_TYPE
from axolotl_weave_plugins.rl._grpo_formats import row_transform


class StridedOptions(PluginConfig):
    """Keys of a `type: ebft_strided` entry."""

    transform: str | None = Field(
        None,
        description="The module.function making a row's tokens (Axolotl's strided EBFT "
        "transform contract): input_ids, and optionally labels, attention_mask, prompt_length.",
    )


def tokens_of(made: dict[str, Any]) -> dict[str, list[int]]:
    """The row's columns from what the transform made (padding cut off)."""
    ids = list(made["input_ids"])
    mask = made.get("attention_mask")
    length = len(ids)
    if mask is not None:
        mask = [int(m) for m in mask]
        length = sum(mask)
        if mask != [1] * length + [0] * (len(mask) - length):
            raise ValueError("the transform's attention_mask is not ones then padding zeros")
    labels = list(made["labels"]) if made.get("labels") is not None else list(ids)
    prompt = made.get("prompt_length")
    if prompt is not None:
        labels[: int(prompt)] = [IGNORE_INDEX] * min(int(prompt), len(labels))
    if len(labels) != len(ids):
        raise ValueError(f"the transform made {len(labels)} labels for {len(ids)} tokens")
    return {
        "input_ids": ids[:length],
        "labels": labels[:length],
        "attention_mask": [1] * length,
    }


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """`type: ebft_strided`: each row through its transform."""
    if not entry.option("transform"):
        raise ValueError(
            f"datasets: type: {STRIDED_TYPE} needs transform: (a module.function making the "
            "row's tokens)"
        )
    transform, _ = row_transform(entry.option("transform"), cfg)
    return map_rows(
        dataset, entry, lambda row: tokens_of(transform(dict(row), tokenizer=tokenizer))
    )


def strided_format() -> DatasetFormat:
    """The `ebft_strided` dataset type."""
    return DatasetFormat(
        STRIDED_TYPE,
        "strided EBFT rows (rl: ebft, ebft.mode: strided): a transform's tokens",
        options=StridedOptions,
        build=build,
    )
