"""Helpers for format and data-source plugins: tokenize a prompt/response pair, map rows with
clear errors, and hand loaded rows to the core with a way to name each of them (file and line)."""

from __future__ import annotations

import bisect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from axolotl_weave._errors import DataError
from axolotl_weave._types import IGNORE_INDEX

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

    from axolotl_weave._config import DatasetEntry


def tokenize_prompt_response(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    train_on_inputs: bool,
    add_eos: bool = True,
    max_length: int | None = None,
) -> dict[str, list[int]]:
    """Tokenize the prompt and the response apart and label them, as Axolotl's instruction
    formats do (`InstructionPromptTokenizingStrategy.tokenize_prompt`).

    The prompt is tokenized with the tokenizer's special tokens (its BOS) and masked unless
    `train_on_inputs`. The response is tokenized on its own: EOS is appended (with `add_eos`,
    unless it already ends with one) and a leading BOS is dropped; it is trained. So the prompt's
    last token is the one inference sees after the same prompt (a prompt ending in a space keeps
    its own space token; the response's first word is tokenized as a word that starts a text).
    An empty response adds nothing (no EOS). With an empty prompt the response is a raw text:
    it keeps the tokenizer's BOS. `max_length` (Axolotl passes `sequence_len`) truncates each
    part to that many tokens, and a response that fills it gets no EOS, as in Axolotl.
    """
    for part, text in (("prompt", prompt), ("response", response)):
        if not isinstance(text, str):  # a missing field (None) is a bad row, not an empty text
            raise TypeError(f"the {part} is {type(text).__name__}, not text")
    prompt_ids = encode(tokenizer, prompt, max_length)
    response_ids = encode(tokenizer, response, max_length)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if response_ids and add_eos and eos is not None and response_ids[-1] != eos:
        if max_length is None or len(response_ids) < max_length:
            response_ids.append(eos)
    if prompt and response_ids and bos is not None and response_ids[0] == bos:
        response_ids = response_ids[1:]
    prompt_labels = prompt_ids if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
    input_ids = prompt_ids + response_ids
    return {
        "input_ids": input_ids,
        "labels": prompt_labels + response_ids,
        "attention_mask": [1] * len(input_ids),
    }


def encode(tokenizer: Any, text: str, max_length: int | None = None) -> list[int]:
    """`text`'s ids with the tokenizer's special tokens (its BOS), truncated to `max_length` as
    Axolotl's `_tokenize` truncates; an empty text has none."""
    if not text:
        return []
    if max_length is None:
        return list(tokenizer(text)["input_ids"])
    return list(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])


def require_columns(dataset: Dataset, entry: DatasetEntry, columns: list[str]) -> None:
    """Raise a `DataError` naming the dataset and the missing columns, and those present."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"dataset '{entry.path}' (type: {entry.type}) lacks the field(s) "
            f"{', '.join(repr(m) for m in missing)}; its rows have: "
            f"{', '.join(dataset.column_names) or 'no fields'}"
        )


def map_rows(
    dataset: Dataset,
    entry: DatasetEntry,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    num_proc: int | None = None,
    empty: dict[str, Any] | None = None,
) -> Dataset:
    """`dataset.map(fn)` replacing the raw columns; an error in a row names the entry and row.

    The row is named by its file and line for JSON Lines (`entry.where`). With
    `skip_invalid_rows: true` a bad row becomes `empty` (default: empty supervised columns; a
    format with other columns passes its own, empty sequences and None scalars), which the core
    drops and counts. Runs on `dataset_processes` processes unless `num_proc` is given.
    """
    skip_invalid = entry.skip_invalid_rows
    empty = empty if empty is not None else {"input_ids": [], "labels": [], "attention_mask": []}

    def wrapped(row: dict[str, Any], index: int) -> dict[str, Any]:
        try:
            return fn(row)
        except (DataError, KeyError, TypeError, ValueError, AttributeError) as exc:
            if skip_invalid:
                return dict(empty)
            if isinstance(exc, DataError):
                raise DataError(f"{entry.label}, {entry.where(index)}: {exc}") from None
            raise DataError(
                f"{entry.label}, {entry.where(index)}: {type(exc).__name__}: {exc}"
            ) from None

    from datasets.fingerprint import generate_random_fingerprint
    from datasets.utils import logging as datasets_logging

    processes = num_proc if num_proc is not None else entry.num_proc
    if processes is not None and processes > 1:
        processes = min(processes, max(1, len(dataset) // 16))  # a few rows: one process
    bars_were_off = not datasets_logging.is_progress_bar_enabled()
    if sys.stderr.isatty():  # this one bar is worth showing, on a terminal (in a pipe: noise)
        datasets_logging.enable_progress_bar()
    try:
        # the result is cached by the core's own fingerprint; skip datasets' hashing of `fn`
        return dataset.map(
            wrapped,
            with_indices=True,
            remove_columns=dataset.column_names,
            num_proc=processes if processes and processes > 1 else None,
            new_fingerprint=generate_random_fingerprint(),
            desc=f"Tokenizing {entry.path} ({entry.type or 'pre-tokenized'})",
        )
    finally:
        if bars_were_off:
            datasets_logging.disable_progress_bar()


def text_field(row: dict[str, Any], name: str, *, required: bool = True) -> str:
    """Row field `name` as a string: missing or null is '' unless required; others refused."""
    value = row.get(name)
    if value is None:
        if required:
            raise ValueError(f"field '{name}' is missing or null")
        return ""
    if not isinstance(value, str):
        raise TypeError(f"field '{name}' must be a string, got {type(value).__name__}: {value!r}")
    return value


@dataclass
class RowLocator:
    """Names a row of an entry by where it was read: 'file:line' for JSON Lines, else 'row N'."""

    spans: list[tuple[int, str, list[int] | None]] = field(default_factory=list)
    """(index of the span's first row, file name, line number of each of its rows or None)."""
    offset: int = 0
    """Rows before the first one handed on (taken off by `shards`)."""

    def add(self, first: int, name: str, lines: list[int] | None) -> None:
        """Record that rows from `first` on come from `name` (at `lines`, when known)."""
        self.spans.append((first, name, lines))

    def __call__(self, index: int) -> str:
        """Where row `index` (0-based, after sharding) was read."""
        absolute = index + self.offset
        starts = [first for first, _, _ in self.spans]
        at = bisect.bisect_right(starts, absolute) - 1
        if at < 0:
            return f"row {absolute + 1}"
        first, name, lines = self.spans[at]
        if lines is not None and absolute - first < len(lines):
            return f"{name}:{lines[absolute - first]}"
        return f"{name}, row {absolute - first + 1}"


@dataclass
class LoadedRows:
    """The raw rows of an entry (what a `DataSource` loads), and how to name each of them."""

    dataset: Dataset | IterableDataset
    locate: RowLocator = field(default_factory=RowLocator)


def rows_table(rows: list[dict[str, Any]]) -> Dataset:
    """A `Dataset` of rows with a column for every key any row has (missing values None);
    `Dataset.from_list` would take the columns of the first row only."""
    from datasets import Dataset

    columns = list(dict.fromkeys(key for row in rows for key in row))
    return Dataset.from_dict({key: [row.get(key) for row in rows] for key in columns})
