"""`type: pretraining` (and Axolotl's `pretrain`): raw text packed into `sequence_len` blocks.

The text of each row is read from `text_column:` (Axolotl's key on `pretraining_dataset:`
entries), else `field:`, else the column `text`. Each text is tokenized with the special
tokens the tokenizer adds (its BOS) and followed by EOS (unless the tokenizer already ended it
with one), as Axolotl's `pretrain` strategy does; the texts of a batch of rows are concatenated
and cut into blocks of exactly `sequence_len` tokens. Every token is trained (`labels` equal
`input_ids`, BOS and EOS included) and `attention_mask` is all ones: a block's documents are
separated by EOS/BOS, not by the mask. No padding is added.

This format builds a `datasets.Dataset` (a `datasets:` entry: tokenized once and cached, on
`dataset_processes` processes) and a `datasets.IterableDataset` (a streamed
`pretraining_dataset:` entry, tokenized as training reads it; `pretraining` is the default
`type` of those entries, and `pretrain`, Axolotl's default, is accepted).

Decisions, and where they differ from Axolotl:

- Long texts are never truncated: they run on into the next blocks. (Axolotl's unpacked
  streaming path truncates every text to `sequence_len - 2` tokens and pads each block;
  its packed path cuts long texts into overlapping windows.)
- Rows are packed `ROWS_PER_BATCH` at a time (datasets' batched map carries nothing over from
  one batch to the next): the tokens left at the end of a batch, fewer than `sequence_len`,
  are kept as one shorter row, as Axolotl keeps its leftover block (it pads it; here the
  collator pads). A leftover of a single token, which trains nothing, is dropped. So every row
  but the last of each batch is exactly `sequence_len` tokens.
- An empty text is skipped (it would add only BOS and EOS). A missing (null) or non-string
  text is a `DataError` naming the entry and the row; with `skip_invalid_rows: true` it is
  skipped (in a `datasets:` entry it also yields an empty row, which the core drops and
  counts as invalid; a stream leaves it out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from axolotl_weave import DataError, DatasetFormat, PluginConfig, hookimpl

PLUGIN_KIND = "format"
NAMES = ("pretraining", "pretrain")
ROWS_PER_BATCH = 1000
"""Rows tokenized and packed together (one map batch)."""


class PretrainingOptions(PluginConfig):
    """Keys of a `pretraining`/`pretrain` entry beyond the common ones."""

    text_column: str | None = None
    """Column holding the text (Axolotl's key); default: `field:`, else `text`."""


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `pretraining` and Axolotl's `pretrain`; both build streams."""
    for name in NAMES:
        register(
            DatasetFormat(
                name,
                "raw text packed into sequence_len blocks, all trained (text_column, default text)",
                options=PretrainingOptions,
                streams=True,
                build=build,
                prompt="text",
            )
        )


def text_column(entry: Any) -> str:
    """The entry's text column: `text_column:`, else `field:`, else `text`."""
    column, field = entry.option("text_column"), entry.field
    if column and field and column != field:
        raise DataError(
            f"{entry.label}: text_column: '{column}' and field: '{field}' name different "
            "columns; set one"
        )
    return column or field or "text"


def tokenize_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's ids: the tokenizer's special tokens (BOS) added, then EOS appended unless the
    ids already end with it."""
    if not texts:
        return []
    eos = tokenizer.eos_token_id
    documents = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        documents.append(ids)
    return documents


def cut_blocks(documents: Iterable[list[int]], block: int) -> list[list[int]]:
    """Concatenate the documents' ids and cut them into blocks of `block` ids; the shorter
    last block is kept when it has two ids or more (one id trains nothing)."""
    stream = [token for ids in documents for token in ids]
    blocks = [stream[i : i + block] for i in range(0, len(stream), block)]
    if blocks and len(blocks[-1]) < 2:
        blocks.pop()
    return blocks


def pack_texts(tokenizer: Any, texts: list[str], block: int) -> dict[str, list[list[int]]]:
    """Tokenize `texts` (BOS as the tokenizer adds it, EOS after each), concatenate them and cut
    the ids into `block`-token rows, every token trained, attention on every token."""
    blocks = cut_blocks(tokenize_texts(tokenizer, [t for t in texts if t]), block)
    return {
        "input_ids": blocks,
        "labels": [list(b) for b in blocks],
        "attention_mask": [[1] * len(b) for b in blocks],
    }


def source_columns(dataset: Any, entry: Any) -> list[str]:
    """The raw columns of a dataset or stream; a stream whose features are unknown until read
    (JSON Lines, hub streams) is peeked at its first row."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise DataError(f"{entry.label}: the stream has no rows")
    return list(first)


def output_features() -> Any:
    """The features of the packed rows, as datasets infers them for a tokenized `Dataset`
    (so that a stream's rows have the same types, and its column names are known)."""
    from datasets import Features, List, Value

    return Features(
        {
            "input_ids": List(Value("int32")),
            "labels": List(Value("int64")),
            "attention_mask": List(Value("int8")),
        }
    )


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Pack the entry's texts into `sequence_len` blocks: a `Dataset` for a `datasets:` entry,
    an `IterableDataset` (still lazy) for a streamed `pretraining_dataset:` entry."""
    from datasets import Dataset

    column = text_column(entry)
    columns = source_columns(dataset, entry)
    if column not in columns:
        raise DataError(
            f"{entry.label} lacks the text column '{column}'; its rows have: "
            f"{', '.join(columns) or 'no fields'} (set text_column:)"
        )
    streaming = not isinstance(dataset, Dataset)
    # a stream's indices restart after the rows the core skipped (`skip:`)
    first_row = (entry.skip or 0) if streaming else 0
    skip_invalid, block = entry.skip_invalid_rows, cfg.sequence_len

    def pack(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[list[int]]]:
        texts, invalid = [], 0
        for text, index in zip(batch[column], indices, strict=True):
            if isinstance(text, str):
                texts.append(text)
                continue
            if not skip_invalid:
                problem = "is missing or null" if text is None else "must be a string"
                raise DataError(
                    f"{entry.label}, {entry.where(first_row + index)}: field '{column}' "
                    f"{problem}, got {type(text).__name__}: {text!r:.60}"
                )
            invalid += 1
        packed = pack_texts(tokenizer, texts, block)
        if invalid and not streaming:  # empty rows: the core drops and counts them as invalid
            for rows in packed.values():
                rows.extend([] for _ in range(invalid))
        return packed

    options: dict[str, Any] = {
        "batched": True,
        "batch_size": ROWS_PER_BATCH,
        "with_indices": True,
        "remove_columns": columns,
    }
    if streaming:
        return dataset.map(pack, features=output_features(), **options)
    from datasets.fingerprint import generate_random_fingerprint

    processes = entry.num_proc if entry.num_proc and entry.num_proc > 1 else None
    return dataset.map(
        pack,
        num_proc=processes,
        # the core caches the result under its own fingerprint; skip hashing `pack`
        new_fingerprint=generate_random_fingerprint(),
        desc=f"Packing {entry.path} ({entry.type}, blocks of {block} tokens)",
        **options,
    )
