"""The dataset pipeline: build each entry, fit rows to `sequence_len`, mix, deduplicate, split,
and cache the result by a fingerprint of everything that shapes it.

The cache folder is written under a temporary name and renamed when complete, so an interrupted
run never leaves a cache that a later run would take for whole. A streamed `pretraining_dataset:`
is tokenized on the fly instead, and not cached.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave._atomic import staged_folder
from axolotl_weave._errors import DataError
from axolotl_weave._hooks import Hooks
from axolotl_weave._rows import LoadedRows
from axolotl_weave._types import IGNORE_INDEX, SFT_COLUMNS, DatasetFormat, DataSource

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

    from axolotl_weave._config import DatasetEntry

log = logging.getLogger("axolotl_weave")

CACHE_FORMAT = 3
"""Bump when the cached layout or the pipeline's output changes, to invalidate old caches."""

ROWS_PER_PROCESS = 1000
"""With `dataset_processes` unset, one tokenizing process per this many rows (up to the CPUs)."""

DATA_KEYS = (
    "sequence_len",
    "train_on_inputs",
    "val_set_size",
    "seed",
    "excess_length_strategy",
    "skip_invalid_rows",
    "dataset_exact_deduplication",
    "shuffle_merged_datasets",
)
"""Core config keys that change the prepared data (plugins mark theirs with `affects_data`)."""


DROP_COUNTERS = (
    "dropped_too_long",
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

    @property
    def streaming(self) -> bool:
        """Whether the training set is a stream (no length, tokenized on the fly)."""
        return not hasattr(self.train, "__len__")


@dataclass
class SourceContext:
    """What `map_rows` learns about an entry from the core (through `entry._source`)."""

    locate: Any
    num_proc: int | None
    skip_invalid_rows: bool


def prepare_datasets(cfg: Any, hooks: Hooks, tokenizer: Any) -> PreparedData:
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
        return PreparedData(train, eval_set, stats, cache_dir, from_cache=True)
    train, eval_set, stats = build_datasets(cfg, hooks, tokenizer, loaded)
    save_atomically(cache_dir, train, eval_set, stats)
    return PreparedData(train, eval_set, stats, cache_dir, from_cache=False)


def build_datasets(
    cfg: Any, hooks: Hooks, tokenizer: Any, loaded: dict[int, LoadedRows] | None = None
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
        dataset = dataset.shuffle(seed=cfg.seed).flatten_indices()
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
        eval_set = concatenate(eval_parts)
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
    stats.tokens = int(sum(dataset["length"]))
    stats.target_tokens = int(sum(dataset["n_targets"]))
    for reason, count in drop_reasons(stats, cfg.sequence_len):
        log.warning("%s: %d row(s)", reason, count)
    return train, eval_set, stats


def sequence_lengths(dataset: Dataset, columns: list[str]) -> Any:
    """Each row's longest list among `columns` (0 for a row with none), read from Arrow."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = np.zeros(len(dataset), dtype=np.int64)
    for column in columns:
        values = dataset.with_format("arrow")[column]
        if isinstance(values.type, (pa.ListType, pa.LargeListType)):
            sizes = pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)
            lengths = np.maximum(lengths, sizes)
    return lengths


def trained_counts(dataset: Dataset, labels: str) -> Any:
    """Per row, the labels that train a prediction: not `IGNORE_INDEX`, and not the first (no
    token predicts it), as the loss counts them; read from Arrow."""
    import numpy as np
    import pyarrow.compute as pc

    values = dataset.with_format("arrow")[labels]
    sizes = pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
    if not len(flat):
        return np.zeros(len(sizes), dtype=np.int64)
    trained = np.concatenate([[0], np.cumsum(flat != IGNORE_INDEX)])
    ends = np.cumsum(sizes)
    starts = ends - sizes
    counts = trained[ends] - trained[starts]
    first_trained = (sizes > 0) & (flat[np.minimum(starts, len(flat) - 1)] != IGNORE_INDEX)
    return counts - first_trained


def build_entry(
    cfg: Any,
    hooks: Hooks,
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


def format_of(hooks: Hooks, entry: DatasetEntry) -> DatasetFormat:
    """The registered format of the entry's `type:`; rows without one, or a type built only by
    the `build_dataset` hook, have the supervised columns and no `build`."""
    return hooks.dataset_formats().get(entry.type or "") or DatasetFormat(entry.type or "")


def build_format(
    hooks: Hooks,
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


def check_tokenized(dataset: Dataset, where: str, fmt: DatasetFormat | None = None) -> None:
    """Refuse a format's output that lacks one of its sequence columns (a bug in the plugin);
    attention masks may be left out."""
    columns = fmt.columns if fmt is not None else SFT_COLUMNS
    wanted = {c for c, pad in columns.items() if pad is not None}
    missing = {c for c in wanted if not c.endswith("attention_mask")} - set(dataset.column_names)
    if missing:
        raise DataError(f"{where}: the format plugin returned rows without {sorted(missing)}")


def fit_rows(
    dataset: Dataset, cfg: Any, entry: DatasetEntry | None, fmt: DatasetFormat | None = None
) -> tuple[Dataset, dict[str, int]]:
    """Apply `excess_length_strategy` to rows over `sequence_len` (drop, truncate, split or
    raise), then drop rows with no trained token and rows a bad input emptied; add `length` and
    `n_targets`. Every sequence column (declared with a padding, holding lists) is fitted: a
    row's length is its longest one's. `entry` (when rows map one to one to the source) names a
    row that raises."""
    import numpy as np

    fmt = fmt or DatasetFormat("")
    limit, strategy = cfg.sequence_len, cfg.excess_length_strategy or "drop"
    seqs = [c for c, pad in fmt.columns.items() if pad is not None and c in dataset.column_names]
    targets = [c for c in seqs if c.endswith("labels")]
    if not seqs:
        raise DataError(f"format '{fmt.name}' built rows with none of its sequence columns")

    def row_length(values: list[Any]) -> int:
        return max((len(v) for v in values if isinstance(v, list)), default=0)

    lengths = sequence_lengths(dataset, seqs)
    for labels in targets:
        ids = labels[: -len("labels")] + "input_ids"
        if (
            ids in seqs
            and (sequence_lengths(dataset, [labels]) != sequence_lengths(dataset, [ids])).any()
        ):
            raise DataError(f"a row's {ids} and {labels} differ in length (plugin bug)")
    over = np.flatnonzero(lengths > limit).tolist()
    if over and strategy == "raise":
        index = over[0]
        row = entry.where(index) if entry is not None else f"tokenized row {index + 1}"
        name = entry.label if entry is not None else "a dataset"
        raise DataError(
            f"{name}, {row}: {lengths[index]} tokens, longer than sequence_len={limit} "
            f"({len(over)} row(s) are); set excess_length_strategy: drop, truncate or split"
        )
    counts = {
        "dropped_too_long": len(over) if strategy == "drop" else 0,
        "truncated": len(over) if strategy == "truncate" else 0,
        "split": len(over) if strategy == "split" else 0,
        "dropped_invalid": int((lengths == 0).sum()),
        "dropped_no_targets": 0,
    }
    if strategy == "drop" or not over:  # no row changes: count and select, copy nothing
        n_targets = sum(
            (trained_counts(dataset, labels) for labels in targets), np.zeros_like(lengths)
        )
        kept = (lengths > 0) & (lengths <= limit)
        counts["dropped_no_targets"] = int((kept & (n_targets == 0)).sum())
        fitted = dataset.add_column("length", lengths).add_column("n_targets", n_targets)
        keep = kept & (n_targets > 0)
        return (fitted if keep.all() else fitted.select(np.flatnonzero(keep))), counts

    def fit(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in batch}
        out["length"], out["n_targets"] = [], []
        for i in range(len(batch[seqs[0]])):
            n = row_length([batch[c][i] for c in seqs])
            if n == 0 or (n > limit and strategy == "drop"):
                continue
            starts = range(0, n, limit) if n > limit and strategy == "split" else [0]
            for start in starts:
                for key in batch:
                    value = batch[key][i]
                    fitted = key in seqs and isinstance(value, list)
                    out[key].append(value[start : start + limit] if fitted else value)
                out["length"].append(row_length([out[c][-1] for c in seqs]))
                out["n_targets"].append(
                    sum(
                        1
                        for labels in targets
                        for label in batch[labels][i][start + 1 : start + limit]
                        if label != IGNORE_INDEX
                    )
                )
        return out

    fitted = dataset.map(fit, batched=True, desc="Fitting to sequence_len")
    if len(fitted) == 0:
        return fitted, counts
    counts["dropped_no_targets"] = sum(1 for t in fitted["n_targets"] if t == 0)
    if counts["dropped_no_targets"]:
        fitted = fitted.filter(lambda row: row["n_targets"] > 0, desc="Dropping untrained rows")
    return fitted, counts


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


def drop_reasons(stats: DataStats, sequence_len: int) -> list[tuple[str, int]]:
    """(why, how many) for every kind of row that was dropped or changed, when any was."""
    reasons = [
        (f"dropped: longer than sequence_len={sequence_len}", stats.dropped_too_long),
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


# -- where the rows come from: the registered data sources ------------------------------------


def source_for(hooks: Hooks, entry: DatasetEntry) -> DataSource:
    """The first registered data source that claims the entry."""
    for source in hooks.data_sources():
        if source.claims(entry):
            return source
    raise DataError(f"{entry.label}: no installed data source reads it; see `weave plugin list`")


def load_rows(hooks: Hooks, entry: DatasetEntry, *, streaming: bool = False) -> LoadedRows:
    """The raw rows of one entry from its source: a stream with `skip` rows skipped, or rows
    sharded as `shards`/`shards_idx` ask (an empty source is a `DataError`)."""
    rows = source_for(hooks, entry).load(entry, streaming)
    rows = rows if isinstance(rows, LoadedRows) else LoadedRows(rows)
    if streaming:
        return LoadedRows(rows.dataset.skip(entry.skip), rows.locate) if entry.skip else rows
    if len(rows.dataset) == 0:
        raise DataError(f"{entry.label} is empty: it holds no rows")
    if not entry.shards:
        return rows
    index, count, total = entry.shards_idx or 0, entry.shards, len(rows.dataset)
    if count > total:
        raise DataError(f"{entry.label}: shards={count} is more than its {total} rows")
    size, extra = divmod(total, count)
    rows.locate.offset = size * index + min(index, extra)
    part = rows.dataset.shard(num_shards=count, index=index, contiguous=True)
    return LoadedRows(part, rows.locate)


def source_identity(hooks: Hooks, entry: DatasetEntry, loaded: dict[int, LoadedRows]) -> str:
    """What identifies the entry's content for the fingerprint: its source's `identity`, else
    the loaded rows' own fingerprint (the rows are kept in `loaded`, to be built once)."""
    source = source_for(hooks, entry)
    if source.identity is not None:
        return source.identity(entry)
    if id(entry) not in loaded:
        loaded[id(entry)] = load_rows(hooks, entry)
    return f"{source.name}:{getattr(loaded[id(entry)].dataset, '_fingerprint', None)}"


# -- a streamed pretraining_dataset --------------------------------------------------------------


def stream_pretraining(cfg: Any, hooks: Hooks, tokenizer: Any) -> PreparedData:
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
    return PreparedData(train, None, stats, None, from_cache=False)


# -- the fingerprint and the cache ---------------------------------------------------------------


def fingerprint(
    cfg: Any, tokenizer: Any, hooks: Hooks, loaded: dict[int, LoadedRows] | None = None
) -> str:
    """A hash of everything that changes the tokenized output; the cache folder's name."""
    loaded = {} if loaded is None else loaded
    digest = hashlib.sha256()

    def add(value: Any) -> None:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
        digest.update(b"\0")

    add(CACHE_FORMAT)
    for entries in (cfg.datasets, cfg.test_datasets or []):
        add(len(entries))
        for entry in entries:
            add(entry.model_dump())
            add(source_identity(hooks, entry, loaded))
    add({key: getattr(cfg, key, None) for key in DATA_KEYS})
    add(plugin_data_settings(cfg))
    add(tokenizer_identity(tokenizer))
    add(sorted(plugin_versions(hooks)))
    return digest.hexdigest()[:16]


def plugin_data_settings(cfg: Any) -> dict[str, Any]:
    """Config fields that plugins mark `json_schema_extra={"affects_data": True}`."""
    settings = {}
    for name, info in type(cfg).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("affects_data"):
            settings[name] = getattr(cfg, name)
    return settings


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary, merges, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = (
        backend.to_str()
        if backend is not None
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    extra = [
        str(tokenizer.special_tokens_map),
        str(getattr(tokenizer, "chat_template", None)),
        type(tokenizer).__name__,
    ]
    return hashlib.sha256((body + "\0".join(extra)).encode()).hexdigest()


def plugin_versions(hooks: Hooks) -> list[str]:
    """'name==version' of each distribution providing a plugin (their code shapes the output)."""
    names = {f"{d.project_name}=={d.version}" for _, d in hooks.pm.list_plugin_distinfo()}
    names.add(f"axolotl-weave=={importlib.metadata.version('axolotl-weave')}")
    return sorted(names)


def save_atomically(
    cache_dir: Path, train: Dataset, eval_set: Dataset | None, stats: DataStats
) -> None:
    """Write the cache under a temporary name, then rename it into place."""
    with staged_folder(cache_dir, replace=False) as tmp:  # another process first: theirs is kept
        train.save_to_disk(str(tmp / "train"))
        if eval_set is not None:
            eval_set.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(asdict(stats), indent=2))
