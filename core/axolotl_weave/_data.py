"""The dataset pipeline: build each entry, drop what cannot train, mix, split, cache by fingerprint.

The cache folder is written under a temporary name and renamed when complete, so an interrupted
run never leaves a cache that a later run would take for whole.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave._errors import DataError
from axolotl_weave._hooks import Hooks
from axolotl_weave._sources import is_local, load_raw, local_files
from axolotl_weave._types import IGNORE_INDEX

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("axolotl_weave")

CACHE_FORMAT = 1
"""Bump when the cached layout or the pipeline's output changes, to invalidate old caches."""


@dataclass
class DataStats:
    """What preprocessing kept and dropped, for `weave preprocess` and the start of training."""

    rows_in: int = 0
    rows_kept: int = 0
    dropped_too_long: int = 0
    dropped_no_targets: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    tokens: int = 0
    target_tokens: int = 0
    per_dataset: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PreparedData:
    """The tokenized train (and eval) sets, where they are cached, and their stats."""

    train: Dataset
    eval: Dataset | None
    stats: DataStats
    cache_dir: Path
    from_cache: bool


def prepare_datasets(cfg: Any, hooks: Hooks, tokenizer: Any) -> PreparedData:
    """Tokenize every entry (or load the cache), filter, mix, shuffle and split."""
    from datasets import load_from_disk

    cache_dir = Path(cfg.dataset_prepared_path) / fingerprint(cfg, tokenizer, hooks)
    if (cache_dir / "stats.json").is_file():
        stats = DataStats(**json.loads((cache_dir / "stats.json").read_text()))
        train = load_from_disk(str(cache_dir / "train"))
        eval_set = (
            load_from_disk(str(cache_dir / "eval")) if (cache_dir / "eval").exists() else None
        )
        log.info("loaded tokenized datasets from cache %s", cache_dir)
        return PreparedData(train, eval_set, stats, cache_dir, from_cache=True)
    train, eval_set, stats = build_datasets(cfg, hooks, tokenizer)
    save_atomically(cache_dir, train, eval_set, stats)
    return PreparedData(train, eval_set, stats, cache_dir, from_cache=False)


def build_datasets(
    cfg: Any, hooks: Hooks, tokenizer: Any
) -> tuple[Dataset, Dataset | None, DataStats]:
    """Build, filter, concatenate, shuffle and split the config's datasets (no caching)."""
    from datasets import concatenate_datasets

    stats = DataStats()
    parts = []
    for index, entry in enumerate(cfg.datasets):
        raw = load_raw(entry)
        built = hooks.build_dataset(entry, raw, tokenizer, cfg)
        check_tokenized(built, f"datasets[{index}] ({entry.path}, type: {entry.type})")
        kept, too_long, no_targets = filter_trainable(built, cfg.sequence_len)
        stats.per_dataset.append(
            {"path": entry.path, "type": entry.type, "rows": len(raw), "kept": len(kept)}
        )
        stats.rows_in += len(raw)
        stats.dropped_too_long += too_long
        stats.dropped_no_targets += no_targets
        parts.append(kept)
    if stats.dropped_too_long:
        log.warning(
            "dropped %d row(s) longer than sequence_len=%d",
            stats.dropped_too_long,
            cfg.sequence_len,
        )
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    stats.rows_kept = len(dataset)
    if len(dataset) == 0:
        raise DataError(
            f"no trainable rows left: {stats.dropped_too_long} longer than sequence_len="
            f"{cfg.sequence_len}, {stats.dropped_no_targets} with every label masked"
        )
    dataset = dataset.shuffle(seed=cfg.seed).flatten_indices()
    train, eval_set = split_eval(dataset, cfg.val_set_size, cfg.seed)
    stats.train_rows, stats.eval_rows = len(train), len(eval_set) if eval_set is not None else 0
    lengths = dataset["length"]
    stats.tokens = int(sum(lengths))
    stats.target_tokens = int(sum(dataset["n_targets"]))
    return train, eval_set, stats


def check_tokenized(dataset: Dataset, where: str) -> None:
    """Refuse a plugin's output that lacks `input_ids`/`labels` (a bug in the format plugin)."""
    missing = {"input_ids", "labels"} - set(dataset.column_names)
    if missing:
        raise DataError(f"{where}: the format plugin returned rows without {sorted(missing)}")


def filter_trainable(dataset: Dataset, sequence_len: int) -> tuple[Dataset, int, int]:
    """Drop rows over `sequence_len` or with no trained token; add `length` and `n_targets`."""

    def measure(row: dict[str, Any]) -> dict[str, Any]:
        if len(row["input_ids"]) != len(row["labels"]):
            raise DataError("a row's input_ids and labels differ in length (format plugin bug)")
        targets = sum(1 for label in row["labels"][1:] if label != IGNORE_INDEX)
        return {"length": len(row["input_ids"]), "n_targets": targets}

    measured = dataset.map(measure, desc="Measuring")
    too_long = sum(1 for n in measured["length"] if n > sequence_len)
    no_targets = sum(
        1
        for n, t in zip(measured["length"], measured["n_targets"], strict=True)
        if n <= sequence_len and t == 0
    )
    kept = measured.filter(
        lambda row: row["length"] <= sequence_len and row["n_targets"] > 0, desc="Filtering"
    )
    return kept, too_long, no_targets


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


def fingerprint(cfg: Any, tokenizer: Any, hooks: Hooks) -> str:
    """A hash of everything that changes the tokenized output; the cache folder's name."""
    digest = hashlib.sha256()

    def add(value: Any) -> None:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
        digest.update(b"\0")

    add(CACHE_FORMAT)
    for entry in cfg.datasets:
        add(entry.model_dump())
        if is_local(entry) and Path(entry.path).expanduser().exists():
            for file in local_files(entry):
                add(str(file.name))
                digest.update(file_digest(file).encode())
    add([cfg.sequence_len, cfg.train_on_inputs, cfg.val_set_size, cfg.seed])
    add(tokenizer_identity(tokenizer))
    add(sorted(plugin_versions(hooks)))
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        train.save_to_disk(str(tmp / "train"))
        if eval_set is not None:
            eval_set.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(asdict(stats), indent=2))
        if cache_dir.exists():  # another process finished first: theirs is as good
            shutil.rmtree(tmp)
            return
        os.replace(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
