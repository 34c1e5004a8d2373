"""The synthetic samples of `weave bench`: log-normal lengths, token ids drawn uniformly from the
model's vocabulary (special ids left out), every token trained.

Not a plugin (no entry point): a helper of the `bench` command plugin.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from axolotl_weave import IGNORE_INDEX, WeaveError

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


def allowed_ids(vocab_size: int, avoid: set[int]) -> np.ndarray:
    """The ids samples are drawn from: the vocabulary minus `avoid` (refused when empty)."""
    import numpy as np

    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.fromiter(avoid, np.int64))
    if len(allowed) == 0:
        raise WeaveError("the model's vocabulary holds only special tokens")
    return allowed


def synthetic_dataset(lengths: np.ndarray, vocab_size: int, avoid: set[int], seed: int) -> Any:
    """A `datasets.Dataset` of rows of the given lengths: `input_ids` drawn uniformly from the
    vocabulary minus `avoid`, `labels` equal to them (every token trained), `attention_mask`
    all ones. Built as Arrow arrays directly (6,000 rows in well under a second)."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    allowed = allowed_ids(vocab_size, avoid)
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


def synthetic_pairs(
    lengths: np.ndarray, vocab_size: int, avoid: set[int], seed: int
) -> tuple[Any, Any]:
    """Preference pairs for a DPO-family bench, the same token ids in the two layouts the runs
    read: (weave's rows: `chosen_*` and `rejected_*` input ids, labels and masks, the prompt
    untrained; TRL's rows: `prompt_ids`, `chosen_ids`, `rejected_ids`). Pair i has a prompt of a
    third of `lengths[i]`, a chosen completion of the rest, and a rejected one as long as the
    chosen of another pair (each sequence at most the longest length)."""
    import numpy as np
    from datasets import Dataset

    allowed = allowed_ids(vocab_size, avoid)
    rng = np.random.default_rng(seed + 1)
    prompts = np.maximum(1, lengths // 3)
    chosen = np.maximum(1, lengths - prompts)
    rejected = np.clip(rng.permutation(lengths) - prompts, 1, lengths.max() - prompts)

    def draw(size: int) -> list[int]:
        return allowed[rng.integers(0, len(allowed), size=int(size))].tolist()

    weave: dict[str, list[list[int]]] = {}
    trl: dict[str, list[list[int]]] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for name in ("chosen", "rejected"):
        for column in ("input_ids", "labels", "attention_mask"):
            weave[f"{name}_{column}"] = []
    for prompt_len, sizes in zip(prompts, zip(chosen, rejected, strict=True), strict=True):
        prompt = draw(prompt_len)
        trl["prompt_ids"].append(prompt)
        for name, size in zip(("chosen", "rejected"), sizes, strict=True):
            completion = draw(size)
            trl[f"{name}_ids"].append(completion)
            weave[f"{name}_input_ids"].append(prompt + completion)
            weave[f"{name}_labels"].append([IGNORE_INDEX] * len(prompt) + completion)
            weave[f"{name}_attention_mask"].append([1] * (len(prompt) + len(completion)))
    return Dataset.from_dict(weave), Dataset.from_dict(trl)


def mean_pair_tokens(pairs: Any) -> float:
    """Real tokens of an average pair as both runs count them: the prompt twice (before the
    chosen and before the rejected completion) and the two completions."""
    import pyarrow.compute as pc

    def size(name: str) -> Any:  # each row's list length, read from Arrow (no Python lists)
        return pc.list_value_length(pairs.data.column(name)).to_numpy()

    return float((2 * size("prompt_ids") + size("chosen_ids") + size("rejected_ids")).mean())
