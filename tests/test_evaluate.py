"""`weave evaluate`: the loss it reports is the cross-entropy a hand computation gets with the same
model on the same prepared rows (the eval split, or every row without one), for a full model and
for a LoRA adapter over it; the results file; which model it picks; and bad input (a missing
model folder, a folder that is no adapter, an adapter of another model)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from axolotl_weave_testing import (
    alpaca_rows,
    build_tiny_llama,
    run_weave,
    write_config,
    write_jsonl,
)

IGNORE = -100


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "alpaca.jsonl", alpaca_rows(24))


@pytest.fixture(scope="module")
def config(tiny_llama_dir: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A config writer: the tiny llama on the alpaca rows, with the given keys."""
    folder = tmp_path_factory.mktemp("evaluate")

    def write(name: str, **keys: Any) -> Path:
        data = {
            "base_model": str(tiny_llama_dir),
            "datasets": [{"path": str(data_file), "type": "alpaca"}],
            "sequence_len": 128,
            "micro_batch_size": 3,
            "bf16": False,
            "tf32": False,
            "output_dir": str(folder / name / "out"),
            "dataset_prepared_path": str(folder / "prepared"),
            **keys,
        }
        return write_config(folder / f"{name}.yml", data)

    return write


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter of the tiny llama with random (non-zero) B matrices: it changes the loss."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    lora.init_lora_weights = False
    folder = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, lora).save_pretrained(folder)
    return folder


def weave(*args: str) -> Any:
    """`weave ARGS` in this process; the click result (exit code, output)."""
    from axolotl_weave._cli import CliContext, build_app
    from axolotl_weave._pluginmanager import make_plugin_manager
    from typer.testing import CliRunner

    pm = make_plugin_manager()
    return CliRunner().invoke(build_app(pm), list(args), obj=CliContext(pm))


def prepared_rows(config_path: Path, split: str) -> list[dict[str, Any]]:
    """The rows the training pipeline prepares for this config (`weave preprocess`)."""
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session, preprocess

    data, _ = preprocess(open_session(config_path, [], make_plugin_manager()))
    return list(data.eval if split == "eval" else data.train)


@torch.no_grad()
def hand_loss(model: Any, rows: list[dict[str, Any]]) -> tuple[float, int]:
    """Mean next-token cross-entropy over the labelled tokens of `rows`, one row at a time, in
    float64: (loss, tokens)."""
    model.eval()
    total, count = 0.0, 0
    for row in rows:
        logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1].double()
        target = torch.tensor(row["labels"][1:])
        keep = target != IGNORE
        total += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
        count += int(keep.sum())
    return total / count, count


def results(config_path: Path) -> dict[str, Any]:
    import yaml

    out = Path(yaml.safe_load(config_path.read_text())["output_dir"])
    return json.loads((out / "eval_results.json").read_text())


def test_the_loss_of_the_eval_split_equals_a_hand_computation(
    config: Any, tiny_llama_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    path = config("split", val_set_size=0.25)
    result = weave("evaluate", str(path), "--base-model", str(tiny_llama_dir))
    assert result.exit_code == 0, result.output
    saved = results(path)
    rows = prepared_rows(path, "eval")
    assert saved["split"] == "eval" and saved["rows"] == len(rows) == 6
    expected, tokens = hand_loss(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), rows)
    assert saved["unit"] == "token" and saved["units"] == tokens
    assert saved["eval_loss"] == pytest.approx(expected, rel=1e-4)
    assert saved["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
    assert f"{expected:.4f}" in result.output  # the table
    assert "eval_results.json" in result.output


def test_without_an_eval_split_every_row_counts_and_an_adapter_applies(
    config: Any, tiny_llama_dir: Path, adapter_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = config("whole")
    result = weave("evaluate", str(path), "--lora-model-dir", str(adapter_dir))
    assert result.exit_code == 0, result.output
    saved = results(path)
    rows = prepared_rows(path, "train")
    assert saved["split"] == "train" and saved["rows"] == len(rows) == 24
    assert saved["adapter"] == str(adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    without, _ = hand_loss(base, rows)
    expected, tokens = hand_loss(PeftModel.from_pretrained(base, adapter_dir), rows)
    assert saved["unit"] == "token" and saved["units"] == tokens
    assert saved["eval_loss"] == pytest.approx(expected, rel=1e-4)
    assert abs(expected - without) > 1e-3  # the adapter was applied, not the bare base


def test_with_no_flag_the_model_training_left_in_output_dir_is_evaluated(
    config: Any, tiny_llama_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session
    from axolotl_weave_plugins.inference.evaluate_command import model_overrides

    def chosen(output_dir: Path, **keys: Any) -> tuple[list[str], str, str | None]:
        path = config("choice", output_dir=str(output_dir), **keys)
        cfg = open_session(path, [], make_plugin_manager()).cfg
        return model_overrides(cfg, None, None)

    assert chosen(tmp_path / "nothing") == ([], str(tiny_llama_dir), None)
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    (full / "model.safetensors").write_bytes(b"")  # a saved model: a config and weights
    assert chosen(full) == (["--base_model", str(full)], str(full), None)
    lora_out = tmp_path / "lora"
    lora_out.mkdir()
    (lora_out / "adapter_config.json").write_text("{}")
    overrides, _, adapter = chosen(lora_out, adapter="lora")
    assert overrides == ["--lora_model_dir", str(lora_out)] and adapter == str(lora_out)


# --- bad input ----------------------------------------------------------------------------------


def test_a_missing_model_folder_is_one_message(config: Any, tmp_path: Path) -> None:
    path = config("missing")
    result = run_weave("evaluate", str(path), "--base-model", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert f"--base-model {tmp_path / 'nope'}: no such folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_folder_that_is_no_adapter_is_refused(config: Any, tiny_llama_dir: Path) -> None:
    result = weave("evaluate", str(config("noadapter")), "--lora-model-dir", str(tiny_llama_dir))
    assert result.exit_code == 1
    assert "has no adapter_config.json, so it is not a saved LoRA adapter" in result.output


def test_an_adapter_of_another_model_is_one_message(
    config: Any, tmp_path: Path, adapter_dir: Path
) -> None:
    other = build_tiny_llama(tmp_path / "other", hidden_size=32)
    result = weave("evaluate", str(config("mismatch")), "--base-model", str(other))
    assert result.exit_code == 0, result.output  # the other model alone evaluates
    result = weave(
        "evaluate",
        str(config("mismatch")),
        "--base-model",
        str(other),
        "--lora-model-dir",
        str(adapter_dir),
    )
    assert result.exit_code == 1, result.output
    assert f"the adapter in {adapter_dir} does not fit base_model {other}" in result.output
    assert "Traceback" not in result.output
