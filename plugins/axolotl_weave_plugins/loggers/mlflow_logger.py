"""MLflow, with Axolotl's keys: on when `mlflow_tracking_uri` (or `mlflow_experiment_name`) is
set.

The tracking server is checked before anything loads: an unreachable URI fails the run at once,
saying so. The run (in `mlflow_experiment_name`, created when new; named `mlflow_run_name`)
gets the resolved config as parameters (flattened: `datasets.0.path`; secrets redacted) and as
a `config.yml` artifact, and every metric of each logging step at that step.
`hf_mlflow_log_artifacts: true` uploads each checkpoint (`checkpoint-N/`) and the final model's
files (`model/`). A run resumed from a checkpoint continues the MLflow run it started (its id is
kept in `checkpoint-N/mlflow/run.json`); a failed run ends FAILED (KILLED when interrupted),
with the error as the `error` tag.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import yaml
from axolotl_weave import ConfigError, PluginConfig, TrainState, hookimpl, redact_text
from pydantic import Field

from axolotl_weave_plugins.loggers._tracking import (
    config_params,
    end_status,
    error_text,
    flat_params,
    load_run_id,
    model_files,
    require_tracker,
    save_run_id,
)

PLUGIN_KIND = "logger"
TRACKER = "mlflow"
log = logging.getLogger("axolotl_weave")

MAX_PARAM_VALUE = 6000
"""MLflow's longest parameter value; longer ones are cut."""

PARAMS_PER_BATCH = 100
"""MLflow's most parameters in one `log_batch`."""


class MlflowSettings(PluginConfig):
    """MLflow keys (Axolotl's names)."""

    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking server (http://host:5000) or store: setting it turns "
        "MLflow on.",
    )
    mlflow_experiment_name: str | None = Field(
        None, description="MLflow experiment (created if new); MLflow's default when unset."
    )
    mlflow_run_name: str | None = Field(None, description="The MLflow run's name.")
    hf_mlflow_log_artifacts: bool = Field(
        False, description="Upload each checkpoint and the final model as MLflow artifacts."
    )


def tracking_uri(cfg: Any) -> str | None:
    """The URI the run logs to: the config's, else `MLFLOW_TRACKING_URI`, else MLflow's default."""
    return cfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Raise `ConfigError` when an http(s) tracking server does not answer: any HTTP answer,
    an error status included, means a server is there."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"mlflow_tracking_uri: cannot reach the MLflow tracking server at "
            f"{redact_text(uri)} ({reason}): start it, or correct the URI"
        ) from None


def metric_name(key: str) -> str:
    """A metric name MLflow accepts (letters, digits, `_ - . /` and spaces)."""
    return re.sub(r"[^\w\-. /]", "_", key)


class MlflowRun:
    """The MLflow run of one training run (main process only); registered when MLflow is on."""

    def __init__(self, cfg: Any) -> None:
        require_tracker("mlflow", "mlflow", "mlflow_tracking_uri (MLflow)")
        self.cfg = cfg
        self.uri = tracking_uri(cfg)
        check_reachable(self.uri or "")
        self.client: Any = None
        self.run_id: str | None = None
        self.resume_id: str | None = None
        self.open_until_post_train = False

    @hookimpl
    def load_checkpoint_state(self, folder: Path) -> None:
        self.resume_id = load_run_id(folder, TRACKER)

    @hookimpl
    def on_train_begin(self, cfg: Any, state: TrainState) -> None:
        """Start the run (or mark the resumed one running again) and log the config."""
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        params = config_params(cfg)
        if self.resume_id:
            self.run_id = self.resume_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "resumed_at_step", str(state.global_step))
        else:
            experiment_id = self.experiment_id(cfg.mlflow_experiment_name)
            run = self.client.create_run(
                experiment_id, run_name=cfg.mlflow_run_name, tags={"output_dir": cfg.output_dir}
            )
            self.run_id = run.info.run_id
        self.log_params(flat_params(params))
        self.client.log_text(self.run_id, yaml.safe_dump(params, sort_keys=False), "config.yml")
        log.info("mlflow: run %s at %s", self.run_id, redact_text(self.uri or "(default)"))

    def experiment_id(self, name: str | None) -> str:
        """The id of experiment `name` (created when new), or MLflow's default experiment."""
        if not name:
            return "0"
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found else self.client.create_experiment(name)

    def log_params(self, params: dict[str, str]) -> None:
        """Log the params; a resumed run keeps its first values (MLflow's params are fixed),
        and only adds the new ones."""
        from mlflow.entities import Param

        known = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in params.items() if k in known and known[k] != v)
        if changed:
            log.info("mlflow: a resumed run keeps its first parameters; changed: %s", changed)
        new = [Param(k[:250], v[:MAX_PARAM_VALUE]) for k, v in params.items() if k not in known]
        for first in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[first : first + PARAMS_PER_BATCH])

    @hookimpl
    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        batch = [
            Metric(metric_name(k), float(v), now, state.global_step) for k, v in metrics.items()
        ]
        self.client.log_batch(self.run_id, metrics=batch)

    @hookimpl(trylast=True)  # after the other plugins' files, for the upload
    def save_checkpoint_state(self, state: TrainState, folder: Path) -> None:
        if self.run_id is None:  # not the main process
            return
        save_run_id(folder, TRACKER, self.run_id)
        if self.cfg.hf_mlflow_log_artifacts:
            self.client.log_artifacts(self.run_id, str(folder), f"checkpoint-{state.global_step}")

    @hookimpl
    def on_train_end(self, error: BaseException | None) -> None:
        """A failed run ends FAILED (KILLED when interrupted) at once; a finished one stays open
        for the final model's upload after it is saved (`post_train`)."""
        if self.run_id is None:
            return
        if error is not None:
            self.finish(end_status(error), error)
        else:
            self.open_until_post_train = True

    @hookimpl(wrapper=True, trylast=True)
    def post_train(self, output_dir: Path) -> Generator[None, Any, Any]:
        """After every other plugin's `post_train` (the model saved): upload it if asked, and
        end the run FINISHED (FAILED if saving failed)."""
        try:
            result = yield
        except BaseException as exc:
            if self.open_until_post_train:
                self.finish("failed", exc)
            raise
        if self.open_until_post_train:
            if self.cfg.hf_mlflow_log_artifacts:
                for path in model_files(output_dir):
                    self.client.log_artifact(self.run_id, str(path), "model")
            self.finish("finished")
        return result

    def finish(self, status: str, error: BaseException | None = None) -> None:
        """End the run with MLflow's status for `status` (finished, failed, killed). Closing a
        failed run never raises: the run's own error is the one to see."""
        try:
            if error is not None:
                self.client.set_tag(self.run_id, "error", error_text(error))
            self.client.set_terminated(self.run_id, status=status.upper())
            log.info("mlflow: run %s %s", self.run_id, status.upper())
        except Exception as exc:
            if error is None:
                raise
            log.warning("mlflow: could not mark run %s %s: %s", self.run_id, status, exc)
        finally:
            self.run_id, self.open_until_post_train = None, False


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    return MlflowSettings


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """On when `mlflow_tracking_uri` or `mlflow_experiment_name` is set: the package must be
    installed and the server reachable (checked now, before any model loads)."""
    if cfg.mlflow_tracking_uri or cfg.mlflow_experiment_name:
        register(MlflowRun(cfg), "mlflow-run")
