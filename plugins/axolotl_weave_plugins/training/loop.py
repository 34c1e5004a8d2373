"""The training loop: the fallback (`trylast`) answer of `make_trainer`, and the resume check.

The loop (`_trainer.Trainer`) takes windows of `gradient_accumulation_steps` micro-batches
from the `plan_batches` plugin, has the `training_step` plugin run their passes, lets the
strategy step, evaluates, logs (`on_log`), checkpoints (staged, then renamed into place, with
every plugin's `save_checkpoint_state`), resumes, and stops safely on a non-finite loss, the
loss watchdog, SIGTERM or SIGINT. It keeps the best evaluation (`_best`: early stopping, the
best model loaded at the end, `save_strategy: best`). A third-party loop answers `make_trainer`
before it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from axolotl_weave import FINISHED_MARKER, PluginConfig, checkpoints, hookimpl
from pydantic import Field, field_validator, model_validator

from ._best import loads_best_model

PLUGIN_KIND = "training"


class LoopSettings(PluginConfig):
    """How long to train, and when to log, evaluate, checkpoint and stop."""

    num_epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    logging_steps: int = Field(1, gt=0, description="Log metrics every N steps.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps.")
    eval_strategy: Literal["steps", "epoch", "no"] | None = Field(
        None,
        description="steps: by eval_steps/evals_per_epoch (the default); epoch: at each "
        "epoch's end; no: never, not even after the last step.",
    )
    evals_per_epoch: int | None = Field(None, gt=0, description="Evaluations per epoch.")
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps.")
    saves_per_epoch: int | None = Field(None, gt=0, description="Checkpoints per epoch.")
    save_total_limit: int | None = Field(None, gt=0, description="Keep the newest N checkpoints.")
    save_strategy: Literal["steps", "epoch", "best", "no"] = Field(
        "steps",
        description="steps: by save_steps/saves_per_epoch; epoch: once per epoch; best: at each "
        "evaluation that improves metric_for_best_model; no.",
    )
    metric_for_best_model: str | None = Field(
        None, description="The eval metric that ranks evaluations (default eval_loss)."
    )
    greater_is_better: bool | None = Field(
        None,
        description="Whether a larger metric_for_best_model is better (default: unless "
        "its name ends in loss).",
    )
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description="Stop after this many evaluations in a row without improvement (and load "
        "the best model, unless load_best_model_at_end: false).",
    )
    load_best_model_at_end: bool | None = Field(
        None,
        description="End with the weights of the best evaluation (checkpointed when it comes).",
    )
    save_only_model: bool = Field(
        False, description="Checkpoints hold the weights only (smaller; cannot be resumed)."
    )
    allow_resume_changes: bool = Field(
        False, description="Resume even with other batch sizes or data than the checkpoint's."
    )
    loss_watchdog_threshold: float | None = Field(
        None, description="Stop (exit 1) when the loss stays above this for the patience."
    )
    loss_watchdog_patience: int = Field(
        3, gt=0, description="Steps in a row above loss_watchdog_threshold that stop the run."
    )

    @model_validator(mode="after")
    def _best_model_needs_evaluations(self) -> LoopSettings:
        asked = [
            key
            for key, on in (
                ("early_stopping_patience", self.early_stopping_patience),
                ("load_best_model_at_end", self.load_best_model_at_end),
                ("save_strategy: best", self.save_strategy == "best"),
            )
            if on
        ]
        if not asked:
            return self
        if not (getattr(self, "val_set_size", 0) or getattr(self, "test_datasets", None)):
            raise ValueError(
                f"{asked[0]} ranks evaluations: give an eval set (val_set_size or test_datasets)"
            )
        if self.eval_strategy == "no":
            raise ValueError(f"{asked[0]} ranks evaluations, which eval_strategy: no turns off")
        if not (self.eval_steps or self.evals_per_epoch or self.eval_strategy == "epoch"):
            raise ValueError(
                f"{asked[0]} ranks evaluations: set eval_steps, evals_per_epoch or "
                "eval_strategy: epoch (otherwise only the last step is evaluated)"
            )
        loads_best = loads_best_model(self)
        if loads_best and self.save_only_model:
            raise ValueError(
                "load_best_model_at_end with save_only_model: true: the best checkpoint is read "
                "back as a resume reads it, with its optimizer state; remove save_only_model"
            )
        if loads_best and self.save_strategy == "no":
            raise ValueError(
                "load_best_model_at_end with save_strategy: no: the best evaluation is "
                "checkpointed to be loaded at the end; use save_strategy: best or steps (or "
                "load_best_model_at_end: false)"
            )
        return self

    @field_validator("evals_per_epoch", "saves_per_epoch", mode="before")
    @classmethod
    def _zero_is_unset(cls, value: Any) -> Any:
        return None if value == 0 else value  # as in Axolotl's examples: 0 means none


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The loop's keys."""
    return LoopSettings


@hookimpl(trylast=True)
def make_trainer(
    cfg: Any,
    hooks: Any,
    model: Any,
    objective: Any,
    strategy: Any,
    train_set: Any,
    eval_set: Any,
    pad_token_id: int,
    columns: dict[str, int | str | None],
    data_identity: str | None,
) -> Any:
    """The built-in loop over the prepared rows (it builds the optimizer and schedule)."""
    from ._trainer import Trainer

    return Trainer(
        cfg,
        hooks,
        model,
        objective,
        strategy,
        train_set,
        eval_set,
        pad_token_id,
        columns,
        data_identity,
    )


@hookimpl
def check_run(cfg: Any) -> list[str]:
    """`output_dir` that cannot take the run; else a `resume_from_checkpoint` path that is not
    a complete, loadable checkpoint is raised ('auto' with none to resume is fine: the run
    starts fresh)."""
    from ._checkpoint import resolve_resume

    problem = output_dir_problem(cfg)
    if problem:
        return [problem]
    resolve_resume(cfg.resume_from_checkpoint, Path(cfg.output_dir))
    return []


def output_dir_problem(cfg: Any) -> str | None:
    """Why `output_dir` cannot take this run: a file, not writable, or holding another run's
    model or checkpoints (allowed by `resume_from_checkpoint` or `overwrite_output_dir`)."""
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        return f"output_dir: {out} is a file, not a folder"
    nearest = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not nearest.is_dir() or not writable(nearest):
        return f"output_dir: cannot write in {nearest} (permission denied); choose another folder"
    if cfg.resume_from_checkpoint or cfg.overwrite_output_dir:
        return None
    found = checkpoints(out)
    if (out / FINISHED_MARKER).exists():
        held = "the model of a finished run"
    elif found:
        held = f"the checkpoints of an unfinished run ({found[-1].name})"
    else:
        return None
    return (
        f"output_dir: {out} holds {held}; choose another output_dir, set "
        "resume_from_checkpoint: auto to continue it, or overwrite_output_dir: true to replace it"
    )


def writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (tried, so that read-only mounts count)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
