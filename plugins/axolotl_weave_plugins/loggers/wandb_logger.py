"""Weights & Biases, with Axolotl's keys: on when `wandb_project` is set (and `wandb_mode` is not
`disabled`).

The run gets the resolved config (secrets redacted) as its config and every metric of each
logging step at that step; `wandb_watch` logs gradients and/or parameters; `wandb_log_model`
uploads checkpoints (`checkpoint`) and the final model (`checkpoint` or `end`) as `model`
artifacts. A run resumed from a checkpoint continues the wandb run it started (its id is kept
in `checkpoint-N/wandb/run.json`); a failed run is finished with a non-zero exit code, which
wandb shows as failed. `wandb_mode: offline` (or `WANDB_MODE=offline`) writes the run under
`WANDB_DIR` for `wandb sync`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, TrainState, hookimpl
from pydantic import Field, field_validator

from axolotl_weave_plugins.loggers._tracking import (
    config_params,
    end_status,
    error_text,
    load_run_id,
    model_files,
    require_tracker,
    save_run_id,
)

PLUGIN_KIND = "logger"
TRACKER = "wandb"
log = logging.getLogger("axolotl_weave")


def off_as_none(value: Any) -> Any:
    """Axolotl writes `false` (or "false") for off."""
    return None if value in (False, "false", "False", "") else value


class WandbSettings(PluginConfig):
    """Weights & Biases keys (Axolotl's names)."""

    wandb_project: str | None = Field(None, description="W&B project: setting it turns wandb on.")
    wandb_entity: str | None = Field(None, description="W&B entity (user or team).")
    wandb_name: str | None = Field(None, description="The W&B run's display name.")
    wandb_run_id: str | None = Field(
        None, description="The W&B run id (to continue a run of that id); else a new one."
    )
    wandb_mode: str | None = Field(
        None, description="online, offline (sync later with `wandb sync`) or disabled."
    )
    wandb_watch: str | None = Field(
        None, description="Log the model's gradients, parameters or all (wandb.watch)."
    )
    wandb_log_model: str | None = Field(
        None,
        description="Upload the model as artifacts: checkpoint (each checkpoint and the final "
        "model) or end (the final model).",
    )

    @field_validator("wandb_mode")
    @classmethod
    def known_mode(cls, value: str | None) -> str | None:
        if value is not None and value not in ("online", "offline", "disabled"):
            raise ValueError("wandb_mode: online, offline or disabled")
        return value

    @field_validator("wandb_watch", "wandb_log_model", mode="before")
    @classmethod
    def false_is_off(cls, value: Any) -> Any:
        return off_as_none(value)

    @field_validator("wandb_watch")
    @classmethod
    def known_watch(cls, value: str | None) -> str | None:
        if value is not None and value not in ("gradients", "parameters", "all"):
            raise ValueError("wandb_watch: gradients, parameters, all or false")
        return value

    @field_validator("wandb_log_model")
    @classmethod
    def known_log_model(cls, value: str | None) -> str | None:
        if value is not None and value not in ("checkpoint", "end"):
            raise ValueError("wandb_log_model: checkpoint, end or false")
        return value


def check_credentials(wandb: Any, cfg: Any) -> None:
    """An online run needs an API key (`WANDB_API_KEY`, `wandb login`): without one, fail now,
    before any model loads, rather than at the first step (asked for only in a terminal)."""
    mode = cfg.wandb_mode or os.environ.get("WANDB_MODE") or "online"
    if mode not in ("online", "run") or wandb.run is not None:
        return
    if not wandb.login(verify=False, prompt=sys.stdin.isatty()):
        raise ConfigError(
            "wandb_project: no W&B API key is configured: run `wandb login` or set "
            "WANDB_API_KEY, or log offline with wandb_mode: offline (`wandb sync` later)"
        )


class WandbRun:
    """The wandb run of one training run (main process only); registered when wandb is on."""

    def __init__(self, cfg: Any) -> None:
        self.wandb = require_tracker("wandb", "wandb", "wandb_project (Weights & Biases)")
        self.cfg = cfg
        check_credentials(self.wandb, cfg)
        self.run: Any = None
        self.resume_id: str | None = None
        self.model: Any = None
        self.open_until_post_train = False

    @hookimpl(wrapper=True)
    def load_model(self, purpose: str) -> Generator[None, Any, Any]:
        """Keep the model to train, for `wandb_watch`."""
        model = yield
        if purpose == "train":
            self.model = model
        return model

    @hookimpl
    def load_checkpoint_state(self, folder: Path) -> None:
        self.resume_id = load_run_id(folder, TRACKER)

    @hookimpl
    def on_train_begin(self, cfg: Any, state: TrainState) -> None:
        """Start (or continue) the run, with the config; watch the model if asked."""
        run_id = self.resume_id or cfg.wandb_run_id
        self.run = self.wandb.init(
            project=cfg.wandb_project,
            entity=cfg.wandb_entity,
            name=cfg.wandb_name,
            id=run_id,
            resume=("must" if self.resume_id else "allow") if run_id else None,
            mode=cfg.wandb_mode,
            config=config_params(cfg),
            allow_val_change=True,
        )
        log.info("wandb: run %s (project %s)", self.run.id, cfg.wandb_project)
        if cfg.wandb_watch and self.model is not None:
            self.run.watch(self.model, log=cfg.wandb_watch, log_freq=cfg.logging_steps)

    @hookimpl
    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(dict(metrics), step=state.global_step)

    @hookimpl(trylast=True)  # after the other plugins' files, for the upload
    def save_checkpoint_state(self, state: TrainState, folder: Path) -> None:
        if self.run is None:  # not the main process
            return
        save_run_id(folder, TRACKER, self.run.id)
        if self.cfg.wandb_log_model == "checkpoint":
            self.upload(folder, f"checkpoint-{state.global_step}", recursive=True)

    @hookimpl
    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        """A failed run is finished at once, as failed; a finished one stays open for the final
        model's upload after it is saved (`post_train`)."""
        if self.run is None:
            return
        if error is not None:
            self.finish(end_status(error), error)
        else:
            self.open_until_post_train = True

    @hookimpl(wrapper=True, trylast=True)
    def post_train(self, output_dir: Path) -> Generator[None, Any, Any]:
        """After every other plugin's `post_train` (the model saved): upload it if asked, and
        finish the run (as failed if saving failed)."""
        try:
            result = yield
        except BaseException as exc:
            if self.open_until_post_train:
                self.finish("failed", exc)
            raise
        if self.open_until_post_train:
            if self.cfg.wandb_log_model in ("checkpoint", "end"):
                self.upload(output_dir, "final")
            self.finish("finished")
        return result

    def upload(self, folder: Path, alias: str, recursive: bool = False) -> None:
        """Log `folder` (a checkpoint, or the final model's files) as a `model` artifact."""
        artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model")
        if recursive:
            artifact.add_dir(str(folder))
        else:
            for path in model_files(folder):
                artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact, aliases=[alias, "latest"])

    def finish(self, status: str, error: BaseException | None = None) -> None:
        """Close the run: `finished` with exit code 0, else 1 (wandb shows it failed). Closing
        a failed run never raises: the run's own error is the one to see."""
        try:
            if error is not None:
                self.run.summary["error"] = error_text(error)
            self.run.summary["status"] = status
            self.run.finish(exit_code=0 if status == "finished" else 1)
            log.info("wandb: run %s %s", self.run.id, status)
        except Exception as exc:
            if error is None:
                raise
            log.warning("wandb: could not mark run %s %s: %s", self.run.id, status, exc)
        finally:
            self.run, self.open_until_post_train = None, False


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    return WandbSettings


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """On when `wandb_project` is set and `wandb_mode` is not `disabled`: the package must be
    installed (checked now, before any model loads)."""
    if cfg.wandb_project and cfg.wandb_mode != "disabled":
        register(WandbRun(cfg), "wandb-run")
