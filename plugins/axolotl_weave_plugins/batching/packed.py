"""`sample_packing: true`: whole rows packed into rows of `sequence_len` tokens (`plan_batches`).

The packing itself (first-fit decreasing in groups, the seeded bins of each epoch dealt out
evenly to the processes, the packed collation) is in `_multipack.py`. This plugin owns the
`sample_packing*` keys and answers `plan_batches` when they ask for packing and the rows have a
length; otherwise the padded batches answer. It refuses, before anything is built, what cannot
be packed: rows with other columns than the supervised ones or a preference pair's (KTO's,
text...), and a model family that declares it cannot take packing
(`ModelFamily.cannot["sample_packing"]`, before the weights load). On the main process it prints
how well the training rows packed.

A packed micro-batch is `input_ids`, `labels`, `position_ids` and `num_tokens`, with no
attention mask: the model keeps the samples apart through `position_ids`. Preference pairs
(`chosen_*` and `rejected_*` columns; the methods that train on them packed say so, see
`rl.preference_data`) are packed whole, a pair's two sequences side by side in one row of up to
twice `sequence_len` tokens, so that a pair is never split across micro-batches; their
micro-batch adds `sequence_ids` (which sequence each token belongs to), `num_pairs`, and each
per-pair scalar column (a precomputed reference log-probability) in pair order.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from axolotl_weave import (
    SFT_COLUMNS,
    CapabilityError,
    Columns,
    ConfigError,
    ModelFamily,
    PluginConfig,
    Strategy,
    epoch_order,
    hookimpl,
    padded_efficiency,
)
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

    from axolotl_weave_plugins.batching._multipack import Packer

PLUGIN_KIND = "batching"
log = logging.getLogger("axolotl_weave")


class PackingSettings(PluginConfig):
    """Sample packing's keys (Axolotl's names)."""

    sample_packing: bool = Field(
        False, description="Pack whole rows into micro-batch rows of sequence_len tokens."
    )
    eval_sample_packing: bool | None = Field(
        None, description="Pack the eval set too; default: as sample_packing."
    )
    sample_packing_group_size: int = Field(
        100_000, gt=0, description="Rows packed together (first-fit decreasing) per group."
    )
    sample_packing_bin_size: int = Field(200, gt=0, description="Most rows in one packed row.")
    sample_packing_sequentially: bool = Field(
        False, description="Pack rows in their order (next fit) instead of longest first."
    )
    sample_packing_eff_est: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Axolotl's packing estimate; the count here is exact, so only warned against.",
    )


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `sample_packing*` keys."""
    return PackingSettings


@dataclass
class PackedBatches:
    """A `BatchPlan` of packed bins: each micro-batch row is one bin of whole rows."""

    packer: Packer
    dataset: Dataset
    pad_token_id: int
    pad_to: int | None
    columns: Columns | None = None
    """The batch columns (for pairs: the per-pair scalars among them are carried)."""

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches per process per epoch (counted on epoch 0, for the schedule)."""
        return self.packer.micro_batches_per_epoch()

    def micro_batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """This process's packed micro-batches of `epoch`, from micro-batch number `start`."""
        from axolotl_weave_plugins.batching._multipack import (
            holds_pairs,
            iter_packed_micro_batches,
            iter_packed_pair_micro_batches,
        )

        bins = self.packer.micro_batch_bins(epoch, start)
        if holds_pairs(self.dataset):
            per_pair = per_pair_columns(self.dataset, self.columns or {})
            return iter_packed_pair_micro_batches(
                self.dataset, bins, self.pad_token_id, self.pad_to, per_pair
            )
        return iter_packed_micro_batches(self.dataset, bins, self.pad_token_id, self.pad_to)

    def efficiency(self, epoch: int = 0) -> float:
        """Real tokens / token slots over every process's micro-batches of `epoch`."""
        return self.packer.efficiency(epoch)


def packs(cfg: Any, evaluation: bool) -> bool:
    """Whether the config asks for packing: `sample_packing`, or `eval_sample_packing` when set
    for the eval set."""
    if evaluation and cfg.eval_sample_packing is not None:
        return bool(cfg.eval_sample_packing)
    return bool(cfg.sample_packing)


PAIR_COLUMNS = frozenset(
    f"{side}_{name}"
    for side in ("chosen", "rejected")
    for name in ("input_ids", "labels", "attention_mask")
)
"""A preference pair's sequence columns (packed: the attention masks are not needed)."""


def per_pair_columns(dataset: Any, columns: Columns) -> list[str]:
    """The scalar (unpadded) batch columns the pairs carry, such as reference log-probs."""
    names = getattr(dataset, "column_names", None) or []
    return [c for c in names if c in columns and columns[c] is None and c not in PAIR_COLUMNS]


def refuse_unpackable_columns(dataset: Any, columns: Columns) -> None:
    """Packing joins rows end to end: refused, with the reason, for rows with other columns
    than the supervised ones, or a preference pair's with its per-pair scalars (KTO's rows,
    text...)."""
    if not hasattr(dataset, "column_names"):
        return
    from axolotl_weave_plugins.batching._multipack import holds_pairs

    packable = set(SFT_COLUMNS)
    if holds_pairs(dataset):
        packable = set(PAIR_COLUMNS) | set(per_pair_columns(dataset, columns))
    extra = [c for c in dataset.column_names if c in columns and c not in packable]
    if extra:
        raise ConfigError(
            f"sample_packing: these rows carry columns that cannot be packed "
            f"({', '.join(extra)}): packing joins rows of input_ids/labels, or preference "
            "pairs, only; set sample_packing: false"
        )


@hookimpl
def plan_batches(
    cfg: Any,
    dataset: Any,
    evaluation: bool,
    strategy: Strategy,
    columns: Columns,
    pad_token_id: int,
) -> PackedBatches | None:
    """Packed bins when the config asks for packing and the rows have a length (a stream is
    never packed here: its format packs it into `sequence_len` blocks)."""
    if not packs(cfg, evaluation):
        return None
    refuse_unpackable_columns(dataset, columns)
    if not hasattr(dataset, "__len__"):
        log.info("sample_packing: a stream is packed by its format (sequence_len blocks)")
        return None
    from axolotl_weave_plugins.batching._multipack import packer_for

    size = (cfg.eval_batch_size or cfg.micro_batch_size) if evaluation else cfg.micro_batch_size
    shuffle = not evaluation and not getattr(cfg, "curriculum_sampling", False)
    packer = packer_for(cfg, dataset, size, shuffle, strategy.process_index, strategy.num_processes)
    pad_to = packer.capacity if cfg.pad_to_sequence_len else None  # 2 x sequence_len for pairs
    if not evaluation:
        report_packing(cfg, packer, strategy)
    return PackedBatches(packer, dataset, pad_token_id, pad_to, columns)


def report_packing(cfg: Any, packer: Packer, strategy: Strategy) -> None:
    """Print how well the rows packed (main process), and warn below `sample_packing_eff_est`."""
    from axolotl_weave_plugins.batching._multipack import packing_summary, warn_below_estimate

    order = epoch_order(len(packer.lengths), cfg.seed, 0)  # as unpacked training reads them
    unpacked = padded_efficiency(packer.lengths[order], cfg.micro_batch_size)
    if strategy.is_main_process:
        from axolotl_weave.commands import console  # the run's console (loaded by now)

        console.print(packing_summary(packer, unpacked))
    warn_below_estimate(packer, cfg.sample_packing_eff_est)


@hookimpl(wrapper=True, tryfirst=True)
def load_model(cfg: Any, family: ModelFamily | None, purpose: str) -> Generator[None, Any, Any]:
    """Before any weight loads: refuse packing for a family whose packed samples would mix."""
    why = family.cannot.get("sample_packing") if family is not None else None
    if purpose == "train" and cfg.sample_packing and why:
        raise CapabilityError(
            f"sample_packing: the '{family.name}' family cannot be packed: "
            f"{why}; set sample_packing: false"
        )
    return (yield)
