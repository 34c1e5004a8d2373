"""DeepSpeed's JSON config for a run: read (a path or an inline mapping), checked, and its `auto`
values filled from the Axolotl Weave config, so that the batch the core deals out, the clipping,
the precision and DeepSpeed's own accounting always agree.

No DeepSpeed import here: everything is plain JSON work, done before any model loads.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from axolotl_weave import ConfigError, resolve_precision

AUTO = "auto"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "deepspeed_configs"
"""The configs shipped with the package (a link to the repository's `deepspeed_configs/`)."""
SHIPPED_FOLDER = "deepspeed_configs"
STAGES = (1, 2, 3)

ADAMW_FAMILY = ("adamw_torch", "adamw", "adamw_torch_fused")
"""`optimizer:` names that a DeepSpeed `optimizer` section of type Adam / AdamW describes."""

UNSHARDABLE = {
    "muon": "Muon orthogonalises each whole weight matrix, and ZeRO hands the optimizer flat "
    "1-D shards of every parameter",
    "adafactor": "Adafactor factors the second moment of each 2-D weight into its rows and "
    "columns, and ZeRO hands the optimizer flat 1-D shards, which would silently make it a "
    "different, unfactored optimizer",
    "came_pytorch": "CAME factors the second moment of each 2-D weight into its rows and "
    "columns, and ZeRO hands the optimizer flat 1-D shards, which would silently make it a "
    "different, unfactored optimizer",
}
"""Optimizers ZeRO cannot shard (it runs the optimizer on flat 1-D partitions), and why."""

MODEL_SIZED = (
    "reduce_bucket_size",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
)
"""`zero_optimization` keys whose `auto` is filled from the model's hidden size (at `prepare`)."""


def shipped_configs() -> dict[str, Path]:
    """The shipped configs by name (`zero2` -> its JSON file)."""
    return {path.stem: path for path in sorted(SHIPPED_DIR.glob("*.json"))}


def shipped_list() -> str:
    """`deepspeed_configs/zero1.json, ...` for messages."""
    return ", ".join(f"{SHIPPED_FOLDER}/{name}.json" for name in shipped_configs())


def resolve_path(value: str) -> Path:
    """The JSON file `deepspeed:` names: the path itself (relative to the working directory),
    else, for Axolotl's spelling `deepspeed_configs/NAME.json`, the shipped copy of NAME."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.parent.name == SHIPPED_FOLDER and path.stem in shipped_configs():
        return shipped_configs()[path.stem]
    raise ValueError(
        f"file {value!r} does not exist (relative paths are read from {Path.cwd()}); "
        f"give a DeepSpeed JSON file, an inline mapping, or a shipped config: {shipped_list()}"
    )


def read_config(value: str | dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config as a mapping (a copy): read and parsed when `value` is a path; its
    ZeRO stage checked. Raises `ValueError` saying what is wrong."""
    if isinstance(value, dict):
        where, data = "the inline mapping", copy.deepcopy(value)
    else:
        path = resolve_path(value)
        where = str(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{where} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object (a mapping), not {type(data).__name__}")
    zero = data.get("zero_optimization")
    stage = zero.get("stage") if isinstance(zero, dict) else None
    if stage not in STAGES:
        raise ValueError(
            f"{where}: zero_optimization.stage must be 1, 2 or 3 (got {stage!r}); without ZeRO, "
            "train with plain data parallelism instead (drop deepspeed:, launch with "
            "--num-processes N)"
        )
    return data


def agree(data: dict[str, Any], key: str, wanted: Any, source: str) -> None:
    """Fill `data[key]` with `wanted` when absent or `auto`; an explicit different value is
    refused (DeepSpeed and the core would disagree about the run)."""
    given = data.get(key, AUTO)
    if given == AUTO:
        data[key] = wanted
        return
    same = (
        math.isclose(float(given), float(wanted), rel_tol=1e-9)
        if isinstance(given, (int, float)) and isinstance(wanted, (int, float))
        else given == wanted
    )
    if not same:
        raise ConfigError(
            f'deepspeed: {key} is {given!r} but {source} gives {wanted!r}; set it to "auto" '
            "(filled from the config) or make them agree"
        )


def precision_section(data: dict[str, Any], name: str, enabled: bool, key: str) -> None:
    """`bf16` / `fp16` `enabled` filled from the config's precision, or checked against it."""
    section = data.get(name)
    if section is None:
        data[name] = {"enabled": enabled}
        return
    if not isinstance(section, dict):
        raise ConfigError(f'deepspeed: {name} must be a mapping such as {{"enabled": "auto"}}')
    given = section.get("enabled", False)
    if given == AUTO:
        section["enabled"] = enabled
    elif bool(given) != enabled:
        raise ConfigError(
            f"deepspeed: {name}.enabled is {given!r} but the config's {key} resolves to "
            f"{enabled} on this machine: set {key}: {str(bool(given)).lower()} in the config, "
            f'or {name}.enabled: "auto"'
        )


def optimizer_section(data: dict[str, Any], cfg: Any) -> None:
    """A DeepSpeed `optimizer` section is read as a description of the config's optimizer: its
    `auto` values are the config's, an explicit value must agree; then it is dropped, because the
    core builds the optimizer (`optimizer:`, `learning_rate`, `adam_beta1/2`, `adam_epsilon`,
    `weight_decay`) and DeepSpeed shards and steps it."""
    section = data.pop("optimizer", None)
    if section is None:
        return
    kind = str(section.get("type", "")).lower()
    if kind not in ("adam", "adamw") or cfg.optimizer not in ADAMW_FAMILY:
        raise ConfigError(
            f"deepspeed: the optimizer section (type {section.get('type')!r}) does not describe "
            f"optimizer: {cfg.optimizer}; remove the section: the config's optimizer: is the one "
            "DeepSpeed shards and steps"
        )
    params = dict(section.get("params") or {})
    wanted = {
        "lr": cfg.learning_rate,
        "betas": [cfg.adam_beta1, cfg.adam_beta2],
        "eps": cfg.adam_epsilon,
        "weight_decay": cfg.weight_decay,
    }
    names = {
        "lr": "learning_rate",
        "betas": "adam_beta1 / adam_beta2",
        "eps": "adam_epsilon",
        "weight_decay": "weight_decay",
    }
    for key, value in params.items():
        if key not in wanted:
            raise ConfigError(
                f"deepspeed: optimizer.params.{key} has no equivalent here; remove it (the "
                f"config's optimizer: {cfg.optimizer} is used)"
            )
        if value == AUTO:
            continue
        if key == "betas":
            same = len(value) == 2 and all(
                math.isclose(float(a), b) for a, b in zip(value, wanted[key], strict=True)
            )
        else:
            same = math.isclose(float(value), float(wanted[key]))
        if not same:
            raise ConfigError(
                f"deepspeed: optimizer.params.{key} is {value!r} but the config's {names[key]} "
                f'is {wanted[key]!r}; set it to "auto" or remove the optimizer section'
            )


def scheduler_section(data: dict[str, Any]) -> None:
    """A `scheduler` section whose params are all `auto` is dropped (the config's
    `lr_scheduler`, `warmup_steps` / `warmup_ratio` decide the schedule); an explicit one is
    refused (it would be a second schedule)."""
    section = data.pop("scheduler", None)
    if section is None:
        return
    explicit = {k: v for k, v in (section.get("params") or {}).items() if v != AUTO}
    if explicit:
        raise ConfigError(
            f"deepspeed: the scheduler section sets {', '.join(sorted(explicit))}; the schedule "
            "comes from the config (lr_scheduler, warmup_steps, warmup_ratio, learning_rate): "
            "remove the section"
        )


def remaining_autos(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys still `auto` (those filled at `prepare` from the model's size excepted)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            if value == AUTO and not (prefix == "zero_optimization." and key in MODEL_SIZED):
                found.append(dotted)
            found += remaining_autos(value, f"{dotted}.")
    return found


def fill_from_config(
    value: str | dict[str, Any], cfg: Any, world_size: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed config with its `auto` values filled from `cfg` (and `train_batch_size`
    from `world_size` when given); raises `ConfigError` for what cannot agree."""
    try:
        data = read_config(value)
    except ValueError as exc:
        raise ConfigError(f"deepspeed: {exc}") from None
    precision = resolve_precision(cfg).mixed_precision
    agree(data, "train_micro_batch_size_per_gpu", cfg.micro_batch_size, "micro_batch_size")
    agree(
        data,
        "gradient_accumulation_steps",
        cfg.gradient_accumulation_steps,
        "gradient_accumulation_steps",
    )
    agree(data, "gradient_clipping", float(cfg.max_grad_norm or 0.0), "max_grad_norm")
    if world_size is not None:
        global_batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size
        agree(
            data,
            "train_batch_size",
            global_batch,
            f"micro_batch_size x gradient_accumulation_steps x {world_size} processes",
        )
    elif data.get("train_batch_size", AUTO) == AUTO:
        data.pop("train_batch_size", None)  # filled once the process count is known
    precision_section(data, "bf16", precision == "bf16", "bf16")
    precision_section(data, "fp16", precision == "fp16", "fp16")
    optimizer_section(data, cfg)
    scheduler_section(data)
    zero = data["zero_optimization"]
    if "offload_optimizer" in zero:  # the config's optimizer runs on the CPU, as HF's Trainer
        data.setdefault("zero_force_ds_cpu_optimizer", False)
    data.setdefault("zero_allow_untested_optimizer", True)  # the optimizer is the config's
    data.setdefault("steps_per_print", 2**31 - 1)  # the core logs the steps
    left = remaining_autos(data)
    if left:
        raise ConfigError(
            f"deepspeed: no value here fills 'auto' for {', '.join(left)}; give a value (auto is "
            "filled for train_micro_batch_size_per_gpu, gradient_accumulation_steps, "
            "train_batch_size, gradient_clipping, bf16/fp16 enabled, optimizer params, "
            f"zero_optimization.{', zero_optimization.'.join(MODEL_SIZED)})"
        )
    return data


def fill_model_sizes(data: dict[str, Any], hidden_size: int | None) -> None:
    """The ZeRO bucket sizes left `auto`, from the model's hidden size (as Hugging Face's
    Trainer fills them); DeepSpeed's defaults when the model has none."""
    zero = data["zero_optimization"]
    sizes = (
        {}
        if not hidden_size
        else {
            "reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size,
        }
    )
    for key in MODEL_SIZED:
        if zero.get(key) == AUTO:
            if key in sizes:
                zero[key] = sizes[key]
            else:
                del zero[key]


def unshardable_reason(optimizer: str) -> str | None:
    """Why ZeRO cannot shard `optimizer:` (None when it can)."""
    for name, why in UNSHARDABLE.items():
        if optimizer == name or optimizer.startswith(f"{name}_"):
            return why
    return None
