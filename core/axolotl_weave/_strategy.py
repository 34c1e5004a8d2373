"""The device strategy: where the model, optimizer and data live, and how a step is taken.

`wrap_distributed` returns a `Strategy`. The core never calls `loss.backward()`,
`optimizer.step()` or `clip_grad_norm_` itself: it asks the strategy, so that an engine that
owns accumulation, loss scaling, clipping and the step (DeepSpeed) is never stepped twice, and a
sharded model (FSDP) saves and loads its checkpoints collectively.

`AccelerateStrategy` is the single-device / DDP strategy on `accelerate.Accelerator`, and the
base that FSDP and DeepSpeed strategies extend (accelerate's `prepare` and `backward` already
speak to both engines).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


@runtime_checkable
class Strategy(Protocol):
    """What the core and the `training_step` plugins ask of the device strategy."""

    @property
    def device(self) -> torch.device:
        """Where this process's batches go."""

    @property
    def num_processes(self) -> int:
        """Processes training together (1 on a single device)."""

    @property
    def process_index(self) -> int:
        """This process's rank."""

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes files and logs."""

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        """Place (wrap, shard) the model, optimizer and schedule; return them in that order."""

    def prepare_frozen(self, model: Any) -> Any:
        """Place a frozen extra model (a reference model) for inference only."""

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The mixed-precision context for forward passes."""

    def no_sync(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """Accumulate gradients without communicating (every micro-batch but a window's last)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate `loss` (scaled, or stepping the engine, as the strategy needs)."""

    @property
    def handles_overflow(self) -> bool:
        """Whether the strategy deals with overflowing gradients itself (fp16's loss scaler,
        an engine such as DeepSpeed's that steps in `backward`); if not, a non-finite gradient
        norm is a fault that stops the run."""

    def optimizer_step(
        self, model: Any, optimizer: Any, scheduler: Any, max_grad_norm: float
    ) -> float:
        """At an accumulation boundary: clip to `max_grad_norm` (when > 0), step the optimizer and
        the schedule, zero the gradients; return the gradient norm before clipping. A non-finite
        norm is not applied (gradients zeroed, no step) unless `handles_overflow`."""

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """`tensor` reduced over every process (`sum` or `mean`)."""

    def wait_for_everyone(self) -> None:
        """A barrier across processes."""

    def unwrap(self, model: Any) -> Any:
        """The model without distributed wrappers (for hooks, saving, merging)."""

    def save_state(self, folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Write the model's trainable weights, the optimizer and the schedule into `folder`
        (optimizer and schedule None: the weights only, `save_only_model`). Every process
        calls it (a sharded strategy gathers); the base writes from the main one."""

    def load_state(self, folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Restore what `save_state` wrote. Every process calls it."""

    def free_memory(self) -> None:
        """Release the devices' cached memory (between runs in one process)."""


class AccelerateStrategy:
    """One device, or plain DDP under `accelerate launch` / `torchrun`, on an `Accelerator`.

    Subclass it for an engine accelerate drives (FSDP, DeepSpeed) and override what differs:
    `optimizer_step` (the engine steps inside `backward`), `save_state` / `load_state`
    (collective, sharded).
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator

    @property
    def device(self) -> torch.device:
        """Where this process's batches go."""
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        """Processes training together."""
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        """This process's rank."""
        return self.accelerator.process_index

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes files and logs."""
        return self.accelerator.is_main_process

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        """Model and optimizer through `accelerator.prepare`; the schedule stays ours (it steps
        once per optimizer step, whatever the process count)."""
        model, optimizer = self.accelerator.prepare(model, optimizer)
        return model, optimizer, scheduler

    def prepare_frozen(self, model: Any) -> Any:
        """A frozen model in evaluation mode on this process's device."""
        model.requires_grad_(False)
        model.eval()
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """accelerate's autocast for the configured mixed precision."""
        return self.accelerator.autocast()

    def no_sync(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """DDP's no_sync (a no-op on one process)."""
        return self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        """accelerate's backward (it scales fp16 losses and steps a DeepSpeed engine)."""
        self.accelerator.backward(loss)

    @property
    def handles_overflow(self) -> bool:
        """True with fp16's gradient scaler, which skips overflowing steps itself."""
        return self.accelerator.scaler is not None

    def optimizer_step(
        self, model: Any, optimizer: Any, scheduler: Any, max_grad_norm: float
    ) -> float:
        """Clip, step, advance the schedule, zero the gradients; the norm before clipping (also
        measured without clipping). A non-finite norm is never applied."""
        limit = max_grad_norm or math.inf  # an infinite limit measures without clipping
        grad_norm = float(self.accelerator.clip_grad_norm_(model.parameters(), limit))
        if not math.isfinite(grad_norm) and not self.handles_overflow:
            optimizer.zero_grad(set_to_none=True)
            return grad_norm
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """accelerate's reduce."""
        return self.accelerator.reduce(tensor, op)

    def wait_for_everyone(self) -> None:
        """accelerate's barrier."""
        self.accelerator.wait_for_everyone()

    def unwrap(self, model: Any) -> Any:
        """accelerate's unwrap_model."""
        return self.accelerator.unwrap_model(model)

    def save_state(self, folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Trainable weights, optimizer and schedule, written by the main process."""
        from axolotl_weave._checkpoint import write_training_state

        if self.is_main_process:
            write_training_state(folder, self.unwrap(model), optimizer, scheduler)

    def load_state(self, folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Read what `save_state` wrote, on every process."""
        from axolotl_weave._checkpoint import read_training_state

        read_training_state(folder, self.unwrap(model), optimizer, scheduler)

    def free_memory(self) -> None:
        """accelerate's free_memory."""
        self.accelerator.free_memory()
