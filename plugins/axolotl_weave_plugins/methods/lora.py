"""`adapter: lora` / `adapter: qlora`: wrap the loaded model in a peft LoRA adapter (only the
adapter trains), and `weave merge-lora` to fold a trained adapter into its base model.

Every peft LoRA option Axolotl exposes is here under Axolotl's name (`lora_r`, `peft_use_dora`,
`peft_layers_to_transform`, ...). QLoRA is LoRA around a 4-bit base: the `bnb_quantization`
plugin loads the base (`load_in_4bit`), this plugin's `load_model` wrapper wraps whatever was
loaded. When the tokenizer has more tokens than the base model's vocabulary, the grown
embeddings train in full and are saved with the adapter (`lora_modules_to_save`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal

import typer
from axolotl_weave import (
    ConfigError,
    ModelFamily,
    PluginConfig,
    WeaveError,
    hookimpl,
    staged_folder,
)
from pydantic import Field, model_validator

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")

MEMORY_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")
"""What `gpu_memory_limit` accepts as a string (accelerate's `max_memory` sizes)."""


class LoraSettings(PluginConfig):
    """LoRA keys, with Axolotl's names and defaults."""

    adapter: Literal["lora", "qlora"] | None = Field(
        None, description="lora: train a LoRA adapter; qlora: the same on a 4-bit base."
    )
    lora_model_dir: str | None = Field(
        None, description="Continue training this saved adapter (and merge-lora's default)."
    )
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | str | None = Field(
        None, description="Module names (or a regex) to adapt; default: the family's."
    )
    lora_target_parameters: list[str] | None = Field(
        None,
        description="Parameters (not modules) to adapt, e.g. MoE experts' fused "
        "'experts.gate_up_proj' (peft's target_parameters).",
    )
    lora_target_linear: bool = Field(
        False, description="Adapt every linear layer but lm_head (plus lora_target_modules)."
    )
    lora_modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained in full and saved with the adapter; the embeddings are "
        "added automatically when tokens are added.",
    )
    lora_fan_in_fan_out: bool = Field(
        False, description="The layers store weight as (fan_in, fan_out) (GPT-2's Conv1D)."
    )
    peft_use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA.")
    peft_use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r).")
    peft_layers_to_transform: list[int] | None = Field(
        None, description="Indices of the layers to adapt; default: all."
    )
    peft_layers_pattern: list[str] | None = Field(
        None, description="Name of the layer list peft_layers_to_transform indexes (e.g. layers)."
    )
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: lr of the B matrices / lr of A (e.g. 16)."
    )
    loraplus_lr_embedding: float | None = Field(
        1e-6, gt=0, description="LoRA+: lr of LoRA embedding layers."
    )
    lora_on_cpu: bool = Field(False, description="merge-lora: load base and adapter on the CPU.")
    gpu_memory_limit: int | str | None = Field(
        None, description="merge-lora: memory per GPU for the base ('20GiB', or an int in GiB)."
    )

    @model_validator(mode="after")
    def _check_lora_keys(self) -> LoraSettings:
        load_in_4bit = getattr(self, "load_in_4bit", False)
        load_in_8bit = getattr(self, "load_in_8bit", False)
        if self.adapter == "qlora" and load_in_8bit:
            raise ValueError("adapter: qlora loads the base in 4 bits: remove load_in_8bit")
        if self.adapter == "qlora" and not load_in_4bit:
            raise ValueError(
                "adapter: qlora needs load_in_4bit: true (or use adapter: lora for a LoRA on "
                "an unquantized base)"
            )
        if self.loraplus_lr_ratio is not None and self.adapter is None:
            raise ValueError("loraplus_lr_ratio needs adapter: lora or qlora")
        if isinstance(self.gpu_memory_limit, int) and self.gpu_memory_limit <= 0:
            raise ValueError("gpu_memory_limit: give a positive number of GiB")
        if isinstance(self.gpu_memory_limit, str) and not MEMORY_SIZE.match(self.gpu_memory_limit):
            raise ValueError(
                f"gpu_memory_limit: '{self.gpu_memory_limit}' is not a size such as 20GiB"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """LoRA's config keys."""
    return LoraSettings


# --- building the peft config ------------------------------------------------------------------


def embedding_module_names(model: Any) -> list[str]:
    """The names (last component) of the model's input and output embedding modules."""
    wanted = [model.get_input_embeddings(), model.get_output_embeddings()]
    names: list[str] = []
    for name, module in model.named_modules():
        if any(module is w for w in wanted if w is not None):
            short = name.rsplit(".", 1)[-1]
            if short not in names:
                names.append(short)
    return names


def linear_module_names(model: Any) -> list[str]:
    """Names (last component) of every linear layer, quantized ones too, but the output layer."""
    import torch

    output = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if module is output or not name:
            continue
        if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def has_linear_peft_all_linear_misses(model: Any) -> bool:
    """Whether the model has linear layers that are not `torch.nn.Linear` (GPTQ kernels such as
    gptqmodel's `TorchQuantLinear`), which peft's "all-linear" shortcut does not find."""
    import torch

    return any(
        "Linear" in type(module).__name__ and not isinstance(module, torch.nn.Linear)
        for module in model.modules()
    )


def target_modules(cfg: Any, family: ModelFamily | None, model: Any = None) -> list[str] | str:
    """What to adapt: all linear layers (and `lora_target_modules`), the config's list or regex,
    or the family's default."""
    if cfg.lora_target_linear:
        quantized_kernels = model is not None and has_linear_peft_all_linear_misses(model)
        if not quantized_kernels and (not cfg.lora_target_modules or model is None):
            return "all-linear"
        extra = cfg.lora_target_modules or []
        extra = [extra] if isinstance(extra, str) else list(extra)
        return sorted(set(linear_module_names(model)) | set(extra))
    if cfg.lora_target_modules:
        return cfg.lora_target_modules
    if family is not None and family.adapter_target_modules:
        return list(family.adapter_target_modules)
    raise ConfigError(
        f"adapter: {cfg.adapter} needs lora_target_modules (or lora_target_linear: true): no "
        "model-family plugin gives a default for this architecture"
    )


def base_vocab_size(cfg: Any) -> int | None:
    """The vocabulary size in the base model's own config (before any resize), if it says."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            cfg.base_model_config or cfg.base_model,
            revision=cfg.revision_of_model,
            trust_remote_code=cfg.trust_remote_code,
        )
    except (OSError, ValueError):
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "vocab_size", None)


def modules_to_save(cfg: Any, model: Any, tokenizer: Any) -> list[str] | None:
    """`lora_modules_to_save`, plus the embeddings when the tokenizer outgrew the base model's
    vocabulary (their new rows must train, and the adapter alone must carry them)."""
    wanted = list(cfg.lora_modules_to_save or [])
    vocab = base_vocab_size(cfg)
    if tokenizer is not None and vocab is not None and len(tokenizer) > vocab:
        missing = [name for name in embedding_module_names(model) if name not in wanted]
        if missing:
            wanted += missing
            log.info(
                "lora: the tokenizer has %d tokens, the base model %d: the resized embeddings "
                "(%s) train in full and are saved with the adapter (lora_modules_to_save)",
                len(tokenizer),
                vocab,
                ", ".join(missing),
            )
    return wanted or None


def lora_config(cfg: Any, model: Any, tokenizer: Any, family: ModelFamily | None) -> Any:
    """The `peft.LoraConfig` the config describes."""
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type(model),
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules(cfg, family, model),
        modules_to_save=modules_to_save(cfg, model, tokenizer),
        fan_in_fan_out=cfg.lora_fan_in_fan_out,
        use_dora=cfg.peft_use_dora,
        use_rslora=cfg.peft_use_rslora,
        layers_to_transform=cfg.peft_layers_to_transform,
        layers_pattern=cfg.peft_layers_pattern,
        target_parameters=cfg.lora_target_parameters,
        bias="none",
    )


def task_type(model: Any) -> str:
    """peft's task type for the model's head: a classifier's (whose head peft then trains in
    full and saves with the adapter) or a causal LM's."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return "TOKEN_CLS" if name.endswith("ForTokenClassification") else "CAUSAL_LM"


@hookimpl(wrapper=True)
def load_model(
    cfg: Any, tokenizer: Any, family: ModelFamily | None, purpose: str
) -> Generator[None, Any, Any]:
    """Wrap the loaded model (quantized or not): for training, with a new LoRA adapter or the
    one in `lora_model_dir` (trainable); for inference, with the one in `lora_model_dir`. A
    merge's base is returned as loaded (`weave merge-lora` applies the adapter itself)."""
    model = yield
    if cfg.adapter not in ("lora", "qlora") or purpose == "merge":
        return model
    if purpose != "train" and not cfg.lora_model_dir:
        return model
    from peft import PeftModel, get_peft_model

    embeddings = embedding_module_names(model)
    if cfg.lora_model_dir:
        try:
            peft_model = PeftModel.from_pretrained(
                model, cfg.lora_model_dir, is_trainable=purpose == "train"
            )
        except (OSError, ValueError) as exc:
            raise WeaveError(
                f"lora_model_dir: cannot load the adapter '{cfg.lora_model_dir}': {exc}"
            ) from None
    else:
        config = lora_config(cfg, model, tokenizer, family)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as exc:
            raise ConfigError(
                f"adapter: {cfg.adapter}: peft refused the LoRA options: {exc}"
            ) from None
    for adapter in peft_model.peft_config.values():  # recorded in adapter_config.json
        adapter.base_model_name_or_path = usable_base_path(cfg.base_model)
    saved_in_full = set(peft_model.peft_config["default"].modules_to_save or [])
    if embeddings and set(embeddings) <= saved_in_full:
        save_without_base_embeddings(peft_model)
    return peft_model


def save_without_base_embeddings(peft_model: Any) -> None:
    """Make `save_pretrained` leave out the base layers of the embeddings (peft's
    `save_embedding_layers=False`). peft's default saves them whenever the vocabulary was
    resized: with the embeddings in `modules_to_save`, which the adapter carries in full, that
    wrote each matrix twice more (the resized original and its alias), 4 GB more on an 8B model
    with a 128k vocabulary, and asked the hub for the base's config."""
    save = peft_model.save_pretrained
    peft_model.save_pretrained = functools.partial(save, save_embedding_layers=False)


def usable_base_path(base_model: str) -> str:
    """`base_model` as `adapter_config.json` should record it: absolute for a local folder (so
    that the adapter loads from any working folder), the hub id as given otherwise."""
    local = Path(base_model).expanduser()
    return str(local.resolve()) if local.is_dir() else base_model


@hookimpl
def model_load_kwargs(cfg: Any, purpose: str, kwargs: dict[str, Any]) -> None:
    """A merge's base placed as `lora_on_cpu` and `gpu_memory_limit` say (`placement`)."""
    if purpose == "merge":
        kwargs.update(placement(cfg))


# --- weave merge-lora ------------------------------------------------------------------------


def check_adapter_dir(folder: Path, key: str) -> None:
    """Refuse a folder that holds no saved peft adapter, naming it."""
    if not (folder / "adapter_config.json").is_file():
        state = "does not exist" if not folder.exists() else "has no adapter_config.json"
        raise WeaveError(
            f"{key}: '{folder}' {state}: it is not a saved LoRA adapter (train with "
            "adapter: lora first, or point --lora-model-dir / lora_model_dir at its folder)"
        )


def placement(cfg: Any) -> dict[str, Any]:
    """`from_pretrained` keywords placing the base for a merge: all on the CPU with
    `lora_on_cpu` (or without CUDA), else spread over the GPUs, each given `gpu_memory_limit`."""
    import torch

    if cfg.lora_on_cpu or not torch.cuda.is_available():
        return {"device_map": {"": "cpu"}} if cfg.lora_on_cpu else {}
    if cfg.gpu_memory_limit is None:
        return {"device_map": "auto"}
    limit = cfg.gpu_memory_limit
    limit = f"{limit}GiB" if isinstance(limit, int) else limit.replace(" ", "")
    max_memory: dict[int | str, str] = dict.fromkeys(range(torch.cuda.device_count()), limit)
    max_memory["cpu"] = "256GiB"  # the rest spills to CPU memory
    return {"device_map": "auto", "max_memory": max_memory}


def save_atomically(model: Any, tokenizer: Any, target: Path) -> None:
    """Write model and tokenizer to `target`: into a temporary sibling folder first, which then
    replaces `target`; a crash never leaves a half-written model under `target`."""
    with staged_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def merge_lora(cfg: Any, session: Any, adapter_dir: Path, key: str) -> Path:
    """Load the base for a merge (`load_model` with purpose "merge", through whichever plugin
    loads models: unquantized, a GPTQ base dequantized, placed as `placement` says), apply the
    adapter in `adapter_dir`, merge it into the weights and save the whole model with its
    tokenizer to `adapter_dir/merged`. `key` names where the folder came from, for errors."""
    check_adapter_dir(adapter_dir, key)  # before the libraries' seconds of imports
    from axolotl_weave.commands import family_of, load_tokenizer
    from peft import PeftModel

    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    base = session.hooks.load_model(cfg, tokenizer, family, purpose="merge")
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeaveError(
            f"cannot apply the adapter in '{adapter_dir}' to base_model '{cfg.base_model}': {exc}"
        ) from None
    merged = model.merge_and_unload(safe_merge=True)
    merged.config.use_cache = True  # an inference artifact
    target = adapter_dir / "merged"
    save_atomically(merged, tokenizer, target)
    return target


def merge_lora_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    lora_model_dir: str | None = typer.Option(
        None,
        "--lora-model-dir",
        help="The adapter to merge (default: lora_model_dir, else output_dir).",
    ),
) -> None:
    """Merge a LoRA/QLoRA adapter into its base model; write the full model to DIR/merged."""
    from axolotl_weave.commands import console, open_session

    session = open_session(config, ctx.args, ctx.obj.pm)
    cfg = session.cfg
    key = (
        "--lora-model-dir"
        if lora_model_dir
        else ("lora_model_dir" if cfg.lora_model_dir else "output_dir")
    )
    adapter_dir = Path(lora_model_dir or cfg.lora_model_dir or cfg.output_dir)
    target = merge_lora(cfg, session, adapter_dir, key)
    console.print(f"[bold green]merged[/]: {adapter_dir} into {cfg.base_model}; saved to {target}")


@hookimpl
def adjust_param_groups(cfg: Any, model: Any, groups: list[dict[str, Any]]) -> None:
    """LoRA+ (`loraplus_lr_ratio`): the B matrices (and 1-D adapter parameters) train at
    `lr * ratio`, LoRA embedding parameters at `loraplus_lr_embedding`, as peft's LoRA+ does."""
    ratio = getattr(cfg, "loraplus_lr_ratio", None)
    if not ratio:
        return
    names = {id(param): name for name, param in model.named_parameters()}
    split = []
    for group in groups:
        parts: dict[str, list[Any]] = {"a": [], "b": [], "embedding": []}
        for param in group["params"]:
            name = names.get(id(param), "")
            if "lora_embedding" in name:
                parts["embedding"].append(param)
            elif "lora_B" in name or param.ndim == 1:
                parts["b"].append(param)
            else:
                parts["a"].append(param)
        rates = {
            "a": group["lr"],
            "b": group["lr"] * ratio,
            "embedding": cfg.loraplus_lr_embedding,
        }
        for part, params in parts.items():
            if params:
                name = group["group"] if part == "a" else f"{group['group']}/loraplus_{part}"
                split.append({**group, "params": params, "lr": rates[part], "group": name})
    groups[:] = split


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave merge-lora CONFIG [--lora-model-dir DIR]`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("merge-lora", context_settings=OVERRIDES)(user_errors(merge_lora_command))
