"""What the batching plugins share: a seeded order per epoch dealt out to the processes,
reading rows, padding them into a micro-batch, and the counts and facts about micro-batches.

How a dataset is cut into micro-batches is the `plan_batches` hook's (the padded and the packed
batches are plugins).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from axolotl_weave._types import PAD_TOKEN, SFT_COLUMNS

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset

Columns = dict[str, "int | str | None"]
"""Batch columns and their padding (see `DatasetFormat.columns`)."""

NOT_MODEL_INPUTS = ("labels", "num_tokens")
"""Batch keys that are not passed to the model's forward."""


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the model's forward: the batch without labels and counters."""
    return {key: value for key, value in batch.items() if key not in NOT_MODEL_INPUTS}


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (non-padding) tokens in a micro-batch, packed or padded, over every sequence of a
    row (`chosen_input_ids` and `rejected_input_ids` both count)."""
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    masks = [value for key, value in batch.items() if key.endswith("attention_mask")]
    if masks:
        return int(sum(int(mask.sum()) for mask in masks))
    return int(sum(v.numel() for k, v in batch.items() if k.endswith("input_ids")))


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """The batch with its tensors on `device` (text and other columns as they are)."""
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def micro_batches_per_epoch(num_rows: int, micro_batch_size: int, world_size: int = 1) -> int:
    """How many micro-batches each process sees in one epoch (the same on every process)."""
    rows_per_process = num_rows // world_size
    return -(-rows_per_process // micro_batch_size)


def process_share(
    items: list[Any], micro_batch_size: int, rank: int = 0, world_size: int = 1
) -> list[Any]:
    """This process's items (rows, packed bins) of an epoch's `items`, dealt out so that the
    data order does not depend on the number of processes.

    `items` is cut into micro-batches of `micro_batch_size` as one process would read it; the
    processes take them in turn (micro-batch `i` on process `i % world_size`), so each window of
    `gradient_accumulation_steps` micro-batches on every process together is the window of
    `gradient_accumulation_steps x world_size` micro-batches of one process: the same rows in the
    same micro-batches. Every process gets `len(items) // world_size` items (the last
    `len(items) % world_size` are left out); a last round too short for a micro-batch on every
    process is split evenly (there alone, micro-batches differ from one process's).
    """
    if world_size == 1:
        return list(items)
    usable = len(items) // world_size * world_size
    round_size = micro_batch_size * world_size
    full = usable // round_size * round_size
    share: list[Any] = []
    for first in range(0, full, round_size):
        start = first + rank * micro_batch_size
        share.extend(items[start : start + micro_batch_size])
    tail = (usable - full) // world_size
    share.extend(items[full + rank * tail : full + (rank + 1) * tail])
    return share


def epoch_order(
    num_rows: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    micro_batch_size: int = 1,
) -> list[int]:
    """This process's rows in `epoch`: a permutation seeded by (seed, epoch), dealt out to the
    processes by micro-batches of `micro_batch_size` (`process_share`)."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_rows, generator=generator).tolist()
    return process_share(order, micro_batch_size, rank, world_size)


def read_rows(
    dataset: Dataset, indices: list[int], columns: Columns | None = None
) -> list[dict[str, Any]]:
    """The batch columns of `dataset`'s rows at `indices`, as dicts, in that order."""
    wanted = [c for c in (columns or SFT_COLUMNS) if c in dataset.column_names]
    chunk = dataset.select_columns(wanted)[indices]
    return [dict(zip(wanted, row, strict=True)) for row in zip(*chunk.values(), strict=True)]


def collate(
    rows: list[dict[str, Any]],
    pad_token_id: int,
    pad_to: int | None = None,
    columns: Columns | None = None,
) -> dict[str, Any]:
    """Right-pad each sequence column to its longest (or to `pad_to`) with its padding (the pad
    id for inputs, IGNORE_INDEX for labels, 0 in masks); scalar columns become a tensor, text a
    list. A missing `attention_mask` is all ones over `input_ids`. A sequence column of vectors
    (a list per token, e.g. a teacher's top-k) becomes `(rows, length, width)`, each vector
    right-padded to the widest too; floats stay float32, integers become int64."""
    import torch

    columns = columns or SFT_COLUMNS
    batch: dict[str, Any] = {}
    for key, padding in columns.items():
        if key == "attention_mask" and "input_ids" in rows[0]:
            values = [row.get(key) or [1] * len(row["input_ids"]) for row in rows]
        elif key in rows[0]:
            values = [row[key] for row in rows]
        else:
            continue
        if padding is None:
            is_text = isinstance(values[0], str)
            batch[key] = values if is_text else torch.tensor(values)
            continue
        fill = pad_token_id if padding == PAD_TOKEN else int(padding)
        longest = pad_to or max(len(value) for value in values)
        vectors = [item for value in values for item in value if isinstance(item, list)]
        if vectors:  # a vector per token: pad each to the widest, then the rows
            width = max(len(item) for item in vectors)
            values = [[list(item) + [fill] * (width - len(item)) for item in v] for v in values]
            fill = [fill] * width
        sample = vectors[0] if vectors else values[0]
        floats = any(isinstance(x, float) for x in sample)
        padded = [list(value) + [fill] * (longest - len(value)) for value in values]
        batch[key] = torch.tensor(padded, dtype=torch.float32 if floats else torch.long)
    return batch


def padded_efficiency(lengths: np.ndarray, micro_batch_size: int) -> float:
    """Real tokens / slots of micro-batches of rows of `lengths`, in that order, each padded to
    its longest row."""
    real = slots = 0
    for first in range(0, len(lengths), micro_batch_size):
        chunk = lengths[first : first + micro_batch_size]
        real += int(chunk.sum())
        slots += len(chunk) * int(chunk.max())
    return real / max(slots, 1)
