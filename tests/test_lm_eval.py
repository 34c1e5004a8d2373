"""`weave lm-eval`: lm-evaluation-harness on the trained model, offline, with the tiny
multiple-choice task shipped in tests/data/lm_eval (6 local rows, scored by log-likelihood).
The accuracy it writes is the one a hand computation gets with the same model (the trained
adapter, or a `--base-model`); the flags reach the harness (few-shot count, limit, batch size,
output path); and bad input is one message each (no lm_eval, an unknown task, a missing
include path, no trained model, no tasks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave_testing import (
    run_weave_in_process,
    train_tiny_lora,
    train_with,
    write_config,
)

pytest.importorskip("lm_eval")

TASKS = Path(__file__).parent / "data" / "lm_eval"
TASK = "weave_tiny_mc"
ROWS = [json.loads(line) for line in (TASKS / f"{TASK}.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub: the harness and datasets must run from local files only; the task's
    `data_files` is relative to the working directory, the task folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(TASKS)


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA adapter trained into `out` with `lm_eval_tasks` naming the task's YAML file (so
    training ends with the harness: `lm_eval_post_train`, on by default); its config (with
    `_path`), and what training wrote to `out/lm_eval.json` (`_post_train`)."""
    root = tmp_path_factory.mktemp("lm-eval")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(TASKS)  # the task's data_files is relative to the working directory
        config = train_tiny_lora(tiny_llama_dir, root, lm_eval_tasks=[str(TASKS / f"{TASK}.yaml")])
    config.pop("_path")
    post_train = json.loads((root / "out" / "lm_eval.json").read_text())
    path = write_config(root / "lm.yml", config)
    return {**config, "_path": path, "_post_train": post_train}


def weave(*args: str) -> Any:
    """`weave ARGS` in this process; the click result (exit code, output)."""
    from axolotl_weave._cli import CliContext, build_app
    from axolotl_weave._pluginmanager import make_plugin_manager
    from typer.testing import CliRunner

    pm = make_plugin_manager()
    return CliRunner().invoke(build_app(pm), list(args), obj=CliContext(pm))


@torch.no_grad()
def hand_accuracy(model: Any, tokenizer: Any) -> float:
    """The task's zero-shot `acc`: for each row, whether the choice with the highest summed
    log-probability after "Question: ...\\nAnswer:" (with the harness's " " before it, split
    off the context's tokens as the harness splits them) is the answer."""
    model.eval()
    right = 0
    for row in ROWS:
        context = f"Question: {row['question']}\nAnswer:"
        start = len(tokenizer.encode(context))
        scores = []
        for choice in row["choices"]:
            ids = tokenizer.encode(f"{context} {choice}")
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            targets = torch.tensor(ids[1:])
            per_token = logprobs.gather(1, targets[:, None])[:, 0]
            scores.append(float(per_token[start - 1 :].sum()))
        right += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return right / len(ROWS)


@pytest.fixture(scope="module")
def adapter_accuracy(trained: dict[str, Any], tiny_llama_dir: Path) -> float:
    """The hand-computed accuracy of the trained adapter over the tiny llama."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = PeftModel.from_pretrained(base, trained["output_dir"])
    return hand_accuracy(model, AutoTokenizer.from_pretrained(tiny_llama_dir))


def test_the_trained_adapter_scores_the_accuracy_a_hand_computation_gets(
    trained: dict[str, Any], adapter_accuracy: float
) -> None:
    result = run_weave_in_process("lm-eval", str(trained["_path"]), "--include-path", str(TASKS))
    assert result.returncode == 0, result.stderr
    out = Path(trained["output_dir"])
    saved = json.loads((out / "lm_eval.json").read_text())
    assert saved["weave"]["adapter"] == str(out)
    assert saved["weave"]["tasks"] == trained["lm_eval_tasks"]  # the YAML file's path
    assert saved["n-samples"][TASK] == {"original": len(ROWS), "effective": len(ROWS)}
    assert saved["n-shot"][TASK] == 0
    assert saved["config"]["batch_size"] == 8  # lm_eval_batch_size's default
    acc = saved["results"][TASK]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert acc == pytest.approx(adapter_accuracy)
    assert TASK in result.stdout and f"{acc:.4f}" in result.stdout  # the table
    assert "lm_eval.json" in result.stdout


def test_training_with_lm_eval_tasks_scores_the_trained_model_when_it_ends(
    trained: dict[str, Any], tiny_llama_dir: Path, adapter_accuracy: float
) -> None:
    saved = trained["_post_train"]
    out = trained["output_dir"]
    tasks = trained["lm_eval_tasks"]
    assert saved["weave"] == {"model": str(tiny_llama_dir), "adapter": out, "tasks": tasks}
    assert saved["n-samples"][TASK] == {"original": len(ROWS), "effective": len(ROWS)}
    assert saved["results"][TASK]["acc,none"] == pytest.approx(adapter_accuracy)


def test_the_flags_reach_the_harness_and_nothing_uses_the_network(
    trained: dict[str, Any], tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from transformers import AutoModelForCausalLM, AutoTokenizer

    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[1:] or args)
        raise OSError("no network in this test")

    target = tmp_path / "scores.json"
    args = ["--base-model", str(tiny_llama_dir), "--include-path", str(TASKS)]
    with monkeypatch.context() as offline_only:
        offline_only.setattr(socket.socket, "connect", refuse)
        offline_only.setattr(socket, "getaddrinfo", refuse)
        flags = [*args, "--tasks", TASK, "--output", str(target)]
        result = weave("lm-eval", str(trained["_path"]), *flags)
    assert result.exit_code == 0, result.output
    assert attempts == []  # no metric, dataset or model fetched (or even looked up)
    saved = json.loads(target.read_text())
    assert saved["weave"] == {"model": str(tiny_llama_dir), "adapter": None, "tasks": [TASK]}
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    expected = hand_accuracy(base, AutoTokenizer.from_pretrained(tiny_llama_dir))
    assert saved["results"][TASK]["acc,none"] == pytest.approx(expected)

    shots = [*args, "--tasks", f"{TASK}:2", "--limit", "3", "--batch-size", "2"]
    result = weave("lm-eval", str(trained["_path"]), *shots, "--output", str(target))
    assert result.exit_code == 0, result.output
    saved = json.loads(target.read_text())
    assert saved["n-shot"][TASK] == 2
    assert saved["n-samples"][TASK] == {"original": len(ROWS), "effective": 3}
    assert saved["config"]["batch_size"] == 2 and saved["config"]["limit"] == 3

    # auto: the harness finds the largest batch that fits; the same scores
    result = weave("lm-eval", str(trained["_path"]), *args, "--batch-size", "auto:2")
    assert result.exit_code == 0, result.output
    saved = json.loads((Path(trained["output_dir"]) / "lm_eval.json").read_text())
    assert saved["config"]["batch_size"] == "auto:2"
    assert saved["results"][TASK]["acc,none"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--lm_eval_batch_size", "big"], "lm_eval_batch_size"),
    ],
)
def test_a_bad_batch_size_names_what_is_valid(
    trained: dict[str, Any], args: list[str], where: str
) -> None:
    result = weave("lm-eval", str(trained["_path"]), *args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert where in text and "auto (the largest that fits)" in text
    assert "Traceback" not in result.output


# --- bad input ----------------------------------------------------------------------------------


def test_without_lm_eval_the_message_names_the_extra(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    result = weave("lm-eval", str(trained["_path"]))
    assert result.exit_code == 4, result.output
    assert "pip install 'axolotl-weave[lm-eval]'" in result.output
    assert "Traceback" not in result.output


def test_training_with_lm_eval_tasks_but_without_lm_eval_stops_before_it_starts(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from axolotl_weave import MissingDependencyError

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    config = {k: v for k, v in trained.items() if not k.startswith("_")}
    config["output_dir"] = str(tmp_path / "out")
    with pytest.raises(MissingDependencyError) as caught:
        train_with(config, tmp_path / "train.yml")
    assert "lm_eval_post_train: false" in str(caught.value)
    assert "pip install 'axolotl-weave[lm-eval]'" in str(caught.value)
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert written <= {"config.yml"}  # no step, no adapter: stopped before training


def test_an_unknown_task_is_one_message_with_the_close_names() -> None:
    from axolotl_weave import ConfigError
    from axolotl_weave_plugins.inference._lm_eval import check_tasks, parse_tasks
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=str(TASKS), include_defaults=False)
    with pytest.raises(ConfigError) as caught:
        check_tasks(local, parse_tasks(["weave_tiny_m,nonsense_xyz:3"], "--tasks"), "--tasks")
    message = str(caught.value)
    assert "unknown lm-eval tasks 'weave_tiny_m' (did you mean weave_tiny_mc?)" in message
    assert "'nonsense_xyz'" in message and "lm-eval ls tasks" in message
    check_tasks(local, parse_tasks([f"{TASK}:1", "weave_tiny_*"], "--tasks"), "--tasks")


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--include-path", "/no/such/tasks"], 1, "--include-path /no/such/tasks: no such folder"),
        (["--tasks", " , "], 2, "--tasks: no lm-eval task named"),
        (["--tasks", f"{TASK},{TASK}:1"], 2, f"task '{TASK}' is named twice"),
    ],
)
def test_bad_flags_are_one_message(
    trained: dict[str, Any], extra: list[str], code: int, message: str
) -> None:
    flags = ["--base-model", trained["base_model"], "--include-path", str(TASKS)]
    result = weave("lm-eval", str(trained["_path"]), *flags, *extra)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_no_trained_model_and_no_base_model_is_refused(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    config = {k: v for k, v in trained.items() if not k.startswith("_")}
    config.update(output_dir=str(tmp_path / "empty"), lm_eval_tasks=[TASK])
    path = write_config(tmp_path / "c.yml", config)
    result = weave("lm-eval", str(path), "--include-path", str(TASKS))
    assert result.exit_code == 1, result.output
    assert "no trained model in output_dir" in result.output
    assert "--base-model" in result.output
