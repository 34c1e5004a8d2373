"""The training loop: windows of micro-batches, the `training_step` hook, the strategy's
optimizer step, evaluation, logging and checkpoints.

One optimizer step takes `gradient_accumulation_steps` micro-batches (a window). The
`training_step` plugin runs their forward and backward passes (the supervised one divides each
micro-batch's summed loss by the target units of the whole window, so a step equals one step on
the concatenated micro-batches); the strategy then clips and steps. `on_train_end` is called
whatever the outcome. The micro-batches come from the `plan_batches` plugin (padded rows, packed
bins, a stream): the loop only counts them and reads them from where it stands.

The `training_loop` plugin builds it (`make_trainer`); the core runs it (`Trainer.run`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from axolotl_weave import (
    SFT_COLUMNS,
    Columns,
    DataError,
    Interrupted,
    LossFunction,
    Strategy,
    TrainState,
    batch_tokens,
    measure_objective,
    to_device,
)
from axolotl_weave.commands import build_optimizer, build_scheduler, console

from ._best import BestEvaluation, loads_best_model
from ._checkpoint import (
    check_resume_settings,
    finish_checkpoint,
    read_train_state,
    resolve_resume,
    restore_rng,
    stage_checkpoint,
    staging_folder,
)
from ._progress import progress_bar
from ._stopping import LossWatchdog, StopSignals, check_finite

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

log = logging.getLogger("axolotl_weave")


@dataclass
class Schedule:
    """Step counts, known before the first step (for the LR schedule and the progress bar)."""

    micro_batches_per_epoch: int
    steps_per_epoch: int
    max_steps: int
    save_every: int | None
    eval_every: int | None
    eval_at_end: bool = True


def plan_schedule(cfg: Any, per_epoch: int | None) -> Schedule:
    """Steps per epoch and in all, and how often to save and evaluate (`eval_strategy`:
    epoch evaluates at each epoch's end, no never; either way the last step is evaluated
    unless it is no).

    `per_epoch` (micro-batches per process per epoch) is None for a stream: its length is
    unknown, so `max_steps` sets the schedule and an epoch (one pass over the stream) counts as
    `max_steps` steps.
    """
    if per_epoch is None:
        per_epoch = cfg.max_steps * cfg.gradient_accumulation_steps
    if per_epoch == 0:
        raise DataError("the training data makes no micro-batch for each process")
    steps_per_epoch = math.ceil(per_epoch / cfg.gradient_accumulation_steps)
    max_steps = cfg.max_steps or math.ceil(cfg.num_epochs * steps_per_epoch)
    save_every = cfg.save_steps or (
        max(1, steps_per_epoch // cfg.saves_per_epoch) if cfg.saves_per_epoch else None
    )
    if cfg.save_strategy != "steps":
        save_every = steps_per_epoch if cfg.save_strategy == "epoch" else None
    eval_every = cfg.eval_steps or (
        max(1, steps_per_epoch // cfg.evals_per_epoch) if cfg.evals_per_epoch else None
    )
    if cfg.eval_strategy in ("epoch", "no"):
        eval_every = steps_per_epoch if cfg.eval_strategy == "epoch" else None
    eval_at_end = cfg.eval_strategy != "no"
    return Schedule(per_epoch, steps_per_epoch, max_steps, save_every, eval_every, eval_at_end)


class Trainer:
    """Runs the optimizer steps of one training run; `run()` returns the final state."""

    def __init__(
        self,
        cfg: Any,
        hooks: Any,
        model: torch.nn.Module,
        loss_fn: LossFunction,
        strategy: Strategy,
        train_set: Dataset | IterableDataset,
        eval_set: Dataset | None,
        pad_token_id: int,
        columns: Columns | None = None,
        data_identity: str | None = None,
    ) -> None:
        self.cfg, self.hooks, self.loss_fn, self.strategy = cfg, hooks, loss_fn, strategy
        self.settings = {  # what a checkpoint's data position depends on
            "micro_batch_size": cfg.micro_batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "num_processes": strategy.num_processes,
            "data": data_identity,
        }
        self.signals = StopSignals()
        self.watchdog = LossWatchdog(cfg.loss_watchdog_threshold, cfg.loss_watchdog_patience)
        self.last_checkpoint = "none"
        columns = dict(columns or SFT_COLUMNS)
        train_set = hooks.transform_train_data(
            cfg, train_set, False, strategy, columns, pad_token_id
        )
        if eval_set is not None:
            eval_set = hooks.transform_train_data(
                cfg, eval_set, True, strategy, columns, pad_token_id
            )
        self.plan = hooks.plan_batches(cfg, train_set, False, strategy, columns, pad_token_id)
        self.eval_plan = (
            None
            if eval_set is None
            else hooks.plan_batches(cfg, eval_set, True, strategy, columns, pad_token_id)
        )
        self.schedule = plan_schedule(cfg, self.plan.micro_batches_per_epoch)
        self.output_dir = Path(cfg.output_dir)
        optimizer = build_optimizer(cfg, model, hooks)
        scheduler = build_scheduler(cfg, optimizer, self.schedule.max_steps, hooks)
        self.model, self.optimizer, self.scheduler = strategy.prepare(model, optimizer, scheduler)
        self.state = TrainState(
            output_dir=self.output_dir,
            max_steps=self.schedule.max_steps,
            steps_per_epoch=self.schedule.steps_per_epoch,
        )
        self.best = BestEvaluation.from_config(cfg)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainState:
        """Train to `max_steps` (resuming first if asked), evaluating and saving on schedule;
        `on_train_end` is told the outcome, whatever it is."""
        main = self.strategy.is_main_process
        error: BaseException | None = None
        try:
            self.maybe_resume()
            if main:
                self.hooks.on_train_begin(self.cfg, self.state)
            with self.signals.installed():
                self.train_steps()
            self.load_best_model()
        except BaseException as exc:
            error = exc
            raise
        finally:
            if main:
                self.hooks.on_train_end(self.cfg, self.state, error)
        return self.state

    def train_steps(self) -> None:
        """The loop over windows until `max_steps`."""
        main = self.strategy.is_main_process
        self.model.train()
        batches = self.micro_batches()
        window_tokens, window_start = 0, time.perf_counter()
        with progress_bar(self.schedule.max_steps, self.state.global_step, enabled=main) as bar:
            while self.state.global_step < self.schedule.max_steps:
                window = self.next_window(batches)
                if not window:  # epoch finished
                    if self.state.batches_into_epoch == 0:
                        raise DataError("the training data yielded no rows")
                    self.state.epoch += 1
                    self.state.batches_into_epoch = 0
                    batches = self.micro_batches()
                    continue
                metrics = self.step(window)
                loss = metrics["loss"]
                n_tokens = self.window_tokens(window)
                self.state.global_step += 1
                self.state.batches_into_epoch += len(window)
                self.state.tokens_seen += n_tokens
                self.hooks.on_step_end(
                    self.cfg,
                    self.state,
                    self.strategy.unwrap(self.model),
                    getattr(self.optimizer, "optimizer", self.optimizer),  # the torch one
                )
                window_tokens += n_tokens
                bar.advance(metrics["loss"])
                step = self.state.global_step
                if step % self.cfg.logging_steps == 0 or step == self.schedule.max_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    grad_norm = metrics.pop("grad_norm")
                    self.log(
                        {
                            "loss": metrics.pop("loss"),
                            "learning_rate": self.scheduler.get_last_lr()[0],
                            "grad_norm": grad_norm,
                            "epoch": self.fractional_epoch(),
                            "tokens_per_second": window_tokens / elapsed,
                            **metrics,
                        }
                    )
                    window_tokens, window_start = 0, time.perf_counter()
                new_best = False
                if self.eval_plan is not None and (
                    (self.schedule.eval_every and step % self.schedule.eval_every == 0)
                    or (step == self.schedule.max_steps and self.schedule.eval_at_end)
                ):
                    evaluation = self.evaluate()
                    self.log({**evaluation, "epoch": self.fractional_epoch()})
                    new_best = self.best is not None and self.best.update(step, evaluation)
                if (self.schedule.save_every and step % self.schedule.save_every == 0) or (
                    new_best and self.saves_best()
                ):
                    self.save()
                self.watchdog.check(step, loss, self.last_checkpoint)
                self.stop_if_signalled()
                if self.best is not None and self.best.should_stop:
                    if main:
                        console.print(
                            f"early stopping after step {step}: {self.best.metric} has not "
                            f"improved on {self.best.best_value:.4g} (step "
                            f"{self.best.best_step}) for {self.best.evals_since_best} "
                            "evaluations (early_stopping_patience)"
                        )
                    break

    def step(self, window: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step over the micro-batches of `window`: the `training_step` plugin's
        passes, then the strategy's step; returns the step's metrics with `grad_norm`."""
        window = [to_device(batch, self.strategy.device) for batch in window]
        metrics = self.hooks.training_step(
            self.cfg, self.strategy, self.model, self.loss_fn, window, self.state
        )
        if "loss" not in metrics:
            raise TypeError(f"training_step returned no 'loss' (got {sorted(metrics)})")
        step, loss = self.state.global_step + 1, float(metrics["loss"])
        check_finite(step, "loss", loss, self.cfg, self.last_checkpoint)
        grad_norm = self.strategy.optimizer_step(
            self.model, self.optimizer, self.scheduler, self.cfg.max_grad_norm
        )
        if not self.strategy.handles_overflow:  # else the scaler skipped the step itself
            check_finite(step, "gradient norm", grad_norm, self.cfg, self.last_checkpoint)
        return {**{k: float(v) for k, v in metrics.items()}, "grad_norm": grad_norm}

    def saves_best(self) -> bool:
        """Whether a new best evaluation is checkpointed (`save_strategy: best`, or to load
        the best model at the end)."""
        return self.cfg.save_strategy == "best" or loads_best_model(self.cfg)

    def load_best_model(self) -> None:
        """With `load_best_model_at_end` (or early stopping): put back the weights of the best
        evaluation's checkpoint, plugins' state first, as a resume does (every process)."""
        best = self.best
        if best is None or best.best_step is None or not loads_best_model(self.cfg):
            return
        if best.best_step == self.state.global_step:
            return  # the weights in hand are the best
        path = self.output_dir / f"checkpoint-{best.best_step}"
        at_best = dataclasses.replace(self.state, global_step=best.best_step)
        self.hooks.load_checkpoint_state(
            self.cfg, at_best, self.strategy.unwrap(self.model), path, self.strategy
        )
        self.strategy.load_state(path, self.model, self.optimizer, self.scheduler)
        if self.strategy.is_main_process:
            console.print(
                f"loaded the best model: {path.name} ({best.metric} {best.best_value:.4g})"
            )

    def stop_if_signalled(self) -> None:
        """After a step: if SIGTERM or SIGINT came (on any process), save a checkpoint (unless
        this step's is written) and stop with `Interrupted`."""
        requested = self.signals.requested or 0
        if self.strategy.num_processes > 1:  # every process stops at the same step
            flag = torch.tensor(float(bool(requested)), device=self.strategy.device)
            if self.strategy.reduce(flag, "sum") > 0:
                requested = requested or signal.SIGTERM
        if not requested:
            return
        step = self.state.global_step
        if self.last_checkpoint != f"checkpoint-{step}":
            self.save()
        name = signal.Signals(requested).name
        raise Interrupted(
            f"stopped by {name} after step {step}: saved {self.output_dir / self.last_checkpoint}"
            "; continue it with resume_from_checkpoint: auto",
            requested,
        )

    # -- data ----------------------------------------------------------------------------------
    def micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches of the current epoch, from where the state says it stands."""
        return self.plan.micro_batches(self.state.epoch, self.state.batches_into_epoch)

    def next_window(
        self, batches: Iterator[dict[str, torch.Tensor]]
    ) -> list[dict[str, torch.Tensor]]:
        """Up to `gradient_accumulation_steps` micro-batches (fewer at the end of an epoch)."""
        window = []
        for batch in batches:
            window.append(batch)
            if len(window) == self.cfg.gradient_accumulation_steps:
                break
        return window

    def window_tokens(self, window: list[dict[str, torch.Tensor]]) -> int:
        """Real tokens of a window, on every process together."""
        n_tokens = sum(batch_tokens(b) for b in window)
        if self.strategy.num_processes == 1:
            return n_tokens
        count = torch.tensor(float(n_tokens), device=self.strategy.device)
        return int(self.strategy.reduce(count, "sum"))

    def fractional_epoch(self) -> float:
        """Epochs done, counting the current one's fraction."""
        per_epoch = self.schedule.micro_batches_per_epoch
        return round(self.state.epoch + self.state.batches_into_epoch / per_epoch, 4)

    # -- eval, logging, checkpoints ------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The objective over the eval set: `eval_loss` per unit (a target token for SFT), and
        the objective's own metrics as `eval_<name>` (`measures`, e.g. DPO's
        `eval_rewards/accuracies`)."""
        assert self.eval_plan is not None
        self.model.eval()
        try:
            measured = measure_objective(
                self.loss_fn, self.model, self.eval_plan.micro_batches(0), self.strategy
            )
        finally:
            self.model.train()
        metrics = {f"eval_{name}": value for name, value in measured.metrics.items()}
        return {"eval_loss": measured.loss, **metrics}

    def log(self, metrics: dict[str, float]) -> None:
        """Record metrics in the state, print them, and hand them to logger plugins."""
        if not self.strategy.is_main_process:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        self.state.log_history.append({"step": self.state.global_step, **metrics})
        console.print(
            format_metrics(self.state.global_step, self.schedule.max_steps, metrics), soft_wrap=True
        )
        self.hooks.on_log(self.cfg, self.state, metrics)

    def save(self) -> None:
        """Write a checkpoint: staged by the main process, filled by every process (the strategy
        may shard), plugins' state added, then renamed into place."""
        strategy, main = self.strategy, self.strategy.is_main_process
        strategy.wait_for_everyone()
        staged = staging_folder(self.output_dir, self.state.global_step)
        if main:
            stage_checkpoint(staged)
        strategy.wait_for_everyone()
        if self.cfg.save_only_model:  # weights only: no optimizer or schedule to resume
            strategy.save_state(staged, self.model, None, None)
        else:
            strategy.save_state(staged, self.model, self.optimizer, self.scheduler)
        model = strategy.unwrap(self.model)
        self.hooks.save_checkpoint_state(self.cfg, self.state, model, staged, strategy)
        strategy.wait_for_everyone()
        if main:
            keep = None if self.best is None or self.best.best_step is None else self.best.best_step
            path = finish_checkpoint(
                self.output_dir, staged, self.state, self.cfg.save_total_limit, self.settings, keep
            )
            log.info("saved %s", path)
        self.last_checkpoint = f"checkpoint-{self.state.global_step}"
        strategy.wait_for_everyone()

    def maybe_resume(self) -> None:
        """Restore from `resume_from_checkpoint` (a folder, or 'auto' for the newest): plugins'
        state (the train state already read), then the strategy's weights, optimizer and
        schedule, then the random generators."""
        path = resolve_resume(self.cfg.resume_from_checkpoint, self.output_dir)
        if path is None:
            if self.cfg.resume_from_checkpoint == "auto":
                log.info("resume_from_checkpoint: auto found no checkpoint; starting fresh")
            return
        check_resume_settings(path, self.settings, self.cfg.allow_resume_changes)
        saved = read_train_state(path)
        for key in ("global_step", "epoch", "batches_into_epoch", "tokens_seen", "log_history"):
            setattr(self.state, key, saved[key])
        if self.best is not None:
            self.best.replay(self.state.log_history)
        model = self.strategy.unwrap(self.model)
        self.hooks.load_checkpoint_state(self.cfg, self.state, model, path, self.strategy)
        self.strategy.load_state(path, self.model, self.optimizer, self.scheduler)
        restore_rng(path)
        self.last_checkpoint = path.name
        if self.strategy.is_main_process:
            console.print(f"resumed from {path} at step {self.state.global_step}")


SHORT_NAMES = {"learning_rate": "lr", "tokens_per_second": "tok/s"}


def format_metrics(step: int, max_steps: int, metrics: dict[str, float]) -> str:
    """One compact log line: `step 5/120 | loss 2.31 | lr 3.0e-03 | ...`."""
    parts = [f"step {step}/{max_steps}"]
    for key, value in metrics.items():
        if key == "learning_rate":
            text = f"{value:.2e}"
        elif key == "epoch":
            text = f"{value:.2f}"
        elif key == "tokens_per_second":
            text = f"{value:,.0f}"
        else:
            text = f"{value:.4g}"
        parts.append(f"{SHORT_NAMES.get(key, key)} {text}")
    return " | ".join(parts)
