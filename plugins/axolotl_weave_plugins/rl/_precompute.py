"""`precompute_ref_log_probs: true`: the reference's log-probabilities, once, before training.

A run-scoped plugin (registered by `rl.dpo`'s `configure` when the key is on). It sees the
model and the objective as `build_loss` returns them, then, when the loop is built
(`transform_train_data`, before the batches are planned), computes every pair's reference
log-probabilities (the summed log-probabilities of its chosen and rejected responses) with the
model as it is before the first step: the base with the adapter disabled, or the untrained
model itself for a full fine-tune. They become the columns `ref_chosen_logps` and
`ref_rejected_logps` of the dataset the batches are read from, padded or packed alike, and the
objective keeps no reference model.

The columns are cached under `dataset_prepared_path/reference_logps/<key>/`, keyed by the
tokenized pairs (a digest of their tokens and labels, in order), the reference (the base model's
weight files, the precision, the vocabulary and the config overrides) and the set (train or
eval): a second run on the same cache reads them back instead of computing them. With several
processes the main one computes them and the others read its cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave import (
    PluginError,
    collate,
    hookimpl,
    read_rows,
    resolve_precision,
    staged_folder,
)

from axolotl_weave_plugins.rl._formats import PAIR_COLUMNS
from axolotl_weave_plugins.rl._objective import REFERENCE_COLUMNS, PreferenceObjective

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("axolotl_weave")

CACHE_LAYOUT = 1
"""Bump when what is cached (or how it is computed) changes, to invalidate old caches."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_identity(where: str) -> list[Any]:
    """What identifies a local model folder's weights (each weight file's name, size and
    modification time); a hub id stands for itself (with `revision_of_model`)."""
    folder = Path(where).expanduser()
    if not folder.is_dir():
        return [where]
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


DIGEST_ROWS = 65_536
"""Rows read at a time to digest a set."""


def dataset_digest(dataset: Dataset) -> str:
    """A digest of the pairs' tokens and labels, in order, read from Arrow in slices: what the
    reference log-probabilities depend on (the same whether the set was just built or read
    from the preprocessing cache)."""
    import pyarrow.compute as pc

    columns = [
        f"{side}_{name}" for side in ("chosen", "rejected") for name in ("input_ids", "labels")
    ]
    digest = hashlib.blake2b(digest_size=16)
    table = dataset.select_columns(columns).with_format("arrow")
    for first in range(0, len(dataset), DIGEST_ROWS):
        part = table[first : first + DIGEST_ROWS]
        for column in columns:
            values = part[column]
            digest.update(pc.list_value_length(values).to_numpy(zero_copy_only=False).tobytes())
            digest.update(pc.list_flatten(values).to_numpy(zero_copy_only=False).tobytes())
    return digest.hexdigest()


def cache_key(cfg: Any, dataset: Dataset, model: Any, split: str) -> str:
    """The cache folder name of one set's reference log-probs: the dataset and the reference."""
    parameter = next(model.parameters(), None)
    parts = [
        CACHE_LAYOUT,
        split,
        dataset_digest(dataset),
        len(dataset),
        cfg.base_model,
        getattr(cfg, "revision_of_model", None),
        weights_identity(cfg.base_model),
        dataclasses.asdict(resolve_precision(cfg)),
        None if parameter is None else str(parameter.dtype),
        type(model).__name__,
        getattr(getattr(model, "config", None), "vocab_size", None),  # added tokens resize it
        sorted(getattr(cfg, "tokens", None) or []),
        getattr(cfg, "special_tokens", None),
        getattr(cfg, "overrides_of_model_config", None),
    ]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


PAIR_IDS = ("chosen_input_ids", "rejected_input_ids")


def pair_batches(dataset: Dataset, size: int, pad_token_id: int) -> Iterator[dict[str, Any]]:
    """Padded micro-batches of `size` pairs over `dataset`, in its order."""
    for first in range(0, len(dataset), size):
        indices = list(range(first, min(first + size, len(dataset))))
        rows = read_rows(dataset, indices, PAIR_COLUMNS)
        yield collate(rows, pad_token_id, columns=PAIR_COLUMNS)


def compute_reference_logps(
    objective: PreferenceObjective,
    model: Any,
    dataset: Dataset,
    strategy: Any,
    size: int,
    pad_token_id: int,
) -> dict[str, list[float]]:
    """Every pair's reference log-probabilities, in the dataset's order, computed on the
    strategy's device (the model is moved there, where the strategy would place it)."""
    import torch

    device = strategy.device
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(
        model, "is_loaded_in_8bit", False
    )
    if not quantized and next(model.parameters()).device != device:
        model.to(device)
    was_training = model.training
    model.eval()
    chosen: list[float] = []
    rejected: list[float] = []
    try:
        for batch in pair_batches(dataset, size, pad_token_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad(), strategy.autocast():
                sums = objective.initial_reference_logps(model, batch).float().cpu()
            n = sums.shape[0] // 2
            chosen.extend(sums[:n].tolist())
            rejected.extend(sums[n:].tolist())
    finally:
        model.train(was_training)
    return {REFERENCE_COLUMNS[0]: chosen, REFERENCE_COLUMNS[1]: rejected}


class ReferencePrecompute:
    """The run's precomputed reference log-probs (a run-scoped plugin)."""

    def __init__(self) -> None:
        self.model: Any = None
        self.objective: Any = None

    @hookimpl(wrapper=True)
    def build_loss(self, cfg: Any, model: Any) -> Generator[None, Any, Any]:
        """Remember the model (before it trains) and the objective, to compute the reference's
        log-probabilities with when the batches are planned."""
        objective = yield
        self.model, self.objective = model, objective
        return objective

    @hookimpl
    def transform_train_data(
        self,
        cfg: Any,
        dataset: Any,
        evaluation: bool,
        strategy: Any,
        columns: dict[str, Any],
        pad_token_id: int,
    ) -> Any:
        """The preference pairs with the reference's log-probabilities as two more per-pair
        columns (declared in `columns`, so that padded and packed batches carry them)."""
        names = getattr(dataset, "column_names", None) or []
        if not all(c in names for c in PAIR_IDS):
            return None
        if not isinstance(self.objective, PreferenceObjective) or self.model is None:
            raise PluginError(
                "precompute_ref_log_probs: the preference objective was replaced by another "
                "plugin, so the reference log-probabilities cannot be computed"
            )
        columns.update(dict.fromkeys(REFERENCE_COLUMNS))
        split = "eval" if evaluation else "train"
        return self.with_reference(cfg, dataset, strategy, pad_token_id, split)

    def with_reference(
        self, cfg: Any, dataset: Dataset, strategy: Any, pad_token_id: int, split: str
    ) -> Dataset:
        """`dataset` with the reference columns: read from their cache, or computed (by the
        main process) and cached."""
        from datasets import Dataset, concatenate_datasets, load_from_disk

        folder = Path(cfg.dataset_prepared_path) / "reference_logps"
        folder = folder / cache_key(cfg, dataset, self.model, split)
        if not (folder / "done").is_file() and strategy.is_main_process:
            size = cfg.eval_batch_size or cfg.micro_batch_size
            values = compute_reference_logps(
                self.objective, self.model, dataset, strategy, size, pad_token_id
            )
            with staged_folder(folder, replace=False) as tmp:
                Dataset.from_dict(values).save_to_disk(str(tmp / "columns"))
                (tmp / "done").write_text(json.dumps({"rows": len(dataset), "split": split}))
            log.info(
                "precompute_ref_log_probs: %d %s pairs, cached in %s", len(dataset), split, folder
            )
        else:
            log.info("precompute_ref_log_probs: %s read from %s", split, folder)
        strategy.wait_for_everyone()
        columns = load_from_disk(str(folder / "columns"))
        if len(columns) != len(dataset):
            raise PluginError(
                f"precompute_ref_log_probs: {folder} holds {len(columns)} rows for a set of "
                f"{len(dataset)}; delete it to compute them again"
            )
        kept = dataset.remove_columns([c for c in REFERENCE_COLUMNS if c in dataset.column_names])
        return concatenate_datasets([kept, columns], axis=1)
