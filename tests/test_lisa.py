"""LISA (`lisa_n_layers`, `lisa_step_interval`): only the drawn decoder layers train, redrawn
at each interval; a resumed run draws and trains as the uninterrupted one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_plugins.methods.lisa import draw_layers
from axolotl_weave_testing import (
    SAMPLE_TEXT,
    alpaca_rows,
    build_tiny_llama,
    run_weave,
    train_with,
    two_process_config,
    write_config,
)
from safetensors.torch import load_file

LAYERS = 4


@pytest.fixture(scope="module")
def four_layer_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [SAMPLE_TEXT, *(json.dumps(row) for row in alpaca_rows(64))]
    return build_tiny_llama(tmp_path_factory.mktemp("llama4"), texts, layers=LAYERS)


def lisa_config(base_config: dict, model: Path, **keys: Any) -> dict:
    return {
        **base_config,
        "base_model": str(model),
        "learning_rate": 1e-2,
        "lisa_n_layers": 2,
        "lisa_step_interval": 2,
        "max_steps": 6,
        "logging_steps": 1,
        "lr_scheduler": "constant",
        "seed": 42,
        **keys,
    }


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if name.startswith("model.layers.") else None


class StepRecorder:
    """After each step: which decoder layers' weights changed since the step before, whether
    the embeddings and head did, and which parameters the optimizer holds."""

    def __init__(self, initial: dict[str, torch.Tensor]) -> None:
        self.previous = {k: v.clone() for k, v in initial.items()}
        self.changed_layers: list[set[int]] = []
        self.changed_other: list[set[str]] = []
        self.optimizer_complete: list[bool] = []

    @hookimpl
    def on_step_end(self, model: Any, optimizer: Any) -> None:
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        changed = {k for k, v in weights.items() if not torch.equal(v, self.previous[k])}
        self.changed_layers.append({layer_of(k) for k in changed if layer_of(k) is not None})
        self.changed_other.append({k for k in changed if layer_of(k) is None})
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.optimizer_complete.append(all(id(p) in held for p in model.parameters()))
        self.previous = weights


def test_only_the_drawn_layers_train_and_the_draw_changes_each_interval(
    base_config: dict, four_layer_llama: Path, tmp_path: Path
) -> None:
    config = lisa_config(base_config, four_layer_llama)
    draws = [set(draw_layers(42, interval, LAYERS, 2)) for interval in range(3)]
    assert len({tuple(sorted(d)) for d in draws}) > 1  # the seed gives different draws
    recorder = StepRecorder(load_file(str(four_layer_llama / "model.safetensors")))
    state = train_with(config, tmp_path / "c.yml", recorder)
    assert state.global_step == 6
    expected = [draws[(step - 1) // 2] for step in range(1, 7)]
    assert recorder.changed_layers == expected
    always = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    assert all(other == always for other in recorder.changed_other)
    assert all(recorder.optimizer_complete)  # every layer in the optimizer, whatever the draw
    # the saved model holds every layer's training, the frozen ones too
    saved = load_file(str(Path(config["output_dir"]) / "model.safetensors"))
    start = load_file(str(four_layer_llama / "model.safetensors"))
    trained = {layer_of(k) for k in saved if not torch.equal(saved[k], start[k])} - {None}
    assert trained == set().union(*draws)


def test_another_seed_draws_other_layers() -> None:
    runs = {tuple(tuple(draw_layers(seed, i, 8, 3)) for i in range(4)) for seed in range(5)}
    assert len(runs) == 5
    assert draw_layers(3, 1, 8, 3) == draw_layers(3, 1, 8, 3)


def whole_history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("resume_at", [2, 3])
def test_a_resumed_lisa_run_goes_on_as_if_never_stopped(
    base_config: dict, four_layer_llama: Path, tmp_path: Path, resume_at: int
) -> None:
    """Checkpoints after every step; resuming at an interval's boundary (2) or within one (3)
    ends with the uninterrupted run's losses and weights."""
    straight_out = tmp_path / "straight"
    straight = lisa_config(base_config, four_layer_llama, save_steps=1)
    train_with({**straight, "output_dir": str(straight_out)}, tmp_path / "a.yml")
    assert (
        straight_out / f"checkpoint-{resume_at}" / "lisa" / "frozen_layers.safetensors"
    ).is_file()

    out = tmp_path / "stopped"
    shutil.copytree(straight_out, out)
    for later in out.glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > resume_at:
            shutil.rmtree(later)
    for name in ("model.safetensors", "metrics.jsonl", "trainer_state.json"):
        (out / name).unlink(missing_ok=True)
    resumed = {
        **straight,
        "output_dir": str(out),
        "resume_from_checkpoint": str(out / f"checkpoint-{resume_at}"),
    }
    state = train_with(resumed, tmp_path / "b.yml")
    losses = [r["loss"] for r in state.log_history if "loss" in r]
    expected = [r["loss"] for r in whole_history(straight_out) if "loss" in r]
    assert losses == pytest.approx(expected, rel=1e-5, abs=1e-6)
    whole = load_file(str(straight_out / "model.safetensors"))
    again = load_file(str(out / "model.safetensors"))
    for name, weight in whole.items():
        torch.testing.assert_close(again[name], weight, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"lisa_n_layers": 2}, "lisa_n_layers needs lisa_step_interval"),
        ({"lisa_step_interval": 2}, "lisa_step_interval needs lisa_n_layers"),
        ({"lisa_n_layers": 0, "lisa_step_interval": 2}, "lisa_n_layers"),
        ({"lisa_n_layers": 1, "lisa_step_interval": -1}, "lisa_step_interval"),
        (
            {"lisa_n_layers": 1, "lisa_step_interval": 2, "adapter": "lora"},
            "lisa_n_layers with adapter: lora",
        ),
        (
            {"lisa_n_layers": 1, "lisa_step_interval": 2, "lisa_layers_attribute": "model/x"},
            "lisa_layers_attribute: 'model/x' is not a dotted attribute path",
        ),
        (
            {"lisa_n_layers": 1, "lisa_step_interval": 2, "unfrozen_parameters": ["lm_head"]},
            "lisa_n_layers with unfrozen_parameters is not supported",
        ),
        (
            {"lisa_n_layers": 1, "lisa_step_interval": 2, "ddp_find_unused_parameters": False},
            "lisa_n_layers with ddp_find_unused_parameters: false",
        ),
        (
            {
                "lisa_n_layers": 1,
                "lisa_step_interval": 2,
                "gradient_checkpointing": True,
                "gradient_checkpointing_kwargs": {"use_reentrant": True},
            },
            "lisa_n_layers with gradient_checkpointing_kwargs.use_reentrant: true",
        ),
    ],
)  # fmt: skip
def test_lisa_config_errors(base_config: dict, tmp_path: Path, keys: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "c.yml", {**base_config, **keys}), [])
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"lisa_n_layers": 5}, "lisa_n_layers: 5 exceeds the 4 layers at 'model.layers'"),
        ({"lisa_layers_attribute": "model.blocks"}, "has no layer list at 'model.blocks'"),
    ],
)
def test_lisa_errors_found_at_load(
    base_config: dict, four_layer_llama: Path, tmp_path: Path, keys: dict, message: str
) -> None:
    config = lisa_config(base_config, four_layer_llama, **keys)
    with pytest.raises(ConfigError, match=message):
        train_with(config, tmp_path / "c.yml")


@pytest.mark.slow
def test_lisa_on_two_processes_trains_what_one_process_trains(
    four_layer_llama: Path, tmp_path: Path
) -> None:
    """Under DDP every layer's gradient is reduced, the layers drawn after the first interval's
    too (DDP leaves out what is frozen when it wraps the model; those layers would then train on
    each process's own gradient): 2 processes equal 1 with the same global batch, step for step
    and in the saved weights. With gradient checkpointing, which leaves DDP's search for unused
    parameters on when it is not re-entrant."""
    common = two_process_config(
        four_layer_llama,
        tmp_path,
        gradient_checkpointing=True,
        max_steps=6,
        lisa_n_layers=2,
        lisa_step_interval=2,
        seed=42,
        lr_scheduler="constant",
    )
    one = {**common, "gradient_accumulation_steps": 4, "output_dir": str(tmp_path / "one")}
    whole = train_with(one, tmp_path / "one.yml")
    two = {**common, "output_dir": str(tmp_path / "two")}
    result = run_weave(
        "train", str(write_config(tmp_path / "two.yml", two)), "--num-processes", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lisa: layers [1, 3] train from step 5" in result.stderr
    history = json.loads((tmp_path / "two" / "trainer_state.json").read_text())["log_history"]
    expected = [r["loss"] for r in whole.log_history if "loss" in r]
    assert [r["loss"] for r in history if "loss" in r] == pytest.approx(expected, rel=1e-5)
    saved_one = load_file(str(tmp_path / "one" / "model.safetensors"))
    saved_two = load_file(str(tmp_path / "two" / "model.safetensors"))
    for name, weight in saved_one.items():
        torch.testing.assert_close(saved_two[name], weight, rtol=1e-4, atol=1e-5, msg=name)
