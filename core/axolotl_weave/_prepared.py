"""What data preparation hands to training: the tokenized sets, where they are cached, and
what was kept and dropped (the `prepare_datasets` hook's result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

DROP_COUNTERS = (
    "dropped_too_long",
    "dropped_too_short",
    "truncated",
    "split",
    "dropped_no_targets",
    "dropped_invalid",
    "dropped_duplicates",
)


@dataclass
class DataStats:
    """What preprocessing kept and dropped, for `weave preprocess` and the start of training."""

    rows_in: int = 0
    rows_kept: int = 0
    dropped_too_long: int = 0
    dropped_too_short: int = 0
    truncated: int = 0
    split: int = 0
    dropped_no_targets: int = 0
    dropped_invalid: int = 0
    dropped_duplicates: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    tokens: int = 0
    target_tokens: int = 0
    per_dataset: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PreparedData:
    """The tokenized train (and eval) sets, where they are cached, and their stats."""

    train: Dataset | IterableDataset
    eval: Dataset | None
    stats: DataStats
    cache_dir: Path | None
    from_cache: bool
    identity: str | None = None
    """What identifies the data for a checkpoint's resume check (the cache's fingerprint, a
    stream's entries); None when unknown."""

    @property
    def streaming(self) -> bool:
        """Whether the training set is a stream (no length, tokenized on the fly)."""
        return not hasattr(self.train, "__len__")


def drop_reasons(stats: DataStats, sequence_len: int) -> list[tuple[str, int]]:
    """(why, how many) for every kind of row that was dropped or changed, when any was."""
    reasons = [
        (f"dropped: longer than sequence_len={sequence_len}", stats.dropped_too_long),
        ("dropped: shorter than min_sample_len", stats.dropped_too_short),
        (f"truncated to sequence_len={sequence_len}", stats.truncated),
        (f"split into pieces of sequence_len={sequence_len}", stats.split),
        ("dropped: no trained token", stats.dropped_no_targets),
        ("dropped: invalid (skip_invalid_rows)", stats.dropped_invalid),
        ("dropped: exact duplicates", stats.dropped_duplicates),
    ]
    return [(reason, count) for reason, count in reasons if count]


def drop_summary(stats: DataStats, sequence_len: int) -> str:
    """The drop reasons in one line."""
    return "; ".join(f"{r} ({n})" for r, n in drop_reasons(stats, sequence_len)) or "no rows"
