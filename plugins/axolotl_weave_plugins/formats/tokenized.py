"""Rows already tokenized (no `type:`): `input_ids`, and optionally `labels`, `attention_mask`.

The rows are used as given, nothing added: no BOS or EOS, no masking. `labels` default to a copy
of `input_ids` (every token trained) and `attention_mask` to ones. Each row is checked: the
columns are lists of integers of one length, ids lie in the tokenizer's vocabulary, and labels
are a valid id or -100 (masked).
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import IGNORE_INDEX, hookimpl, map_rows, require_columns

PLUGIN_KIND = "format"


def int_list(row: dict[str, Any], column: str) -> list[int]:
    """Column `column` of a row as a list of ints; anything else is a TypeError naming it."""
    value = row[column]
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    ):
        raise TypeError(f"column '{column}' must be a list of integers, got {value!r:.80}")
    return value


def check_row(row: dict[str, Any], vocab_size: int) -> dict[str, list[int]]:
    """The row's input_ids, labels and attention_mask, defaults filled, checked."""
    input_ids = int_list(row, "input_ids")
    if not input_ids:
        raise ValueError("column 'input_ids' is empty")
    labels = int_list(row, "labels") if row.get("labels") is not None else list(input_ids)
    mask = (
        int_list(row, "attention_mask")
        if row.get("attention_mask") is not None
        else [1] * len(input_ids)
    )
    for column, values in (("labels", labels), ("attention_mask", mask)):
        if len(values) != len(input_ids):
            raise ValueError(
                f"column '{column}' has {len(values)} values but 'input_ids' has "
                f"{len(input_ids)}; they must be the same length"
            )
    bad = next((i for i in input_ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ValueError(
            f"column 'input_ids' holds {bad}, outside the tokenizer's ids 0..{vocab_size - 1}"
        )
    bad = next((i for i in labels if i != IGNORE_INDEX and not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ValueError(
            f"column 'labels' holds {bad}; a label is a token id (0..{vocab_size - 1}) or "
            f"{IGNORE_INDEX} (not trained)"
        )
    if any(value not in (0, 1) for value in mask):
        raise ValueError("column 'attention_mask' must hold only 0 and 1")
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Check and pass through rows when the entry has no `type:`."""
    if entry.type is not None:
        return None
    require_columns(dataset, entry, ["input_ids"])
    vocab_size = len(tokenizer)
    return map_rows(dataset, entry, lambda row: check_row(row, vocab_size))
