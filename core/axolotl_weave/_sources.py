"""Where the raw rows of one `datasets:` entry come from, and what identifies their content.

Sources: local JSON/JSONL/CSV/Parquet/Arrow/text files and folders, a dataset saved with
`save_to_disk`, an http(s) URL, an fsspec URL (`s3://`, `gs://`, ...; their packages are optional)
and a Hugging Face hub name. JSON and JSONL are parsed here, line by line, so that a broken line or
a field whose type changes between rows is reported with its file and line; the other file types
go through `datasets`. Every source can say what identifies its content (for the cache's
fingerprint) without tokenizing anything.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave._errors import DataError, MissingDependencyError

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

    from axolotl_weave._config import DatasetEntry

EXTENSIONS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")
"""Files that `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write at a folder's top."""

FSSPEC_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs"}


@dataclass
class RowLocator:
    """Names a row of an entry by where it was read: 'file:line' for JSON Lines, else 'row N'."""

    spans: list[tuple[int, str, list[int] | None]] = field(default_factory=list)
    """(index of the span's first row, file name, line number of each of its rows or None)."""
    offset: int = 0
    """Rows before the first one handed on (taken off by `shards`)."""

    def add(self, first: int, name: str, lines: list[int] | None) -> None:
        """Record that rows from `first` on come from `name` (at `lines`, when known)."""
        self.spans.append((first, name, lines))

    def __call__(self, index: int) -> str:
        """Where row `index` (0-based, after sharding) was read."""
        absolute = index + self.offset
        starts = [first for first, _, _ in self.spans]
        at = bisect.bisect_right(starts, absolute) - 1
        if at < 0:
            return f"row {absolute + 1}"
        first, name, lines = self.spans[at]
        if lines is not None and absolute - first < len(lines):
            return f"{name}:{lines[absolute - first]}"
        return f"{name}, row {absolute - first + 1}"


@dataclass
class LoadedRows:
    """The raw rows of an entry, and how to name each of them in messages."""

    dataset: Dataset | IterableDataset
    locate: RowLocator


def source_kind(entry: DatasetEntry) -> str:
    """'local', 'saved' (save_to_disk), 'url' (http/https), 'fsspec' (s3://...) or 'hub'."""
    path = entry.path
    if path.startswith(("https://", "http://")):
        return "url"
    if "://" in path:
        return "fsspec"
    local = Path(path).expanduser()
    if local.is_dir() and any((local / m).is_file() for m in SAVED_DATASET_MARKERS):
        return "saved"
    if local.exists() or path.startswith((".", "/", "~")) or local.suffix in EXTENSIONS:
        return "local"
    return "hub"


def local_files(entry: DatasetEntry) -> list[Path]:
    """The data files of a local entry (a file, or the matching files of a folder), sorted."""
    path = Path(entry.path).expanduser()
    if not path.exists():
        raise DataError(f"{entry.label}: no such file or folder")
    if path.is_file():
        return [path]
    names = [entry.data_files] if isinstance(entry.data_files, str) else entry.data_files
    if names:
        files = [path / name for name in names]
    else:
        files = sorted(p for p in path.rglob("*") if p.suffix in EXTENSIONS and p.is_file())
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{entry.label}: file(s) not found: {', '.join(missing)}")
    if not files:
        raise DataError(
            f"{entry.label}: the folder holds no data files ({', '.join(sorted(EXTENSIONS))})"
        )
    return files


# -- identity: what the cache fingerprint takes from the source ---------------------------------


def source_identity(entry: DatasetEntry, loaded: dict[int, LoadedRows]) -> str:
    """A string that changes when the entry's content does: file hashes, remote ETags, or the
    hub dataset's fingerprint (which follows its revision). `loaded` memoises hub loads."""
    kind = source_kind(entry)
    if kind in ("local", "saved"):
        if kind == "saved":
            files = sorted(p for p in Path(entry.path).expanduser().rglob("*") if p.is_file())
        else:
            files = local_files(entry)
        return ";".join(f"{f.name}={file_digest(f)}" for f in files)
    if kind in ("url", "fsspec"):
        return ";".join(f"{f.name}={file_digest(f)}" for f in remote_files(entry))
    rows = loaded.setdefault(id(entry), load_rows(entry))
    return f"hub:{getattr(rows.dataset, '_fingerprint', None)}"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- loading -----------------------------------------------------------------------------------


def load_rows(entry: DatasetEntry, *, streaming: bool = False) -> LoadedRows:
    """The raw rows of one entry, sharded as `shards`/`shards_idx` ask; a missing file, an empty
    one, a broken line or a type clash between rows is a `DataError` naming where."""
    kind = source_kind(entry)
    if streaming:
        return LoadedRows(stream_rows(entry, kind), RowLocator())
    if kind == "hub":
        loaded = LoadedRows(_load_hub(entry), RowLocator())
    elif kind == "saved":
        loaded = LoadedRows(_load_saved(entry), RowLocator())
    else:
        files = local_files(entry) if kind == "local" else remote_files(entry)
        loaded = _load_files(entry, files)
    if len(loaded.dataset) == 0:
        raise DataError(f"{entry.label} is empty: it holds no rows")
    return shard(entry, loaded)


def shard(entry: DatasetEntry, loaded: LoadedRows) -> LoadedRows:
    """Keep shard `shards_idx` (default 0) of `shards` contiguous shards."""
    if not entry.shards:
        return loaded
    index, count, total = entry.shards_idx or 0, entry.shards, len(loaded.dataset)
    if count > total:
        raise DataError(f"{entry.label}: shards={count} is more than its {total} rows")
    size, extra = divmod(total, count)
    loaded.locate.offset = size * index + min(index, extra)
    part = loaded.dataset.shard(num_shards=count, index=index, contiguous=True)
    return LoadedRows(part, loaded.locate)


def _load_files(entry: DatasetEntry, files: list[Path]) -> LoadedRows:
    from datasets import concatenate_datasets

    locate, parts, first = RowLocator(), [], 0
    for file in files:
        kind = entry.ds_type or EXTENSIONS.get(file.suffix)
        if kind is None:
            raise DataError(
                f"{entry.label}: cannot tell the file type of {file}; set ds_type: one of "
                f"{', '.join(sorted(set(EXTENSIONS.values())))}"
            )
        if kind in ("json", "jsonl"):
            rows, lines = read_json_rows(file)
            part = rows_to_dataset(entry, file, rows, lines)
            locate.add(first, file.name, lines)
        else:
            part = _load_with_datasets(entry, file, kind)
            locate.add(
                first, file.name, [i + 2 for i in range(len(part))] if kind == "csv" else None
            )
        parts.append(part)
        first += len(part)
    try:
        dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    except Exception as exc:  # columns or types differ between files
        raise DataError(f"{entry.label}: its files disagree on their fields: {exc}") from None
    return LoadedRows(dataset, locate)


def rows_to_dataset(
    entry: DatasetEntry, file: Path, rows: list[dict[str, Any]], lines: list[int]
) -> Dataset:
    """A `Dataset` of parsed JSON rows; a field whose JSON type changes is named with its line."""

    if not rows:
        raise DataError(f"{file}: the file holds no rows")
    check_field_types(file, rows, lines)
    try:
        return rows_table(rows)
    except Exception as exc:  # a clash deeper inside nested values
        raise DataError(
            f"{entry.label}: {file}: rows disagree on a field's type ({exc}); every row must "
            "give each field the same type"
        ) from None


def rows_table(rows: list[dict[str, Any]]) -> Dataset:
    """A `Dataset` of rows with a column for every key any row has (missing values None);
    `Dataset.from_list` would take the columns of the first row only."""
    from datasets import Dataset

    columns = list(dict.fromkeys(key for row in rows for key in row))
    return Dataset.from_dict({key: [row.get(key) for row in rows] for key in columns})


def json_kind(value: Any) -> str | None:
    """The JSON type of a value ('string', 'number', ...); None for null (fits any type)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def check_field_types(file: Path, rows: list[dict[str, Any]], lines: list[int]) -> None:
    """Refuse a field (nested ones too: `messages[].content`) whose JSON type differs from its
    first non-null occurrence: Arrow columns hold one type, and the message names both lines."""
    seen: dict[str, tuple[str, int]] = {}
    for row, line in zip(rows, lines, strict=True):
        for path, kind in field_kinds(row):
            first = seen.setdefault(path, (kind, line))
            if first[0] != kind:
                raise DataError(
                    f"{file}:{line}: field '{path}' is a{'n' * (kind[0] in 'ao')} {kind} here "
                    f"but a{'n' * (first[0][0] in 'ao')} {first[0]} at line {first[1]}; every "
                    "row must give it the same type"
                )


def field_kinds(value: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(path, JSON type) of every non-null value inside a row, lists' items as `name[]`."""
    found = []
    for key, item in value.items():
        path = f"{prefix}{key}"
        kind = json_kind(item)
        if kind is None:
            continue
        found.append((path, kind))
        if kind == "object":
            found += field_kinds(item, f"{path}.")
        elif kind == "array":
            for element in item:
                element_kind = json_kind(element)
                if element_kind is not None:
                    found.append((f"{path}[]", element_kind))
                if element_kind == "object":
                    found += field_kinds(element, f"{path}[].")
    return found


def read_json_rows(file: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows of a JSON array file or a JSON Lines file, each a mapping, with their line numbers;
    errors name the file and line."""
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{file}: the file is empty")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        for index, row in enumerate(data):
            if not isinstance(row, dict):
                raise DataError(f"{file}: item {index + 1} is {type(row).__name__}, not an object")
        return data, _array_item_lines(text, len(data))
    rows, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{file}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno}): {line[:80]!r}"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{file}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        lines.append(lineno)
    return rows, lines


def _array_item_lines(text: str, count: int) -> list[int]:
    """Line where each top-level item of a JSON array starts (its opening brace)."""
    decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
    for _ in range(count):
        while text[pos] in " \t\r\n,":
            pos += 1
        lines.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)
    return lines


def _load_with_datasets(entry: DatasetEntry, file: Path, kind: str) -> Dataset:
    from datasets import load_dataset

    try:
        return load_dataset(kind, data_files=[str(file)], split="train")
    except Exception as exc:
        raise DataError(f"{entry.label}: cannot read {file} as {kind}: {exc}") from None


def _load_saved(entry: DatasetEntry) -> Dataset:
    """A dataset written by `save_to_disk`; of a `DatasetDict`, the entry's split."""
    from datasets import DatasetDict, load_from_disk

    try:
        saved = load_from_disk(str(Path(entry.path).expanduser()))
    except Exception as exc:
        raise DataError(f"{entry.label}: cannot load the saved dataset: {exc}") from None
    if isinstance(saved, DatasetDict):
        if entry.split not in saved:
            raise DataError(
                f"{entry.label}: the saved dataset has no split '{entry.split}'; it has: "
                f"{', '.join(saved)}"
            )
        return saved[entry.split]
    return saved


def _load_hub(entry: DatasetEntry, *, streaming: bool = False) -> Any:
    from datasets import load_dataset

    try:
        return load_dataset(
            entry.path,
            name=entry.name,
            revision=entry.revision,
            split=entry.split,
            data_files=entry.data_files,
            streaming=streaming,
        )
    except Exception as exc:
        raise DataError(
            f"{entry.label} is neither a local file nor a loadable hub dataset: {exc}"
        ) from None


def stream_rows(entry: DatasetEntry, kind: str) -> IterableDataset:
    """The entry's rows as a stream (`pretraining_dataset:`), `skip` rows skipped."""
    from datasets import load_dataset

    if kind == "hub":
        stream = _load_hub(entry, streaming=True)
    elif kind == "saved":
        stream = _load_saved(entry).to_iterable_dataset()
    else:
        files = local_files(entry) if kind == "local" else remote_files(entry)
        kinds = {entry.ds_type or EXTENSIONS.get(f.suffix) for f in files}
        file_kind = kinds.pop() if len(kinds) == 1 else None
        if file_kind is None:
            raise DataError(f"{entry.label}: stream files of one type, or set ds_type")
        builder = "json" if file_kind == "jsonl" else file_kind
        stream = load_dataset(
            builder, data_files=[str(f) for f in files], split="train", streaming=True
        )
    return stream.skip(entry.skip) if entry.skip else stream


# -- remote files: downloaded once into a cache, identified by their content --------------------


def download_dir() -> Path:
    """Where remote data files are kept (`$WEAVE_CACHE/downloads`, default ~/.cache/...)."""
    root = os.environ.get("WEAVE_CACHE") or Path.home() / ".cache" / "axolotl_weave"
    return Path(root) / "downloads"


def remote_files(entry: DatasetEntry) -> list[Path]:
    """The entry's remote file(s), downloaded (or reused) into the local download cache."""
    if source_kind(entry) == "url":
        return [download_url(entry, entry.path)]
    return fetch_fsspec(entry)


def download_url(entry: DatasetEntry, url: str) -> Path:
    """Download an http(s) file; reuse the copy while the server's ETag/Last-Modified holds."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            headers = response.headers
            modified = [headers.get("Last-Modified"), headers.get("Content-Length")]
            tag = headers.get("ETag") or ("/".join(modified) if modified[0] else "")
    except Exception as exc:
        raise DataError(f"{entry.label}: cannot reach {url}: {exc}") from None
    name = Path(urllib.request.urlparse(url).path).name or "data"
    key = hashlib.sha256(f"{url}\0{tag}".encode()).hexdigest()[:16]
    target = download_dir() / key / name
    if tag and target.is_file():
        return target
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
            _write_atomically(target, response.read())
    except Exception as exc:
        raise DataError(f"{entry.label}: cannot download {url}: {exc}") from None
    return target


def fetch_fsspec(entry: DatasetEntry) -> list[Path]:
    """Download an fsspec URL (a file, or the data files under a folder) into the cache."""
    import fsspec

    protocol = entry.path.split("://", 1)[0]
    try:
        fs, root = fsspec.core.url_to_fs(entry.path)
    except ImportError as exc:
        package = FSSPEC_PACKAGES.get(protocol, f"the fsspec backend for {protocol}://")
        raise MissingDependencyError(
            f"{entry.label}: reading {protocol}:// paths needs {package} "
            f"(pip install {package}): {exc}"
        ) from None
    except Exception as exc:
        raise DataError(f"{entry.label}: cannot open {entry.path}: {exc}") from None
    try:
        if fs.isdir(root):
            names = [entry.data_files] if isinstance(entry.data_files, str) else entry.data_files
            paths = (
                [f"{root.rstrip('/')}/{n}" for n in names]
                if names
                else sorted(p for p in fs.find(root) if Path(p).suffix in EXTENSIONS)
            )
        else:
            paths = [root]
        if not paths:
            raise DataError(f"{entry.label}: the folder holds no data files")
        files = []
        for remote in paths:
            info = fs.info(remote)
            tag = [info.get(k) for k in ("ETag", "etag", "md5Hash", "mtime", "size", "created")]
            key = hashlib.sha256(f"{protocol}://{remote}\0{tag}".encode()).hexdigest()[:16]
            target = download_dir() / key / Path(remote).name
            if not target.is_file():
                _write_atomically(target, fs.cat_file(remote))
            files.append(target)
        return files
    except FileNotFoundError:
        raise DataError(f"{entry.label}: no such file or folder") from None


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)
