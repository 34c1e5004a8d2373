"""`type: pretraining` (Axolotl's `pretrain` too): raw text packed into full-length blocks.

Each text (column `text_column`, or `field:`, default `text`) is tokenized with the tokenizer's
BOS, followed by EOS; the texts of a batch of rows are concatenated and cut into blocks of
exactly `sequence_len` tokens, every token trained, no padding. The tail of each batch that does
not fill a block is kept as a shorter row, so no text is lost. It builds a `datasets.Dataset` as
well as an `IterableDataset` (a streamed `pretraining_dataset:`, tokenized while training; this
format is the default `type` of those entries).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DataError, DatasetFormat, PluginConfig, hookimpl

PLUGIN_KIND = "format"
NAMES = ("pretraining", "pretrain")
ROWS_PER_BATCH = 1000


class PretrainingOptions(PluginConfig):
    """Options of a pretraining entry."""

    text_column: str | None = None


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `pretraining` and Axolotl's `pretrain` (both stream)."""
    for name in NAMES:
        register(
            DatasetFormat(
                name,
                "raw text packed into sequence_len blocks, all trained (text_column, default text)",
                options=PretrainingOptions,
                streams=True,
            )
        )


def pack_texts(tokenizer: Any, texts: list[str], block: int) -> dict[str, list[list[int]]]:
    """Tokenize texts (BOS as the tokenizer adds it, EOS after each), concatenate, cut into
    blocks of `block` tokens; the last, shorter block is kept when it has two tokens or more."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        stream += ids
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
    blocks = [stream[i : i + block] for i in range(0, len(stream), block)]
    blocks = [b for b in blocks if len(b) > 1]
    return {
        "input_ids": blocks,
        "labels": [list(b) for b in blocks],
        "attention_mask": [[1] * len(b) for b in blocks],
    }


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Pack the entry's texts into `sequence_len` blocks (a dataset or a stream)."""
    if entry.type not in NAMES:
        return None
    column = entry.option("text_column") or entry.field or "text"
    columns = dataset.column_names
    if columns is None:  # a stream whose features are not known until read
        first = next(iter(dataset.take(1)), None)
        if first is None:
            raise DataError(f"{entry.label}: the stream is empty")
        columns = list(first)
    if column not in columns:
        raise DataError(
            f"{entry.label} lacks the text column '{column}'; its rows have: {', '.join(columns)} "
            "(set text_column:)"
        )

    def pack(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        texts = []
        for text, index in zip(batch[column], indices, strict=True):
            if isinstance(text, str):
                texts.append(text)
            elif not entry.skip_invalid_rows:
                raise DataError(
                    f"{entry.label}, {entry.where(index)}: field '{column}' must be a string, "
                    f"got {text!r:.60}"
                )
        return pack_texts(tokenizer, texts, cfg.sequence_len)

    options: dict[str, Any] = {
        "batched": True,
        "batch_size": ROWS_PER_BATCH,
        "with_indices": True,
        "remove_columns": columns,
    }
    if hasattr(dataset, "__len__"):  # map-style: processes and a progress bar
        options |= {"num_proc": entry.num_proc, "desc": f"Packing {entry.path}"}
    return dataset.map(pack, **options)
