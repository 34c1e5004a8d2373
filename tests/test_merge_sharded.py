"""`weave merge-sharded-fsdp-weights`: the sharded checkpoint of a 2-process FSDP2 LoRA run
(each process its shard, `checkpoint-N/sharded/`) becomes the adapter the end of the run saved,
weight for weight; what is not a sharded checkpoint is refused with one message.

One 2-process run (about half a minute on two cores) serves every test; the merge runs in this
process through the CLI application (a fresh plugin manager, no process group).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave._cli import CliContext, build_app
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave_testing import alpaca_rows, run_weave, write_config, write_jsonl
from safetensors.torch import load_file
from typer.testing import CliRunner

pytestmark = pytest.mark.slow


def weave(*args: str) -> Any:
    """`weave ARGS` in this process: (exit code, stdout + stderr)."""
    pm = make_plugin_manager()
    result = CliRunner().invoke(build_app(pm), list(args), obj=CliContext(pm))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA fine-tune under FSDP2 on 2 processes, 2 steps, checkpointed at step 2."""
    folder = tmp_path_factory.mktemp("merge-sharded")
    config = {
        "base_model": str(tiny_llama_dir),
        "datasets": [
            {"path": str(write_jsonl(folder / "a.jsonl", alpaca_rows(16))), "type": "alpaca"}
        ],
        "sequence_len": 128,
        "micro_batch_size": 2,
        "max_steps": 2,
        "save_steps": 2,
        "learning_rate": 1e-2,
        "bf16": False,
        "tf32": False,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "fsdp_version": 2,
        "output_dir": str(folder / "out"),
        "dataset_prepared_path": str(folder / "prepared"),  # not the checkout's folder
    }
    result = run_weave(
        "train", str(write_config(folder / "fsdp.yml", config)), "--num-processes", "2"
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return folder / "out"


def test_merged_checkpoint_is_the_adapter_the_run_saved(lora_run: Path) -> None:
    checkpoint = lora_run / "checkpoint-2"
    assert sorted(p.name for p in (checkpoint / "sharded").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    code, output = weave("merge-sharded-fsdp-weights", str(checkpoint))
    assert code == 0, output
    merged = lora_run / "checkpoint-2-merged"
    assert f"into {merged}" in " ".join(output.split())
    saved, rebuilt = (load_file(str(d / "adapter_model.safetensors")) for d in (lora_run, merged))
    assert saved.keys() == rebuilt.keys() and len(saved) > 0
    for key in saved:
        torch.testing.assert_close(rebuilt[key], saved[key], rtol=0, atol=0, msg=key)
    adapters = [json.loads((d / "adapter_config.json").read_text()) for d in (lora_run, merged)]
    for adapter in adapters:
        adapter["target_modules"] = sorted(adapter["target_modules"])
    assert adapters[0] == adapters[1]
    assert (merged / "tokenizer.json").is_file()
    assert not (merged / "model.safetensors").exists()  # the adapter alone, as the run saved it


def test_output_dir_option_and_an_output_dir_for_its_newest_checkpoint(
    lora_run: Path, tmp_path: Path
) -> None:
    target = tmp_path / "merged"
    code, output = weave("merge-sharded-fsdp-weights", str(lora_run), "--output-dir", str(target))
    assert code == 0, output
    assert "checkpoint-2" in output
    rebuilt = load_file(str(target / "adapter_model.safetensors"))
    saved = load_file(str(lora_run / "adapter_model.safetensors"))
    assert all(torch.equal(rebuilt[key], saved[key]) for key in saved)


def test_what_is_not_a_sharded_checkpoint_is_refused(lora_run: Path, tmp_path: Path) -> None:
    code, output = weave("merge-sharded-fsdp-weights", str(tmp_path / "missing"))
    assert code != 0 and "is not a folder" in output and "Traceback" not in output
    code, output = weave("merge-sharded-fsdp-weights", str(tmp_path))
    assert code != 0 and "is not a checkpoint (no trainer_state.json)" in output
    whole = tmp_path / "checkpoint-3"  # a DDP / single-device checkpoint
    whole.mkdir()
    (whole / "trainer_state.json").write_text("{}")
    (whole / "trainable.safetensors").write_bytes(b"")
    code, output = weave("merge-sharded-fsdp-weights", str(whole))
    assert code != 0 and "is not a sharded FSDP2 checkpoint" in " ".join(output.split())
    assert "Traceback" not in output
    copy = tmp_path / "elsewhere" / "checkpoint-2"  # shards without the run's config.yml
    copy.mkdir(parents=True)
    (copy / "trainer_state.json").write_text("{}")
    (copy / "sharded").mkdir()
    (copy / "sharded" / ".metadata").write_bytes(
        (lora_run / "checkpoint-2" / "sharded" / ".metadata").read_bytes()
    )
    code, output = weave("merge-sharded-fsdp-weights", str(copy))
    assert code != 0 and "--config CONFIG" in " ".join(output.split())
    other = tmp_path / "other"  # the run's config with a bigger LoRA rank: the shards misfit
    code, output = weave(
        "merge-sharded-fsdp-weights", str(lora_run), "--output-dir", str(other), "--lora_r", "8"
    )
    assert code != 0 and "has shape" in output and "another config" in " ".join(output.split())
    assert not other.exists()
