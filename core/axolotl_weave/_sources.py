"""Loading the raw rows of one `datasets:` entry: local JSON/JSONL/CSV/Parquet/Arrow or a hub name.

JSON and JSONL are parsed here, line by line, so that a broken line is reported with its file
and line number; the other file types go through `datasets.load_dataset`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave._errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from axolotl_weave._config import DatasetEntry

EXTENSIONS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}


def local_files(entry: DatasetEntry) -> list[Path]:
    """The data files of a local entry (a file, or the matching files of a folder), sorted."""
    path = Path(entry.path).expanduser()
    if path.is_file():
        return [path]
    names = [entry.data_files] if isinstance(entry.data_files, str) else entry.data_files
    if names:
        files = [path / name for name in names]
    else:
        files = sorted(p for p in path.rglob("*") if p.suffix in EXTENSIONS and p.is_file())
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"dataset '{entry.path}': file(s) not found: {', '.join(missing)}")
    if not files:
        raise DataError(
            f"dataset '{entry.path}': the folder holds no data files "
            f"({', '.join(sorted(EXTENSIONS))})"
        )
    return files


def is_local(entry: DatasetEntry) -> bool:
    """Whether the entry's path names a local file or folder (else: a hub dataset)."""
    path = Path(entry.path).expanduser()
    return path.exists() or entry.path.startswith((".", "/", "~")) or path.suffix in EXTENSIONS


def load_raw(entry: DatasetEntry) -> Dataset:
    """The raw rows of one entry; a missing file, an empty one or a broken line is a `DataError`."""
    from datasets import Dataset

    if not is_local(entry):
        return _load_hub(entry)
    if not Path(entry.path).expanduser().exists():
        raise DataError(f"dataset '{entry.path}': no such file or folder")
    rows: list[dict[str, Any]] = []
    other: list[Path] = []
    for file in local_files(entry):
        kind = entry.ds_type or EXTENSIONS.get(file.suffix)
        if kind in ("json", "jsonl"):
            rows.extend(read_json_rows(file))
        else:
            other.append(file)
    if other:
        return _load_with_datasets(entry, other, rows)
    if not rows:
        raise DataError(f"dataset '{entry.path}' is empty: it holds no rows")
    try:
        return Dataset.from_list(rows)
    except Exception as exc:  # pyarrow type clash between rows
        raise DataError(
            f"dataset '{entry.path}': rows disagree on a field's type ({exc}); "
            "every row must give each field the same type"
        ) from None


def read_json_rows(file: Path) -> list[dict[str, Any]]:
    """Rows of a JSON array file or a JSON Lines file, each a mapping; errors name file and line."""
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
        return data
    rows = []
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
    return rows


def _load_with_datasets(entry: DatasetEntry, files: list[Path], json_rows: list) -> Dataset:
    from datasets import Dataset, concatenate_datasets, load_dataset

    kinds = {entry.ds_type or EXTENSIONS.get(f.suffix) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(
            f"dataset '{entry.path}': cannot tell the file type of {', '.join(map(str, files))}; "
            f"set ds_type: one of {', '.join(sorted(set(EXTENSIONS.values())))}"
        )
    kind = kinds.pop()
    try:
        ds = load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as exc:
        raise DataError(f"dataset '{entry.path}': cannot read as {kind}: {exc}") from None
    if json_rows:
        ds = concatenate_datasets([ds, Dataset.from_list(json_rows)])
    if len(ds) == 0:
        raise DataError(f"dataset '{entry.path}' is empty: it holds no rows")
    return ds


def _load_hub(entry: DatasetEntry) -> Dataset:
    from datasets import load_dataset

    try:
        return load_dataset(entry.path, name=entry.name, revision=entry.revision, split=entry.split)
    except Exception as exc:
        raise DataError(
            f"dataset '{entry.path}' is neither a local file nor a loadable hub dataset: {exc}"
        ) from None
