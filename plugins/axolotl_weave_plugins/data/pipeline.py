"""The built-in data pipeline (`prepare_datasets`): build each entry with its format, fit rows
to `sequence_len`, mix, deduplicate, split, and cache the result by a fingerprint of everything
that shapes it. A streamed `pretraining_dataset:` is tokenized on the fly instead, and not cached.

Another plugin may answer `prepare_datasets` first (a remote data service, a precomputed store);
this one is `trylast`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave import (
    DROP_COUNTERS,
    DataError,
    DatasetEntry,
    DatasetFormat,
    DataStats,
    LoadedRows,
    PreparedData,
    drop_reasons,
    drop_summary,
    hookimpl,
)

from axolotl_weave_plugins.data._cache import fingerprint, save_atomically
from axolotl_weave_plugins.data._fitting import check_tokenized, fit_rows
from axolotl_weave_plugins.data._settings import DataSettings
from axolotl_weave_plugins.data._sources import load_rows

if TYPE_CHECKING:
    from datasets import Dataset

PLUGIN_KIND = "data"

log = logging.getLogger("axolotl_weave")

ROWS_PER_PROCESS = 1000
"""With `dataset_processes` unset, one tokenizing process per this many rows (up to the CPUs)."""


@hookimpl
def add_config_fields() -> type[DataSettings]:
    """`datasets`, `test_datasets`, `pretraining_dataset`, `val_set_size` and the other keys of
    data preparation."""
    return DataSettings


@hookimpl(trylast=True)
def prepare_datasets(cfg: Any, tokenizer: Any, hooks: Any) -> PreparedData:
    """Tokenize every entry (or load the cache), fit, mix, deduplicate and split."""
    from datasets import load_from_disk

    if cfg.pretraining_dataset:
        return stream_pretraining(cfg, hooks, tokenizer)
    loaded: dict[int, LoadedRows] = {}
    cache_dir = Path(cfg.dataset_prepared_path) / fingerprint(cfg, tokenizer, hooks, loaded)
    if (cache_dir / "stats.json").is_file():
        stats = DataStats(**json.loads((cache_dir / "stats.json").read_text()))
        train = load_from_disk(str(cache_dir / "train"))
        eval_set = (
            load_from_disk(str(cache_dir / "eval")) if (cache_dir / "eval").exists() else None
        )
        log.info("loaded tokenized datasets from cache %s", cache_dir)
        return PreparedData(train, eval_set, stats, cache_dir, True, cache_dir.name)
    train, eval_set, stats = build_datasets(cfg, hooks, tokenizer, loaded)
    save_atomically(cache_dir, train, eval_set, stats)
    # what was just written, mapped from the cache (the shuffle's order applied once, there)
    train = load_from_disk(str(cache_dir / "train"))
    eval_set = load_from_disk(str(cache_dir / "eval")) if eval_set is not None else None
    return PreparedData(train, eval_set, stats, cache_dir, False, cache_dir.name)


@dataclass
class SourceContext:
    """What `map_rows` learns about an entry from the core (through `entry._source`)."""

    locate: Any
    num_proc: int | None
    skip_invalid_rows: bool


def build_datasets(
    cfg: Any, hooks: Any, tokenizer: Any, loaded: dict[int, LoadedRows] | None = None
) -> tuple[Dataset, Dataset | None, DataStats]:
    """Build, fit, concatenate, shuffle, deduplicate and split the config's datasets."""
    loaded = {} if loaded is None else loaded
    stats = DataStats()
    parts = [
        build_entry(cfg, hooks, tokenizer, f"datasets[{i}]", entry, stats, loaded)
        for i, entry in enumerate(cfg.datasets)
    ]
    parts = [part for part in parts if len(part)]
    if not parts:
        raise DataError(f"no trainable rows left: {drop_summary(stats, cfg.sequence_len)}")
    dataset = concatenate(parts)
    if cfg.shuffle_merged_datasets:
        dataset = dataset.shuffle(seed=cfg.seed)  # an order; the cache's writing applies it
    dataset = keep_shard(dataset, cfg)
    if cfg.dataset_exact_deduplication:
        dataset, dropped = deduplicate(dataset)
        stats.dropped_duplicates += dropped
    stats.rows_kept = len(dataset)
    if len(dataset) == 0:
        raise DataError(f"no trainable rows left: {drop_summary(stats, cfg.sequence_len)}")
    if cfg.test_datasets:
        eval_stats = DataStats()
        eval_parts = [
            build_entry(cfg, hooks, tokenizer, f"test_datasets[{i}]", entry, eval_stats, loaded)
            for i, entry in enumerate(cfg.test_datasets)
        ]
        eval_parts = [part for part in eval_parts if len(part)]
        if not eval_parts:
            raise DataError(
                f"test_datasets: no rows left: {drop_summary(eval_stats, cfg.sequence_len)}"
            )
        eval_set = keep_shard(concatenate(eval_parts), cfg)
        if cfg.dataset_exact_deduplication:
            eval_set, dropped = deduplicate(eval_set, against=dataset)
            eval_stats.dropped_duplicates += dropped
        stats.per_dataset += eval_stats.per_dataset
        for key in ("rows_in", *DROP_COUNTERS):
            setattr(stats, key, getattr(stats, key) + getattr(eval_stats, key))
        train = dataset
    else:
        train, eval_set = split_eval(dataset, cfg.val_set_size, cfg.seed)
    stats.train_rows, stats.eval_rows = len(train), len(eval_set) if eval_set is not None else 0
    stats.tokens = column_sum(dataset, "length")
    stats.target_tokens = column_sum(dataset, "n_targets")
    for reason, count in drop_reasons(stats, cfg.sequence_len):
        log.warning("%s: %d row(s)", reason, count)
    return train, eval_set, stats


def keep_shard(dataset: Dataset, cfg: Any) -> Dataset:
    """Shard `dataset_shard_idx` of `dataset_shard_num` contiguous shards (Axolotl's sharding,
    test_datasets included), or every row."""
    if cfg.dataset_shard_num is None:
        return dataset
    log.info("data: shard %d of %d", cfg.dataset_shard_idx, cfg.dataset_shard_num)
    return dataset.shard(num_shards=cfg.dataset_shard_num, index=cfg.dataset_shard_idx)


def column_sum(dataset: Dataset, column: str) -> int:
    """The sum of a numeric column, read from Arrow a batch of rows at a time (a shuffled or
    filtered set's whole column would be gathered into memory first, and a Python list of
    every row's value is worse)."""
    import pyarrow.compute as pc

    only = dataset.select_columns([column]).with_format("arrow")
    return sum(int(pc.sum(batch[column]).as_py() or 0) for batch in only.iter(batch_size=65_536))


def build_entry(
    cfg: Any,
    hooks: Any,
    tokenizer: Any,
    where: str,
    entry: DatasetEntry,
    stats: DataStats,
    loaded: dict[int, LoadedRows],
) -> Dataset:
    """One entry: load its rows, let its format tokenize them, fit them to length."""
    fmt = format_of(hooks, entry)
    if cfg.excess_length_strategy == "split" and not fmt.packable:
        raise DataError(
            f"{where} ({entry.label}): excess_length_strategy: split cannot cut rows of format "
            f"'{fmt.name}' into pieces: its columns ({', '.join(fmt.columns)}) are not one token "
            "sequence, and only formats with the supervised columns can be split; use drop, "
            "truncate or raise"
        )
    rows = loaded.pop(id(entry), None) or load_rows(hooks, entry)
    entry._source = SourceContext(
        rows.locate, processes_for(cfg, len(rows.dataset)), bool(cfg.skip_invalid_rows)
    )
    built = build_format(hooks, entry, rows.dataset, tokenizer, cfg, fmt)
    check_tokenized(built, f"{where} ({entry.label})", fmt)
    one_to_one = len(built) == len(rows.dataset)
    kept, counts = fit_rows(built, cfg, entry if one_to_one else None, fmt)
    stats.per_dataset.append(
        {
            "where": where,
            "path": entry.path,
            "type": entry.type,
            "rows": len(rows.dataset),
            "kept": len(kept),
            **counts,
        }
    )
    stats.rows_in += len(rows.dataset)
    for key, value in counts.items():
        setattr(stats, key, getattr(stats, key) + value)
    return kept


def format_of(hooks: Any, entry: DatasetEntry) -> DatasetFormat:
    """The registered format of the entry's `type:`; rows without one, or a type built only by
    the `build_dataset` hook, have the supervised columns and no `build`."""
    return hooks.dataset_formats().get(entry.type or "") or DatasetFormat(entry.type or "")


def build_format(
    hooks: Any,
    entry: DatasetEntry,
    dataset: Any,
    tokenizer: Any,
    cfg: Any,
    fmt: DatasetFormat | None = None,
) -> Any:
    """The entry's rows tokenized by its format's `build`; a format registered without one
    (and rows without `type:`) go to the `build_dataset` hook, for plugins written before
    formats carried their build function."""
    fmt = fmt or format_of(hooks, entry)
    if fmt.build is None:
        return hooks.build_dataset(entry, dataset, tokenizer, cfg)
    built = fmt.build(entry, dataset, tokenizer, cfg)
    if built is None:
        raise DataError(f"{entry.label}: its format's build returned nothing (a plugin bug)")
    return built


def processes_for(cfg: Any, rows: int) -> int | None:
    """Tokenizing processes: `dataset_processes`, else one per ROWS_PER_PROCESS rows (to CPUs)."""
    wanted = cfg.dataset_processes or min(os.cpu_count() or 1, -(-rows // ROWS_PER_PROCESS))
    wanted = min(wanted, rows)
    return wanted if wanted > 1 else None


def concatenate(parts: list[Dataset]) -> Dataset:
    """One dataset of the parts, keeping only the columns every part has."""
    from datasets import concatenate_datasets

    if len(parts) == 1:
        return parts[0]
    shared = set.intersection(*(set(p.column_names) for p in parts))
    return concatenate_datasets([p.select_columns(sorted(shared)) for p in parts])


def deduplicate(dataset: Dataset, against: Dataset | None = None) -> tuple[Dataset, int]:
    """Drop rows whose tokens, labels and scalar columns repeat an earlier row's (or a row of
    `against`); attention masks and the core's `length` and `n_targets` are not compared."""
    seen = set() if against is None else {row_hash(*row) for row in _keys(against)}
    keep = []
    for index, row in enumerate(_keys(dataset)):
        key = row_hash(*row)
        if key not in seen:
            seen.add(key)
            keep.append(index)
    if len(keep) == len(dataset):
        return dataset, 0
    return dataset.select(keep).flatten_indices(), len(dataset) - len(keep)


def _keys(dataset: Dataset) -> Any:
    skipped = ("length", "n_targets")
    names = [
        c for c in dataset.column_names if c not in skipped and not c.endswith("attention_mask")
    ]
    return zip(*(dataset[c] for c in names), strict=True)


def row_hash(*values: Any) -> bytes:
    """A digest of one row's values (its tokens and labels...)."""
    return hashlib.blake2b(json.dumps(list(values)).encode(), digest_size=16).digest()


def split_eval(dataset: Dataset, val_set_size: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Split off `val_set_size` rows (a fraction below 1, else a count) as the eval set."""
    if not val_set_size:
        return dataset, None
    size = int(val_set_size) if val_set_size >= 1 else val_set_size
    count = size if isinstance(size, int) else round(size * len(dataset))
    if count < 1 or count >= len(dataset):
        raise DataError(
            f"val_set_size={val_set_size} leaves {len(dataset) - count} training and {count} "
            f"eval rows out of {len(dataset)}; choose a size that leaves both non-empty"
        )
    split = dataset.train_test_split(test_size=count, seed=seed, shuffle=True)
    return split["train"].flatten_indices(), split["test"].flatten_indices()


def stream_pretraining(cfg: Any, hooks: Any, tokenizer: Any) -> PreparedData:
    """The `pretraining_dataset:` entries as one stream of tokenized rows (interleaved when
    several), tokenized as training reads them; nothing is cached."""
    from datasets import interleave_datasets

    streams = []
    for entry in cfg.pretraining_dataset:
        rows = load_rows(hooks, entry, streaming=True)
        entry._source = SourceContext(rows.locate, None, bool(cfg.skip_invalid_rows))
        streams.append(build_format(hooks, entry, rows.dataset, tokenizer, cfg))
    train = streams[0] if len(streams) == 1 else interleave_datasets(streams, seed=cfg.seed)
    stats = DataStats(
        per_dataset=[
            {"where": f"pretraining_dataset[{i}]", "path": e.path, "type": e.type, "streamed": True}
            for i, e in enumerate(cfg.pretraining_dataset)
        ]
    )
    return PreparedData(train, None, stats, None, False, stream_identity(cfg))


def stream_identity(cfg: Any) -> str:
    """What identifies a streamed `pretraining_dataset` (its entries), for the resume check."""
    entries = [entry.model_dump(mode="json") for entry in cfg.pretraining_dataset]
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
