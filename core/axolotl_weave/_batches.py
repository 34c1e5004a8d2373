"""Micro-batches: a seeded order per epoch, split evenly across processes, padded to the longest."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from axolotl_weave._types import IGNORE_INDEX

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

MODEL_COLUMNS = ("input_ids", "labels", "attention_mask")
NOT_MODEL_INPUTS = ("labels", "num_tokens")
"""Batch keys that are not passed to the model's forward."""


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the model's forward: the batch without labels and counters."""
    return {key: value for key, value in batch.items() if key not in NOT_MODEL_INPUTS}


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (non-padding) tokens in a micro-batch, packed or padded."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def micro_batches_per_epoch(num_rows: int, micro_batch_size: int, world_size: int = 1) -> int:
    """How many micro-batches each process sees in one epoch (the same on every process)."""
    rows_per_process = num_rows // world_size
    return -(-rows_per_process // micro_batch_size)


def epoch_order(
    num_rows: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[int]:
    """This process's rows in `epoch`: a permutation seeded by (seed, epoch), sliced per rank."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_rows, generator=generator).tolist()
    per_process = num_rows // world_size
    return order[rank * per_process : (rank + 1) * per_process]


def iter_micro_batches(
    dataset: Dataset,
    order: list[int],
    micro_batch_size: int,
    pad_token_id: int,
    start: int = 0,
    pad_to: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded micro-batches of `order`, beginning at micro-batch number `start`."""
    for first in range(start * micro_batch_size, len(order), micro_batch_size):
        rows = read_rows(dataset, order[first : first + micro_batch_size])
        yield collate(rows, pad_token_id, pad_to)


def iter_packed_micro_batches(
    dataset: Dataset,
    bins: Iterator[list[list[int]]],
    pad_token_id: int,
    pad_to: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Packed micro-batches, one per item of `bins` (each a list of bins of row indices)."""
    from axolotl_weave._packing import collate_packed

    for micro_batch in bins:
        rows = read_rows(dataset, [row for packed in micro_batch for row in packed])
        it = iter(rows)
        yield collate_packed(
            [[next(it) for _ in packed] for packed in micro_batch], pad_token_id, pad_to
        )


def read_rows(dataset: Dataset, indices: list[int]) -> list[dict[str, Any]]:
    """The model columns of `dataset`'s rows at `indices`, as dicts, in that order."""
    columns = [c for c in MODEL_COLUMNS if c in dataset.column_names]
    chunk = dataset.select_columns(columns)[indices]
    return [dict(zip(columns, row, strict=True)) for row in zip(*chunk.values(), strict=True)]


def iter_stream_micro_batches(
    stream: Any,
    micro_batch_size: int,
    pad_token_id: int,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded micro-batches read from a stream (an `IterableDataset`), this process's share,
    beginning at micro-batch number `start` (the rows before it are skipped, for resuming)."""
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    if start:
        stream = stream.skip(start * micro_batch_size)
    rows: list[dict[str, Any]] = []
    for row in stream:
        rows.append({key: row[key] for key in MODEL_COLUMNS if key in row})
        if len(rows) == micro_batch_size:
            yield collate(rows, pad_token_id)
            rows = []
    if rows:
        yield collate(rows, pad_token_id)


def collate(
    rows: list[dict[str, Any]], pad_token_id: int, pad_to: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest (or to `pad_to`): pad id for inputs, IGNORE_INDEX for
    labels, 0 in the mask."""
    import torch

    longest = pad_to or max(len(row["input_ids"]) for row in rows)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "attention_mask": []}
    for row in rows:
        pad = longest - len(row["input_ids"])
        batch["input_ids"].append(list(row["input_ids"]) + [pad_token_id] * pad)
        batch["labels"].append(list(row["labels"]) + [IGNORE_INDEX] * pad)
        mask = row.get("attention_mask") or [1] * len(row["input_ids"])
        batch["attention_mask"].append(list(mask) + [0] * pad)
    return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
