"""Sample packing: whole rows packed into bins of `sequence_len` tokens, one bin per batch row.

Each epoch, the rows are shuffled (seeded by seed and epoch) and cut into groups of
`sample_packing_group_size`; within a group, rows are placed first-fit decreasing (longest first,
each into the first bin with room, at most `sample_packing_bin_size` rows per bin), or in order
with `sample_packing_sequentially`. The bins are shuffled and dealt out by micro-batches so that
every process gets the same number, and an optimizer step the same bins whatever the number of
processes. A bin becomes one row of a micro-batch: its rows concatenated, `position_ids`
restarting at 0 for each, and the first label of each masked so that no row is trained to predict
from another. Attention keeps the rows apart through the `position_ids` (transformers builds the
block-diagonal mask from them; varlen kernels turn them into cumulative sequence lengths).

Not a plugin (no entry point): the helper of the `sample_packing` plugin (`packed.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from axolotl_weave import IGNORE_INDEX, process_share, read_rows

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

log = logging.getLogger("axolotl_weave")


def row_lengths(dataset: Dataset) -> np.ndarray:
    """The token count of every row, read from the Arrow column without building Python lists."""
    import pyarrow.compute as pc

    column = dataset.select_columns(["input_ids"]).with_format("arrow")[:]["input_ids"]
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def first_fit_decreasing(
    rows: Sequence[int], lengths: np.ndarray, capacity: int, bin_size: int
) -> list[list[int]]:
    """Pack `rows` (indices into `lengths`) longest first, each into the first bin with room.

    A max-segment-tree over the bins' free space finds that bin in O(log n); a bin holding
    `bin_size` rows is closed. Rows of equal length keep their order in `rows`.
    """
    ordered = sorted(rows, key=lambda row: -lengths[row])
    size = 1
    while size < max(len(ordered), 1):
        size *= 2
    tree = [-1] * (2 * size)  # free tokens of each bin; -1: no bin there (yet) or closed
    bins: list[list[int]] = []
    for row in ordered:
        need = int(lengths[row])
        if need > capacity:
            raise ValueError(f"row {row} has {need} tokens, more than the {capacity} of a bin")
        if tree[1] >= need:
            node = 1
            while node < size:  # descend to the leftmost leaf with room
                node = 2 * node if tree[2 * node] >= need else 2 * node + 1
            index = node - size
        else:
            index = len(bins)
            bins.append([])
            node = size + index
            tree[node] = capacity
        bins[index].append(row)
        tree[node] = tree[node] - need if len(bins[index]) < bin_size else -1
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


def next_fit(
    rows: Sequence[int], lengths: np.ndarray, capacity: int, bin_size: int
) -> list[list[int]]:
    """Pack `rows` in their order, opening a new bin when the current one is full."""
    bins: list[list[int]] = []
    free = 0
    for row in rows:
        need = int(lengths[row])
        if need > capacity:
            raise ValueError(f"row {row} has {need} tokens, more than the {capacity} of a bin")
        if not bins or need > free or len(bins[-1]) >= bin_size:
            bins.append([])
            free = capacity
        bins[-1].append(row)
        free -= need
    return bins


@dataclass
class Packer:
    """The packed bins of each epoch for this process, and what they cost in padding."""

    lengths: np.ndarray
    capacity: int
    micro_batch_size: int
    seed: int = 42
    group_size: int = 100_000
    bin_size: int = 200
    sequentially: bool = False
    shuffle: bool = True
    rank: int = 0
    world_size: int = 1
    pad_to_capacity: bool = False
    _cache: dict[int, list[list[int]]] = field(default_factory=dict, repr=False)

    def all_bins(self, epoch: int) -> list[list[int]]:
        """Every process's bins of `epoch`, in the epoch's (seeded) order."""
        if epoch in self._cache:
            return self._cache[epoch]
        import torch

        n = len(self.lengths)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        pack = next_fit if self.sequentially else first_fit_decreasing
        bins: list[list[int]] = []
        for start in range(0, n, self.group_size):
            group = order[start : start + self.group_size]
            bins.extend(pack(group, self.lengths, self.capacity, self.bin_size))
        if self.shuffle and not self.sequentially:
            bins = [bins[i] for i in torch.randperm(len(bins), generator=generator).tolist()]
        self._cache = {e: b for e, b in self._cache.items() if e == 0}  # epoch 0 sets the count
        self._cache[epoch] = bins
        return bins

    def bins(self, epoch: int) -> list[list[int]]:
        """This process's bins of `epoch`: the same number on every process, dealt out by
        micro-batches (`process_share`), so that the bins of an optimizer step are the same
        whatever the number of processes."""
        return process_share(
            self.all_bins(epoch), self.micro_batch_size, self.rank, self.world_size
        )

    def micro_batches_per_epoch(self) -> int:
        """Micro-batches per process per epoch (counted on epoch 0, for the schedule)."""
        return -(-len(self.bins(0)) // self.micro_batch_size)

    def micro_batch_bins(self, epoch: int, start: int = 0) -> Iterator[list[list[int]]]:
        """The bins of each micro-batch of `epoch`, from micro-batch number `start`."""
        bins = self.bins(epoch)[: self.micro_batches_per_epoch() * self.micro_batch_size]
        for first in range(start * self.micro_batch_size, len(bins), self.micro_batch_size):
            yield bins[first : first + self.micro_batch_size]

    def efficiency(self, epoch: int = 0) -> float:
        """Real tokens / token slots computed, over every process's micro-batches of `epoch`.

        A packed micro-batch is as wide as its fullest bin, or `capacity` with `pad_to_capacity`
        (`pad_to_sequence_len`); its slots are its rows times that width.
        """
        bins = self.all_bins(epoch)
        slots = 0
        for first in range(0, len(bins), self.micro_batch_size):
            fills = [
                int(self.lengths[b].sum()) for b in bins[first : first + self.micro_batch_size]
            ]
            slots += len(fills) * (self.capacity if self.pad_to_capacity else max(fills))
        return int(self.lengths.sum()) / max(slots, 1)


def packer_for(
    cfg: Any, dataset: Dataset, micro_batch_size: int, shuffle: bool, rank: int, world_size: int
) -> Packer:
    """The `Packer` of `dataset` as the config's `sample_packing_*` keys set it up: rows into
    bins of `sequence_len` tokens, or preference pairs (each a chosen and a rejected sequence of
    at most `sequence_len`) into bins of twice that, so that every pair fits."""
    pairs = holds_pairs(dataset)
    return Packer(
        lengths=pair_lengths(dataset) if pairs else row_lengths(dataset),
        capacity=cfg.sequence_len * (2 if pairs else 1),
        micro_batch_size=micro_batch_size,
        seed=cfg.seed,
        group_size=cfg.sample_packing_group_size,
        bin_size=cfg.sample_packing_bin_size,
        sequentially=cfg.sample_packing_sequentially,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
        pad_to_capacity=bool(cfg.pad_to_sequence_len),
    )


def packing_summary(packer: Packer, unpacked: float) -> str:
    """One line: rows, bins, micro-batches, and the efficiency next to unpacked padding's."""
    return (
        f"sample_packing: {len(packer.lengths):,} rows in {len(packer.all_bins(0)):,} bins of "
        f"{packer.capacity} tokens, {packer.micro_batches_per_epoch():,} micro-batches per "
        f"process per epoch; efficiency {packer.efficiency():.1%} (unpacked, padded to the "
        f"longest: {unpacked:.1%})"
    )


def warn_below_estimate(packer: Packer, estimate: float | None) -> None:
    """Axolotl's `sample_packing_eff_est`: a warning when the real packing falls below it (the
    step count here is exact, so the estimate sets nothing)."""
    efficiency = packer.efficiency()
    if estimate and efficiency < estimate:
        log.warning(
            "sample_packing_eff_est %.2f: the packing reached only %.3f (the step count here "
            "is exact, not estimated)",
            estimate,
            efficiency,
        )


def collate_packed(
    bins: list[list[dict[str, Any]]], pad_token_id: int, pad_to: int | None = None
) -> dict[str, torch.Tensor]:
    """One micro-batch from packed bins: each bin's rows concatenated into one batch row.

    `position_ids` restart at 0 for each row; the first label of each row is masked (the token
    before it belongs to another row); the tail is padded (pad id, IGNORE_INDEX labels, positions
    going on from 0 as one more, empty sample) to the widest bin or to `pad_to`. No attention
    mask is returned: the model derives the packed mask from `position_ids`. `num_tokens` counts
    the real tokens.
    """
    import torch

    width = pad_to or max(sum(len(row["input_ids"]) for row in rows) for rows in bins)
    input_ids, labels, positions = [], [], []
    for rows in bins:
        ids: list[int] = []
        targets: list[int] = []
        pos: list[int] = []
        for row in rows:
            n = len(row["input_ids"])
            ids.extend(row["input_ids"])
            targets.append(IGNORE_INDEX)
            targets.extend(list(row["labels"])[1:])
            pos.extend(range(n))
        pad = width - len(ids)
        if pad < 0:
            raise ValueError(f"a packed bin holds {len(ids)} tokens, more than {width}")
        input_ids.append(ids + [pad_token_id] * pad)
        labels.append(targets + [IGNORE_INDEX] * pad)
        positions.append(pos + list(range(pad)))
    real = sum(sum(len(row["input_ids"]) for row in rows) for rows in bins)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "num_tokens": torch.tensor(real, dtype=torch.long),
    }


def iter_packed_micro_batches(
    dataset: Dataset,
    bins: Iterator[list[list[int]]],
    pad_token_id: int,
    pad_to: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Packed micro-batches, one per item of `bins` (each a list of bins of row indices)."""
    for micro_batch in bins:
        rows = read_rows(dataset, [row for packed in micro_batch for row in packed])
        it = iter(rows)
        yield collate_packed(
            [[next(it) for _ in packed] for packed in micro_batch], pad_token_id, pad_to
        )


# -- preference pairs --------------------------------------------------------------------------

PAIR_SIDES = ("chosen", "rejected")
"""The two sequences of a preference pair, as their columns are prefixed."""


def holds_pairs(dataset: Any) -> bool:
    """Whether the rows are preference pairs (`chosen_input_ids` and `rejected_input_ids`)."""
    names = getattr(dataset, "column_names", None) or []
    return all(f"{side}_input_ids" in names for side in PAIR_SIDES)


def pair_lengths(dataset: Dataset) -> np.ndarray:
    """The tokens of every pair (its chosen and rejected sequences together), read from Arrow."""
    import pyarrow.compute as pc

    columns = [f"{side}_input_ids" for side in PAIR_SIDES]
    table = dataset.select_columns(columns).with_format("arrow")[:]
    total = np.zeros(len(dataset), dtype=np.int64)
    for column in columns:
        total += pc.list_value_length(table[column]).to_numpy(zero_copy_only=False)
    return total


def collate_packed_pairs(
    bins: list[list[dict[str, Any]]],
    pad_token_id: int,
    pad_to: int | None = None,
    per_pair: Sequence[str] = (),
) -> dict[str, Any]:
    """One micro-batch of preference pairs packed into rows: each bin's pairs side by side.

    The pairs are numbered in bin order (P of them); a pair's chosen sequence, then its rejected
    one, lie next to each other in its bin's row. `sequence_ids` says, for every token, which
    sequence it belongs to: the chosen one of pair k is sequence k, its rejected one P + k
    (the order in which the unpacked objective concatenates them); padding is -1. As in
    `collate_packed`, `position_ids` restart at 0 for each sequence, each sequence's first label
    is masked, and there is no attention mask. `num_pairs` is P; `num_tokens` the real tokens.
    Each column of `per_pair` (a scalar of the row, such as a precomputed reference
    log-probability) becomes a tensor of P values in pair order (a list for text).
    """
    import torch

    pairs = [row for rows in bins for row in rows]
    count = len(pairs)
    width = pad_to or max(
        sum(len(row[f"{side}_input_ids"]) for row in rows for side in PAIR_SIDES) for rows in bins
    )
    input_ids, labels, positions, sequences = [], [], [], []
    pair = 0
    for rows in bins:
        ids: list[int] = []
        targets: list[int] = []
        pos: list[int] = []
        seq: list[int] = []
        for row in rows:
            for offset, side in ((0, "chosen"), (count, "rejected")):
                tokens = list(row[f"{side}_input_ids"])
                ids.extend(tokens)
                targets.append(IGNORE_INDEX)
                targets.extend(list(row[f"{side}_labels"])[1:])
                pos.extend(range(len(tokens)))
                seq.extend([pair + offset] * len(tokens))
            pair += 1
        pad = width - len(ids)
        if pad < 0:
            raise ValueError(f"a packed bin holds {len(ids)} tokens, more than {width}")
        input_ids.append(ids + [pad_token_id] * pad)
        labels.append(targets + [IGNORE_INDEX] * pad)
        positions.append(pos + list(range(pad)))
        sequences.append(seq + [-1] * pad)
    batch: dict[str, Any] = {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "sequence_ids": torch.tensor(sequences, dtype=torch.long),
        "num_pairs": torch.tensor(count, dtype=torch.long),
        "num_tokens": torch.tensor(sum(len(s) - s.count(-1) for s in sequences)),
    }
    for column in per_pair:
        values = [row[column] for row in pairs]
        batch[column] = values if values and isinstance(values[0], str) else torch.tensor(values)
    return batch


def iter_packed_pair_micro_batches(
    dataset: Dataset,
    bins: Iterator[list[list[int]]],
    pad_token_id: int,
    pad_to: int | None = None,
    per_pair: Sequence[str] = (),
) -> Iterator[dict[str, Any]]:
    """Packed micro-batches of pairs, one per item of `bins` (each a list of bins of rows)."""
    columns = {
        **{f"{side}_{name}": None for side in PAIR_SIDES for name in ("input_ids", "labels")},
        **dict.fromkeys(per_pair),
    }
    for micro_batch in bins:
        rows = read_rows(dataset, [row for packed in micro_batch for row in packed], columns)
        it = iter(rows)
        yield collate_packed_pairs(
            [[next(it) for _ in packed] for packed in micro_batch], pad_token_id, pad_to, per_pair
        )
