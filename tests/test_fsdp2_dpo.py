"""DPO with LoRA under FSDP2 on 2 CPU processes (gloo): the same losses, rewards and adapter as
one plain process with the same global batch (2 pairs a micro-batch x 2 processes = 2 pairs x 2
accumulated micro-batches), for 2 steps.

The 2-process run costs about half a minute on two cores; the 1-process one runs in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from axolotl_weave_testing import run_weave, train_with, write_config, write_jsonl
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

PAIRS = [
    {"system": "", "question": "Add 2 and 3.", "chosen": "5", "rejected": "6"},
    {"system": "Be brief.", "question": "Reverse cat.", "chosen": "tac", "rejected": "cat"},
    {"system": "", "question": "Add 4 and 4.", "chosen": "8", "rejected": "Maybe 44, or 9"},
    {"system": "Be kind.", "question": "Reverse dog.", "chosen": "god", "rejected": "dog"},
]


def metrics(output_dir: Path) -> list[dict[str, float]]:
    """The logged training records of a finished run (its `metrics.jsonl`)."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


@pytest.fixture(scope="module")
def runs(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(one plain process, FSDP2 on 2 processes) of the same DPO + LoRA config."""
    folder = tmp_path_factory.mktemp("fsdp2-dpo")
    rows = [PAIRS[i % 4] | {"question": f"{PAIRS[i % 4]['question']} ({i})"} for i in range(16)]
    config = {
        "base_model": str(tiny_llama_dir),
        "datasets": [
            {"path": str(write_jsonl(folder / "pairs.jsonl", rows)), "type": "chatml.intel"}
        ],
        "rl": "dpo",
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "sequence_len": 128,
        "micro_batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "bf16": False,
        "tf32": False,
        "dataset_prepared_path": str(folder / "prepared"),
    }
    one = folder / "one"
    train_with(
        {**config, "gradient_accumulation_steps": 2, "output_dir": str(one)}, folder / "one.yml"
    )
    two = folder / "fsdp-2"
    fsdp = {**config, "fsdp_version": 2, "output_dir": str(two)}
    result = run_weave(
        "train", str(write_config(folder / "fsdp.yml", fsdp)), "--num-processes", "2"
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-6000:])
    return one, two


def test_dpo_lora_on_two_fsdp2_processes_equals_one_process(runs: tuple[Path, Path]) -> None:
    one, two = runs
    records_one, records_two = metrics(one), metrics(two)
    assert [r["step"] for r in records_two] == [1, 2]
    for a, b in zip(records_one, records_two, strict=True):
        for key in ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/margins"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert records_two[-1]["rewards/margins"] != 0  # the adapter moved the policy
    saved = [load_file(str(d / "adapter_model.safetensors")) for d in (one, two)]
    assert saved[0].keys() == saved[1].keys() and saved[0]
    for key in saved[0]:
        torch.testing.assert_close(saved[1][key], saved[0][key], rtol=1e-4, atol=1e-5, msg=key)
    assert not (two / "model.safetensors").exists()  # the adapter alone
