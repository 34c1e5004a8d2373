"""Where an entry's rows come from: the first registered data source that claims it, its
sharding, and what identifies its content for the cache's fingerprint."""

from __future__ import annotations

from typing import Any

from axolotl_weave import DataError, DatasetEntry, DataSource, LoadedRows


def source_for(hooks: Any, entry: DatasetEntry) -> DataSource:
    """The first registered data source that claims the entry."""
    for source in hooks.data_sources():
        if source.claims(entry):
            return source
    raise DataError(f"{entry.label}: no installed data source reads it; see `weave plugin list`")


def load_rows(hooks: Any, entry: DatasetEntry, *, streaming: bool = False) -> LoadedRows:
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


def source_identity(hooks: Any, entry: DatasetEntry, loaded: dict[int, LoadedRows]) -> str:
    """What identifies the entry's content for the fingerprint: its source's `identity`, else
    the loaded rows' own fingerprint (the rows are kept in `loaded`, to be built once)."""
    source = source_for(hooks, entry)
    if source.identity is not None:
        return source.identity(entry)
    if id(entry) not in loaded:
        loaded[id(entry)] = load_rows(hooks, entry)
    return f"{source.name}:{getattr(loaded[id(entry)].dataset, '_fingerprint', None)}"
