"""`fsdp_version: 2`: PyTorch's FSDP2 (`fully_shard`), each process holding a shard of every
weight, its gradient and its optimizer state (NCCL on GPUs, gloo on CPUs).

Answers `wrap_distributed` when the config asks for FSDP2. The model is sharded one decoder layer
at a time (`transformer_layer_cls_to_wrap`, by default every class the model lists in
`_no_split_modules`: its family's decoder layer), then as a whole. Gradients are averaged by the
reduce-scatter as DDP averages them, so the supervised step's normalisation (every target token of
the global window) holds unchanged, and FSDP2 on N processes trains what one process does with the
same global batch. Checkpoints hold the trainable weights and the optimizer state sharded
(`torch.distributed.checkpoint`: every process writes its shard and reads it back) or, with
`state_dict_type: FULL_STATE_DICT`, gathered whole into a one-process checkpoint's files by rank
0 (read back by rank 0 and broadcast into the shards); the final model is gathered into one
Hugging Face model before `post_train` saves it.

Axolotl's `fsdp_config` keys (`fsdp_`-prefixed or not) are validated here, and implemented:
`offload_params` (torch's `CPUOffloadPolicy`: shards, gradients and optimizer state in CPU
memory, pinned only where there is a GPU), `cpu_ram_efficient_loading` (ranks other than 0 build
the model on the meta device; at sharding rank 0's weights are broadcast into every shard by
accelerate's `fsdp2_load_full_state_dict`), `activation_checkpointing` (each sharded layer in
torch's `checkpoint_wrapper`, as accelerate's `fsdp2_apply_ac`; unwrapped again before saving)
and `mixed_precision_policy` (torch's `MixedPrecisionPolicy`: a dtype name, or param_dtype,
reduce_dtype, output_dtype, cast_forward_inputs). Refused: a `SIZE_BASED_WRAP` policy,
a sharded final model, fp16 (its loss scaler: use bf16), FSDP1's keys with `fsdp_version: 2`
(`sync_module_states`, `use_orig_params`, prefetching...) except the `fsdp:` list and
`sharding_strategy`, which Axolotl's FSDP2 examples keep beside `reshard_after_forward`: those
are read as the FSDP2 setting they name, and refused where they contradict it.

QLoRA (`load_in_4bit`) shards too (`_fsdp_qlora.py`, Answer.AI's FSDP-QLoRA recipe): the packed
4-bit weights are stored in the dtype FSDP2 gathers in (`bnb_4bit_quant_storage`, set here with
a note unless given), so that `fully_shard` splits them like any frozen weight; the log says
what each process holds, and the gathered model has bitsandbytes' `Params4bit` weights again.

FSDP1's spelling (the `fsdp:` list, `fsdp_version: 1`, `fsdp_config` without `fsdp_version`) is
mapped to FSDP2 with one warning saying what was read as what (`_fsdp_options.py`): full_shard ->
`reshard_after_forward: true`, shard_grad_op -> false, offload -> `offload_params`, auto_wrap ->
the transformer-based wrap, `use_orig_params` dropped (it chose FSDP1's flat parameters, not
what is trained); hybrid and no sharding, and FSDP1 settings FSDP2 does differently
(`sync_module_states: false`, `forward_prefetch: true`...) are refused naming the key.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Literal

from axolotl_weave import (
    WEIGHTS_FILE,
    AccelerateStrategy,
    ConfigError,
    PluginConfig,
    WeaveError,
    hookimpl,
    resolve_precision,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

from axolotl_weave_plugins.distributed._fsdp_options import (
    from_fsdp1,
    fsdp1_beside_fsdp2,
    mixed_precision,
    refuse_fsdp1_only,
    unprefixed,
)
from axolotl_weave_plugins.distributed._fsdp_qlora import (
    keep_storage_layout,
    refuse_cast_storage,
    report_sharded,
    restore_packed,
    set_quant_storage,
)

PLUGIN_KIND = "distributed"
log = logging.getLogger("axolotl_weave")
SHARDED_FOLDER = "sharded"
"""The checkpoint subfolder of the sharded weights and optimizer state."""


PINNED_ON_CPU = (
    "fsdp_config.cpu_offload_pin_memory: true needs an accelerator (pinned memory is page-locked "
    "host memory for copies to a GPU); without one the shards are in CPU memory already: leave it "
    "unset"
)


class MixedPrecisionSettings(BaseModel):
    """`fsdp_config.mixed_precision_policy`: torch's `MixedPrecisionPolicy` (dtype names)."""

    model_config = ConfigDict(extra="forbid")

    param_dtype: Literal["bfloat16", "float32"] | None = Field(
        None, description="The dtype the gathered weights compute in (the shards stay fp32)."
    )
    reduce_dtype: Literal["bfloat16", "float32"] | None = Field(
        None, description="The dtype gradients are reduce-scattered in (default: param_dtype)."
    )
    output_dtype: Literal["bfloat16", "float32"] | None = Field(
        None, description="The dtype each sharded module's outputs are cast to."
    )
    cast_forward_inputs: bool = Field(
        True, description="Cast each sharded module's floating inputs to param_dtype."
    )


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
    state_dict_type: Literal["SHARDED_STATE_DICT", "FULL_STATE_DICT"] = Field(
        "SHARDED_STATE_DICT",
        description="How checkpoints hold the weights and optimizer state: each process its "
        "shard (SHARDED_STATE_DICT), or gathered into whole files by rank 0 (FULL_STATE_DICT, "
        "the layout of a one-process checkpoint).",
    )
    final_state_dict_type: Literal["FULL_STATE_DICT"] = Field(
        "FULL_STATE_DICT", description="The final model is gathered into one HF model."
    )
    offload_params: bool = Field(
        False,
        description="Keep the shards (weights, gradients, optimizer state) in CPU memory; the "
        "optimizer steps on the CPU (torch's CPUOffloadPolicy).",
    )
    cpu_offload_pin_memory: bool | None = Field(
        None,
        description="With offload_params: pinned host memory for the copies (default: true "
        "with a GPU; there is none to pin for without one).",
    )
    cpu_ram_efficient_loading: bool = Field(
        False,
        description="Only rank 0 loads the weights; the other processes build the model on the "
        "meta device and receive rank 0's weights when it is sharded.",
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each sharded layer in the backward pass (torch's "
        "checkpoint_wrapper, as accelerate applies it); not with gradient_checkpointing.",
    )
    mixed_precision_policy: MixedPrecisionSettings | None = Field(
        None,
        description="FSDP2's mixed precision: a dtype name (bf16: weights gathered and "
        "gradients reduced in it) or {param_dtype, reduce_dtype, output_dtype, "
        "cast_forward_inputs}; default: none (the precision follows bf16).",
    )

    @model_validator(mode="before")
    @classmethod
    def fsdp2_spelling(cls, data: Any) -> Any:
        """`fsdp_`-prefixed keys read without the prefix; FSDP1's keys refused by name; the
        mixed precision policy's dtype names checked."""
        if not isinstance(data, dict):
            return data
        refuse_fsdp1_only(data)
        renamed = unprefixed(data)
        renamed.pop("fsdp_version", None)  # the top-level key decides
        renamed.pop("version", None)
        if "mixed_precision_policy" in renamed:
            renamed["mixed_precision_policy"] = mixed_precision(renamed["mixed_precision_policy"])
        return renamed

    @model_validator(mode="after")
    def pinning_needs_offload(self) -> FsdpConfig:
        """`cpu_offload_pin_memory` only means something with `offload_params`."""
        if self.cpu_offload_pin_memory is not None and not self.offload_params:
            raise ValueError("cpu_offload_pin_memory is set without offload_params: true")
        return self


class FsdpSettings(PluginConfig):
    """The FSDP keys (Axolotl's names)."""

    fsdp_version: Literal[1, 2] | None = Field(
        None,
        description="2: shard weights, gradients and optimizer state over the processes with "
        "PyTorch's FSDP2. 1 (FSDP1, Axolotl's older spelling) is mapped to FSDP2 with a note.",
    )
    fsdp: list[str] | str | None = Field(
        None,
        description="Axolotl's older FSDP1 list (full_shard, shard_grad_op, offload, "
        "auto_wrap): mapped to FSDP2's fsdp_config with a note.",
    )
    fsdp_config: FsdpConfig | None = Field(None, description="FSDP's settings (Axolotl's keys).")

    @model_validator(mode="before")
    @classmethod
    def fsdp1_mapped(cls, data: Any) -> Any:
        """FSDP1's spelling (`fsdp:` list, `fsdp_version: 1`, `fsdp_config` without
        `fsdp_version`) becomes FSDP2's, with one warning saying what was mapped; what has no
        FSDP2 equivalent is refused."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        config = data.get("fsdp_config")
        if isinstance(config, dict) and data.get("fsdp_version") is None:
            inner = config.get("fsdp_version", config.get("version"))
            if inner is not None:
                data["fsdp_version"] = inner  # Axolotl reads it from fsdp_config too
        version = data.get("fsdp_version")
        if version not in (None, 1, 2, "1", "2"):
            raise ValueError(f"fsdp_version {version!r}: 2 (FSDP2), or 1 (mapped to FSDP2)")
        version = None if version is None else int(version)
        listed = data.get("fsdp") not in (None, [], "", False)
        if version == 2:
            if config is not None and not isinstance(config, dict):
                return data  # the field's own validation says what is wrong
            settings, notes = fsdp1_beside_fsdp2(data.get("fsdp"), config)
            if notes:
                log.warning(
                    "fsdp: / fsdp_config.sharding_strategy (FSDP1's spelling) beside "
                    "fsdp_version: 2 mapped to FSDP2, which runs: %s",
                    "; ".join(notes),
                )
            data.update(fsdp_version=2, fsdp=None)
            if config is not None or notes:
                data["fsdp_config"] = settings
            return data
        if not listed and config in (None, {}):
            if version == 1:
                raise ValueError(
                    "fsdp_version: 1 without fsdp_config or fsdp: nothing to shard; set "
                    "fsdp_version: 2 and fsdp_config"
                )
            return data
        if config is not None and not isinstance(config, dict):
            return data  # the field's own validation says what is wrong
        settings, notes = from_fsdp1(data.get("fsdp"), config)
        given = [key for key in ("fsdp", "fsdp_version", "fsdp_config") if data.get(key)]
        log.warning(
            "%s (FSDP1's spelling) mapped to FSDP2, which runs: %s",
            " + ".join(given),
            "; ".join(notes) or "the same keys",
        )
        data.update(fsdp_version=2, fsdp_config=settings, fsdp=None)
        return data

    @model_validator(mode="after")
    def version_given(self) -> FsdpSettings:
        """`fsdp_config` leads to FSDP2 (`fsdp_version` is 2 once FSDP1's spelling is mapped);
        an optimizer that cannot step sharded parameters is refused."""
        if self.fsdp_config is not None and self.fsdp_version != 2:
            raise ValueError("fsdp_config is set without fsdp_version: 2; add fsdp_version: 2")
        optimizer = str(getattr(self, "optimizer", None) or "")
        why = unshardable(optimizer) if self.fsdp_version == 2 else None
        if why:
            raise ValueError(
                f"optimizer: {optimizer} cannot step FSDP2's sharded parameters: {why}; use "
                "adamw_torch (or another torch optimizer, optimi's), adamw_torch_8bit "
                "(torchao's 8-bit AdamW, which does), or DeepSpeed"
            )
        return self


_FACTORED = (
    "it factors each weight's second moment into row and column statistics kept as plain "
    "tensors, which cannot update FSDP2's sharded (DTensor) parameters"
)
_BNB = "bitsandbytes' optimizer kernels take plain tensors, not FSDP2's sharded (DTensor) ones"
UNSHARDABLE = {
    "adafactor": _FACTORED,
    "came_pytorch": _FACTORED,
    **dict.fromkeys(
        ["adamw_bnb_8bit", "adamw_8bit", "paged_", "lion_", "ademamix", "rmsprop_bnb"], _BNB
    ),
}
"""`optimizer:` names (or name prefixes ending in `_`) FSDP2 cannot shard, and why: each
crashed at its first step on 2 CPU processes (bitsandbytes 0.50: "got mixed torch.Tensor and
DTensor", a dispatch error before any device kernel). FSDP1's flat parameters, which Axolotl
keeps for `fsdp_version: 1`, are mapped to FSDP2 here, so its FSDP1 configs with these
optimizers are refused too."""


def unshardable(optimizer: str) -> str | None:
    """Why FSDP2 cannot run `optimizer:` (None when it can)."""
    for name, why in UNSHARDABLE.items():
        prefix = name if name.endswith("_") else f"{name}_"
        if optimizer == name or optimizer.startswith(prefix):
            return why
    return None


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`fsdp_version`, `fsdp` (FSDP1's list, mapped) and `fsdp_config`."""
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

    def shard_options(self) -> dict[str, Any]:
        """`fully_shard`'s keyword arguments: resharding, mixed precision, CPU offload."""
        import torch
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

        settings = self.settings
        precision = settings.mixed_precision_policy
        policy = MixedPrecisionPolicy()
        if precision is not None:
            dtypes = {
                key: getattr(torch, name)
                for key in ("param_dtype", "reduce_dtype", "output_dtype")
                if (name := getattr(precision, key)) is not None
            }
            policy = MixedPrecisionPolicy(
                **dtypes, cast_forward_inputs=precision.cast_forward_inputs
            )
        offload: Any = OffloadPolicy()
        if settings.offload_params:
            pin = settings.cpu_offload_pin_memory
            offload = CPUOffloadPolicy(pin_memory=self.device.type != "cpu" if pin is None else pin)
        return {
            "reshard_after_forward": settings.reshard_after_forward,
            "mp_policy": policy,
            "offload_policy": offload,
        }

    def checkpointed(self, model: Any, classes: set[str]) -> list[Any]:
        """The layers to shard one by one; with `activation_checkpointing` each is first put in
        torch's `checkpoint_wrapper` (as accelerate's `fsdp2_apply_ac` does) and the wrapper is
        what gets sharded."""
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        named = [(n, m) for n, m in model.named_modules() if type(m).__name__ in classes]
        if not self.settings.activation_checkpointing:
            return [module for _, module in named]
        wrapped = []
        for name, module in named:
            wrapper = checkpoint_wrapper(module, preserve_rng_state=False)
            model.set_submodule(name, wrapper)
            wrapped.append(wrapper)
        return wrapped

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        """Shard each layer, then the whole model; the optimizer is pointed at the sharded
        parameters (it was built on the unsharded ones). With `cpu_ram_efficient_loading` the
        model is sharded on the meta device and rank 0's weights are broadcast into the shards
        (accelerate's `fsdp2_load_full_state_dict`)."""
        from torch.distributed.fsdp import fully_shard

        ensure_process_group(self.device)
        names = {id(param): name for name, param in model.named_parameters()}
        classes = self.layer_classes(model)
        options = self.shard_options()
        layers = self.checkpointed(model, classes)
        keep_storage_layout(model)
        efficient = self.settings.cpu_ram_efficient_loading
        if efficient:
            full, buffers = self.to_meta(model)
        else:
            model.to(self.device)
        for layer in layers:
            fully_shard(layer, **options)
        fully_shard(model, **options)
        if efficient:
            self.load_from_main(model, full, buffers)
        report_sharded(model, self.device)
        sharded = {canonical(name): param for name, param in model.named_parameters()}
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(param)]] for param in group["params"]]
        return model, optimizer, scheduler

    def to_meta(self, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Rank 0's whole state dict and every process's non-persistent buffers (not in a state
        dict), then the model onto the meta device (as accelerate's `fsdp2_prepare_model`)."""
        import torch
        from accelerate.utils.modeling import get_non_persistent_buffers

        self.count_meta_builds(model)
        fqns = get_non_persistent_buffers(model, recurse=True, fqns=True)
        buffers = {name: buf for name, buf in model.named_buffers() if name in fqns}
        full = model.state_dict() if self.is_main_process else {}
        model.to(torch.device("meta"))
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        return full, buffers

    def count_meta_builds(self, model: Any) -> None:
        """Log (rank 0) how many processes built the model without its weights (collective)."""
        import torch
        import torch.distributed as dist

        built = any(param.is_meta for param in model.parameters())
        count = torch.tensor([int(built)], device=self.device)
        dist.all_reduce(count)
        if self.is_main_process:
            log.info(
                "fsdp_config.cpu_ram_efficient_loading: %d of %d processes built the model on "
                "the meta device; rank 0's weights are broadcast into the shards",
                int(count.item()),
                self.num_processes,
            )

    def load_from_main(self, model: Any, full: dict[str, Any], buffers: dict[str, Any]) -> None:
        """Rank 0's weights into every process's shards, its non-persistent buffers to every
        process (collective)."""
        import torch
        import torch.distributed as dist
        from accelerate.utils.fsdp_utils import fsdp2_load_full_state_dict

        offload = self.settings.offload_params
        fsdp2_load_full_state_dict(self.accelerator, model, full, cpu_offload=offload)
        for fqn, buffer in buffers.items():
            if self.is_main_process:
                data = buffer.detach().to(self.device)
            else:
                data = torch.empty(buffer.shape, dtype=buffer.dtype, device=self.device)
            dist.broadcast(data, src=0)
            owner_name, _, leaf = fqn.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            owner.register_buffer(leaf, data, persistent=False)
        if hasattr(model, "tie_weights"):
            model.tie_weights()

    def prepare_frozen(self, model: Any) -> Any:
        """A frozen extra model (a reference); under `cpu_ram_efficient_loading` (where the
        other ranks copied a policy built on the meta device) it first receives rank 0's
        weights, on every process (collective)."""
        if self.settings.cpu_ram_efficient_loading:
            ensure_process_group(self.device)
            broadcast_from_main(model, self.device, self.is_main_process)
        return super().prepare_frozen(model)

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
        """The trainable weights and optimizer state, as `state_dict_type` says: each process's
        shard into `folder/sharded`, or gathered whole and written by rank 0 (every process
        takes part); the schedule from the main process."""
        import torch
        import torch.distributed.checkpoint as dcp

        if self.settings.state_dict_type == "FULL_STATE_DICT":
            write_full_state(folder, model, optimizer, self.is_main_process)
        else:
            dcp.save(sharded_state(model, optimizer), checkpoint_id=str(folder / SHARDED_FOLDER))
        if optimizer is not None and self.is_main_process:
            torch.save(scheduler.state_dict(), folder / "scheduler.pt")

    def load_state(self, folder: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Read back what `save_state` wrote, sharded or whole, whichever the checkpoint holds
        (every process)."""
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        sharded, whole = (folder / SHARDED_FOLDER).is_dir(), (folder / WEIGHTS_FILE).is_file()
        if not (sharded or whole) or not (folder / "scheduler.pt").is_file():
            raise WeaveError(
                f"resume_from_checkpoint: {folder} holds no FSDP2 state with optimizer "
                "(saved by another strategy, or with save_only_model: true)"
            )
        if sharded:
            state = sharded_state(model, optimizer)
            dcp.load(state, checkpoint_id=str(folder / SHARDED_FOLDER))
            options = StateDictOptions(ignore_frozen_params=True, strict=False)
        else:
            state = read_full_state(folder, self.is_main_process)
            options = StateDictOptions(
                full_state_dict=True,
                broadcast_from_rank0=True,
                ignore_frozen_params=True,
                strict=False,
            )
        # one call each: `set_state_dict` skips the model on a rank whose dict is empty (those
        # receiving rank 0's broadcast), and rank 0 would wait for it
        set_model_state_dict(model, state["model"], options=options)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
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
        restore_packed(model)
        unwrap_checkpointed(model)


CHECKPOINT_PREFIX = "_checkpoint_wrapped_module."
"""What torch's `checkpoint_wrapper` adds to the names of the parameters it wraps."""


def canonical(name: str) -> str:
    """A parameter's name without the checkpoint wrappers' part."""
    return name.replace(CHECKPOINT_PREFIX, "")


def unwrap_checkpointed(model: Any) -> None:
    """Each `checkpoint_wrapper` replaced by the layer it wraps (the model saved is plain)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, CheckpointWrapper)]
    for name, wrapper in wrapped:
        model.set_submodule(name, wrapper._checkpoint_wrapped_module)


def broadcast_from_main(model: Any, device: Any, is_main: bool) -> None:
    """Every parameter and buffer of `model` replaced by rank 0's, on `device` (collective)."""
    import torch
    import torch.distributed as dist

    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if is_main:
            data = tensor.detach().to(device)
        else:
            data = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
        dist.broadcast(data, src=0)
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if leaf in owner._parameters:
            owner._parameters[leaf] = torch.nn.Parameter(data, tensor.requires_grad)
        else:
            owner._buffers[leaf] = data
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def sharded_state(model: Any, optimizer: Any, whole: bool = False) -> dict[str, Any]:
    """The trainable weights' (and the optimizer's) state dicts: each process's shards, or with
    `whole` gathered in full into rank 0's CPU memory (the other ranks get empty dicts).
    Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=whole, cpu_offload=whole, ignore_frozen_params=True)
    state = {"model": get_model_state_dict(model, options=options)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer, options=options)
    return state


def write_full_state(folder: Path, model: Any, optimizer: Any, is_main: bool) -> None:
    """`state_dict_type: FULL_STATE_DICT`: the trainable weights gathered whole into
    `folder/trainable.safetensors` (a one-process checkpoint's file; a weight tied to another is
    written once) and the optimizer's state into `optimizer.pt`, keyed by parameter name.
    Collective: every process gathers, rank 0 writes."""
    import torch
    from safetensors.torch import save_file

    state = sharded_state(model, optimizer, whole=True)
    if not is_main:
        return
    names = {canonical(name) for name, _ in model.named_parameters()}  # ties counted once
    weights = {k: v.contiguous() for k, v in state["model"].items() if k in names}
    save_file(weights, str(folder / WEIGHTS_FILE))
    if "optimizer" in state:
        torch.save(state["optimizer"], folder / "optimizer.pt")


def read_full_state(folder: Path, is_main: bool) -> dict[str, Any]:
    """What `write_full_state` wrote, read by rank 0 (the others receive it by broadcast).
    A checkpoint rank 0 cannot use stops every process with the same message (the others
    would otherwise wait for a broadcast that never comes)."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file

    state: dict[str, Any] = {"model": {}, "optimizer": {}}
    problem = None
    if is_main:
        try:
            optim = torch.load(folder / "optimizer.pt", weights_only=False)
            keys = list(optim.get("state", {}))
            if keys and not isinstance(keys[0], str):
                problem = (
                    f"resume_from_checkpoint: {folder} was saved by one process (its optimizer "
                    "state is numbered, not named): resume it without fsdp_version: 2, or start "
                    "a new FSDP2 run"
                )
            else:
                state = {"model": load_file(str(folder / WEIGHTS_FILE)), "optimizer": optim}
        except (OSError, RuntimeError, ValueError) as exc:
            problem = f"resume_from_checkpoint: cannot read {folder}: {exc}"
    if dist.is_initialized() and dist.get_world_size() > 1:
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        problem = shared[0]
    if problem:
        raise WeaveError(problem)
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
    backend = "gloo" if device.type == "cpu" else None  # None: gloo for CPU tensors too
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def offload_process_group(timeout: Any) -> None:
    """Launched on GPUs with `offload_params`: NCCL for GPU tensors and gloo for the offloaded
    CPU ones (the gradient norm, the gathered final model), as accelerate sets it up."""
    import os

    import torch.distributed as dist

    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    dist.init_process_group("cuda:nccl,cpu:gloo", timeout=timeout)


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
    refuse_fp16(precision)
    cpu = torch.accelerator.current_accelerator() is None
    timeout = timedelta(seconds=getattr(cfg, "ddp_timeout", 1800))
    settings = cfg.fsdp_config or FsdpConfig()
    if settings.offload_params and not cpu:
        offload_process_group(timeout)
    if PartialState(cpu=cpu, timeout=timeout).num_processes == 1:
        AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision)
    return Fsdp2Strategy(accelerator, settings)


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
def configure(cfg: Any, register: Any) -> None:
    """Before anything loads: what FSDP2 cannot do with the rest of the config is refused (a
    `transformer_layer_cls_to_wrap` the model does not have, naming its layer classes); with
    `cpu_ram_efficient_loading` on a process other than rank 0, a run-scoped plugin has the
    model built on the meta device."""
    if cfg.fsdp_version != 2:
        return
    settings = cfg.fsdp_config or FsdpConfig()
    refuse_combinations(cfg, settings)
    wanted = settings.transformer_layer_cls_to_wrap
    if wanted:
        wanted = {wanted} if isinstance(wanted, str) else set(wanted)
        present = model_module_classes(cfg)
        if present is not None and not wanted <= present:
            layers = sorted(n for n in present if n.endswith(("Layer", "Block")))
            raise ConfigError(
                "fsdp_config.transformer_layer_cls_to_wrap: the model has no "
                f"{', '.join(sorted(wanted - present))} (its layer classes: "
                f"{', '.join(layers) or 'none found'})"
            )
    if settings.cpu_ram_efficient_loading and not is_rank_zero():
        register(MetaLoading(), "fsdp2-meta-loading")


def refuse_fp16(precision: str) -> None:
    """fp16 mixed precision is refused (its loss scaler does not step sharded gradients)."""
    if precision == "fp16":
        raise ConfigError(
            "fsdp_version: 2 with fp16 is not implemented (its loss scaler does not step "
            "sharded gradients here): use bf16: true, or fp32"
        )


def refuse_combinations(cfg: Any, settings: FsdpConfig) -> None:
    """`fsdp_config` settings that the rest of the config (or this machine) rules out."""
    import torch

    refuse_fp16(resolve_precision(cfg).mixed_precision)
    if settings.activation_checkpointing and getattr(cfg, "gradient_checkpointing", False):
        raise ConfigError(
            "fsdp_config.activation_checkpointing and gradient_checkpointing both checkpoint "
            "the decoder layers: keep one"
        )
    quantized = [k for k in ("load_in_4bit", "load_in_8bit", "gptq") if getattr(cfg, k, False)]
    if settings.cpu_ram_efficient_loading and quantized:
        raise ConfigError(
            f"fsdp_config.cpu_ram_efficient_loading with {', '.join(quantized)}: quantized "
            "weights cannot be built on the meta device and broadcast; set it false"
        )
    if settings.cpu_offload_pin_memory and torch.accelerator.current_accelerator() is None:
        raise ConfigError(PINNED_ON_CPU)
    refuse_cast_storage(cfg, settings)


@hookimpl(trylast=True)
def model_load_kwargs(cfg: Any, purpose: str, kwargs: dict[str, Any]) -> None:
    """QLoRA under FSDP2 (after the quantization plugin's): the packed 4-bit weights stored in
    the dtype FSDP2 gathers in, so that they shard (FSDP-QLoRA), with a note."""
    if cfg.fsdp_version == 2 and purpose == "train":
        set_quant_storage(cfg, cfg.fsdp_config or FsdpConfig(), kwargs)


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its launch (or not launched at all)."""
    import os

    return os.environ.get("RANK", "0") == "0"


class MetaLoading:
    """Run-scoped (`cpu_ram_efficient_loading`, ranks other than 0): the model to train is
    built on the meta device, without reading a weight; rank 0's arrive at sharding."""

    @hookimpl
    def model_load_kwargs(self, purpose: str, kwargs: dict[str, Any]) -> None:
        """`device_map: meta` for the model to train."""
        import os

        if purpose == "train":
            kwargs["device_map"] = "meta"
            log.info(
                "fsdp_config.cpu_ram_efficient_loading: rank %s builds the model on the meta "
                "device (rank 0's weights arrive when it is sharded)",
                os.environ.get("RANK"),
            )


@hookimpl(wrapper=True)
def post_train(strategy: Any, model: Any) -> Generator[None, Any, Any]:
    """Before any `post_train` saves the model: gather FSDP2's shards into whole weights."""
    if isinstance(strategy, Fsdp2Strategy):
        strategy.gather(model)
    return (yield)
