"""`type: completion`: raw text, every token trained (column `field:`, default `text`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import (
    DatasetFormat,
    hookimpl,
    map_rows,
    require_columns,
    text_field,
    tokenize_prompt_response,
)

PLUGIN_KIND = "format"


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `completion`."""
    register(
        DatasetFormat("completion", "raw text in one column (field:, default text)", build=build)
    )


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize the text column; all tokens are trained, EOS appended."""
    column = entry.field or "text"
    require_columns(dataset, entry, [column])

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        return tokenize_prompt_response(
            tokenizer, "", text_field(row, column), train_on_inputs=True
        )

    return map_rows(dataset, entry, tokenize)
