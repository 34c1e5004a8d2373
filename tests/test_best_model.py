"""The best evaluation (`metric_for_best_model`, `greater_is_better`): early stopping after
`early_stopping_patience` evaluations without improvement, the best checkpoint kept from
rotation and loaded at the end (`load_best_model_at_end`), `save_strategy: best`, a resume that
goes on counting, and the configs refused.

The eval loss of these runs falls at every evaluation (the eval rows are among the trained
ones), so `greater_is_better: true` makes every evaluation after the first a worse one: the
first is then the best, whatever the numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError
from axolotl_weave._run import open_session
from axolotl_weave_testing import run_weave, train_with, two_process_config, write_config
from safetensors.torch import load_file


def best_config(base_config: dict, **keys: Any) -> dict:
    return {
        **base_config,
        "val_set_size": 4,
        "eval_steps": 1,
        "max_steps": 8,
        "learning_rate": 1e-2,
        "lr_scheduler": "constant",
        "logging_steps": 1,
        **keys,
    }


def history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def eval_losses(out: Path) -> list[float]:
    return [r["eval_loss"] for r in history(out) if "eval_loss" in r]


def saved_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def assert_holds_checkpoint(out: Path, step: int) -> None:
    """The saved model's weights are exactly those of `checkpoint-<step>`."""
    saved = load_file(str(out / f"checkpoint-{step}" / "trainable.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    assert saved and set(saved) <= set(final)
    for name in saved:
        torch.testing.assert_close(final[name], saved[name], rtol=0, atol=0, msg=name)


def test_the_eval_loss_of_these_runs_falls(base_config: dict, tmp_path: Path) -> None:
    """What the other tests rest on; with the default (lower is better) every evaluation is a
    new best, so early stopping never ends the run."""
    config = best_config(base_config, max_steps=4, early_stopping_patience=1)
    state = train_with(config, tmp_path / "c.yml")
    losses = eval_losses(Path(config["output_dir"]))
    assert state.global_step == 4 and len(losses) == 4
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_early_stopping_ends_the_run_and_loads_the_best_model(
    base_config: dict, tmp_path: Path
) -> None:
    config = best_config(base_config, greater_is_better=True, early_stopping_patience=2)
    out = Path(config["output_dir"])
    state = train_with(config, tmp_path / "c.yml")
    assert state.global_step == 3  # step 1 best, steps 2 and 3 not: patience 2 spent
    assert len(eval_losses(out)) == 3
    assert saved_steps(out) == [1]  # the best evaluation was checkpointed when it came
    assert_holds_checkpoint(out, 1)


def test_the_best_checkpoint_outlives_rotation_and_is_loaded_at_the_end(
    base_config: dict, tmp_path: Path
) -> None:
    config = best_config(
        base_config,
        max_steps=4,
        greater_is_better=True,
        load_best_model_at_end=True,
        save_steps=1,
        save_total_limit=1,
    )
    out = Path(config["output_dir"])
    train_with(config, tmp_path / "c.yml")
    assert saved_steps(out) == [1, 4]  # the newest, and the best
    assert_holds_checkpoint(out, 1)
    without = best_config(
        base_config,
        max_steps=4,
        greater_is_better=True,
        save_steps=1,
        save_total_limit=1,
        output_dir=str(tmp_path / "plain"),
    )
    train_with(without, tmp_path / "p.yml")
    assert saved_steps(tmp_path / "plain") == [4]
    assert_holds_checkpoint(tmp_path / "plain", 4)


@pytest.mark.parametrize(("greater", "expected"), [(False, [4]), (True, [1])])
def test_save_strategy_best_checkpoints_each_new_best_only(
    base_config: dict, tmp_path: Path, greater: bool, expected: list[int]
) -> None:
    config = best_config(
        base_config,
        max_steps=4,
        save_strategy="best",
        metric_for_best_model="loss",  # eval_loss
        greater_is_better=greater,
        save_total_limit=1,
    )
    out = Path(config["output_dir"])
    train_with(config, tmp_path / "c.yml")
    assert saved_steps(out) == expected
    state = json.loads((out / f"checkpoint-{expected[0]}" / "trainer_state.json").read_text())
    assert state["global_step"] == expected[0]


def test_a_resumed_run_counts_the_evaluations_before_its_checkpoint(
    base_config: dict, tmp_path: Path
) -> None:
    """Resumed at step 2 (evaluations 1 best, 2 not), the run stops at step 4 as the
    uninterrupted one does: the count goes on from the log history."""
    keys = {"greater_is_better": True, "early_stopping_patience": 3, "save_steps": 1}
    straight = best_config(base_config, **keys)
    straight_out = Path(straight["output_dir"])
    assert train_with(straight, tmp_path / "a.yml").global_step == 4
    out = tmp_path / "stopped"
    shutil.copytree(straight_out, out)
    for name in ("checkpoint-3", "checkpoint-4", "model.safetensors", "trainer_state.json"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    resumed = {**straight, "output_dir": str(out), "resume_from_checkpoint": "auto"}
    assert train_with(resumed, tmp_path / "b.yml").global_step == 4
    first, again = (load_file(str(o / "model.safetensors")) for o in (straight_out, out))
    for name, weight in first.items():
        torch.testing.assert_close(again[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_a_metric_the_run_does_not_have_is_named(base_config: dict, tmp_path: Path) -> None:
    config = best_config(base_config, metric_for_best_model="accuracy")
    with pytest.raises(ConfigError, match="'eval_accuracy' is not an eval metric.*eval_loss"):
        train_with(config, tmp_path / "c.yml")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"early_stopping_patience": 2, "val_set_size": 0}, "give an eval set"),
        (
            {"save_strategy": "best", "eval_steps": None},
            "set eval_steps, evals_per_epoch or eval_strategy: epoch",
        ),
        (
            {"load_best_model_at_end": True, "save_only_model": True},
            "load_best_model_at_end with save_only_model",
        ),
        (
            {"early_stopping_patience": 1, "save_strategy": "no"},
            "load_best_model_at_end with save_strategy: no",
        ),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
    ],
)
def test_best_model_configs_refused(
    base_config: dict, tmp_path: Path, keys: dict, message: str
) -> None:
    config = best_config(base_config, **keys)
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", config), [])


def test_early_stopping_without_loading_the_best_keeps_the_last_weights(
    base_config: dict, tmp_path: Path
) -> None:
    config = best_config(
        base_config,
        greater_is_better=True,
        early_stopping_patience=1,
        load_best_model_at_end=False,
        save_strategy="no",
    )
    out = Path(config["output_dir"])
    assert train_with(config, tmp_path / "c.yml").global_step == 2
    assert saved_steps(out) == []


@pytest.mark.parametrize(
    ("keys", "evaluated"),
    [
        ({"eval_strategy": "epoch"}, [14, 28]),
        ({"evaluation_strategy": "epoch"}, [14, 28]),  # Axolotl's older name
        ({"eval_strategy": "no"}, []),
        ({"eval_steps": 10}, [10, 20, 28]),
    ],
)
def test_eval_strategy_says_when_to_evaluate(
    base_config: dict, tmp_path: Path, keys: dict, evaluated: list[int]
) -> None:
    """28 training rows in micro-batches of 2: 14 steps an epoch, 2 epochs."""
    config = {
        **best_config(base_config, eval_steps=None, max_steps=None, num_epochs=2),
        "learning_rate": 1e-3,
        **keys,
    }
    train_with(config, tmp_path / "c.yml")
    steps = [r["step"] for r in history(Path(config["output_dir"])) if "eval_loss" in r]
    assert steps == evaluated


def test_save_strategy_best_with_epoch_evaluations_validates(
    base_config: dict, tmp_path: Path
) -> None:
    """Axolotl's diffusion SFT example: `save_strategy: best`, `eval_strategy: epoch`."""
    config = best_config(base_config, eval_steps=None, save_strategy="best", eval_strategy="epoch")
    cfg = open_session(write_config(tmp_path / "c.yml", config), []).cfg
    assert (cfg.save_strategy, cfg.eval_strategy) == ("best", "epoch")
    with pytest.raises(ConfigError, match="eval_strategy: no turns off"):
        open_session(write_config(tmp_path / "c.yml", {**config, "eval_strategy": "no"}), [])


@pytest.mark.slow
def test_early_stopping_on_two_processes_stops_and_loads_as_one_process(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Every process takes the same (reduced) evaluations, so all stop after the same step and
    load the same best checkpoint: 2 processes end as 1 with the same global batch."""
    common = two_process_config(
        tiny_llama_dir,
        tmp_path,
        val_set_size=4,
        eval_steps=1,
        max_steps=8,
        learning_rate=1e-2,
        lr_scheduler="constant",
        greater_is_better=True,
        early_stopping_patience=2,
    )
    one = {**common, "gradient_accumulation_steps": 4, "output_dir": str(tmp_path / "one")}
    assert train_with(one, tmp_path / "one.yml").global_step == 3
    two = {**common, "output_dir": str(tmp_path / "two")}
    result = run_weave(
        "train", str(write_config(tmp_path / "two.yml", two)), "--num-processes", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert eval_losses(tmp_path / "two") == pytest.approx(eval_losses(tmp_path / "one"), rel=1e-5)
    assert saved_steps(tmp_path / "two") == [1]
    assert_holds_checkpoint(tmp_path / "two", 1)
    first = load_file(str(tmp_path / "one" / "model.safetensors"))
    second = load_file(str(tmp_path / "two" / "model.safetensors"))
    for name, weight in first.items():
        torch.testing.assert_close(second[name], weight, rtol=1e-4, atol=1e-5, msg=name)
