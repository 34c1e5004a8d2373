"""Rows already tokenized: an entry with no `type:` (or an empty one), as in Axolotl.

Columns: `input_ids` (required), `labels` (optional: a copy of `input_ids`, every token
trained), `attention_mask` (optional: all ones). The rows are used as given, nothing added: no
BOS or EOS, no masking, no truncation (the core applies `excess_length_strategy`). Other
columns are dropped. Each row is checked and a bad one is a `DataError` naming the entry, the
row and the column: each column is a list of integers, all three of one length, `input_ids`
not empty, every id in the tokenizer's vocabulary (`0 <= id < len(tokenizer)`), every label
such an id or -100 (`IGNORE_INDEX`, not trained), the mask only 0 and 1.

Axolotl documents the three columns as required; here `labels` and `attention_mask` may be
left out (or null in a row) and are filled as above. This format has no `type` name, so it
registers none: the config turns `type: ""` into no type, and an entry without a registered
format falls back to the `build_dataset` hook, which this plugin answers for entries whose
`entry.type` is None.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import IGNORE_INDEX, hookimpl, map_rows, require_columns

PLUGIN_KIND = "format"


def int_list(row: dict[str, Any], column: str) -> list[int]:
    """Column `column` of a row as a list of ints; anything else is a TypeError naming it."""
    value = row.get(column)
    if not isinstance(value, list):
        raise TypeError(
            f"column '{column}' must be a list of integers, got {type(value).__name__}: "
            f"{value!r:.60}"
        )
    for position, item in enumerate(value):
        if not isinstance(item, int) or isinstance(item, bool):
            raise TypeError(
                f"column '{column}' must be a list of integers; item {position} is "
                f"{type(item).__name__}: {item!r:.40}"
            )
    return value


def check_row(row: dict[str, Any], vocab_size: int) -> dict[str, list[int]]:
    """The row's `input_ids`, `labels` and `attention_mask`, defaults filled, each checked; a
    violation is a ValueError/TypeError naming the column and what is expected."""
    if row.get("input_ids") is None:
        raise ValueError("column 'input_ids' is missing or null; it must be a list of token ids")
    input_ids = int_list(row, "input_ids")
    if not input_ids:
        raise ValueError("column 'input_ids' is empty; it must hold at least one token id")
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
    for position, token in enumerate(input_ids):
        if not 0 <= token < vocab_size:
            raise ValueError(
                f"column 'input_ids' holds {token} at position {position}, outside the "
                f"tokenizer's ids 0..{vocab_size - 1}"
            )
    for position, label in enumerate(labels):
        if label != IGNORE_INDEX and not 0 <= label < vocab_size:
            raise ValueError(
                f"column 'labels' holds {label} at position {position}; a label is a token "
                f"id (0..{vocab_size - 1}) or {IGNORE_INDEX} (not trained)"
            )
    for position, value in enumerate(mask):
        if value not in (0, 1):
            raise ValueError(
                f"column 'attention_mask' holds {value} at position {position}; it must hold "
                "only 0 and 1"
            )
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Check and pass through the rows of an entry without `type:`; others are not ours."""
    if entry.type is not None:
        return None
    require_columns(dataset, entry, ["input_ids"])
    vocab_size = len(tokenizer)

    def check(row: dict[str, Any]) -> dict[str, list[int]]:
        return check_row(row, vocab_size)

    return map_rows(dataset, entry, check)
