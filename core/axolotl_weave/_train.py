"""The training loop: windows of micro-batches, the `training_step` hook, the strategy's
optimizer step, evaluation, logging and checkpoints.

One optimizer step takes `gradient_accumulation_steps` micro-batches (a window). The
`training_step` plugin runs their forward and backward passes (the supervised one divides each
micro-batch's summed loss by the target units of the whole window, so a step equals one step on
the concatenated micro-batches); the strategy then clips and steps. `on_train_end` is called
whatever the outcome.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from axolotl_weave._batches import (
    Columns,
    batch_tokens,
    epoch_order,
    iter_micro_batches,
    iter_packed_micro_batches,
    iter_stream_micro_batches,
    micro_batches_per_epoch,
    to_device,
)
from axolotl_weave._checkpoint import (
    finish_checkpoint,
    read_train_state,
    resolve_resume,
    restore_rng,
    stage_checkpoint,
    staging_folder,
)
from axolotl_weave._console import console, progress_bar
from axolotl_weave._errors import ConfigError, DataError
from axolotl_weave._hooks import Hooks
from axolotl_weave._optim import build_optimizer, build_scheduler
from axolotl_weave._packing import (
    Packer,
    packer_for,
    packing_summary,
    padded_efficiency,
    warn_below_estimate,
)
from axolotl_weave._types import SFT_COLUMNS, LossFunction, TrainState

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

    from axolotl_weave._strategy import Strategy

log = logging.getLogger("axolotl_weave")


@dataclass
class Schedule:
    """Step counts, known before the first step (for the LR schedule and the progress bar)."""

    micro_batches_per_epoch: int
    steps_per_epoch: int
    max_steps: int
    save_every: int | None
    eval_every: int | None


def plan_schedule(cfg: Any, per_epoch: int | None) -> Schedule:
    """Steps per epoch and in all, and how often to save and evaluate.

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
    eval_every = cfg.eval_steps or (
        max(1, steps_per_epoch // cfg.evals_per_epoch) if cfg.evals_per_epoch else None
    )
    return Schedule(per_epoch, steps_per_epoch, max_steps, save_every, eval_every)


class Trainer:
    """Runs the optimizer steps of one training run; `run()` returns the final state."""

    def __init__(
        self,
        cfg: Any,
        hooks: Hooks,
        model: torch.nn.Module,
        loss_fn: LossFunction,
        strategy: Strategy,
        train_set: Dataset | IterableDataset,
        eval_set: Dataset | None,
        pad_token_id: int,
        columns: Columns | None = None,
    ) -> None:
        self.cfg, self.hooks, self.loss_fn, self.strategy = cfg, hooks, loss_fn, strategy
        self.train_set, self.eval_set, self.pad_token_id = train_set, eval_set, pad_token_id
        self.columns = dict(columns or SFT_COLUMNS)
        self.streaming = not hasattr(train_set, "__len__")
        self.pad_to = cfg.sequence_len if cfg.pad_to_sequence_len else None
        self.refuse_unpackable_columns(train_set)
        self.packer = self.make_packer(train_set, shuffle=True) if self.packs(train_set) else None
        if self.streaming:
            per_epoch = None
            if cfg.sample_packing:
                log.info("sample_packing: a stream is packed by its format (sequence_len blocks)")
        elif self.packer is not None:
            per_epoch = self.packer.micro_batches_per_epoch()
            self.report_packing(self.packer)
        else:
            per_epoch = micro_batches_per_epoch(
                len(train_set), cfg.micro_batch_size, strategy.num_processes
            )
        self.schedule = plan_schedule(cfg, per_epoch)
        self.output_dir = Path(cfg.output_dir)
        optimizer = build_optimizer(cfg, model, hooks)
        scheduler = build_scheduler(cfg, optimizer, self.schedule.max_steps, hooks)
        self.model, self.optimizer, self.scheduler = strategy.prepare(model, optimizer, scheduler)
        self.state = TrainState(
            output_dir=self.output_dir,
            max_steps=self.schedule.max_steps,
            steps_per_epoch=self.schedule.steps_per_epoch,
        )

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
            self.train_steps()
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
                n_tokens = sum(batch_tokens(b) for b in window)
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
                if self.eval_set is not None and (
                    (self.schedule.eval_every and step % self.schedule.eval_every == 0)
                    or step == self.schedule.max_steps
                ):
                    self.log({"eval_loss": self.evaluate(), "epoch": self.fractional_epoch()})
                if self.schedule.save_every and step % self.schedule.save_every == 0:
                    self.save()

    def step(self, window: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step over the micro-batches of `window`: the `training_step` plugin's
        passes, then the strategy's step; returns the step's metrics with `grad_norm`."""
        window = [to_device(batch, self.strategy.device) for batch in window]
        metrics = self.hooks.training_step(
            self.cfg, self.strategy, self.model, self.loss_fn, window, self.state
        )
        if "loss" not in metrics:
            raise TypeError(f"training_step returned no 'loss' (got {sorted(metrics)})")
        grad_norm = self.strategy.optimizer_step(
            self.model, self.optimizer, self.scheduler, self.cfg.max_grad_norm
        )
        return {**{k: float(v) for k, v in metrics.items()}, "grad_norm": grad_norm}

    # -- data ----------------------------------------------------------------------------------
    def refuse_unpackable_columns(self, dataset: Any) -> None:
        """Packing joins rows end to end: refused, with the reason, for rows with other columns
        than the supervised ones (pairs, scalars, text)."""
        if not self.cfg.sample_packing or not hasattr(dataset, "column_names"):
            return
        extra = [c for c in dataset.column_names if c in self.columns and c not in SFT_COLUMNS]
        if extra:
            raise ConfigError(
                f"sample_packing: these rows carry columns that cannot be packed "
                f"({', '.join(extra)}): packing joins rows of input_ids/labels only; "
                "set sample_packing: false"
            )

    def packs(self, dataset: Any, evaluation: bool = False) -> bool:
        """Whether `dataset` is packed: `sample_packing` (`eval_sample_packing` for eval), not
        for a stream."""
        if dataset is None or not hasattr(dataset, "__len__"):
            return False
        if evaluation and self.cfg.eval_sample_packing is not None:
            return bool(self.cfg.eval_sample_packing)
        return bool(self.cfg.sample_packing)

    def make_packer(self, dataset: Dataset, shuffle: bool) -> Packer:
        """The bin packing of `dataset` for this process (`sample_packing_*` settings)."""
        size = self.cfg.micro_batch_size if shuffle else self.eval_batch_size()
        return packer_for(
            self.cfg,
            dataset,
            size,
            shuffle,
            self.strategy.process_index,
            self.strategy.num_processes,
        )

    def report_packing(self, packer: Packer) -> None:
        """Print how well the rows packed, and warn below `sample_packing_eff_est`."""
        order = epoch_order(len(packer.lengths), self.cfg.seed, 0)  # as unpacked training reads
        unpacked = padded_efficiency(packer.lengths[order], self.cfg.micro_batch_size)
        if self.strategy.is_main_process:
            console.print(packing_summary(packer, unpacked))
        warn_below_estimate(packer, self.cfg.sample_packing_eff_est)

    def eval_batch_size(self) -> int:
        """Rows (or packed bins) per eval micro-batch."""
        return self.cfg.eval_batch_size or self.cfg.micro_batch_size

    def micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches of the current epoch, from where the state says it stands."""
        if self.packer is not None:
            bins = self.packer.micro_batch_bins(self.state.epoch, self.state.batches_into_epoch)
            return iter_packed_micro_batches(self.train_set, bins, self.pad_token_id, self.pad_to)
        if self.streaming:
            return iter_stream_micro_batches(
                self.train_set,
                self.cfg.micro_batch_size,
                self.pad_token_id,
                self.strategy.process_index,
                self.strategy.num_processes,
                start=self.state.batches_into_epoch,
                columns=self.columns,
            )
        order = epoch_order(
            len(self.train_set),
            self.cfg.seed,
            self.state.epoch,
            self.strategy.process_index,
            self.strategy.num_processes,
        )
        return iter_micro_batches(
            self.train_set,
            order,
            self.cfg.micro_batch_size,
            self.pad_token_id,
            start=self.state.batches_into_epoch,
            pad_to=self.pad_to,
            columns=self.columns,
        )

    def eval_micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This process's share of the eval set, in a fixed order (packed or padded)."""
        assert self.eval_set is not None
        if self.packs(self.eval_set, evaluation=True):
            packer = self.make_packer(self.eval_set, shuffle=False)
            bins = packer.micro_batch_bins(0)
            return iter_packed_micro_batches(self.eval_set, bins, self.pad_token_id, self.pad_to)
        order = epoch_order(
            len(self.eval_set), 0, 0, self.strategy.process_index, self.strategy.num_processes
        )
        return iter_micro_batches(
            self.eval_set,
            sorted(order),
            self.eval_batch_size(),
            self.pad_token_id,
            pad_to=self.pad_to,
            columns=self.columns,
        )

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

    def fractional_epoch(self) -> float:
        """Epochs done, counting the current one's fraction."""
        per_epoch = self.schedule.micro_batches_per_epoch
        return round(self.state.epoch + self.state.batches_into_epoch / per_epoch, 4)

    # -- eval, logging, checkpoints ------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean loss over the eval set."""
        assert self.eval_set is not None
        strategy = self.strategy
        self.model.eval()
        total_loss = torch.zeros((), device=strategy.device)
        total_units = torch.zeros((), device=strategy.device)
        for batch in self.eval_micro_batches():
            batch = to_device(batch, strategy.device)
            with strategy.autocast():
                total_loss += self.loss_fn(self.model, batch).float()
            total_units += self.loss_fn.count(batch)
        self.model.train()
        loss = strategy.reduce(total_loss, "sum") / strategy.reduce(total_units, "sum").clamp(min=1)
        return float(loss)

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
        strategy.save_state(staged, self.model, self.optimizer, self.scheduler)
        model = strategy.unwrap(self.model)
        self.hooks.save_checkpoint_state(self.cfg, self.state, model, staged, strategy)
        strategy.wait_for_everyone()
        if main:
            path = finish_checkpoint(self.output_dir, staged, self.state, self.cfg.save_total_limit)
            log.info("saved %s", path)
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
        saved = read_train_state(path)
        for key in ("global_step", "epoch", "batches_into_epoch", "tokens_seen", "log_history"):
            setattr(self.state, key, saved[key])
        model = self.strategy.unwrap(self.model)
        self.hooks.load_checkpoint_state(self.cfg, self.state, model, path, self.strategy)
        self.strategy.load_state(path, self.model, self.optimizer, self.scheduler)
        restore_rng(path)
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
