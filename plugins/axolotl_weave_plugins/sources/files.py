"""Data files: local files and folders, http(s) URLs, fsspec URLs (`s3://`, `gs://`, ...; their
packages are optional) and folders written by `Dataset.save_to_disk`.

JSON and JSON Lines are parsed here, line by line, so that a broken line or a field whose type
changes between rows is reported with its file and line; JSON Lines go to Arrow files a chunk
of rows at a time (memory does not grow with the file: `json_lines_dataset`, in datasets'
temporary folder, under `$TMPDIR`); the other file types (CSV, Parquet,
Arrow, text) go through `datasets`. Remote files are downloaded once into a cache
(`$WEAVE_CACHE/downloads`) and reused while their ETag (or size and date) holds. Each source
identifies its content by the digests of its files, for the preprocessing cache's fingerprint.
A path that none of these claims (no `://`, not on disk, no data-file extension) is left to the
hub source.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import urllib.request
import uuid
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from axolotl_weave import (
    DataError,
    DataSource,
    LoadedRows,
    MissingDependencyError,
    RowLocator,
    hookimpl,
    rows_table,
    write_atomically,
)

PLUGIN_KIND = "source"
log = logging.getLogger("axolotl_weave")

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


def is_url(entry: Any) -> bool:
    """An http(s) URL."""
    return entry.path.startswith(("https://", "http://"))


def is_fsspec(entry: Any) -> bool:
    """Another URL (`s3://`, `gs://`, `memory://`...), read through fsspec."""
    return "://" in entry.path and not is_url(entry)


def is_saved(entry: Any) -> bool:
    """A local folder written by `save_to_disk`."""
    local = Path(entry.path).expanduser()
    return local.is_dir() and any((local / m).is_file() for m in SAVED_DATASET_MARKERS)


def is_local(entry: Any) -> bool:
    """A local file or folder of data files (or a path that looks like one, to report it)."""
    path = entry.path
    if "://" in path or is_saved(entry):
        return False
    local = Path(path).expanduser()
    return local.exists() or path.startswith((".", "/", "~")) or local.suffix in EXTENSIONS


@hookimpl
def register_data_sources(register: Callable[[DataSource], None]) -> None:
    """Register the saved-dataset, local-file, URL and fsspec sources."""
    register(DataSource("saved", is_saved, load_saved, saved_identity, "a save_to_disk folder"))
    register(
        DataSource(
            "local",
            is_local,
            load_local,
            local_identity,
            "local files, folders",
            problem=local_path_problem,
        )
    )
    register(DataSource("url", is_url, load_remote, remote_identity, "an http(s) URL"))
    register(DataSource("fsspec", is_fsspec, load_remote, remote_identity, "s3://, gs://..."))


def missing_local_path(entry: Any) -> str | None:
    """Why a local entry cannot be read before any work (its path is not there), saying where
    it was looked for; None when it is there or is not local."""
    if not is_local(entry) or Path(entry.path).expanduser().exists():
        return None
    where = Path(entry.path).expanduser().absolute()
    return f"no such file or folder: looked for {where} (relative to {Path.cwd()})"


def local_path_problem(entry: Any) -> str | None:
    """`missing_local_path`, or a text data file whose byte-order mark says it is UTF-16 or
    UTF-32, not UTF-8 (found from its first bytes, so `weave validate` and the start of a run
    say so before any work)."""
    missing = missing_local_path(entry)
    path = Path(entry.path).expanduser()
    if missing or not is_local(entry) or not path.is_file():
        return missing
    if EXTENSIONS.get(path.suffix.lower()) not in ("json", "jsonl", "csv", "text"):
        return None
    with path.open("rb") as handle:
        head = handle.read(4)
    found = marked_encoding(head)
    if found is None:
        return None
    return (
        f"it is {found} text (its byte-order mark says so), not UTF-8; convert it, e.g. "
        f"iconv -f {found} -t UTF-8 {path.name} > utf8-{path.name}"
    )


def local_files(entry: Any) -> list[Path]:
    """The data files of a local entry (a file, or the matching files of a folder), sorted."""
    path = Path(entry.path).expanduser()
    if not path.exists():
        raise DataError(f"{entry.label}: {missing_local_path(entry)}")
    if path.is_file():
        return [path]
    names = [entry.data_files] if isinstance(entry.data_files, str) else entry.data_files
    if names:
        files = [path / name for name in names]
    else:
        files = folder_data_files(entry, path)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{entry.label}: file(s) not found: {', '.join(missing)}")
    if not files:
        raise DataError(
            f"{entry.label}: the folder holds no data files ({', '.join(sorted(EXTENSIONS))})"
        )
    return files


def folder_data_files(entry: Any, folder: Path) -> list[Path]:
    """The data files of a folder, of one type: text files (`.txt`) beside structured ones
    (JSON, CSV, Parquet...) are notes, skipped; two structured types are refused, naming them."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in EXTENSIONS and p.is_file())
    by_kind: dict[str, list[Path]] = {}
    for file in files:
        by_kind.setdefault(EXTENSIONS[file.suffix].replace("jsonl", "json"), []).append(file)
    if len(by_kind) > 1 and "text" in by_kind:
        skipped = by_kind.pop("text")
        log.info(
            "%s: skipping %s (text beside the %s data files)",
            entry.label,
            ", ".join(f.name for f in skipped),
            next(iter(by_kind)),
        )
    if len(by_kind) > 1:
        listing = "; ".join(
            f"{kind}: {', '.join(str(f.relative_to(folder)) for f in found[:3])}"
            + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            for kind, found in by_kind.items()
        )
        raise DataError(
            f"{entry.label}: the folder {folder} mixes data file types ({listing}); keep one "
            "type there, or pick the files with data_files:"
        )
    return [file for found in by_kind.values() for file in found]


def local_identity(entry: Any) -> str:
    """The names and digests of the entry's local files."""
    return ";".join(f"{f.name}={file_digest(f)}" for f in local_files(entry))


def saved_identity(entry: Any) -> str:
    """The names and digests of every file of the saved dataset's folder."""
    files = sorted(p for p in Path(entry.path).expanduser().rglob("*") if p.is_file())
    return ";".join(f"{f.name}={file_digest(f)}" for f in files)


def remote_identity(entry: Any) -> str:
    """The names and digests of the entry's remote files (downloaded, or reused)."""
    return ";".join(f"{f.name}={file_digest(f)}" for f in remote_files(entry))


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- loading -----------------------------------------------------------------------------------


def load_local(entry: Any, streaming: bool = False) -> Any:
    """The rows of a local entry's files."""
    return load_files(entry, local_files(entry), streaming)


def load_remote(entry: Any, streaming: bool = False) -> Any:
    """The rows of a remote entry's files, downloaded into the cache."""
    return load_files(entry, remote_files(entry), streaming)


def load_files(entry: Any, files: list[Path], streaming: bool) -> Any:
    """The rows of `files`, each named by file and line (a stream when `streaming`)."""
    if streaming:
        return stream_files(entry, files)
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
            part, lines = json_dataset(entry, file)
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


def stream_files(entry: Any, files: list[Path]) -> Any:
    """The rows of `files` as a stream (`pretraining_dataset:`); they must be of one type."""
    from datasets import load_dataset

    kinds = {entry.ds_type or EXTENSIONS.get(f.suffix) for f in files}
    file_kind = kinds.pop() if len(kinds) == 1 else None
    if file_kind is None:
        raise DataError(f"{entry.label}: stream files of one type, or set ds_type")
    builder = "json" if file_kind == "jsonl" else file_kind
    return load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True)


def rows_to_dataset(
    entry: Any, file: Path, rows: list[dict[str, Any]], lines: Sequence[int]
) -> Any:
    """A `Dataset` of parsed JSON rows; a field whose JSON type changes is named with its line."""
    if not rows:
        raise DataError(f"{file}: the file holds no rows")
    check_field_types(file, rows, lines)
    return checked_rows_table(entry, file, rows)


def checked_rows_table(entry: Any, file: Path, rows: list[dict[str, Any]]) -> Any:
    """`rows_table(rows)`, a clash of types deeper inside nested values named as such."""
    try:
        return rows_table(rows)
    except Exception as exc:  # a clash deeper inside nested values
        raise DataError(
            f"{entry.label}: {file}: rows disagree on a field's type ({exc}); every row must "
            "give each field the same type"
        ) from None


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


def check_field_types(
    file: Path,
    rows: list[dict[str, Any]],
    lines: Sequence[int],
    seen: dict[str, tuple[str, int]] | None = None,
) -> None:
    """Refuse a field (nested ones too: `messages[].content`) whose JSON type differs from its
    first non-null occurrence: Arrow columns hold one type, and the message names both lines.
    `seen` (each field's first type and line) carries over from earlier rows of the file."""
    seen = {} if seen is None else seen
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


JSON_CHUNK_ROWS = 20_000
"""JSON Lines rows parsed and written to Arrow at a time (memory does not grow with the file)."""
JSON_CHUNK_BYTES = 64 << 20
"""...or fewer rows, once they hold this many bytes of JSON."""


def json_dataset(entry: Any, file: Path) -> tuple[Any, Sequence[int]]:
    """The rows of a JSON or JSON Lines file as a `Dataset`, and the line of each row. JSON
    Lines are streamed to Arrow files a chunk of rows at a time (`json_lines_dataset`); a
    JSON array is parsed whole."""
    if is_json_array(file):
        rows, lines = read_json_rows(file)
        return rows_to_dataset(entry, file, rows, lines), lines
    return json_lines_dataset(entry, file)


def is_json_array(file: Path) -> bool:
    """Whether the file's first non-blank character (after a byte-order mark) is `[`."""
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            text = block.removeprefix(codecs.BOM_UTF8).lstrip()
            if text:
                return text.startswith(b"[")
    return False


def json_lines_dataset(entry: Any, file: Path) -> tuple[Any, Sequence[int]]:
    """A JSON Lines file as a memory-mapped `Dataset`: parsed and type-checked a chunk of rows
    at a time, each chunk written to an Arrow file in datasets' temporary folder (removed at
    exit), so that no Python list of all rows is ever held. Chunks whose inferred columns
    differ (a field null or absent in one chunk) are unified to one schema. The lines are a
    `range` when no line is blank, else a compact array."""
    from datasets import concatenate_datasets
    from datasets.fingerprint import get_temporary_cache_files_directory

    folder = Path(get_temporary_cache_files_directory())
    seen: dict[str, tuple[str, int]] = {}
    lines = array("q")
    chunks: list[Path] = []
    rows: list[dict[str, Any]] = []
    chunk_lines: list[int] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if not rows:
            return
        check_field_types(file, rows, chunk_lines, seen)
        table = checked_rows_table(entry, file, rows).data.table
        chunks.append(write_arrow(folder, table))
        rows.clear()
        chunk_lines.clear()
        size = 0

    for lineno, row, nbytes in iter_json_lines(file):
        rows.append(row)
        chunk_lines.append(lineno)
        lines.append(lineno)
        size += nbytes
        if len(rows) >= JSON_CHUNK_ROWS or size >= JSON_CHUNK_BYTES:
            flush()
    flush()
    if not chunks:
        raise DataError(f"{file}: the file is empty")
    chunks = unify_chunks(entry, file, folder, chunks)
    from datasets import Dataset

    parts = [Dataset.from_file(str(chunk)) for chunk in chunks]
    dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if lines[-1] == len(lines):  # no blank line: row i is on line i + 1
        return dataset, range(1, len(lines) + 1)
    return dataset, lines


def iter_json_lines(file: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    """(line number, parsed object, bytes) of each non-blank line of a JSON Lines file, read
    line by line; a line that is not UTF-8, not JSON or not an object is a `DataError` naming
    the file and line."""
    with file.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                read_text(file)  # raises with the line and what the encoding may be
                raise
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                line = line.rstrip("\r\n")
                raise DataError(
                    f"{file}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno}): "
                    f"{line[:80]!r}"
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{file}:{lineno}: expected a JSON object, got {type(row).__name__}"
                )
            yield lineno, row, len(raw)


def write_arrow(folder: Path, table: Any) -> Path:
    """`table` written as an Arrow stream file (what `Dataset.from_file` maps) in `folder`."""
    import pyarrow as pa

    path = folder / f"weave-rows-{uuid.uuid4().hex}.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def unify_chunks(entry: Any, file: Path, folder: Path, chunks: list[Path]) -> list[Path]:
    """The chunk files, rewritten to one schema when their inferred schemas differ (a column
    absent or all null in one chunk, a nested field present in some rows only)."""
    import pyarrow as pa
    from datasets import Features

    def schema_of(path: Path) -> Any:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).schema

    schemas = [schema_of(chunk) for chunk in chunks]
    if all(schema.equals(schemas[0]) for schema in schemas[1:]):
        return chunks
    try:
        unified = pa.unify_schemas(
            [schema.remove_metadata() for schema in schemas], promote_options="permissive"
        )
        unified = Features.from_arrow_schema(unified).arrow_schema
        rewritten = []
        for chunk in chunks:
            with pa.memory_map(str(chunk)) as source:
                table = pa.ipc.open_stream(source).read_all()
            for name in unified.names:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(len(table)))
            table = table.select(unified.names).cast(unified)
            rewritten.append(write_arrow(folder, table))
            chunk.unlink()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise DataError(
            f"{entry.label}: {file}: rows disagree on a field's type ({exc}); every row must "
            "give each field the same type"
        ) from None
    return rewritten


def read_json_rows(file: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows of a JSON array file or a JSON Lines file, each a mapping, with their line numbers;
    errors name the file and line."""
    text = read_text(file)
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


BYTE_ORDER_MARKS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}


def marked_encoding(data: bytes) -> str | None:
    """UTF-16 or UTF-32 when `data` begins with that byte-order mark, else None."""
    return next((name for bom, name in BYTE_ORDER_MARKS.items() if data.startswith(bom)), None)


def read_text(file: Path) -> str:
    """A data file's text, which must be UTF-8 (a leading byte-order mark is dropped); other
    encodings are a `DataError` naming the file, the line and how to convert it."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        found = marked_encoding(data)
        guess = f"it is {found} (its byte-order mark says so)" if found else "it is not UTF-8"
        source = found or "LATIN1"
        raise DataError(
            f"{file}:{line}: cannot read the file as UTF-8 text (byte {exc.start}): {guess}; "
            f"convert it, e.g. iconv -f {source} -t UTF-8 {file.name} > utf8-{file.name}"
        ) from None


def check_utf8(file: Path) -> None:
    """Refuse a text data file (CSV, text) that is not UTF-8 before `datasets` reads it."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with file.open("rb") as handle:
        try:
            for block in iter(lambda: handle.read(1 << 20), b""):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            read_text(file)  # raises with the line and the guess


def _array_item_lines(text: str, count: int) -> list[int]:
    """Line where each top-level item of a JSON array starts (its opening brace)."""
    decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
    for _ in range(count):
        while text[pos] in " \t\r\n,":
            pos += 1
        lines.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)
    return lines


def _load_with_datasets(entry: Any, file: Path, kind: str) -> Any:
    from datasets import load_dataset

    if kind in ("csv", "text"):
        check_utf8(file)
    options = {"encoding": "utf-8-sig"} if kind == "csv" else {}  # a byte-order mark is no name
    try:
        return load_dataset(kind, data_files=[str(file)], split="train", **options)
    except Exception as exc:
        raise DataError(f"{entry.label}: cannot read {file} as {kind}: {exc}") from None


def load_saved(entry: Any, streaming: bool = False) -> Any:
    """A dataset written by `save_to_disk`; of a `DatasetDict`, the entry's split (a stream
    of it when `streaming`)."""
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
        saved = saved[entry.split]
    return saved.to_iterable_dataset() if streaming else saved


# -- remote files: downloaded once into a cache, identified by their content --------------------


def download_dir() -> Path:
    """Where remote data files are kept (`$WEAVE_CACHE/downloads`, default ~/.cache/...)."""
    root = os.environ.get("WEAVE_CACHE") or Path.home() / ".cache" / "axolotl_weave"
    return Path(root) / "downloads"


def remote_files(entry: Any) -> list[Path]:
    """The entry's remote file(s), downloaded (or reused) into the local download cache."""
    return [download_url(entry, entry.path)] if is_url(entry) else fetch_fsspec(entry)


def download_url(entry: Any, url: str) -> Path:
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
            write_atomically(target, response.read())
    except Exception as exc:
        raise DataError(f"{entry.label}: cannot download {url}: {exc}") from None
    return target


def fetch_fsspec(entry: Any) -> list[Path]:
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
                write_atomically(target, fs.cat_file(remote))
            files.append(target)
        return files
    except FileNotFoundError:
        raise DataError(f"{entry.label}: no such file or folder") from None
