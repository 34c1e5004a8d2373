"""`type: completion`: raw text, every token trained (column `field:`, default `text`).

Mirrors Axolotl's `prompt_strategies/completion.py` (`CompletionPromptTokenizingStrategy`):

- each text is tokenized with the tokenizer's special tokens (its BOS), truncated to
  `MAX_LENGTH_FACTOR * sequence_len` tokens (Axolotl's `max_length`: the rest of a longer text is
  lost), and EOS is appended unless it already ends with one or fills that length;
- the ids are cut into consecutive, non-overlapping pieces of `sequence_len` tokens, each a row
  of its own, every token trained: BOS is only in the first piece, EOS only in the last, and the
  last may be short (a one-token piece has nothing to predict and is dropped by the core, as
  Axolotl drops rows under `min_sample_len`). So a long text is split whatever
  `excess_length_strategy` says (Axolotl splits it before that applies);
- an empty text gives no row (not BOS and EOS).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, map_rows, require_columns, text_field

PLUGIN_KIND = "format"

MAX_LENGTH_FACTOR = 64
"""Axolotl's completion loader tokenizes at most `sequence_len * 64` tokens of a text."""

COLUMNS = ("input_ids", "labels", "attention_mask")


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `completion`."""
    register(
        DatasetFormat(
            "completion",
            "raw text in one column (field:, default text)",
            build=build,
            prompt="text",
        )
    )


def completion_ids(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """Axolotl's `_tokenize` of a completion text: special tokens added, truncated to
    `max_length`, EOS appended when missing and there is room; an empty text has no ids."""
    if not text:
        return []
    ids = list(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
    eos = tokenizer.eos_token_id
    if ids and eos is not None and ids[-1] != eos and len(ids) < max_length:
        ids.append(eos)
    return ids


def pieces(ids: list[int], size: int) -> list[list[int]]:
    """`ids` cut into consecutive pieces of `size` (the last may be shorter)."""
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def stream_features() -> Any:
    """The pieces' features, as datasets infers them for a tokenized `Dataset`."""
    from datasets import Features, List, Value

    return Features(
        {
            "input_ids": List(Value("int32")),
            "labels": List(Value("int64")),
            "attention_mask": List(Value("int8")),
        }
    )


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize the text column, then cut each text's ids into `sequence_len` pieces."""
    column = entry.field or "text"
    require_columns(dataset, entry, [column])
    size = cfg.sequence_len
    max_length = size * MAX_LENGTH_FACTOR

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        ids = completion_ids(tokenizer, text_field(row, column), max_length)
        return {"input_ids": ids, "labels": list(ids), "attention_mask": [1] * len(ids), "ok": 1}

    invalid = {"input_ids": [], "labels": [], "attention_mask": [], "ok": 0}
    tokenized = map_rows(dataset, entry, tokenize, empty=invalid)

    def split(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for ids, ok in zip(batch["input_ids"], batch["ok"], strict=True):
            if not ok:  # a bad row (skip_invalid_rows): one empty row, which the core counts
                for name in COLUMNS:
                    out[name].append([])
                continue
            for piece in pieces(ids, size):  # an empty text: no piece, no row
                out["input_ids"].append(piece)
                out["labels"].append(list(piece))
                out["attention_mask"].append([1] * len(piece))
        return out

    from datasets import IterableDataset
    from datasets.fingerprint import generate_random_fingerprint

    if isinstance(tokenized, IterableDataset):  # a streamed pretraining_dataset: lazily
        return tokenized.map(
            split,
            batched=True,
            remove_columns=[*COLUMNS, "ok"],  # what `tokenize` made (a stream cannot say)
            features=stream_features(),  # a stream's columns are then known
        )
    processes = entry.num_proc if entry.num_proc and entry.num_proc > 1 else None
    return tokenized.map(
        split,
        batched=True,
        num_proc=processes if processes and len(tokenized) >= 16 * processes else None,
        remove_columns=tokenized.column_names,
        # the core caches the result under its own fingerprint; skip hashing `split`
        new_fingerprint=generate_random_fingerprint(),
        desc=f"Splitting {entry.path} into pieces of {size} tokens",
    )
