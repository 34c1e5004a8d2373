"""The training loop, on accelerate: accumulation with exact token normalisation, eval, checkpoints.

One optimizer step takes `gradient_accumulation_steps` micro-batches. Each micro-batch's summed loss
is divided by the number of target units in the whole accumulated batch (all processes), so a step
equals one step on the concatenated micro-batches, whatever their lengths.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from axolotl_weave._batches import (
    batch_tokens,
    epoch_order,
    iter_micro_batches,
    iter_packed_micro_batches,
    iter_stream_micro_batches,
    micro_batches_per_epoch,
)
from axolotl_weave._checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from axolotl_weave._console import console, progress_bar
from axolotl_weave._errors import DataError
from axolotl_weave._hooks import Hooks
from axolotl_weave._optim import build_optimizer, build_scheduler
from axolotl_weave._packing import (
    Packer,
    packer_for,
    packing_summary,
    padded_efficiency,
    warn_below_estimate,
)
from axolotl_weave._types import LossFunction, TrainState

if TYPE_CHECKING:
    from accelerate import Accelerator
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
        accelerator: Accelerator,
        train_set: Dataset | IterableDataset,
        eval_set: Dataset | None,
        pad_token_id: int,
    ) -> None:
        self.cfg, self.hooks, self.loss_fn, self.acc = cfg, hooks, loss_fn, accelerator
        self.train_set, self.eval_set, self.pad_token_id = train_set, eval_set, pad_token_id
        self.streaming = not hasattr(train_set, "__len__")
        self.pad_to = cfg.sequence_len if cfg.pad_to_sequence_len else None
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
                len(train_set), cfg.micro_batch_size, accelerator.num_processes
            )
        self.schedule = plan_schedule(cfg, per_epoch)
        self.output_dir = Path(cfg.output_dir)
        optimizer = build_optimizer(cfg, model, hooks)
        self.scheduler = build_scheduler(cfg, optimizer, self.schedule.max_steps)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.state = TrainState(
            output_dir=self.output_dir,
            max_steps=self.schedule.max_steps,
            steps_per_epoch=self.schedule.steps_per_epoch,
        )

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainState:
        """Train to `max_steps` (resuming first if asked), evaluating and saving on schedule."""
        self.maybe_resume()
        main = self.acc.is_main_process
        if main:
            self.hooks.on_train_begin(self.cfg, self.state)
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
                loss, n_units, grad_norm = self.step(window)
                n_tokens = sum(batch_tokens(b) for b in window)
                self.state.global_step += 1
                self.state.batches_into_epoch += len(window)
                self.state.tokens_seen += n_tokens
                self.hooks.on_step_end(
                    self.cfg,
                    self.state,
                    self.acc.unwrap_model(self.model),
                    getattr(self.optimizer, "optimizer", self.optimizer),  # the torch one
                )
                window_tokens += n_tokens
                bar.advance(loss)
                step = self.state.global_step
                if step % self.cfg.logging_steps == 0 or step == self.schedule.max_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    self.log(
                        {
                            "loss": loss,
                            "learning_rate": self.scheduler.get_last_lr()[0],
                            "grad_norm": grad_norm,
                            "epoch": self.fractional_epoch(),
                            "tokens_per_second": window_tokens / elapsed,
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
        if main:
            self.hooks.on_train_end(self.cfg, self.state)
        return self.state

    def step(self, window: list[dict[str, torch.Tensor]]) -> tuple[float, int, float]:
        """One optimizer step over the micro-batches of `window`; returns loss, units, grad norm."""
        device = self.acc.device
        window = [{k: v.to(device) for k, v in batch.items()} for batch in window]
        units = sum(self.loss_fn.count(batch) for batch in window)
        total_units = self.acc.reduce(torch.as_tensor(units, device=device), "sum")
        scale = self.acc.num_processes / total_units.clamp(min=1).float()
        summed = torch.zeros((), device=device)
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            sync = contextlib.nullcontext() if last else self.acc.no_sync(self.model)
            with sync:
                with self.acc.autocast():
                    loss_sum = self.loss_fn(self.model, batch)
                self.acc.backward(loss_sum * scale)
            summed += loss_sum.detach().float()
        grad_norm = float("nan")
        if self.cfg.max_grad_norm:
            grad_norm = float(
                self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean_loss = self.acc.reduce(summed, "sum") / total_units.clamp(min=1)
        return float(mean_loss), int(total_units), grad_norm

    # -- data ----------------------------------------------------------------------------------
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
            self.cfg, dataset, size, shuffle, self.acc.process_index, self.acc.num_processes
        )

    def report_packing(self, packer: Packer) -> None:
        """Print how well the rows packed, and warn below `sample_packing_eff_est`."""
        order = epoch_order(len(packer.lengths), self.cfg.seed, 0)  # as unpacked training reads
        unpacked = padded_efficiency(packer.lengths[order], self.cfg.micro_batch_size)
        if self.acc.is_main_process:
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
                self.acc.process_index,
                self.acc.num_processes,
                start=self.state.batches_into_epoch,
            )
        order = epoch_order(
            len(self.train_set),
            self.cfg.seed,
            self.state.epoch,
            self.acc.process_index,
            self.acc.num_processes,
        )
        return iter_micro_batches(
            self.train_set,
            order,
            self.cfg.micro_batch_size,
            self.pad_token_id,
            start=self.state.batches_into_epoch,
            pad_to=self.pad_to,
        )

    def eval_micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This process's share of the eval set, in a fixed order (packed or padded)."""
        assert self.eval_set is not None
        if self.packs(self.eval_set, evaluation=True):
            packer = self.make_packer(self.eval_set, shuffle=False)
            bins = packer.micro_batch_bins(0)
            return iter_packed_micro_batches(self.eval_set, bins, self.pad_token_id, self.pad_to)
        order = epoch_order(
            len(self.eval_set), 0, 0, self.acc.process_index, self.acc.num_processes
        )
        return iter_micro_batches(
            self.eval_set,
            sorted(order),
            self.eval_batch_size(),
            self.pad_token_id,
            pad_to=self.pad_to,
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
        self.model.eval()
        total_loss = torch.zeros((), device=self.acc.device)
        total_units = torch.zeros((), device=self.acc.device)
        for batch in self.eval_micro_batches():
            batch = {k: v.to(self.acc.device) for k, v in batch.items()}
            with self.acc.autocast():
                total_loss += self.loss_fn(self.model, batch).float()
            total_units += self.loss_fn.count(batch)
        self.model.train()
        loss = self.acc.reduce(total_loss, "sum") / self.acc.reduce(total_units, "sum").clamp(min=1)
        return float(loss)

    def log(self, metrics: dict[str, float]) -> None:
        """Record metrics in the state, print them, and hand them to logger plugins."""
        if not self.acc.is_main_process:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        self.state.log_history.append({"step": self.state.global_step, **metrics})
        console.print(
            format_metrics(self.state.global_step, self.schedule.max_steps, metrics), soft_wrap=True
        )
        self.hooks.on_log(self.cfg, self.state, metrics)

    def save(self) -> None:
        """Write a checkpoint (main process), after every process reached this step."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            model = self.acc.unwrap_model(self.model)
            path = save_checkpoint(
                self.output_dir,
                model,
                self.optimizer,
                self.scheduler,
                self.state,
                self.cfg.save_total_limit,
            )
            log.info("saved %s", path)
        self.acc.wait_for_everyone()

    def maybe_resume(self) -> None:
        """Restore from `resume_from_checkpoint` (a folder, or 'auto' for the newest)."""
        path = resolve_resume(self.cfg.resume_from_checkpoint, self.output_dir)
        if path is None:
            if self.cfg.resume_from_checkpoint == "auto":
                log.info("resume_from_checkpoint: auto found no checkpoint; starting fresh")
            return
        model = self.acc.unwrap_model(self.model)
        saved = load_checkpoint(path, model, self.optimizer, self.scheduler)
        for key in ("global_step", "epoch", "batches_into_epoch", "tokens_seen", "log_history"):
            setattr(self.state, key, saved[key])
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
