"""`curriculum_sampling: true` (Axolotl's key): the rows train in the order the datasets give
them, every epoch, unpacked, packed and as GRPO prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from axolotl_weave import hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_testing import train_with, write_config, write_jsonl


def numbered_rows(first: int, count: int) -> list[dict[str, str]]:
    """Alpaca rows whose output is their number (one token per digit)."""
    return [
        {"instruction": "Count.", "input": "", "output": str(n)}
        for n in range(first, first + count)
    ]


class SeenOutputs:
    """Records the trained text of every training micro-batch row, in the order trained."""

    def __init__(self, tokenizer_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.seen: list[str] = []

    @hookimpl(wrapper=True)
    def training_step(self, window: list[dict[str, Any]]) -> Any:
        for batch in window:
            for labels in batch["labels"].tolist():
                trained = [t for t in labels if t >= 0 and t != self.tokenizer.eos_token_id]
                self.seen.append(self.tokenizer.decode(trained).strip())
        return (yield)


@pytest.fixture
def two_files(tmp_path: Path) -> list[dict[str, str]]:
    first = write_jsonl(tmp_path / "first.jsonl", numbered_rows(0, 6))
    second = write_jsonl(tmp_path / "second.jsonl", numbered_rows(6, 6))
    return [{"path": str(first), "type": "alpaca"}, {"path": str(second), "type": "alpaca"}]


def trained_order(
    base_config: dict, tiny_llama_dir: Path, tmp_path: Path, datasets: list, **keys: Any
) -> list[str]:
    seen = SeenOutputs(tiny_llama_dir)
    config = {
        **base_config,
        "datasets": datasets,
        "micro_batch_size": 2,
        "max_steps": 12,  # two epochs of 6 micro-batches
        "output_dir": str(tmp_path / "out"),
        **keys,
    }
    train_with(config, tmp_path / "c.yml", seen)
    return seen.seen


def test_curriculum_sampling_trains_the_rows_in_order_every_epoch(
    base_config: dict, tiny_llama_dir: Path, tmp_path: Path, two_files: list
) -> None:
    order = trained_order(
        base_config, tiny_llama_dir, tmp_path, two_files, curriculum_sampling=True
    )
    assert order == [str(n) for n in range(12)] * 2


def test_without_it_the_rows_are_shuffled(
    base_config: dict, tiny_llama_dir: Path, tmp_path: Path, two_files: list
) -> None:
    order = trained_order(base_config, tiny_llama_dir, tmp_path, two_files)
    assert sorted(order[:12], key=int) == [str(n) for n in range(12)]
    assert order[:12] != [str(n) for n in range(12)]
    assert order[:12] != order[12:]  # another permutation each epoch


def test_packed_bins_come_in_order(
    base_config: dict, tiny_llama_dir: Path, tmp_path: Path, two_files: list
) -> None:
    """With sample_packing_sequentially too, the rows fill the bins in their order (Axolotl's
    fully sequential packing)."""
    seen = trained_order(
        base_config,
        tiny_llama_dir,
        tmp_path,
        two_files,
        curriculum_sampling=True,
        sample_packing=True,
        sample_packing_sequentially=True,
        sequence_len=128,
        max_steps=2,
    )
    digits = "".join(seen).replace(" ", "")
    assert digits.startswith("01234567")


def test_curriculum_sampling_keeps_the_merged_datasets_in_order(
    base_config: dict, tmp_path: Path
) -> None:
    config = {**base_config, "curriculum_sampling": True}
    cfg = open_session(write_config(tmp_path / "c.yml", config)).cfg
    assert cfg.shuffle_merged_datasets is False


def test_grpo_prompts_come_in_order_with_curriculum_sampling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each prompt twice (num_generations 2), in the dataset's order; shuffled without it."""
    import axolotl_weave_plugins.rl._grpo as grpo

    read: list[int] = []
    monkeypatch.setattr(grpo, "read_rows", lambda dataset, rows, columns: read.extend(rows))
    monkeypatch.setattr(grpo, "collate", lambda *args, **kwargs: None)

    def first_epoch(shuffle: bool) -> list[int]:
        read.clear()
        plan = grpo.PromptGroups(list(range(8)), 4, 1, 2, 1, 0, {}, 42, 0, 1, shuffle=shuffle)
        list(plan.micro_batches(0))
        return list(read)

    assert first_epoch(False) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    assert first_epoch(True) != first_epoch(False)
