"""Faults during training stop safely and keep what can resume: a NaN or inf loss or gradient,
the loss watchdog, SIGTERM and SIGINT, a damaged checkpoint, a resume with other settings, and
an output folder that holds another run. Each is run as a user runs it (the `weave` CLI, output
piped) and checked for the exit code, the message and what was kept on disk: the signals against a
real `weave` process, and one run whose piped output is checked, in a subprocess; the others call
the same CLI entry point in this process (`run_weave_in_process`: the same exit code, stdout and
stderr, without a fresh interpreter's seconds of imports)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave_testing import run_weave, run_weave_in_process, write_config

SLOW_PLUGIN = """
import time
from axolotl_weave import hookimpl

@hookimpl
def on_step_end(state):
    time.sleep(0.4)  # time for the test to signal the run mid-training
"""


FAULT_PLUGIN = '''
import math, os
import torch
from axolotl_weave import hookimpl

FAULT, AT = os.environ["WEAVE_TEST_FAULT"], int(os.environ["WEAVE_TEST_FAULT_STEP"])

@hookimpl(wrapper=True)
def training_step(model, state):
    """At step AT, a weight turns NaN before the passes (the loss is NaN), or a gradient
    overflows after them (the loss is finite, the gradient norm is not)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if FAULT == "weight" and state.global_step + 1 == AT:
        with torch.no_grad():
            params[-1].fill_(math.nan)
    metrics = yield
    if FAULT == "gradient" and state.global_step + 1 == AT:
        params[0].grad.view(-1)[0] = math.inf
    return metrics
'''


weave = run_weave_in_process  # `weave ARGS` through the CLI's entry point, in this process


def faulty(tmp_path: Path, fault: str, step: int) -> dict[str, str]:
    """The environment of a run whose step `step` goes wrong (`fault`: weight or gradient)."""
    (tmp_path / "inject_fault.py").write_text(FAULT_PLUGIN)
    return {
        "PYTHONPATH": str(tmp_path),
        "WEAVE_TEST_FAULT": fault,
        "WEAVE_TEST_FAULT_STEP": str(step),
    }


def error_of(result: subprocess.CompletedProcess) -> str:
    """The one `error:` message, checked to come without a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr, result.stderr
    return result.stderr[result.stderr.index("error:") :]


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def losses(output_dir: Path) -> dict[int, float]:
    """Step -> training loss, from metrics.jsonl (which must be strict JSON: no bare NaN)."""
    records = [
        json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics"))
        for line in (output_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def all_finite(folder: Path) -> bool:
    """Whether every tensor of every safetensors file under `folder` is finite."""
    import torch
    from safetensors.torch import load_file

    return all(
        bool(torch.isfinite(t).all())
        for file in folder.rglob("*.safetensors")
        for t in load_file(str(file)).values()
    )


@pytest.fixture
def config(base_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Eight logged steps, a checkpoint every two."""
    return {**base_config, "max_steps": 8, "save_steps": 2, "logging_steps": 1}


# -- NaN, inf and the loss watchdog ----------------------------------------------------------------


@pytest.mark.parametrize(("fault", "what"), [("weight", "loss"), ("gradient", "gradient norm")])
def test_a_nan_loss_or_inf_gradient_stops_before_the_step_keeping_the_last_good_checkpoint(
    config: dict[str, Any], tmp_path: Path, fault: str, what: str
) -> None:
    path = write_config(tmp_path / "c.yml", {**config, "plugins": ["inject_fault"]})
    result = weave("train", str(path), cwd=tmp_path, env=faulty(tmp_path, fault, 5))
    assert result.returncode == 1, result.stderr
    message = error_of(result)
    assert f"step 5: the {what} is " in message, message
    assert "learning_rate" in message and "checkpoint-4" in message, message
    out = Path(config["output_dir"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "model.safetensors").exists()  # no NaN model saved
    assert all_finite(out)  # every checkpoint kept is a good one
    assert max(losses(out)) == 4  # metrics.jsonl stays valid JSON, the faulty step unlogged
    assert json.loads((out / "run_status.json").read_text())["status"] == "failed"


def test_metrics_jsonl_writes_a_non_finite_value_as_null(tmp_path: Path) -> None:
    from axolotl_weave import TrainState
    from axolotl_weave_plugins.loggers import jsonl

    state = TrainState(output_dir=tmp_path, max_steps=1, steps_per_epoch=1)
    jsonl.on_log(state, {"loss": math.nan, "grad_norm": math.inf, "lr": 0.1})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 0, "loss": None, "grad_norm": None, "lr": 0.1}


def test_the_loss_watchdog_stops_a_run_whose_loss_stays_too_high(
    config: dict[str, Any], tmp_path: Path
) -> None:
    watched = {**config, "loss_watchdog_threshold": 0.001, "loss_watchdog_patience": 3}
    result = weave("train", str(write_config(tmp_path / "c.yml", watched)), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    message = error_of(result)
    assert "loss_watchdog_threshold" in message and "3 steps" in message, message
    out = Path(config["output_dir"])
    assert max(losses(out)) == 3  # stopped at the third step over the threshold
    assert (out / "checkpoint-2").is_dir() and not (out / "model.safetensors").exists()


# -- signals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_a_resume_continues_as_if_uninterrupted(
    config: dict[str, Any], tmp_path: Path, signum: int, code: int
) -> None:
    (tmp_path / "slow_steps.py").write_text(SLOW_PLUGIN)
    steady = {**config, "save_steps": 100, "output_dir": str(tmp_path / "steady")}

    out = tmp_path / "interrupted"
    interrupted = {**steady, "output_dir": str(out), "plugins": ["slow_steps"]}
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    process = (
        subprocess.Popen(
            [sys.executable, "-m", "axolotl_weave._cli", "train", str(tmp_path / "i.yml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        if write_config(tmp_path / "i.yml", interrupted)
        else None
    )
    assert process is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    saved = sorted(out.glob("checkpoint-*"))
    assert len(saved) == 1, (saved, stderr)
    assert f"{saved[0]}" in stderr and "resume_from_checkpoint" in stderr, stderr
    assert not (out / "model.safetensors").exists()

    if signum == signal.SIGINT:
        return  # resuming is the same as after SIGTERM, checked there
    assert weave("train", str(write_config(tmp_path / "s.yml", steady))).returncode == 0
    resumed = {**interrupted, "plugins": [], "resume_from_checkpoint": "auto"}
    result = weave("train", str(write_config(tmp_path / "r.yml", resumed)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected, got = losses(tmp_path / "steady"), losses(out)
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert math.isclose(got[step], loss, rel_tol=1e-5), (step, got[step], loss)


# -- checkpoints that cannot be resumed as they are ------------------------------------------------


def test_a_damaged_checkpoint_is_skipped_by_auto_and_named_when_explicit(
    config: dict[str, Any], tmp_path: Path
) -> None:
    first = {**config, "max_steps": 4}
    assert weave("train", str(write_config(tmp_path / "a.yml", first))).returncode == 0
    out = Path(config["output_dir"])
    damaged = out / "checkpoint-4" / "trainable.safetensors"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    explicit = {**config, "resume_from_checkpoint": str(out / "checkpoint-4")}
    result = weave("train", str(write_config(tmp_path / "b.yml", explicit)))
    assert result.returncode == 1
    assert str(damaged) in error_of(result) and "damaged" in error_of(result)

    auto = {**config, "resume_from_checkpoint": "auto"}
    result = weave("train", str(write_config(tmp_path / "c.yml", auto)))
    assert result.returncode == 0, result.stderr
    assert "skips" in result.stderr and "checkpoint-4" in result.stderr, result.stderr
    assert "resumed from" in result.stdout and "checkpoint-2 at step 2" in result.stdout


def test_resuming_with_other_batch_settings_is_refused_unless_allowed(
    config: dict[str, Any], tmp_path: Path
) -> None:
    first = {**config, "max_steps": 2}
    assert weave("train", str(write_config(tmp_path / "a.yml", first))).returncode == 0
    changed = {**config, "resume_from_checkpoint": "auto", "micro_batch_size": 4}
    result = weave("train", str(write_config(tmp_path / "b.yml", changed)))
    assert result.returncode == 2
    message = error_of(result)
    assert "micro_batch_size: 2 then, 4 now" in message and "allow_resume_changes" in message
    allowed = {**changed, "allow_resume_changes": True}
    assert weave("train", str(write_config(tmp_path / "c.yml", allowed))).returncode == 0


# -- an output folder that holds another run -------------------------------------------------------


def test_a_finished_run_is_never_overwritten_by_accident(
    config: dict[str, Any], tmp_path: Path
) -> None:
    finished = {**config, "max_steps": 2}
    assert weave("train", str(write_config(tmp_path / "a.yml", finished))).returncode == 0
    out = Path(config["output_dir"])
    before = checksums(out)

    again = write_config(tmp_path / "b.yml", {**finished, "learning_rate": 0.01})
    result = weave("train", str(again))
    assert result.returncode == 2
    assert "holds the model of a finished run" in error_of(result)
    assert "overwrite_output_dir" in error_of(result)
    assert checksums(out) == before

    # allowed to overwrite, a run that then fails keeps the finished run's config
    failing = {**finished, "overwrite_output_dir": True, "plugins": ["inject_fault"]}
    env = faulty(tmp_path, "weight", 2)
    result = weave("train", str(write_config(tmp_path / "c.yml", failing)), env=env)
    assert result.returncode == 1
    assert checksums(out)["config.yml"] == before["config.yml"]
    assert checksums(out)["model.safetensors"] == before["model.safetensors"]


# -- what a finished run leaves --------------------------------------------------------------------


def test_saved_files_get_the_output_folders_permissions_and_logs_are_plain_in_a_pipe(
    config: dict[str, Any], tmp_path: Path
) -> None:
    lora = {**config, "max_steps": 2, "adapter": "lora", "lora_r": 4, "lora_alpha": 8}
    lora["lora_target_linear"] = True
    path = write_config(tmp_path / "a.yml", lora)
    result = run_weave("train", str(path), cwd=tmp_path)  # a real process, output piped
    assert result.returncode == 0, result.stderr
    for stream in (result.stdout, result.stderr):
        assert "\r" not in stream
        assert not [line for line in stream.splitlines() if line.endswith(" ")], stream
    out = Path(config["output_dir"])
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(Path(config["base_model"]).resolve())

    result = weave("merge-lora", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "merged").stat().st_mode & 0o777 == 0o777 & ~mask


def test_a_run_with_no_saving_plugin_does_not_say_model_saved(
    config: dict[str, Any], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "a.yml", {**config, "max_steps": 1})
    result = weave("-p", "no:save_hf", "train", str(path), env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "NO model saved" in result.stdout and "model saved" not in result.stdout.replace(
        "NO model saved", ""
    )


# -- Axolotl's checkpoint keys ---------------------------------------------------------------------


def test_save_strategy_and_save_only_model(config: dict[str, Any], tmp_path: Path) -> None:
    from axolotl_weave_testing import train_with

    def saved(name: str, **keys: Any) -> list[str]:
        out = tmp_path / name
        train_with({**config, "output_dir": str(out), **keys}, tmp_path / f"{name}.yml")
        return sorted(p.name for p in out.glob("checkpoint-*"))

    assert saved("never", save_strategy="no") == []
    # 32 rows of 2: 16 steps an epoch; 20 steps cross one epoch's end
    assert saved("epochs", save_strategy="epoch", max_steps=20) == ["checkpoint-16"]
    assert saved("steps") == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]

    only = tmp_path / "only"
    saved("only", save_only_model=True, max_steps=2)
    assert sorted(p.name for p in (only / "checkpoint-2").iterdir()) == [
        "rng_state.pt",
        "run_settings.json",
        "trainable.safetensors",
        "trainer_state.json",
    ]
    resume = {**config, "output_dir": str(only), "resume_from_checkpoint": "auto", "max_steps": 4}
    result = weave("train", str(write_config(tmp_path / "r.yml", resume)))
    assert result.returncode == 1
    assert "save_only_model" in error_of(result) and "checkpoint-2" in error_of(result)
