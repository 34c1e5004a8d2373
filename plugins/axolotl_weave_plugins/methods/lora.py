"""`adapter: lora` / `adapter: qlora`: wrap the loaded model in a peft LoRA adapter (only the
adapter trains), and `weave merge-lora` to fold a trained adapter into its base model.

Every peft LoRA option Axolotl exposes is here under Axolotl's name (`lora_r`, `peft_use_dora`,
`peft_layers_to_transform`, ...). QLoRA is LoRA around a 4-bit base: the `bnb_quantization`
plugin loads the base (`load_in_4bit`), this plugin's `load_model` wrapper wraps whatever was
loaded. When the tokenizer has more tokens than the base model's vocabulary, the grown
embeddings train in full and are saved with the adapter (`lora_modules_to_save`), or only the
added rows when `peft_trainable_token_indices` lists them.

Initialisations that rewrite the base weights (`peft_init_lora_weights: pissa`, `olora`) train
on the residual base; the adapter is saved converted to a plain LoRA of the original
`base_model` (peft's `path_initial_model_for_weight_conversion`, twice the rank), so that it
applies, merges and serves like any other adapter.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import tempfile
import warnings
import weakref
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

from axolotl_weave_plugins.methods._lora_options import (
    INITIAL_ADAPTER,
    QUANTIZED_INIT_REASONS,
    init_problem,
    peft_option_problem,
    rewrites_base,
)

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
    lora_rank_pattern: dict[str, int] | None = Field(
        None,
        description="Ranks for some modules instead of lora_r: {module-name regex: rank} "
        "(peft's rank_pattern), e.g. {'layers.0.self_attn.q_proj': 16}.",
    )
    lora_alpha_pattern: dict[str, int] | None = Field(
        None,
        description="Alphas for some modules instead of lora_alpha: {module-name regex: alpha} "
        "(peft's alpha_pattern).",
    )
    peft_layer_replication: list[tuple[int, int]] | None = Field(
        None,
        description="Stack the base's layers as these [start, end) ranges, e.g. [[0, 4], "
        "[2, 4]]: a deeper model whose copies share the base weights, each with its own "
        "adapter (peft's layer_replication); merge-lora refuses such an adapter.",
    )
    peft_init_lora_weights: bool | str | None = Field(
        None,
        description="Adapter initialisation (peft's init_lora_weights): true (default), false, "
        "gaussian, orthogonal, mica, or pissa / pissa_niter_<n> / olora (they rewrite the base; "
        "the adapter is saved converted to a plain LoRA of base_model).",
    )
    peft_trainable_token_indices: list[int] | dict[str, list[int]] | None = Field(
        None,
        description="Train only these rows of the input embeddings (a list of token ids), or "
        "{embedding module name: token ids} (peft's trainable_token_indices).",
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

    @model_validator(mode="after")
    def _check_lora_peft_options(self) -> LoraSettings:
        problem = peft_option_problem(self) or init_problem(self)
        if problem:
            raise ValueError(problem)
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


def short_name(model: Any, wanted: Any) -> str | None:
    """The last component of the name of `wanted`, a module of `model`; None if absent."""
    for name, module in model.named_modules():
        if module is wanted and name:
            return name.rsplit(".", 1)[-1]
    return None


def embedding_names(model: Any) -> tuple[str, str | None]:
    """The input embeddings' name (last component), and the output embeddings' when they
    share the input's weight (None otherwise)."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    tied = outputs is not None and getattr(outputs, "weight", None) is inputs.weight
    return (
        short_name(model, inputs) or "embed_tokens",
        (short_name(model, outputs) or "lm_head") if tied else None,
    )


def token_rows_by_module(indices: Any, input_name: str) -> dict[str, list[int]]:
    """`peft_trainable_token_indices` as {module name: token ids}: a plain list of ids names
    the input embeddings, `input_name` (as peft reads it)."""
    if not indices:
        return {}
    if isinstance(indices, dict):
        return {name: list(ids) for name, ids in indices.items()}
    return {input_name: list(indices)}


def row_trained_embeddings(indices: Any, names: tuple[str, str | None]) -> set[str]:
    """Names (last component) of the modules whose listed rows train, the output embeddings
    too when they are tied to the input's (peft ties them); `names` as `embedding_names`."""
    trained = {name.rsplit(".", 1)[-1] for name in token_rows_by_module(indices, names[0])}
    if names[1] is not None and names[0] in trained:
        trained.add(names[1])
    return trained


def check_token_rows(cfg: Any, model: Any, wanted: list[str], added: range) -> None:
    """Refuse `peft_trainable_token_indices` naming no module, a token beyond a module's rows,
    a module also trained in full, or leaving out a token the tokenizer added (`added`: their
    ids, whose rows are new: they must train and be saved with the adapter)."""
    modules = dict(model.named_modules())
    embeddings = embedding_module_names(model)
    indices = cfg.peft_trainable_token_indices
    for name, ids in token_rows_by_module(indices, embedding_names(model)[0]).items():
        found = [m for n, m in modules.items() if n == name or n.endswith(f".{name}")]
        if not found or getattr(found[0], "weight", None) is None:
            raise ConfigError(
                f"peft_trainable_token_indices: the model has no module '{name}' with rows of "
                f"tokens (its embeddings: {', '.join(embeddings)})"
            )
        rows = found[0].weight.shape[0]
        beyond = sorted(i for i in ids if i >= rows)
        if beyond:
            raise ConfigError(
                f"peft_trainable_token_indices: token(s) {beyond[:8]} beyond the {rows} rows "
                f"of '{name}'"
            )
        last = name.rsplit(".", 1)[-1]
        if last in wanted:
            raise ConfigError(
                f"peft_trainable_token_indices: '{name}' is also in lora_modules_to_save "
                "(trained in full): choose one"
            )
        missing = sorted(set(added) - set(ids))
        if last in embeddings and missing:
            raise ConfigError(
                f"peft_trainable_token_indices: the tokenizer adds tokens {added.start} to "
                f"{added.stop - 1} beyond the base model's vocabulary; list them all for "
                f"'{name}' (missing: {missing[:8]}): their rows are new, so they must train "
                "and be saved with the adapter (or remove the key: the embeddings then train "
                "in full)"
            )


def modules_to_save(cfg: Any, model: Any, tokenizer: Any) -> list[str] | None:
    """`lora_modules_to_save`, plus the embeddings when the tokenizer outgrew the base model's
    vocabulary (their new rows must train, and the adapter alone must carry them), but for
    those whose rows `peft_trainable_token_indices` trains (it must list the added tokens)."""
    wanted = list(cfg.lora_modules_to_save or [])
    vocab = base_vocab_size(cfg)
    grew = tokenizer is not None and vocab is not None and len(tokenizer) > vocab
    added = range(vocab, len(tokenizer)) if grew and vocab is not None else range(0)
    check_token_rows(cfg, model, wanted, added)
    if grew:
        by_rows = row_trained_embeddings(cfg.peft_trainable_token_indices, embedding_names(model))
        missing = [
            name
            for name in embedding_module_names(model)
            if name not in wanted and name not in by_rows
        ]
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


def check_layer_replication(cfg: Any, model: Any) -> None:
    """Refuse `peft_layer_replication` ranges beyond the model's layers."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text_config, "num_hidden_layers", None)
    for start, end in cfg.peft_layer_replication or []:
        if layers is not None and end > layers:
            raise ConfigError(
                f"peft_layer_replication: [{start}, {end}] goes beyond the model's {layers} "
                f"layers (0 to {layers - 1}; end is exclusive)"
            )


def has_quantized_weights(model: Any) -> bool:
    """Whether any weight of the model is stored quantized: a parameter subclass (bitsandbytes'
    `Params4bit`, whose packed storage may even report a float dtype, `Int8Params`), a tensor
    subclass (torchao) or an integer dtype (GPTQ)."""
    import torch

    return any(
        type(param) is not torch.nn.Parameter
        or type(param.data) is not torch.Tensor
        or not param.is_floating_point()
        for param in model.parameters()
    )


def check_init_on_model(cfg: Any, model: Any) -> None:
    """Refuse an initialisation that reads or rewrites the base weights on a model loaded
    quantized by any plugin (the config check names bitsandbytes' and GPTQ's keys)."""
    init = cfg.peft_init_lora_weights
    method = "pissa" if rewrites_base(init) and init != "olora" else init
    if method in QUANTIZED_INIT_REASONS and has_quantized_weights(model):
        raise ConfigError(
            f"peft_init_lora_weights: {init} needs an unquantized base: it "
            f"{QUANTIZED_INIT_REASONS[method]}; on a quantized base use true, false or gaussian"
        )


def lora_config(cfg: Any, model: Any, tokenizer: Any, family: ModelFamily | None) -> Any:
    """The `peft.LoraConfig` the config describes, checked against `model`."""
    from peft import LoraConfig

    check_layer_replication(cfg, model)
    check_init_on_model(cfg, model)
    init = cfg.peft_init_lora_weights
    replication = cfg.peft_layer_replication
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
        rank_pattern=dict(cfg.lora_rank_pattern or {}),
        alpha_pattern=dict(cfg.lora_alpha_pattern or {}),
        layer_replication=[list(pair) for pair in replication] if replication else None,
        init_lora_weights=True if init is None else init,
        trainable_token_indices=cfg.peft_trainable_token_indices or None,
        bias="none",
    )


def check_patterns_matched(cfg: Any, peft_model: Any) -> None:
    """Refuse a `lora_rank_pattern` / `lora_alpha_pattern` key that matches no adapted module:
    peft ignores it, so a typo would train at the default rank unnoticed."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import get_pattern_key

    adapted = [
        name
        for name, module in peft_model.get_base_model().named_modules()
        if isinstance(module, LoraLayer)
    ]
    for key in ("lora_rank_pattern", "lora_alpha_pattern"):
        for pattern in getattr(cfg, key) or {}:
            if not any(get_pattern_key([pattern], name) == pattern for name in adapted):
                example = adapted[0] if adapted else "none"
                raise ConfigError(
                    f"{key}: '{pattern}' matches none of the {len(adapted)} adapted modules "
                    f"(such as {example}): a key is a regex matching the end of their names"
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

    embeddings, names = embedding_module_names(model), embedding_names(model)
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
        check_patterns_matched(cfg, peft_model)
        if rewrites_base(cfg.peft_init_lora_weights):
            convert_when_saved(peft_model, cfg.peft_init_lora_weights)
    for adapter in peft_model.peft_config.values():  # recorded in adapter_config.json
        adapter.base_model_name_or_path = usable_base_path(cfg.base_model)
    settings = peft_model.peft_config["default"]
    saved = set(settings.modules_to_save or [])
    saved |= row_trained_embeddings(getattr(settings, "trainable_token_indices", None), names)
    if embeddings and set(embeddings) <= saved:  # the adapter carries every embedding row
        save_without_base_embeddings(peft_model)
    return peft_model


def convert_when_saved(peft_model: Any, init: str) -> None:
    """Make `save_pretrained` write a PiSSA / OLoRA adapter converted to a plain LoRA of the
    original base (peft's `path_initial_model_for_weight_conversion`: B A - B0 A0 as one
    adapter of twice the rank), from the adapter as initialised, saved now to a temporary
    folder removed with the model. Such an adapter trains on the residual base W - B0 A0,
    which no one else has: unconverted, it would not fit `base_model`."""
    extra = peft_model.peft_config["default"].modules_to_save
    if extra:  # added by peft (a classifier's head) or for added tokens
        raise ConfigError(
            f"peft_init_lora_weights: {init}: the adapter is saved converted to a plain LoRA, "
            f"which keeps the LoRA matrices, not modules trained in full ({', '.join(extra)}: "
            "a classifier's head, or the embeddings of added tokens); use true or gaussian"
        )
    folder = Path(tempfile.mkdtemp(prefix="weave-lora-initial-"))
    weakref.finalize(peft_model, shutil.rmtree, folder, True)
    initial = folder / INITIAL_ADAPTER
    settings = peft_model.peft_config["default"]
    settings.init_lora_weights = True  # peft reloads the initial adapter as a plain one
    try:
        peft_model.save_pretrained(str(initial))
    finally:
        settings.init_lora_weights = init
    save = peft_model.save_pretrained

    def save_converted(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():  # peft's advice to convert, given as it converts
            warnings.filterwarnings("ignore", message=r"(PiSSA|OLoRA) changes the base weights")
            return save(*args, path_initial_model_for_weight_conversion=str(initial), **kwargs)

    peft_model.save_pretrained = save_converted
    log.info(
        "lora: %s rewrote the base weights; the adapter is saved converted to a plain LoRA of "
        "base_model (rank %d, twice lora_r)",
        init,
        2 * settings.r,
    )


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


def check_mergeable(folder: Path, key: str) -> None:
    """Refuse an adapter trained with `peft_layer_replication`: its copies of a layer share the
    base weights, which cannot take each copy's own LoRA update (peft would add them all into
    the one shared weight)."""
    try:
        saved = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return  # peft says what is wrong with it
    if saved.get("layer_replication"):
        raise WeaveError(
            f"{key}: the adapter in '{folder}' was trained with peft_layer_replication "
            f"{saved['layer_replication']}: its replicated layers share the base's weights, "
            "so it cannot be merged into them; use it unmerged (lora_model_dir: "
            f"{folder}, for inference and serving)"
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
    check_mergeable(adapter_dir, key)
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
