"""`precompute_ref_log_probs: true` (the `dpo` plugin's `_precompute`): the reference's
log-probabilities computed once before training, cached beside the tokenized dataset, read back
by a second run, and no reference model kept while training; the losses equal the run that
computes the reference on the fly.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave_testing import pair_rows, train_with, write_config, write_jsonl


def dpo_config(tmp_path: Path, base_config: dict, name: str, **keys: Any) -> dict:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    config = {
        **base_config,
        "datasets": [{"path": str(pairs), "type": "chatml.intel"}],
        "rl": "dpo",
        "max_steps": 2,
        "logging_steps": 1,
        "output_dir": str(tmp_path / name),
        **keys,
    }
    if config.get("adapter"):
        config.update(lora_r=4, lora_alpha=8, lora_dropout=0.0)
    return config


class ObjectiveRecorder:
    """Keeps the objective `build_loss` returned (a plugin object registered for one run)."""

    objective: Any = None

    @hookimpl(wrapper=True)
    def build_loss(self, cfg: Any, model: Any) -> Generator[None, Any, Any]:
        self.objective = yield
        return self.objective


def losses(state: Any) -> list[dict[str, float]]:
    return [r for r in state.log_history if "loss" in r]


def assert_same_run(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key


def test_full_fine_tune_precomputed_equals_on_the_fly_and_keeps_no_reference(
    tmp_path: Path, base_config: dict
) -> None:
    on_the_fly = ObjectiveRecorder()
    precomputed = ObjectiveRecorder()
    state_a = train_with(dpo_config(tmp_path, base_config, "a"), tmp_path / "a.yml", on_the_fly)
    config = dpo_config(tmp_path, base_config, "b", precompute_ref_log_probs=True)
    state_b = train_with(config, tmp_path / "b.yml", precomputed)
    assert on_the_fly.objective.reference is not None  # a frozen copy of the model
    assert precomputed.objective.reference is None  # no reference model at all
    assert precomputed.objective.precomputed
    assert_same_run(losses(state_b), losses(state_a))
    assert losses(state_b)[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    cached = list(Path(config["dataset_prepared_path"], "reference_logps").iterdir())
    assert len(cached) == 1 and (cached[0] / "done").is_file()


def test_a_second_run_reads_the_cached_columns_and_packing_carries_them(
    tmp_path: Path, base_config: dict
) -> None:
    """LoRA: the reference is the base with the adapter disabled. A second run on the same
    cache reads the columns back: shifted by +1 in the cache, its first rewards move by
    -beta (the policy equals the reference at step 1), so the cache is what it used. Packed
    pairs carry the columns too."""
    from datasets import Dataset, load_from_disk

    keys = {"adapter": "lora", "precompute_ref_log_probs": True}
    first = train_with(dpo_config(tmp_path, base_config, "first", **keys), tmp_path / "1.yml")
    assert losses(first)[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    (folder,) = Path(base_config["dataset_prepared_path"], "reference_logps").iterdir()
    columns = load_from_disk(str(folder / "columns"))
    shifted = {name: [v + 1.0 for v in columns[name]] for name in columns.column_names}
    del columns
    Dataset.from_dict(shifted).save_to_disk(str(folder / "columns-new"))
    (folder / "columns-new").rename(folder / "columns-tmp")
    import shutil

    shutil.rmtree(folder / "columns")
    (folder / "columns-tmp").rename(folder / "columns")
    second = train_with(
        dpo_config(tmp_path, base_config, "second", sample_packing=True, **keys),
        tmp_path / "2.yml",
    )
    step1 = losses(second)[0]
    assert step1["rewards/chosen"] == pytest.approx(-0.1, abs=1e-5)  # beta * (logp - (ref + 1))
    assert step1["rewards/rejected"] == pytest.approx(-0.1, abs=1e-5)
    assert len(list(folder.parent.iterdir())) == 1  # nothing computed anew


@pytest.mark.parametrize("rl", ["orpo", "kto"])
def test_precompute_for_a_method_without_a_reference_pass_is_refused(
    tmp_path: Path, base_config: dict, rl: str
) -> None:
    from axolotl_weave._run import open_session

    config = dpo_config(tmp_path, base_config, "x", rl=rl, precompute_ref_log_probs=True)
    with pytest.raises(ConfigError, match=f"precompute_ref_log_probs applies to rl: dpo.*{rl}"):
        open_session(write_config(tmp_path / "c.yml", config))
