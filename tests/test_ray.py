"""`use_ray: true`: `weave train` runs the training on a local Ray cluster it starts (Ray Train's
`TorchTrainer`, 2 CPU workers in one gloo process group), which trains and saves what one process
does with the same global batch; the settings Ray cannot honour, and Ray's absence, are refused
with one message.

The Ray run (a local cluster started, 2 workers, 2 steps) is the one expensive part: about a
minute on two idle cores, shared by the assertions through a module-scoped fixture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, DataError, WeaveError
from axolotl_weave_testing import (
    alpaca_rows,
    run_weave,
    train_with,
    without_package,
    write_config,
    write_jsonl,
)
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def step_losses(output_dir: Path) -> dict[int, float]:
    """The per-step training losses of a finished run (its `trainer_state.json`)."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {rec["step"]: rec["loss"] for rec in state["log_history"] if "loss" in rec}


def weave(*args: str) -> Any:
    """`weave ARGS` in this process; the click result (exit code, output)."""
    from axolotl_weave._cli import CliContext, build_app
    from axolotl_weave._pluginmanager import make_plugin_manager
    from typer.testing import CliRunner

    pm = make_plugin_manager()
    return CliRunner().invoke(build_app(pm), list(args), obj=CliContext(pm))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module")
def common(tiny_llama_dir: Path, folder: Path) -> dict[str, Any]:
    """2 rows a micro-batch, 2 steps: with 2 workers, 4 rows a step."""
    return {
        "base_model": str(tiny_llama_dir),
        "datasets": [
            {"path": str(write_jsonl(folder / "a.jsonl", alpaca_rows(16))), "type": "alpaca"}
        ],
        "sequence_len": 128,
        "micro_batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "bf16": False,
        "tf32": False,
        "dataset_prepared_path": str(folder / "prepared"),
    }


@pytest.fixture(scope="module")
def runs(common: dict[str, Any], folder: Path) -> tuple[Path, Path, str]:
    """One process with the global batch (accumulating 2 micro-batches; it also fills the
    dataset cache), then `weave train` with use_ray and 2 CPU workers; (one, ray, ray's stdout)."""
    one = folder / "one"
    single = {**common, "gradient_accumulation_steps": 2, "output_dir": str(one)}
    train_with(single, folder / "one.yml")
    out = folder / "on-ray"
    config = {
        **common,
        "use_ray": True,
        "ray_num_workers": 2,
        "resources_per_worker": {"CPU": 1},
        "output_dir": str(out),
    }
    result = run_weave("train", str(write_config(folder / "ray.yml", config)))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-6000:])
    return one, out, result.stdout


def test_two_ray_workers_train_and_save_what_one_process_does(runs: tuple[Path, Path, str]) -> None:
    one, on_ray, stdout = runs
    assert "done: 2 steps on Ray (2 workers)" in stdout
    losses_one, losses_ray = step_losses(one), step_losses(on_ray)
    assert list(losses_ray) == [1, 2]
    for step, loss in losses_one.items():
        assert losses_ray[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    a, b = (load_file(str(d / "model.safetensors")) for d in (one, on_ray))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    for name in ("config.json", "tokenizer.json", "config.yml"):
        assert (on_ray / name).is_file(), name


def test_without_ray_the_message_names_the_extra(common: dict[str, Any], folder: Path) -> None:
    config = {**common, "use_ray": True, "output_dir": str(folder / "no-ray")}
    path = write_config(folder / "no-ray.yml", config)
    result = run_weave("train", str(path), env=without_package("ray", folder))
    assert result.returncode == 4, result.stderr[-3000:]
    assert "pip install 'axolotl-weave[ray]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_ray_settings_it_cannot_honour_are_refused_before_any_work(
    common: dict[str, Any], folder: Path
) -> None:
    base = {**common, "use_ray": True, "output_dir": str(folder / "refused")}
    path = write_config(folder / "two-launchers.yml", base)
    result = weave("train", str(path), "--num-processes", "2")
    assert result.exit_code == 2
    assert "use_ray: true starts ray_num_workers (1) training processes itself" in result.output
    assert "--num-processes 2" in result.output
    gpus = torch.cuda.device_count() + 1  # more GPUs than this machine has
    config = {**base, "ray_num_workers": gpus, "resources_per_worker": {"GPU": 1}}
    result = weave("train", str(write_config(folder / "gpus.yml", config)))
    assert result.exit_code == 2
    assert f"needs {gpus} GPUs, and this machine has {gpus - 1}" in result.output
    assert not (folder / "refused").exists()  # nothing trained, nothing written
    config = {**base, "resources_per_worker": {"CPU": 0}}
    result = weave("train", str(write_config(folder / "zero.yml", config)))
    assert result.exit_code == 2 and "amounts must be positive" in result.output


def test_a_failed_worker_surfaces_as_its_own_message() -> None:
    from axolotl_weave_plugins.distributed.ray_train import worker_error
    from ray.train import ControllerError, WorkerGroupError

    bad_row = DataError("dataset 'a.jsonl' line 3: no 'output'")
    failed = WorkerGroupError("rank 1 failed", {0: RuntimeError("peer gone"), 1: bad_row})
    assert worker_error(failed) is bad_row
    other = worker_error(ControllerError(RuntimeError("placement group timed out")))
    assert isinstance(other, WeaveError) and not isinstance(other, ConfigError)
    assert "the Ray training failed" in str(other) and "placement group timed out" in str(other)
