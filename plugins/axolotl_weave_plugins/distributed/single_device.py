"""One device (GPU, else CPU), or data parallelism (DDP) when launched with several processes.

The fallback (`trylast`) of `wrap_distributed`: accelerate detects `weave train --num-processes
N`, `torchrun` and `accelerate launch` (several machines included) and wraps the model in
PyTorch's `DistributedDataParallel`, over NCCL on GPUs and gloo on CPUs. FSDP and DeepSpeed
plugins answer before it.

It owns Axolotl's DDP keys: `ddp_find_unused_parameters`, `ddp_bucket_cap_mb` and `ddp_timeout`
(they only matter with several processes). What makes DDP equal one process with the same global
batch is elsewhere: the batches are dealt out by micro-batches (`process_share`) and the
supervised step divides every sum by the target tokens of the whole window on every process.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import AccelerateStrategy, PluginConfig, hookimpl, resolve_precision
from pydantic import Field

PLUGIN_KIND = "distributed"


class DataParallelSettings(PluginConfig):
    """Axolotl's DDP keys."""

    ddp_find_unused_parameters: bool | None = Field(
        None,
        description="DDP looks for parameters that got no gradient in a step (needed when "
        "some trainable weights are skipped, slower); default: on, off with re-entrant "
        "gradient checkpointing (which cannot be searched).",
    )
    ddp_bucket_cap_mb: int | None = Field(
        None, gt=0, description="Size of DDP's gradient all-reduce buckets in MiB (default 25)."
    )
    ddp_timeout: int = Field(
        1800,
        gt=0,
        description="Seconds a process waits for the others in a collective before the run "
        "fails (a hung process, a slow save or data preparation on the main one).",
    )


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `ddp_*` keys."""
    return DataParallelSettings


def find_unused_parameters(cfg: Any) -> bool:
    """`ddp_find_unused_parameters`, else on unless the layers are recomputed by re-entrant
    checkpointing, whose backward pass the search cannot see. Hugging Face's Trainer turns it
    off with any checkpointing; the non-reentrant kind (Weave's default) builds the usual graph,
    and the search is what lets a step leave trainable weights without gradient (LISA's frozen
    layers, a skipped expert)."""
    if cfg.ddp_find_unused_parameters is not None:
        return bool(cfg.ddp_find_unused_parameters)
    checkpointing = getattr(cfg, "gradient_checkpointing_kwargs", None) or {}
    reentrant = bool(checkpointing.get("use_reentrant", False))
    return not (getattr(cfg, "gradient_checkpointing", False) and reentrant)


@hookimpl(trylast=True)
def wrap_distributed(cfg: Any) -> AccelerateStrategy:
    """An `AccelerateStrategy` on an `accelerate.Accelerator` with the config's mixed precision.

    Without a GPU, accelerate is told to use the CPU, which under a launcher means DDP on gloo.
    accelerate keeps its state in a process-wide singleton; a second run in the same process
    (a notebook, a sweep, the tests) may ask for another precision, so a single-process run
    starts from a fresh state. Under a multi-process launch the state is left alone (the first
    call sets up the process group, with `ddp_timeout`).
    """
    from datetime import timedelta

    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    cpu = torch.accelerator.current_accelerator() is None
    timeout = timedelta(seconds=cfg.ddp_timeout)
    if PartialState(cpu=cpu, timeout=timeout).num_processes == 1:
        AcceleratorState._reset_state()
    ddp = DistributedDataParallelKwargs(
        find_unused_parameters=find_unused_parameters(cfg),
        bucket_cap_mb=cfg.ddp_bucket_cap_mb or 25,
    )
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=resolve_precision(cfg).mixed_precision,
        kwargs_handlers=[ddp, InitProcessGroupKwargs(timeout=timeout)],
    )
    return AccelerateStrategy(accelerator)
