"""The data pipeline's keys (Axolotl's names): the datasets, their cache, mixing, deduplication,
the eval split and what happens to rows that do not fit or do not parse."""

from __future__ import annotations

from typing import Any, Literal

from axolotl_weave import DatasetEntry, DatasetFormat, PluginConfig
from pydantic import Field, ValidationInfo, field_validator, model_validator


class DataSettings(PluginConfig):
    """Where the rows come from and how they are prepared."""

    pretraining_dataset: list[DatasetEntry] = Field(
        default_factory=list,
        description="Data streamed and tokenized while training (needs max_steps).",
    )
    datasets: list[DatasetEntry] = Field(
        default_factory=list, description="Training data sources (or pretraining_dataset)."
    )
    test_datasets: list[DatasetEntry] = Field(
        default_factory=list, description="An explicit eval set (instead of val_set_size)."
    )
    dataset_prepared_path: str = Field(
        "last_run_prepared", description="Where tokenized datasets are cached."
    )
    dataset_processes: int | None = Field(
        None, gt=0, description="Tokenizing processes; default: one per 1000 rows, up to CPUs."
    )
    excess_length_strategy: Literal["drop", "truncate", "split", "raise"] | None = Field(
        None, description="Rows over sequence_len: drop (default), truncate, split or raise."
    )
    min_sample_len: int | None = Field(
        None,
        ge=1,
        description="Drop (and count) rows of fewer tokens once fitted to sequence_len "
        "(Axolotl's key); a row of one token is dropped anyway (nothing to predict).",
    )
    skip_invalid_rows: bool = Field(
        False, description="Drop (and count) rows with a bad field instead of stopping."
    )
    dataset_exact_deduplication: bool = Field(
        False, description="Drop rows whose tokens and labels repeat another's."
    )
    shuffle_merged_datasets: bool = Field(True, description="Shuffle the mixed datasets.")
    val_set_size: float = Field(0.0, ge=0, description="Eval split: fraction (<1) or row count.")
    dataset_shard_num: int | None = Field(
        None,
        ge=1,
        description="Keep one of this many contiguous shards of the merged rows (with "
        "dataset_shard_idx), before deduplication and the eval split, as Axolotl does.",
    )
    dataset_shard_idx: int | None = Field(
        None, ge=0, description="Which shard dataset_shard_num keeps (0-based)."
    )

    @field_validator("datasets")
    @classmethod
    def _some_data(cls, value: list[DatasetEntry], info: ValidationInfo) -> list[DatasetEntry]:
        if not value and not info.data.get("pretraining_dataset"):
            raise ValueError("give datasets: (or pretraining_dataset:) with at least one entry")
        return value

    @model_validator(mode="before")
    @classmethod
    def _streamed_type(cls, data: Any, info: ValidationInfo) -> Any:
        """A `pretraining_dataset:` entry without `type` gets the first streaming format."""
        formats: dict[str, DatasetFormat] = (info.context or {}).get("formats", {})
        streams = next((fmt for fmt in formats.values() if fmt.streams), None)
        entries = data.get("pretraining_dataset") if isinstance(data, dict) else None
        if isinstance(entries, (dict, str)):  # Axolotl also takes one entry, or a bare path
            entries = [{"path": entries} if isinstance(entries, str) else entries]
        if not isinstance(entries, list) or streams is None:
            return data
        filled = [
            {**e, "type": streams.name} if isinstance(e, dict) and not e.get("type") else e
            for e in entries
        ]
        return {**data, "pretraining_dataset": filled}

    @field_validator("val_set_size")
    @classmethod
    def _fraction_or_count(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError(
                f"{value} is neither a fraction below 1 (0.05: 5% of the rows) nor a whole "
                "count of rows (200)"
            )
        return value

    @model_validator(mode="after")
    def _data_consistent(self) -> Any:
        if self.pretraining_dataset and not getattr(self, "max_steps", None):
            raise ValueError("pretraining_dataset: is streamed, so max_steps: must be set")
        if self.test_datasets and self.val_set_size:
            raise ValueError("set val_set_size or test_datasets, not both")
        if (self.dataset_shard_num is None) != (self.dataset_shard_idx is None):
            pair = ["dataset_shard_num", "dataset_shard_idx"]
            given, other = pair if self.dataset_shard_idx is None else pair[::-1]
            raise ValueError(f"{given} needs {other} too: how many shards, and which to keep")
        if self.dataset_shard_num is not None and self.dataset_shard_idx >= self.dataset_shard_num:
            raise ValueError(
                f"dataset_shard_idx: {self.dataset_shard_idx} is not below dataset_shard_num: "
                f"{self.dataset_shard_num} (shards are numbered from 0)"
            )
        if self.dataset_shard_num is not None and self.pretraining_dataset:
            raise ValueError(
                "dataset_shard_num with pretraining_dataset: streamed data is not sharded here"
            )
        return self
