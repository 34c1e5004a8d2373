"""The DeepSpeed strategy: accelerate's `DeepSpeedPlugin` drives a `DeepSpeedEngine`, which owns
gradient accumulation, clipping, the loss scale and the optimizer step.

The core's step is kept exact: the supervised step already divides every micro-batch's loss sum
by the target units of the whole global window (times the process count, as DeepSpeed averages
gradients over the processes like DDP), so the engine's own division by
`gradient_accumulation_steps` is switched off (`scale_wrt_gas=False`), and the accumulation
boundary is the core's (the last micro-batch of a window, which may be short at an epoch's end),
not a count kept by the engine. `accelerator.backward` on that last micro-batch steps the engine;
`optimizer_step` then only advances the core's schedule and reads the engine's gradient norm, so
nothing is stepped twice.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from axolotl_weave import AccelerateStrategy, WeaveError

from axolotl_weave_plugins.distributed._deepspeed_config import fill_model_sizes

CHECKPOINT_TAG = "deepspeed"
"""The subfolder of a checkpoint that holds the engine's (per-process) state."""


class DeepSpeedStrategy(AccelerateStrategy):
    """DeepSpeed ZeRO 1-3 on the processes of an `Accelerator` made with a `DeepSpeedPlugin`."""

    def __init__(self, accelerator: Any, ds_config: dict[str, Any]) -> None:
        super().__init__(accelerator)
        self.ds_config = ds_config
        self.engine: Any = None

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage (1, 2 or 3)."""
        return int(self.ds_config["zero_optimization"]["stage"])

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        """The model and the config's optimizer into a `DeepSpeedEngine` (ZeRO partitions the
        optimizer state, the gradients from stage 2, the weights at stage 3); the schedule stays
        the core's (it sets the learning rate of the optimizer's groups, which ZeRO keeps)."""
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        fill_model_sizes(self.ds_config, hidden)
        engine, ds_optimizer = self.accelerator.prepare(model, optimizer)
        self.engine = engine
        return engine, ds_optimizer, scheduler

    def prepare_frozen(self, model: Any) -> Any:
        """A frozen model (a reference model) on this process's device, whole (not sharded)."""
        model.requires_grad_(False)
        model.eval()
        return model.to(self.device)

    def no_sync(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """Not an accumulation boundary: the engine accumulates without stepping."""
        return self.accumulating()

    @contextlib.contextmanager
    def accumulating(self) -> Iterator[None]:
        """accelerate's `sync_gradients` off for the duration (it tells the engine where the
        accumulation boundary is)."""
        state = self.accelerator.gradient_state
        state._set_sync_gradients(False)
        try:
            yield
        finally:
            state._set_sync_gradients(True)

    def backward(self, loss: Any) -> None:
        """The engine's backward, without its division by the accumulation steps (the loss is
        already normalised over the window); at a boundary the engine steps."""
        self.accelerator.backward(loss, scale_wrt_gas=False)

    @property
    def handles_overflow(self) -> bool:
        """With fp16 the engine's loss scaler skips an overflowing step itself."""
        return bool(self.ds_config.get("fp16", {}).get("enabled"))

    def optimizer_step(
        self, model: Any, optimizer: Any, scheduler: Any, max_grad_norm: float
    ) -> float:
        """The engine stepped (clipped to `gradient_clipping` = `max_grad_norm`) in the last
        `backward`: advance the schedule unless the loss scaler skipped the step; return the
        gradient norm the engine measured before clipping."""
        norm = model.get_global_grad_norm()
        grad_norm = math.nan if norm is None else float(norm)
        skipped = bool(getattr(getattr(optimizer, "optimizer", None), "overflow", False))
        if not skipped:
            scheduler.step()
        return grad_norm

    def save_state(self, folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """With the optimizer: the engine's checkpoint (every process writes its ZeRO shards
        into `folder/deepspeed`, frozen weights left out) and the schedule. Without
        (`save_only_model`): the trainable weights, gathered at ZeRO-3, written by the main
        process."""
        import torch

        if optimizer is None:
            with self.gathered(self.unwrap(model)):
                super().save_state(folder, model, None, None)
            return
        model.save_checkpoint(
            str(folder), tag=CHECKPOINT_TAG, save_latest=False, exclude_frozen_parameters=True
        )
        if self.is_main_process:
            torch.save(scheduler.state_dict(), folder / "scheduler.pt")

    def load_state(self, folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Every process reads its shards back from `folder/deepspeed`; then the schedule."""
        import torch

        if not (folder / CHECKPOINT_TAG).is_dir() or not (folder / "scheduler.pt").is_file():
            raise WeaveError(
                f"resume_from_checkpoint: {folder} holds no DeepSpeed state with optimizer "
                "(saved by another strategy, or with save_only_model: true)"
            )
        path, _ = model.load_checkpoint(
            str(folder),
            tag=CHECKPOINT_TAG,
            load_module_strict=False,  # frozen weights were left out
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if path is None:
            raise WeaveError(f"resume_from_checkpoint: DeepSpeed could not read {folder}")
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))

    def gathered(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """At ZeRO-3, every trainable weight whole on every process for the duration
        (collective)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        from deepspeed.runtime.zero.partition_parameters import GatheredParameters

        trainable = [param for param in model.parameters() if param.requires_grad]
        return GatheredParameters(trainable, modifier_rank=None)

    def gather(self, model: Any) -> None:
        """At ZeRO-3, make the model whole and plain on every process (collective): each
        partitioned weight replaced by its gathered 16-bit (or fp32) tensor and the engine's
        hooks removed, so that `post_train` saves one Hugging Face model. Stages 1-2 keep
        whole weights already."""
        if self.zero_stage != 3:
            return
        import torch
        from deepspeed.runtime.zero.partition_parameters import GatheredParameters

        whole: dict[int, torch.nn.Parameter] = {}
        for param in model.parameters():  # tied weights once
            with GatheredParameters([param], modifier_rank=None):
                tensor = param.data.detach().clone()
            whole[id(param)] = torch.nn.Parameter(tensor, param.requires_grad)
        self.engine.destroy()  # removes ZeRO-3's fetch and release hooks
        for module in model.modules():
            for leaf, param in list(module._parameters.items()):
                if param is not None and id(param) in whole:
                    module._parameters[leaf] = whole[id(param)]
