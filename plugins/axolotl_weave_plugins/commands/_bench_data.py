"""The synthetic samples of `weave bench`: log-normal lengths, token ids drawn uniformly from the
model's vocabulary (special ids left out), every token trained.

Not a plugin (no entry point): a helper of the `bench` command plugin.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from axolotl_weave import WeaveError

if TYPE_CHECKING:
    import numpy as np

    from axolotl_weave_plugins.commands.bench import BenchSettings

SYNTHETIC_DATASET = "weave-bench-synthetic"
"""The placeholder `datasets:` path given to a config that has none (bench never reads it)."""


def sample_lengths(settings: BenchSettings) -> np.ndarray:
    """`samples` lengths, log-normal around `median_length`, clipped to the min/max."""
    import numpy as np

    rng = np.random.default_rng(settings.seed)
    raw = rng.lognormal(math.log(settings.median_length), settings.length_sigma, settings.samples)
    return np.clip(np.rint(raw), settings.min_length, settings.max_length).astype(np.int64)


def special_ids(tokenizer: Any, model_config: Any) -> set[int]:
    """Ids the samples must avoid: the tokenizer's special tokens and the model's bos/eos/pad."""
    ids = set(tokenizer.all_special_ids)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(model_config, key, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        ids.update(v for v in values if isinstance(v, int))
    return ids


def synthetic_dataset(lengths: np.ndarray, vocab_size: int, avoid: set[int], seed: int) -> Any:
    """A `datasets.Dataset` of rows of the given lengths: `input_ids` drawn uniformly from the
    vocabulary minus `avoid`, `labels` equal to them (every token trained), `attention_mask`
    all ones. Built as Arrow arrays directly (6,000 rows in well under a second)."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.fromiter(avoid, np.int64))
    if len(allowed) == 0:
        raise WeaveError("the model's vocabulary holds only special tokens")
    rng = np.random.default_rng(seed + 1)
    total = int(lengths.sum())
    ids = allowed[rng.integers(0, len(allowed), size=total)]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), pa.int64())
    input_ids = pa.LargeListArray.from_arrays(offsets, pa.array(ids, pa.int64()))
    mask = pa.LargeListArray.from_arrays(offsets, pa.array(np.ones(total, np.int64)))
    table = pa.table({"input_ids": input_ids, "labels": input_ids, "attention_mask": mask})
    return Dataset(InMemoryTable(table))


def describe_samples(lengths: np.ndarray) -> str:
    """'N samples of T tokens (median, mean, min..max)', for the line before the runs."""
    import numpy as np

    return (
        f"{len(lengths):,} samples of {int(lengths.sum()):,} tokens (median "
        f"{float(np.median(lengths)):.0f}, mean {lengths.mean():.0f}, "
        f"{int(lengths.min())}..{int(lengths.max())})"
    )


def data_summary(settings: BenchSettings, lengths: np.ndarray) -> dict[str, Any]:
    """The samples' settings and totals, for the JSON."""
    return {
        "samples": settings.samples,
        "median_length": settings.median_length,
        "length_sigma": settings.length_sigma,
        "min_length": settings.min_length,
        "max_length": settings.max_length,
        "mean_length": float(lengths.mean()),
        "tokens": int(lengths.sum()),
        "seed": settings.seed,
    }
