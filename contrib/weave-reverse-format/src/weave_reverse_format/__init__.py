"""`type: reverse_completion`: raw text with its words in reverse order, every token trained.

A plugin shipped as its own distribution, the way a third party ships one: it imports only the
public facade `axolotl_weave` and is found through its entry point, with no change to the core.

    datasets:
      - path: data.jsonl          # rows like {"text": "the quick brown fox"}
        type: reverse_completion
        separator: " | "          # joins the reversed words (default: one space)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import (
    DatasetFormat,
    PluginConfig,
    hookimpl,
    map_rows,
    require_columns,
    text_field,
    tokenize_prompt_response,
)
from pydantic import Field

PLUGIN_KIND = "format"
FORMAT_NAME = "reverse_completion"


class ReverseOptions(PluginConfig):
    """Keys a `type: reverse_completion` entry accepts beyond the common ones."""

    separator: str = Field(" ", description="String placed between the reversed words.")


def reverse_words(text: str, separator: str = " ") -> str:
    """The whitespace-separated words of `text` in reverse order, joined by `separator`."""
    return separator.join(reversed(text.split()))


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `reverse_completion` with its `separator` option."""
    register(
        DatasetFormat(
            FORMAT_NAME,
            "raw text (field:, default text) with its words reversed; all tokens trained",
            options=ReverseOptions,
            build=build,
        )
    )


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize the reversed text of each row; every token (and EOS) is trained."""
    column = entry.field or "text"
    separator = entry.option("separator", " ")
    require_columns(dataset, entry, [column])

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        text = reverse_words(text_field(row, column), separator)
        return tokenize_prompt_response(tokenizer, "", text, train_on_inputs=True)

    return map_rows(dataset, entry, tokenize)
