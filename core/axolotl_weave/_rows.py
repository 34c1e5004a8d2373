"""Helpers for format and data-source plugins: tokenize a prompt/response pair, map rows with
clear errors, and hand loaded rows to the core with a way to name each of them (file and line)."""

from __future__ import annotations

import bisect
import contextlib
import gc
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from axolotl_weave._encoding import batch_ids
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
    `tokenize_prompt_responses` does the same for many pairs in two batched tokenizer calls.
    """
    (row,) = tokenize_prompt_responses(
        tokenizer,
        [(prompt, response)],
        train_on_inputs=train_on_inputs,
        add_eos=add_eos,
        max_length=max_length,
    )
    return row


def tokenize_prompt_responses(
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    *,
    train_on_inputs: bool,
    add_eos: bool = True,
    max_length: int | None = None,
    empty_prompt_keeps_bos: bool = True,
    table: bool = False,
) -> Any:
    """`tokenize_prompt_response` of each (prompt, response) pair: the prompts in one batched
    tokenizer call and the responses in another (what makes preprocessing run at the
    tokenizer's speed), then labelled pair by pair.

    `empty_prompt_keeps_bos=False` drops the response's BOS after an empty prompt too (as
    Axolotl does). With `table`, the rows come as a `pyarrow.Table` built from the batch's flat
    ids (what `map_rows` takes from a `finish`: no Python list per row and column), else as a
    list of row mappings."""
    for prompt, response in pairs:
        for part, text in (("prompt", prompt), ("response", response)):
            if not isinstance(text, str):  # a missing field (None) is a bad row, not empty text
                raise TypeError(f"the {part} is {type(text).__name__}, not text")
    prompts = encode_all(tokenizer, [prompt for prompt, _ in pairs], max_length)
    responses = encode_all(tokenizer, [response for _, response in pairs], max_length)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    for position, ((prompt, _), response_ids) in enumerate(zip(pairs, responses, strict=True)):
        if response_ids and add_eos and eos is not None and response_ids[-1] != eos:
            if max_length is None or len(response_ids) < max_length:
                response_ids.append(eos)
        drop_bos = prompt or not empty_prompt_keeps_bos
        if drop_bos and response_ids and bos is not None and response_ids[0] == bos:
            responses[position] = response_ids[1:]
    if table:
        return prompt_response_table(prompts, responses, train_on_inputs)
    rows = []
    for prompt_ids, response_ids in zip(prompts, responses, strict=True):
        prompt_labels = prompt_ids if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
        input_ids = prompt_ids + response_ids
        rows.append(
            {
                "input_ids": input_ids,
                "labels": prompt_labels + response_ids,
                "attention_mask": [1] * len(input_ids),
            }
        )
    return rows


def prompt_response_table(
    prompts: list[list[int]], responses: list[list[int]], train_on_inputs: bool
) -> Any:
    """Rows of each prompt's ids then its response's, as a `pyarrow.Table` of `input_ids`,
    `labels` (the prompt's masked unless `train_on_inputs`) and `attention_mask`, placed from
    the flat arrays of all prompts and all responses at once."""
    import numpy as np

    prompt_sizes, prompt_ids = flat_int_lists(prompts)
    response_sizes, response_ids = flat_int_lists(responses)
    starts = np.concatenate([[0], np.cumsum(prompt_sizes + response_sizes)])

    def places(first: Any, sizes: Any) -> Any:  # where each part's tokens go in the rows
        before = np.cumsum(sizes) - sizes  # the part's tokens in the rows before this one
        return np.repeat(first - before, sizes) + np.arange(int(sizes.sum()))

    prompt_at = places(starts[:-1], prompt_sizes)
    response_at = places(starts[:-1] + prompt_sizes, response_sizes)
    ids = np.empty(int(starts[-1]), dtype=np.int64)
    ids[prompt_at], ids[response_at] = prompt_ids, response_ids
    labels = ids.copy()
    if not train_on_inputs:
        labels[prompt_at] = IGNORE_INDEX
    return supervised_table(starts, ids, labels)


def flat_int_lists(lists: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    """(each list's length, all values in order) of lists of ints, as int64 numpy arrays: read
    at once, without a numpy array per list."""
    from itertools import chain

    import numpy as np

    sizes = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    values = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(sizes.sum()))
    return sizes, values


def supervised_table(starts: Any, ids: Any, labels: Any) -> Any:
    """`input_ids`, `labels` and `attention_mask` (all ones) as a `pyarrow.Table` of
    `list<int64>` columns, row `i` holding the flat arrays' `starts[i]:starts[i + 1]`."""
    import numpy as np
    import pyarrow as pa

    rows_at = pa.array(np.asarray(starts).astype(np.int32))

    def lists(values: Any) -> Any:
        return pa.ListArray.from_arrays(rows_at, pa.array(values, type=pa.int64()))

    return pa.table(
        {
            "input_ids": lists(ids),
            "labels": lists(labels),
            "attention_mask": lists(np.ones(len(ids), dtype=np.int64)),
        }
    )


def encode(tokenizer: Any, text: str, max_length: int | None = None) -> list[int]:
    """`text`'s ids with the tokenizer's special tokens (its BOS), truncated to `max_length` as
    Axolotl's `_tokenize` truncates; an empty text has none."""
    return encode_all(tokenizer, [text], max_length)[0]


def encode_all(tokenizer: Any, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """`encode` of each text, in one batched tokenizer call (the same ids as one call per text,
    many times faster; `batch_ids`: by the backend's fast call where it agrees). With
    `max_length`, a text far longer than that many tokens is tokenized from a prefix only
    (`encode_truncated`): its cost does not grow with its size."""
    found: list[list[int]] = [[] for _ in texts]
    budget = None if max_length is None else prefix_chars(max_length)
    todo, long = [], []
    for index, text in enumerate(texts):
        if text:
            (long if budget is not None and len(text) > budget else todo).append(index)
    if todo:
        limit = {} if max_length is None else {"truncation": True, "max_length": max_length}
        encoded = batch_ids(tokenizer, [texts[index] for index in todo], **limit)
        for index, ids in zip(todo, encoded, strict=True):
            found[index] = ids
    for index in long:
        found[index] = encode_truncated(tokenizer, texts[index], max_length or 0)
    return found


PREFIX_MARGIN = 64
"""Tokens past `max_length` that a prefix must reach before its first `max_length` are kept:
a cut in the text changes only the last few tokens before it."""


def prefix_chars(max_length: int) -> int:
    """Characters of a text tokenized at first for `max_length` tokens (no token is shorter
    than one character; most are three or more)."""
    return max(4096, 8 * (max_length + PREFIX_MARGIN))


def encode_truncated(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """`text`'s first `max_length` ids (as `encode(tokenizer, text, max_length)`), tokenizing
    only a `stable_prefix` of it: a 10 MB text costs what its first few thousand characters
    cost, not half a minute and gigabytes (the tokenizer keeps a large record per token)."""
    head = stable_prefix(tokenizer, text, max_length)
    return list(tokenizer([head], truncation=True, max_length=max_length)["input_ids"][0])


def stable_prefix(tokenizer: Any, text: str, max_length: int, **options: Any) -> str:
    """A prefix of `text` whose tokens (`tokenizer(..., **options)`) begin with the same
    `max_length` ids as the whole text's, and go on for `PREFIX_MARGIN` more: tokenized at
    twice its length the first `max_length` ids stay the same (a cut changes only the tokens
    just before it); else the prefix doubles, up to the whole text."""
    cut = prefix_chars(max_length)
    while cut < len(text):
        head, longer = tokenizer([text[:cut], text[: 2 * cut]], **options)["input_ids"]
        if len(head) >= max_length + PREFIX_MARGIN and list(head[:max_length]) == list(
            longer[:max_length]
        ):
            return text[:cut]
        cut *= 2
    return text


def require_columns(dataset: Dataset, entry: DatasetEntry, columns: list[str]) -> None:
    """Raise a `DataError` naming the dataset and the missing columns, and those present."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"dataset '{entry.path}' (type: {entry.type}) lacks the field(s) "
            f"{', '.join(repr(m) for m in missing)}; its rows have: "
            f"{', '.join(dataset.column_names) or 'no fields'}"
        )


ROW_ERRORS = (DataError, KeyError, TypeError, ValueError, AttributeError)
"""What a format's function raises for a bad row (named with its file and line)."""

MAP_BATCH_ROWS = 1000
"""Rows handed to a format's functions at a time (one batched tokenizer call for them)."""


def map_rows(
    dataset: Dataset,
    entry: DatasetEntry,
    fn: Callable[[dict[str, Any]], Any],
    *,
    num_proc: int | None = None,
    empty: dict[str, Any] | None = None,
    finish: Callable[[list[Any]], Any] | None = None,
) -> Dataset:
    """`dataset.map(fn)` replacing the raw columns; an error in a row names the entry and row.

    With `finish`, `fn(row)` only prepares each row (renders its texts) and
    `finish(prepared_rows)` turns a batch of them into columns at once, so that the tokenizer
    runs once per batch, not once per row (`tokenize_prompt_responses`, `encode_all`): a list
    of row mappings, or a `pyarrow.Table` with one row per prepared row, in order (built from
    numpy, it skips making a Python list per row and column).

    The row is named by its file and line for JSON Lines (`entry.where`). With
    `skip_invalid_rows: true` a bad row becomes `empty` (default: empty supervised columns; a
    format with other columns passes its own, empty sequences and None scalars), which the core
    drops and counts. Runs on `dataset_processes` processes unless `num_proc` is given.
    """
    from datasets import Dataset

    skip_invalid = entry.skip_invalid_rows
    to_arrow = isinstance(dataset, Dataset)
    empty = empty if empty is not None else {"input_ids": [], "labels": [], "attention_mask": []}

    def refused(exc: Exception, index: int) -> dict[str, Any]:
        if skip_invalid:
            return dict(empty)
        if isinstance(exc, DataError):
            raise DataError(f"{entry.label}, {entry.where(index)}: {exc}") from None
        raise DataError(
            f"{entry.label}, {entry.where(index)}: {type(exc).__name__}: {exc}"
        ) from None

    def finished(prepared: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        if finish is None:
            return [value for _, value in prepared]
        try:
            return finish([value for _, value in prepared])
        except ROW_ERRORS:  # find the bad row: one at a time
            out = []
            for index, value in prepared:
                try:
                    out += as_rows(finish([value]))
                except ROW_ERRORS as exc:
                    out.append(refused(exc, index))
            return out

    def wrapped(batch: dict[str, list[Any]], indices: list[int]) -> Any:
        with gc_paused():  # a batch makes millions of ints and lists, and no cycle
            return tokenized(batch, indices)

    def tokenized(batch: dict[str, list[Any]], indices: list[int]) -> Any:
        results: dict[int, dict[str, Any]] = {}
        prepared: list[tuple[int, Any]] = []
        for position, index in enumerate(indices):
            row = {key: values[position] for key, values in batch.items()}
            try:
                prepared.append((index, fn(row)))
            except ROW_ERRORS as exc:
                results[index] = refused(exc, index)
        done = finished(prepared)
        if results:  # a bad row: the batch's rows in order, the refused ones among them
            for (index, _), columns in zip(prepared, as_rows(done), strict=True):
                results[index] = columns
            rows = [results[index] for index in indices]
        elif not isinstance(done, list):  # a table from `finish`: the batch as it is
            return done if to_arrow else done.to_pydict()
        else:  # the prepared rows are the batch, in order
            rows = done
        keys = list(rows[0]) if rows else []
        columns = {key: [row[key] for row in rows] for key in keys}
        return arrow_batch(columns) if to_arrow else columns  # a stream's map takes lists

    from datasets.fingerprint import generate_random_fingerprint
    from datasets.utils import logging as datasets_logging

    common = {"batched": True, "batch_size": MAP_BATCH_ROWS, "with_indices": True}
    if not to_arrow:  # a stream: tokenized lazily as training reads it, in this process
        return dataset.map(wrapped, remove_columns=dataset.column_names, **common)
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
            remove_columns=dataset.column_names,
            num_proc=processes if processes and processes > 1 else None,
            new_fingerprint=generate_random_fingerprint(),
            desc=f"Tokenizing {entry.path} ({entry.type or 'pre-tokenized'})",
            **common,
        )
    finally:
        if bars_were_off:
            datasets_logging.disable_progress_bar()


def as_rows(done: Any) -> list[dict[str, Any]]:
    """A `finish` result as row mappings (a `pyarrow.Table` read row by row)."""
    return done if isinstance(done, list) else done.to_pylist()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector inside the block (it would walk every list made)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


TOKEN_COLUMN_SUFFIXES = ("input_ids", "labels", "attention_mask")
"""Columns of token ids, labels or masks: integers by construction, converted as such."""


def arrow_batch(columns: dict[str, list[Any]]) -> Any:
    """A batch of columns as an Arrow table when every column is token lists or integers,
    else the columns as they are, for `datasets` to infer as before (text, floats, nested
    values, all-empty lists). What makes writing the tokenized rows cheap: `datasets` inspects
    Python lists value by value before converting them; pyarrow converts them in one call."""
    import pyarrow as pa
    import pyarrow.compute as pc

    int_lists = pa.list_(pa.int64())
    arrays = {}
    for key, values in columns.items():
        try:
            if key.endswith(TOKEN_COLUMN_SUFFIXES) and holds_ints(values):  # no inference
                array = int_lists_array(values)
            else:
                array = pa.array(values)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return columns
        if array.type != pa.int64() and array.type != int_lists:
            return columns
        if array.type == int_lists and not len(pc.list_flatten(array)):
            return columns  # only empty lists (a batch of refused rows): inferred as before
        arrays[key] = array
    return pa.table(arrays) if arrays else columns


def int_lists_array(values: list[Any]) -> Any:
    """Lists of ints as an Arrow `list<int64>` array: converted to int32 first, then cast, which
    pyarrow does about four times faster than converting to int64; an id past int32 (or a value
    that is no int) takes the direct conversion, which raises as before."""
    import pyarrow as pa

    try:
        return pa.array(values, type=pa.list_(pa.int32())).cast(pa.list_(pa.int64()))
    except (pa.ArrowException, OverflowError):
        return pa.array(values, type=pa.list_(pa.int64()))


def holds_ints(values: list[Any]) -> bool:
    """Whether the first value of the first non-empty list is an int (not a bool or a float:
    a typed conversion to integers would truncate a float)."""
    for value in values:
        if isinstance(value, list) and value:
            return type(value[0]) is int
    return False


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

    spans: list[tuple[int, str, Sequence[int] | None]] = field(default_factory=list)
    """(index of the span's first row, file name, line number of each of its rows or None: a
    list, or a compact `array` or `range` for millions of rows)."""
    offset: int = 0
    """Rows before the first one handed on (taken off by `shards`)."""

    def add(self, first: int, name: str, lines: Sequence[int] | None) -> None:
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
