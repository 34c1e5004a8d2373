"""`fsdp_version: 2`: PyTorch's FSDP2 (`fully_shard`), each process holding a shard of every
weight, its gradient and its optimizer state (NCCL on GPUs, gloo on CPUs).

Answers `wrap_distributed` when the config asks for FSDP2. The model is sharded one decoder layer
at a time (`transformer_layer_cls_to_wrap`, by default every class the model lists in
`_no_split_modules`: its family's decoder layer), then as a whole. Gradients are averaged by the
reduce-scatter as DDP averages them, so the supervised step's normalisation (every target token of
the global window) holds unchanged, and FSDP2 on N processes trains what one process does with the
same global batch. Checkpoints are sharded (`torch.distributed.checkpoint`: every process writes
its shard and reads it back, the trainable weights only); the final model is gathered into one
Hugging Face model before `post_train` saves it.

Axolotl's `fsdp_config` keys are validated here; those not implemented yet are refused with the
reason, never ignored: `offload_params`, `cpu_ram_efficient_loading`, `activation_checkpointing`
(use `gradient_checkpointing`), `mixed_precision_policy` (the precision follows `bf16`),
a `SIZE_BASED_WRAP` policy, `state_dict_type: FULL_STATE_DICT` and a sharded final model. The
older `fsdp:` list and FSDP1 (`fsdp_version: 1`) are refused too; `fsdp_`-prefixed keys inside
`fsdp_config` are read without the prefix. fp16 (its loss scaler) is refused: use bf16.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Literal

from axolotl_weave import (
    AccelerateStrategy,
    ConfigError,
    PluginConfig,
    WeaveError,
    hookimpl,
    resolve_precision,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PLUGIN_KIND = "distributed"
log = logging.getLogger("axolotl_weave")
SHARDED_FOLDER = "sharded"
"""The checkpoint subfolder of the sharded weights and optimizer state."""


NOT_YET = {
    "offload_params": "set it false; CPU offload of the shards is not implemented yet",
    "cpu_ram_efficient_loading": "set it false; every process loads the whole model",
    "activation_checkpointing": "use gradient_checkpointing: true instead",
    "mixed_precision_policy": "remove it; the precision follows bf16",
}
"""`fsdp_config` keys refused when set, and what to do instead."""
NOT_SET = (None, False, "false", {}, "")


class FsdpConfig(BaseModel):
    """`fsdp_config:` as Axolotl names its keys."""

    model_config = ConfigDict(extra="forbid")

    transformer_layer_cls_to_wrap: str | list[str] | None = Field(
        None,
        description="Class name(s) of the layers sharded one by one; default: the model's "
        "decoder layer (its `_no_split_modules`).",
    )
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP"] = Field(
        "TRANSFORMER_BASED_WRAP", description="How layers are chosen for sharding."
    )
    reshard_after_forward: bool = Field(
        True,
        description="Free the gathered weights after each layer's forward (less memory, one "
        "more all-gather in the backward pass).",
    )
    state_dict_type: Literal["SHARDED_STATE_DICT"] = Field(
        "SHARDED_STATE_DICT", description="Checkpoints hold each process's shard."
    )
    final_state_dict_type: Literal["FULL_STATE_DICT"] = Field(
        "FULL_STATE_DICT", description="The final model is gathered into one HF model."
    )
    offload_params: Literal[False] = Field(False, description="Not implemented yet (refused).")
    cpu_ram_efficient_loading: Literal[False] = Field(
        False, description="Not implemented yet (refused)."
    )
    activation_checkpointing: Literal[False] = Field(
        False, description="Refused: use `gradient_checkpointing: true`."
    )
    mixed_precision_policy: None = Field(
        None, description="Refused: the precision follows bf16 / fp16."
    )

    @model_validator(mode="before")
    @classmethod
    def unprefixed(cls, data: Any) -> Any:
        """Axolotl's `fsdp_`-prefixed spelling (`fsdp_offload_params`) is read without it."""
        if not isinstance(data, dict):
            return data
        renamed = {}
        for key, value in data.items():
            bare = key.removeprefix("fsdp_") if key != "fsdp_version" else key
            if bare != key and bare not in data:
                log.info("fsdp_config.%s is read as %s", key, bare)
            renamed[bare] = value
        renamed.pop("fsdp_version", None)  # the top-level key decides
        refused = [f"{k} ({why})" for k, why in NOT_YET.items() if renamed.get(k) not in NOT_SET]
        if refused:
            raise ValueError(f"not implemented yet with fsdp_version: 2: {'; '.join(refused)}")
        return renamed


class FsdpSettings(PluginConfig):
    """The FSDP keys (Axolotl's names)."""

    fsdp_version: Literal[2] | None = Field(
        None,
        description="2: shard weights, gradients and optimizer state over the processes with "
        "PyTorch's FSDP2 (FSDP1 is not implemented).",
    )
    fsdp_config: FsdpConfig | None = Field(None, description="FSDP's settings (Axolotl's keys).")

    @field_validator("fsdp_version", mode="before")
    @classmethod
    def only_fsdp2(cls, value: Any) -> Any:
        """FSDP1 is refused with the way out."""
        if value not in (None, 2, "2"):
            raise ValueError(
                f"fsdp_version {value!r} is not implemented (FSDP1 is superseded): set "
                "fsdp_version: 2, whose fsdp_config keys are the same"
            )
        return value

    @model_validator(mode="after")
    def version_given(self) -> FsdpSettings:
        """`fsdp_config` without `fsdp_version: 2` would be FSDP1 in Axolotl: refused."""
        if self.fsdp_config is not None and self.fsdp_version != 2:
            raise ValueError(
                "fsdp_config is set without fsdp_version: 2 (FSDP1 is not implemented); "
                "add fsdp_version: 2"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`fsdp_version` and `fsdp_config`."""
    return FsdpSettings


class Fsdp2Strategy(AccelerateStrategy):
    """FSDP2 on the processes of an `Accelerator` (which gives the device, the process group,
    autocast and reductions; the sharding is `fully_shard`'s)."""

    def __init__(self, accelerator: Any, settings: FsdpConfig) -> None:
        super().__init__(accelerator)
        self.settings = settings

    def layer_classes(self, model: Any) -> set[str]:
        """The class names sharded one by one; one the model does not have is refused."""
        wanted = self.settings.transformer_layer_cls_to_wrap
        if wanted is None:
            inner = getattr(model, "get_base_model", lambda: model)()
            return set(getattr(inner, "_no_split_modules", None) or [])
        wanted = {wanted} if isinstance(wanted, str) else set(wanted)
        present = {type(module).__name__ for module in model.modules()}
        missing = sorted(wanted - present)
        if missing:
            layers = sorted(n for n in present if n.endswith(("Layer", "Block")))
            raise ConfigError(
                f"fsdp_config.transformer_layer_cls_to_wrap: the model has no {', '.join(missing)}"
                f" (its layer classes: {', '.join(layers) or 'none found'})"
            )
        return wanted

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        """Shard each layer, then the whole model; the optimizer is pointed at the sharded
        parameters (it was built on the unsharded ones)."""
        from torch.distributed.fsdp import fully_shard

        ensure_process_group(self.device)
        model.to(self.device)
        names = {id(param): name for name, param in model.named_parameters()}
        classes = self.layer_classes(model)
        reshard = self.settings.reshard_after_forward
        for module in model.modules():
            if type(module).__name__ in classes:
                fully_shard(module, reshard_after_forward=reshard)
        fully_shard(model, reshard_after_forward=reshard)
        sharded = dict(model.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(param)]] for param in group["params"]]
        return model, optimizer, scheduler

    def no_sync(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """Accumulate gradients without reduce-scattering them."""
        return gradient_sync_off(model)

    def optimizer_step(
        self, model: Any, optimizer: Any, scheduler: Any, max_grad_norm: float
    ) -> float:
        """Clip over the sharded gradients (the norm of the whole), step, schedule, zero."""
        import torch
        from torch.distributed.tensor import DTensor

        limit = max_grad_norm or math.inf
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        if not math.isfinite(grad_norm) and not self.handles_overflow:
            optimizer.zero_grad(set_to_none=True)
            return grad_norm
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def unwrap(self, model: Any) -> Any:
        """The model itself (FSDP2 shards it in place)."""
        return model

    def save_state(self, folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Each process's shard of the trainable weights (and optimizer state) into
        `folder/sharded`; the schedule from the main process."""
        import torch
        import torch.distributed.checkpoint as dcp

        state = sharded_state(model, optimizer)
        dcp.save(state, checkpoint_id=str(folder / SHARDED_FOLDER))
        if optimizer is not None and self.is_main_process:
            torch.save(scheduler.state_dict(), folder / "scheduler.pt")

    def load_state(self, folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Read each process's shard back (every process)."""
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        if not (folder / SHARDED_FOLDER).is_dir() or not (folder / "scheduler.pt").is_file():
            raise WeaveError(
                f"resume_from_checkpoint: {folder} holds no sharded FSDP2 state with optimizer "
                "(saved by another strategy, or with save_only_model: true)"
            )
        state = sharded_state(model, optimizer)
        dcp.load(state, checkpoint_id=str(folder / SHARDED_FOLDER))
        options = StateDictOptions(ignore_frozen_params=True, strict=False)
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=options,
        )
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))

    def gather(self, model: Any) -> None:
        """Make the model whole and plain on every process (collective): each sharded parameter
        replaced by its full tensor and FSDP2's hooks removed, so that `post_train` saves (and
        may run) one ordinary model. FSDP2 has no public "unshard for good", hence its
        internals here."""
        import torch
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        full = {
            name: param.full_tensor().detach()
            for name, param in model.named_parameters()
            if isinstance(param, DTensor)
        }
        for module in model.modules():
            if not isinstance(module, FSDPModule):
                continue
            state = module._get_fsdp_state()
            group = state._fsdp_param_group
            handles = [
                getattr(state, "_pre_forward_hook_handle", None),
                getattr(state, "_post_forward_hook_handle", None),
            ]
            if group is not None:
                handles += group._module_to_pre_save_state_dict_hook_handle.values()
                handles += group._module_to_pre_load_state_dict_hook_handle.values()
            for handle in handles:
                if handle is not None:
                    handle.remove()
            plain = [c for c in type(module).__mro__ if not issubclass(c, FSDPModule)]
            module.__class__ = plain[0]
        for name, tensor in full.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            requires_grad = owner._parameters[leaf].requires_grad
            owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad)


def sharded_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The trainable weights' (and the optimizer's) sharded state dicts."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(ignore_frozen_params=True)
    state = {"model": get_model_state_dict(model, options=options)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer, options=options)
    return state


@contextlib.contextmanager
def gradient_sync_off(model: Any) -> Iterator[None]:
    """FSDP2's `set_requires_gradient_sync(False)` for the duration."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def ensure_process_group(device: Any) -> None:
    """One process (no launcher): a process group of one, which `fully_shard` needs."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "gloo" if device.type == "cpu" else None
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


@hookimpl
def wrap_distributed(cfg: Any) -> Fsdp2Strategy | None:
    """An `Fsdp2Strategy` when `fsdp_version: 2`."""
    if cfg.fsdp_version != 2:
        return None
    from datetime import timedelta

    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    precision = resolve_precision(cfg).mixed_precision
    if precision == "fp16":
        raise ConfigError(
            "fsdp_version: 2 with fp16 is not implemented (its loss scaler does not step "
            "sharded gradients here): use bf16: true, or fp32"
        )
    cpu = torch.accelerator.current_accelerator() is None
    timeout = timedelta(seconds=getattr(cfg, "ddp_timeout", 1800))
    if PartialState(cpu=cpu, timeout=timeout).num_processes == 1:
        AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision)
    return Fsdp2Strategy(accelerator, cfg.fsdp_config or FsdpConfig())


def model_module_classes(cfg: Any) -> set[str] | None:
    """The `nn.Module` classes the base model's modeling file defines, read without loading a weight
    (None when transformers has no class for its config, e.g. remote code)."""
    import sys

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    where = cfg.base_model_config or cfg.base_model
    config = AutoConfig.from_pretrained(where, trust_remote_code=cfg.trust_remote_code)
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if model_class is None:
        return None
    modeling = sys.modules[model_class.__module__]
    return {
        name
        for name, value in vars(modeling).items()
        if isinstance(value, type)
        and issubclass(value, torch.nn.Module)
        and value.__module__ == modeling.__name__  # its own, not those it imports
    }


@hookimpl
def configure(cfg: Any) -> None:
    """Before anything loads: a `transformer_layer_cls_to_wrap` the model does not have is
    refused, naming its layer classes (nothing is registered for the run)."""
    wanted = cfg.fsdp_config.transformer_layer_cls_to_wrap if cfg.fsdp_config else None
    if cfg.fsdp_version == 2 and wanted:
        wanted = {wanted} if isinstance(wanted, str) else set(wanted)
        present = model_module_classes(cfg)
        if present is not None and not wanted <= present:
            layers = sorted(n for n in present if n.endswith(("Layer", "Block")))
            raise ConfigError(
                "fsdp_config.transformer_layer_cls_to_wrap: the model has no "
                f"{', '.join(sorted(wanted - present))} (its layer classes: "
                f"{', '.join(layers) or 'none found'})"
            )


@hookimpl(wrapper=True)
def post_train(strategy: Any, model: Any) -> Generator[None, Any, Any]:
    """Before any `post_train` saves the model: gather FSDP2's shards into whole weights."""
    if isinstance(strategy, Fsdp2Strategy):
        strategy.gather(model)
    return (yield)
