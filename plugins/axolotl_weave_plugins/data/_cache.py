"""The prepared-data cache: its folder is named by a fingerprint of everything that shapes the
tokenized output, and written under a temporary name then renamed, so an interrupted run never
leaves a cache that a later run would take for whole."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave import DataStats, LoadedRows, staged_folder

from axolotl_weave_plugins.data._sources import source_identity

if TYPE_CHECKING:
    from datasets import Dataset

CACHE_FORMAT = 3
"""Bump when the cached layout or the pipeline's output changes, to invalidate old caches."""

DATA_KEYS = (
    "sequence_len",
    "train_on_inputs",
    "val_set_size",
    "seed",
    "excess_length_strategy",
    "min_sample_len",
    "skip_invalid_rows",
    "dataset_exact_deduplication",
    "shuffle_merged_datasets",
    "dataset_shard_num",
    "dataset_shard_idx",
)
"""Core config keys that change the prepared data (plugins mark theirs with `affects_data`)."""


def fingerprint(
    cfg: Any, tokenizer: Any, hooks: Any, loaded: dict[int, LoadedRows] | None = None
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


def plugin_versions(hooks: Any) -> list[str]:
    """'name==version' of each distribution providing a plugin (their code shapes the output)."""
    # one distribution per entry point: read each one's metadata once (a parse every time)
    dists = {id(getattr(d, "_dist", d)): d for _, d in hooks.pm.list_plugin_distinfo()}
    names = {f"{d.project_name}=={d.version}" for d in dists.values()}
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
