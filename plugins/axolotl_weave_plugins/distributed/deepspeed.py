"""`deepspeed:`: DeepSpeed ZeRO stage 1, 2 or 3 through accelerate's `DeepSpeedPlugin`.

`deepspeed:` is a JSON file (Axolotl's `deepspeed_configs/zero2.json` finds the shipped copy when
no such file is in the working directory) or an inline mapping. The shipped configs (zero1,
zero2, zero3, zero3_bf16, zero3_bf16_cpuoffload_params, zero3_bf16_cpuoffload_all) leave
`auto` what the config decides; it is filled from the config (`micro_batch_size`,
`gradient_accumulation_steps`, the global batch, `max_grad_norm`, `bf16` / `fp16`; an
`optimizer` section's `learning_rate`, `adam_beta1/2`, `adam_epsilon`, `weight_decay`), and an
explicit value that disagrees with the config is refused. The optimizer is the config's
(`optimizer:`), sharded and stepped by DeepSpeed; the schedule is the config's.

Refused before any model loads: `deepspeed:` together with FSDP, a file that does not exist or
is not valid JSON, a ZeRO stage other than 1-3, an optimizer ZeRO cannot shard (Muon,
Adafactor), ReLoRA, a precision the JSON and the config disagree on, DeepSpeed not installed (the
`deepspeed` extra).

On GPUs DeepSpeed uses NCCL; without one, its CPU accelerator and gloo (tests run 2 CPU
processes). Checkpoints hold the engine's per-process ZeRO shards (`checkpoint-N/deepspeed/`)
and resume; at ZeRO-3 the final model is gathered into one Hugging Face model before
`post_train` saves it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from axolotl_weave import (
    ConfigError,
    PluginConfig,
    hookimpl,
    require,
    resolve_precision,
)
from pydantic import Field, field_validator

from axolotl_weave_plugins.distributed._deepspeed_config import (
    fill_from_config,
    read_config,
    unshardable_reason,
)
from axolotl_weave_plugins.distributed._deepspeed_strategy import DeepSpeedStrategy

PLUGIN_KIND = "distributed"
INSTALL = "'axolotl-weave[deepspeed]'"
log = logging.getLogger("axolotl_weave")


class DeepSpeedSettings(PluginConfig):
    """Axolotl's `deepspeed:` key."""

    deepspeed: str | dict[str, Any] | None = Field(
        None,
        description="DeepSpeed ZeRO: a JSON file (deepspeed_configs/zero1.json, zero2, zero3, "
        "zero3_bf16, zero3_bf16_cpuoffload_params, zero3_bf16_cpuoffload_all are shipped) or an "
        'inline mapping; its "auto" values are filled from the config.',
    )

    @field_validator("deepspeed")
    @classmethod
    def readable(cls, value: Any) -> Any:
        """The file exists and is a JSON object with a ZeRO stage of 1-3 (read now, before
        anything loads)."""
        if value is not None:
            read_config(value)
        return value


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `deepspeed` key."""
    return DeepSpeedSettings


FSDP_KEYS = ("fsdp_version", "fsdp_config", "fsdp")


def check_run(cfg: Any) -> dict[str, Any]:
    """Everything about a DeepSpeed run that can be refused before a model loads; returns the
    filled DeepSpeed config (without the process count)."""
    fsdp = [key for key in FSDP_KEYS if getattr(cfg, key, None) not in (None, False, [], {}, "")]
    if fsdp:
        raise ConfigError(
            f"deepspeed and {', '.join(fsdp)} are both set: they are two ways of sharding the "
            "same model; keep one (deepspeed: for DeepSpeed ZeRO, fsdp_version: 2 for FSDP2)"
        )
    if getattr(cfg, "relora_steps", None):
        raise ConfigError(
            "relora_steps with deepspeed is not implemented: ReLoRA merges the adapter into the "
            "base weights (partitioned at ZeRO-3) and resets the optimizer state by parameter "
            "(ZeRO keeps it in flat shards); train ReLoRA without deepspeed:"
        )
    why = unshardable_reason(cfg.optimizer)
    if why:
        raise ConfigError(
            f"optimizer: {cfg.optimizer} cannot be sharded by DeepSpeed ZeRO ({why}); use an "
            "element-wise optimizer such as adamw_torch, or train without deepspeed:"
        )
    filled = fill_from_config(cfg.deepspeed, cfg)
    require("deepspeed", feature="deepspeed:", install=INSTALL)
    return filled


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """Before anything loads: refuse what a DeepSpeed run cannot do (see `check_run`)."""
    if cfg.deepspeed is not None:
        check_run(cfg)


def launch_env_for_one_process() -> None:
    """Without a launcher, the environment of a one-process group (accelerate starts DeepSpeed
    only under one), as DeepSpeed's own launcher would set it."""
    import os
    import socket

    if "LOCAL_RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    defaults = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


@hookimpl
def wrap_distributed(cfg: Any) -> DeepSpeedStrategy | None:
    """A `DeepSpeedStrategy` when `deepspeed:` is set."""
    if cfg.deepspeed is None:
        return None
    import os
    from datetime import timedelta

    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    check_run(cfg)
    launch_env_for_one_process()
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size == 1:  # a fresh accelerate state per run in one process
        AcceleratorState._reset_state(True)
    ds_config = fill_from_config(cfg.deepspeed, cfg, world_size)
    cpu = torch.accelerator.current_accelerator() is None
    timeout = timedelta(seconds=getattr(cfg, "ddp_timeout", 1800))
    # on the CPU accelerate names no backend for DeepSpeed: gloo, which DeepSpeed's CPU
    # accelerator uses without oneCCL
    init = InitProcessGroupKwargs(backend="gloo" if cpu else None, timeout=timeout)
    accelerator = Accelerator(
        mixed_precision=resolve_precision(cfg).mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,  # as the engine's
        deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config),
        kwargs_handlers=[init],
    )
    plugin_config = accelerator.state.deepspeed_plugin.deepspeed_config
    log.info(
        "deepspeed: ZeRO stage %s on %d process(es)",
        ds_config["zero_optimization"]["stage"],
        world_size,
    )
    return DeepSpeedStrategy(accelerator, plugin_config)


@hookimpl(wrapper=True)
def post_train(strategy: Any, model: Any) -> Generator[None, Any, Any]:
    """Before any `post_train` saves the model: at ZeRO-3, gather the weights into one model."""
    if isinstance(strategy, DeepSpeedStrategy):
        strategy.gather(model)
    return (yield)
