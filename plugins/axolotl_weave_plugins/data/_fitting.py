"""Fitting tokenized rows to `sequence_len`: drop, truncate, split or raise for rows over it,
drop rows with nothing to train, and count what happened (read from Arrow where it can)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from axolotl_weave import IGNORE_INDEX, SFT_COLUMNS, DataError, DatasetEntry, DatasetFormat

if TYPE_CHECKING:
    from datasets import Dataset


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


COUNT_BATCH_ROWS = 65_536
"""Rows whose labels are counted at a time (their flat labels in memory, not the whole set's)."""


def trained_counts(dataset: Dataset, labels: str) -> Any:
    """Per row, the labels that train a prediction: not `IGNORE_INDEX`, and not the first (no
    token predicts it), as the loss counts them; read from Arrow a batch of rows at a time."""
    import numpy as np

    values = dataset.with_format("arrow")[labels]
    counts = [
        batch_trained_counts(values.slice(start, COUNT_BATCH_ROWS))
        for start in range(0, len(values), COUNT_BATCH_ROWS)
    ]
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def batch_trained_counts(values: Any) -> Any:
    """`trained_counts` of an Arrow list array (or chunked array) of labels, one chunk at a time:
    combining a chunked array's chunks first copied every label, and a first touch of that
    memory cost more than the counting (0.4 s against 0.03 s on 20,000 rows)."""
    import numpy as np
    import pyarrow as pa

    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    counts = [chunk_trained_counts(chunk) for chunk in chunks]
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def chunk_trained_counts(values: Any) -> Any:
    """`trained_counts` of one Arrow list array of labels."""
    import numpy as np
    import pyarrow.compute as pc

    sizes = pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
    counts = np.zeros(len(sizes), dtype=np.int64)
    if not len(flat):
        return counts
    trained = flat != IGNORE_INDEX
    starts = np.cumsum(sizes) - sizes
    filled = sizes > 0
    # one sum per non-empty row (a running sum over every label is many times slower): the
    # segments between consecutive non-empty starts are exactly those rows
    counts[filled] = np.add.reduceat(trained, starts[filled], dtype=np.int64)
    return counts - (filled & trained[np.minimum(starts, len(flat) - 1)])


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
    raise), then drop rows shorter than `min_sample_len`, rows with no trained token and rows a
    bad input emptied; add `length` and `n_targets`. Every sequence column (declared with a
    padding, holding lists) is fitted: a row's length is its longest one's. `entry` (when rows
    map one to one to the source) names a row that raises."""
    import numpy as np

    fmt = fmt or DatasetFormat("")
    limit, strategy = cfg.sequence_len, cfg.excess_length_strategy or "drop"
    minimum = getattr(cfg, "min_sample_len", None) or 0
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
        "dropped_too_short": 0,
    }
    if strategy == "drop" or not over:  # no row changes: count and select, copy nothing
        n_targets = sum(
            (trained_counts(dataset, labels) for labels in targets), np.zeros_like(lengths)
        )
        kept = (lengths > 0) & (lengths <= limit)
        counts["dropped_too_short"] = int((kept & (lengths < minimum)).sum())
        kept &= lengths >= minimum
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
    columns = fitted.with_format("arrow")  # the counts read from Arrow, not as Python lists
    short = columns["length"].to_numpy() < minimum
    untrained = columns["n_targets"].to_numpy() == 0
    counts["dropped_too_short"] = int(short.sum())
    counts["dropped_no_targets"] = int((untrained & ~short).sum())
    keep = ~(short | untrained)
    return (fitted if keep.all() else fitted.select(np.flatnonzero(keep))), counts
