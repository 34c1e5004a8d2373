"""Trackers and pictures, for real and offline: wandb in offline mode (the run's `.wandb` file read
back), MLflow against a tracking server started here on 127.0.0.1 (read back with
`MlflowClient`), TensorBoard's event files (read back with its `EventAccumulator`), the
`loss.png` of every run and `weave plot`.

Two runs with every installed tracker on at once keep the suite short: a finished one
(metrics, parameters, artifacts, secrets) and one that fails at step 2 and is resumed from its
checkpoint (the same tracker run continues). Each tracker's checks skip when its package is
absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave import ConfigError, MissingDependencyError, PluginConfig, hookimpl
from axolotl_weave_testing import run_weave, train_with, write_jsonl

SECRET = "sk-weave-test-secret-0123456789"
"""The value of a secret config key: it must appear in no tracker's files."""

HAS = {
    name: importlib.util.find_spec(name) is not None for name in ("wandb", "mlflow", "tensorboard")
}
HAS["matplotlib"] = importlib.util.find_spec("matplotlib") is not None


def needs(package: str) -> pytest.MarkDecorator:
    extra = "plot" if package == "matplotlib" else package
    return pytest.mark.skipif(
        not HAS[package], reason=f"needs {package}: pip install 'axolotl-weave[{extra}]'"
    )


# --- test plugins ---------------------------------------------------------------------------------


class SecretSettings(PluginConfig):
    service_api_key: str | None = None


class SecretField:
    """Adds a secret config key, as a plugin holding an API key would."""

    @hookimpl
    def add_config_fields(self) -> type[PluginConfig]:
        return SecretSettings


class FailAt:
    """Raises after optimizer step `step`, before it is logged: a run that fails."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, state: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"simulated failure at step {self.step}")


class LoadRecorder:
    """Records whether a model was loaded."""

    def __init__(self) -> None:
        self.loaded = False

    @hookimpl(wrapper=True)
    def load_model(self) -> Any:
        self.loaded = True
        return (yield)


# --- the MLflow server and the runs ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`mlflow server` on 127.0.0.1 (sqlite store, local artifacts), its URI; stopped after."""
    if not HAS["mlflow"]:
        yield None
        return
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()}")
                time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@dataclass
class Runs:
    """What the module's runs wrote, and where."""

    root: Path
    finished: Path
    resumed: Path
    wandb_dir: Path
    mlflow_uri: str | None
    mlflow_status_after_failure: str | None = None
    failure: str = ""
    config: dict[str, Any] = field(default_factory=dict)


def tracker_keys(name: str, mlflow_uri: str | None) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if HAS["wandb"]:
        keys.update(wandb_project="weave-tests", wandb_name=name, wandb_mode="offline")
    if mlflow_uri:
        keys.update(
            mlflow_tracking_uri=mlflow_uri,
            mlflow_experiment_name="weave-tests",
            mlflow_run_name=name,
        )
    if HAS["tensorboard"]:
        keys.update(use_tensorboard=True)
    return keys


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, mlflow_server: str | None
) -> Runs:
    """A finished run (3 steps, a checkpoint at step 2, eval at the end, artifacts) and a run
    that fails at step 2 and is resumed from checkpoint-1, every installed tracker on."""
    from axolotl_weave_testing import alpaca_rows

    root = tmp_path_factory.mktemp("tracked")
    data = write_jsonl(root / "alpaca.jsonl", alpaca_rows(32))
    base = {
        "base_model": str(tiny_llama_dir),
        "datasets": [{"path": str(data), "type": "alpaca"}],
        "sequence_len": 128,
        "micro_batch_size": 2,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "bf16": False,
        "tf32": False,
        "val_set_size": 4,
        "dataset_prepared_path": str(root / "prepared"),
        "service_api_key": SECRET,
    }
    result = Runs(
        root, root / "finished", root / "resumed", root / "wandb", mlflow_server, config=base
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_DIR", str(result.wandb_dir))
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("WANDB_API_KEY", raising=False)
        result.wandb_dir.mkdir()
        finished = {
            **base,
            **tracker_keys("finished", mlflow_server),
            "output_dir": str(result.finished),
            "save_steps": 2,
            "wandb_log_model": "checkpoint",
            "wandb_watch": "gradients",
            "hf_mlflow_log_artifacts": True,
        }
        train_with(finished, root / "finished.yml", SecretField())

        resumed = {
            **base,
            **tracker_keys("resumed", mlflow_server),
            "output_dir": str(result.resumed),
            "save_steps": 1,
        }
        with pytest.raises(RuntimeError, match="simulated failure") as failure:
            train_with(resumed, root / "failing.yml", SecretField(), FailAt(2))
        result.failure = str(failure.value)
        if mlflow_server:
            run_id = json.loads((result.resumed / "checkpoint-1/mlflow/run.json").read_text())
            result.mlflow_status_after_failure = (
                mlflow_client(mlflow_server).get_run(run_id["run_id"]).info.status
            )
        resumed["resume_from_checkpoint"] = "auto"
        train_with(resumed, root / "resumed.yml", SecretField())
    return result


def mlflow_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


# --- wandb ----------------------------------------------------------------------------------------


def wandb_records(path: Path) -> list[Any]:
    """The records of an offline run's `.wandb` file (LevelDB log format: 32 KiB blocks of
    chunks with a 7-byte header; after the file's own 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:  # zero padding at a block's end
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@dataclass
class WandbRun:
    run_id: str
    name: str
    config: dict[str, Any]
    history: dict[int, dict[str, Any]]
    artifacts: list[Any]
    exit_code: int | None


def read_wandb_runs(wandb_dir: Path, name: str) -> list[WandbRun]:
    """Every offline run (in start order) whose name or id belongs to run `name`."""
    found = []
    for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run_id, display, config, history, artifacts, exit_code = "", "", {}, {}, [], None
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id, display = record.run.run_id, record.run.display_name
                config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
            elif kind == "history":
                row = {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
                history.setdefault(int(row["_step"]), {}).update(row)
            elif kind == "artifact":
                artifacts.append(record.artifact)
            elif kind == "exit":
                exit_code = record.exit.exit_code
        found.append(WandbRun(run_id, display, config, history, artifacts, exit_code))
    first = [run for run in found if run.name == name]
    ids = {run.run_id for run in first}
    return [run for run in found if run.run_id in ids]


def logged_steps(run: WandbRun) -> list[int]:
    """The steps at which training metrics were logged (wandb.watch logs at its own steps)."""
    return sorted(step for step, row in run.history.items() if "loss" in row)


@needs("wandb")
def test_wandb_offline_run_has_config_every_metric_and_model_artifacts(runs: Runs) -> None:
    (run,) = read_wandb_runs(runs.wandb_dir, "finished")
    assert run.exit_code == 0
    assert run.config["learning_rate"] == 1e-3 and run.config["max_steps"] == 3
    assert run.config["service_api_key"] == "[redacted]"
    assert logged_steps(run) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch"):
            assert key in run.history[step], (step, key)
    assert "eval_loss" in run.history[3]
    assert any(k.startswith("gradients/") for row in run.history.values() for k in row)  # watch
    aliases = [set(a.aliases) for a in run.artifacts if a.type == "model"]
    assert {"checkpoint-2"} <= aliases[0] and "final" in aliases[-1], aliases
    final = [e.path for e in run.artifacts[-1].manifest.contents]
    assert "model.safetensors" in final and "config.yml" not in final
    assert SECRET.encode() not in all_bytes(runs.wandb_dir)


@needs("wandb")
def test_wandb_failed_run_exits_failed_and_resume_continues_the_same_run(runs: Runs) -> None:
    failed, resumed = read_wandb_runs(runs.wandb_dir, "resumed")
    assert failed.exit_code == 1 and resumed.exit_code == 0
    assert resumed.run_id == failed.run_id
    assert json.loads((runs.resumed / "checkpoint-1/wandb/run.json").read_text()) == {
        "run_id": failed.run_id
    }
    assert logged_steps(failed) == [1] and logged_steps(resumed) == [2, 3]


# --- MLflow ---------------------------------------------------------------------------------------


def mlflow_run(uri: str, name: str) -> Any:
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name("weave-tests")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'"
    )
    return client, run


@needs("mlflow")
def test_mlflow_run_has_params_every_metric_and_artifacts(runs: Runs) -> None:
    assert runs.mlflow_uri, "the mlflow server did not start"
    client, run = mlflow_run(runs.mlflow_uri, "finished")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["learning_rate"] == "0.001" and params["max_steps"] == "3"
    assert params["datasets.0.type"] == "alpaca"
    assert params["service_api_key"] == "[redacted]"
    assert SECRET not in json.dumps(params)
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(set(steps)) == [1, 2, 3], (key, steps)  # epoch comes with eval_loss too
    assert [m.step for m in client.get_metric_history(run_id, "eval_loss")] == [3]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoint-2", "model", "config.yml"} <= top, top
    model = {Path(a.path).name for a in client.list_artifacts(run_id, "model")}
    assert "model.safetensors" in model and "config.yml" not in model
    checkpoint = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoint-2")}
    assert "trainer_state.json" in checkpoint or "mlflow" in checkpoint, checkpoint
    config_text = client.download_artifacts(run_id, "config.yml", str(runs.root / "dl"))
    text = Path(config_text).read_text()
    assert "learning_rate" in text and SECRET not in text


@needs("mlflow")
def test_mlflow_failed_run_is_failed_then_resumed_as_the_same_run(runs: Runs) -> None:
    assert runs.mlflow_uri, "the mlflow server did not start"
    assert runs.mlflow_status_after_failure == "FAILED"
    client, run = mlflow_run(runs.mlflow_uri, "resumed")  # one run, not two
    assert run.info.status == "FINISHED"
    assert "simulated failure" in run.data.tags["error"]
    assert run.data.tags["resumed_at_step"] == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3]


@needs("mlflow")
def test_mlflow_unreachable_server_fails_before_any_model_loads(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    recorder = LoadRecorder()
    config = {**base_config, "mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"}
    with pytest.raises(ConfigError, match="cannot reach the MLflow tracking server"):
        train_with(config, tmp_path / "c.yml", recorder)
    assert not recorder.loaded


@needs("wandb")
def test_wandb_online_without_an_api_key_fails_before_any_model_loads(
    base_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for name in ("HOME", "WANDB_CONFIG_DIR", "WANDB_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    recorder = LoadRecorder()
    config = {**base_config, "wandb_project": "p", "wandb_mode": "online"}
    with pytest.raises(ConfigError, match="no W&B API key is configured"):
        train_with(config, tmp_path / "c.yml", recorder)
    assert not recorder.loaded


@pytest.mark.parametrize(
    ("package", "keys"),
    [
        ("wandb", {"wandb_project": "p", "wandb_mode": "offline"}),
        ("mlflow", {"mlflow_tracking_uri": "http://127.0.0.1:9"}),
        ("tensorboard", {"use_tensorboard": True}),
    ],
)
def test_a_missing_tracker_package_names_its_extra_before_any_model_loads(
    package: str,
    keys: dict[str, Any],
    base_config: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails
    recorder = LoadRecorder()
    with pytest.raises(MissingDependencyError) as error:
        train_with({**base_config, **keys}, tmp_path / "c.yml", recorder)
    assert f"pip install 'axolotl-weave[{package}]'" in str(error.value)
    assert not recorder.loaded


# --- TensorBoard ----------------------------------------------------------------------------------


def events(output_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(output_dir / "runs"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


def text_values(accumulator: Any, tag: str) -> list[str]:
    return [
        e.tensor_proto.string_val[0].decode() for e in accumulator.Tensors(f"{tag}/text_summary")
    ]


@needs("tensorboard")
def test_tensorboard_events_have_every_metric_the_config_and_the_status(runs: Runs) -> None:
    accumulator = events(runs.finished)
    scalars = accumulator.Tags()["scalars"]
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch"):
        steps = [e.step for e in accumulator.Scalars(f"train/{key}")]
        assert sorted(set(steps)) == [1, 2, 3], (key, steps)  # epoch comes with eval_loss too
    assert [e.step for e in accumulator.Scalars("eval/loss")] == [3], scalars
    (config,) = text_values(accumulator, "config")
    assert '"learning_rate": 0.001' in config and "[redacted]" in config
    assert accumulator.PluginTagToContent("hparams")  # the config as hparams
    assert text_values(accumulator, "status") == ["finished"]
    assert SECRET.encode() not in all_bytes(runs.finished / "runs")


@needs("tensorboard")
def test_tensorboard_resumed_run_writes_on_from_its_step(runs: Runs) -> None:
    accumulator = events(runs.resumed)
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2, 3]
    status = text_values(accumulator, "status")  # the failed run's, then the resumed one's
    assert (
        status[0].startswith("failed: RuntimeError: simulated failure") and status[-1] == "finished"
    )


# --- pictures -------------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@needs("matplotlib")
def test_every_run_ends_with_a_loss_png(runs: Runs) -> None:
    from PIL import Image

    for run in (runs.finished, runs.resumed):
        path = run / "loss.png"
        assert png_size(path) == (1000, 700)
        with Image.open(path) as image:
            image.verify()


@needs("matplotlib")
def test_weave_plot_compares_two_runs_in_one_figure(runs: Runs, tmp_path: Path) -> None:
    out = tmp_path / "compare.png"
    result = run_weave("plot", str(runs.finished), str(runs.resumed), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert png_size(out) == (1000, 700)
    assert "2 runs" in result.stdout


def test_weave_plot_of_a_folder_without_metrics_is_one_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    result = run_weave("plot", str(empty), "--out", str(tmp_path / "x.png"))
    assert result.returncode == 1
    assert "no metrics.jsonl" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


# --- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("hf_token", True),
        ("comet_api_key", True),
        ("apikey", True),
        ("db_password", True),
        ("client_secret", True),
        ("special_tokens", False),
        ("tokenizer_config", False),
        ("resize_token_embeddings_to_32x", False),
        ("pad_token_id", False),
        ("pad_token", False),
        ("eos_token", False),
        ("learning_rate", False),
    ],
)
def test_secret_key_names(name: str, secret: bool) -> None:
    from axolotl_weave import is_secret

    assert is_secret(name) is secret


def test_secret_values_are_redacted_at_any_depth() -> None:
    from axolotl_weave import redacted

    data = {
        "uri": "https://me:hunter2@mlflow.example/",
        "nested": [{"auth_token": "abc"}, {"path": "hf_" + "a" * 30}],
        "hub_token": None,
    }
    assert redacted(data) == {
        "uri": "https://me:[redacted]@mlflow.example/",
        "nested": [{"auth_token": "[redacted]"}, {"path": "[redacted]"}],
        "hub_token": None,
    }


def test_saved_config_holds_no_secret(runs: Runs) -> None:
    """`config.yml` keeps every setting but a secret's value; a special token is no secret."""
    import yaml
    from axolotl_weave import redacted

    text = (runs.finished / "config.yml").read_text()
    saved = yaml.safe_load(text)
    assert saved["service_api_key"] == "[redacted]" and SECRET not in text
    assert saved["learning_rate"] == 1e-3
    tokens = {"special_tokens": {"pad_token": "<pad>", "eos_token": "</s>"}}
    assert redacted(tokens) == tokens
