"""The default micro-batches (`plan_batches`, `trylast`): rows padded to the longest of each.

Training rows are read in a permutation seeded by `(seed, epoch)`, dealt out to the processes by
micro-batches (`process_share`: the same micro-batches in each optimizer step whatever the number
of processes, for the same global batch), so a resumed run sees the same micro-batches as an
uninterrupted one; the eval set in a fixed order (each process its share, sorted), and the
training set too with `curriculum_sampling: true` (Axolotl's key: the rows in the order the
datasets list them, which it also leaves unshuffled when merging them). Each
micro-batch is padded to its longest row, or to `sequence_len` with `pad_to_sequence_len`, every
column with the padding its format declared.
A stream (an `IterableDataset`, no length) is read in its order, this process's share.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from axolotl_weave import (
    SFT_COLUMNS,
    Columns,
    PluginConfig,
    Strategy,
    collate,
    epoch_order,
    hookimpl,
    micro_batches_per_epoch,
    read_rows,
)
from pydantic import Field, model_validator

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

PLUGIN_KIND = "batching"


class OrderSettings(PluginConfig):
    """The `curriculum_sampling` key (Axolotl's name)."""

    curriculum_sampling: bool = Field(
        False,
        description="Train on the rows in their order (the datasets' order, not shuffled), "
        "the same each epoch.",
    )

    @model_validator(mode="after")
    def _datasets_in_order(self) -> OrderSettings:
        """As in Axolotl, the merged datasets keep their order too."""
        if self.curriculum_sampling:
            self.shuffle_merged_datasets = False
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`curriculum_sampling`."""
    return OrderSettings


def shuffles(cfg: Any, evaluation: bool) -> bool:
    """Whether the rows are read in a seeded permutation: training, unless `curriculum_sampling`."""
    return not evaluation and not getattr(cfg, "curriculum_sampling", False)


def iter_micro_batches(
    dataset: Dataset,
    order: list[int],
    micro_batch_size: int,
    pad_token_id: int,
    start: int = 0,
    pad_to: int | None = None,
    columns: Columns | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded micro-batches of `order`, beginning at micro-batch number `start`."""
    columns = columns or SFT_COLUMNS
    for first in range(start * micro_batch_size, len(order), micro_batch_size):
        rows = read_rows(dataset, order[first : first + micro_batch_size], columns)
        yield collate(rows, pad_token_id, pad_to, columns)


def iter_stream_micro_batches(
    stream: Any,
    micro_batch_size: int,
    pad_token_id: int,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
    columns: Columns | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded micro-batches read from a stream (an `IterableDataset`), this process's share,
    beginning at micro-batch number `start` (the rows before it are skipped, for resuming)."""
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    if start:
        stream = stream.skip(start * micro_batch_size)
    columns = columns or SFT_COLUMNS
    rows: list[dict[str, Any]] = []
    for row in stream:
        rows.append({key: row[key] for key in columns if key in row})
        if len(rows) == micro_batch_size:
            yield collate(rows, pad_token_id, columns=columns)
            rows = []
    if rows:
        yield collate(rows, pad_token_id, columns=columns)


@dataclass
class PaddedBatches:
    """A `BatchPlan` of padded rows: a seeded order per epoch (training) or one sorted order
    (evaluation), this process's share."""

    dataset: Dataset
    micro_batch_size: int
    pad_token_id: int
    pad_to: int | None
    columns: Columns
    seed: int
    shuffle: bool
    rank: int
    world_size: int

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches per process per epoch (the same on every process)."""
        return micro_batches_per_epoch(len(self.dataset), self.micro_batch_size, self.world_size)

    def micro_batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """This process's micro-batches of `epoch`, from micro-batch number `start`."""
        size, rank, world_size = self.micro_batch_size, self.rank, self.world_size
        if self.shuffle:
            order = epoch_order(len(self.dataset), self.seed, epoch, rank, world_size, size)
        else:
            order = sorted(epoch_order(len(self.dataset), 0, 0, rank, world_size, size))
        return iter_micro_batches(
            self.dataset,
            order,
            self.micro_batch_size,
            self.pad_token_id,
            start=start,
            pad_to=self.pad_to,
            columns=self.columns,
        )


@dataclass
class StreamedBatches:
    """A `BatchPlan` of a stream: its rows in their order, this process's share, padded; the
    length is unknown (`max_steps` sets the schedule)."""

    stream: Any
    micro_batch_size: int
    pad_token_id: int
    columns: Columns
    rank: int
    world_size: int
    micro_batches_per_epoch: int | None = None

    def micro_batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The stream's micro-batches (every epoch reads it afresh), from number `start`."""
        return iter_stream_micro_batches(
            self.stream,
            self.micro_batch_size,
            self.pad_token_id,
            self.rank,
            self.world_size,
            start=start,
            columns=self.columns,
        )


@hookimpl(trylast=True)
def plan_batches(
    cfg: Any,
    dataset: Any,
    evaluation: bool,
    strategy: Strategy,
    columns: Columns,
    pad_token_id: int,
) -> PaddedBatches | StreamedBatches:
    """Padded micro-batches of `micro_batch_size` rows (`eval_batch_size` for evaluation)."""
    size = (cfg.eval_batch_size or cfg.micro_batch_size) if evaluation else cfg.micro_batch_size
    rank, world_size = strategy.process_index, strategy.num_processes
    if not hasattr(dataset, "__len__"):
        return StreamedBatches(dataset, size, pad_token_id, columns, rank, world_size)
    pad_to = cfg.sequence_len if cfg.pad_to_sequence_len else None
    shuffle = shuffles(cfg, evaluation)
    return PaddedBatches(
        dataset, size, pad_token_id, pad_to, columns, cfg.seed, shuffle, rank, world_size
    )
