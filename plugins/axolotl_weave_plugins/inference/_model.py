"""The trained model for `weave inference`, `weave serve` and `weave evaluate`: chosen (the
`--lora-model-dir` / `--base-model` flags, else what training saved in the config's
`output_dir`) and loaded through the plugin hooks, as `weave merge-lora` does: the tokenizer by
`load_tokenizer`, the model by `load_model` with purpose "infer" (so quantization plugins and the
LoRA plugin's wrapper, which applies the adapter in `lora_model_dir`, take part).

Not a plugin (no entry point): a helper of `inference_command`, `serve_command` and
`evaluate_command`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axolotl_weave import WeaveError

from axolotl_weave_plugins.inference._images import load_processor
from axolotl_weave_plugins.inference._prompting import Prompter

log = logging.getLogger("axolotl_weave")

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""Model config attributes that give the context length, in the order they are looked for."""

END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eot|>")
"""End-of-turn markers of common chat templates: an answer ends there when the template has one."""

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json")


@dataclass(frozen=True)
class ModelChoice:
    """What to load: the base model folder or hub id, and the adapter folder (or None)."""

    base_model: str
    adapter_dir: Path | None
    name: str  # the model's name for /v1/models and messages

    @property
    def described(self) -> str:
        """`adapter X on base Y`, or the model folder."""
        if self.adapter_dir is None:
            return str(self.base_model)
        return f"adapter {self.adapter_dir} on base_model {self.base_model}"


@dataclass
class LoadedModel:
    """The model ready to generate: with its tokenizer, prompt renderer and limits."""

    model: Any
    tokenizer: Any
    prompter: Prompter
    choice: ModelChoice
    context_length: int | None
    eos_token_ids: list[int] = field(default_factory=list)
    processor: Any = None  # a vision-language model's (processor_type), for prompts with images

    @property
    def device(self) -> Any:
        """Where the inputs go: the device of the input embeddings."""
        return self.model.get_input_embeddings().weight.device


def is_adapter(folder: Path) -> bool:
    """Whether `folder` holds a saved peft adapter."""
    return (folder / "adapter_config.json").is_file()


def is_full_model(folder: Path) -> bool:
    """Whether `folder` holds a saved Hugging Face model (config and weights)."""
    if not (folder / "config.json").is_file():
        return False
    return any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS)


def check_base_model(where: str) -> None:
    """Refuse a `--base-model` that names a local folder holding no model (a hub id, which
    is not a path that exists, is left to the loader)."""
    folder = Path(where).expanduser()
    looks_local = folder.exists() or where.startswith(("/", ".", "~")) or where.count("/") > 1
    if not looks_local or is_full_model(folder):
        return
    if not folder.exists():
        raise WeaveError(
            f"--base-model {folder}: no such folder: "
            "name a saved model folder (e.g. OUTPUT_DIR/merged after weave merge-lora) or a hub id"
        )
    raise WeaveError(
        f"--base-model {folder}: holds no config.json with weights, so it is not a saved model "
        "(a full model's folder, e.g. OUTPUT_DIR/merged after weave merge-lora, or a hub id; "
        "an adapter goes to --lora-model-dir)"
    )


def check_adapter_dir(where: str) -> Path:
    """The `--lora-model-dir` folder, refused unless it holds a saved peft adapter."""
    folder = Path(where).expanduser()
    if not folder.is_dir():
        raise WeaveError(
            f"--lora-model-dir {folder}: no such folder (give the folder of a saved LoRA "
            "adapter: the config's output_dir after training with adapter: lora)"
        )
    if not is_adapter(folder):
        raise WeaveError(
            f"--lora-model-dir {folder}: has no adapter_config.json, so it is not a saved LoRA "
            "adapter (a full model's folder goes to --base-model)"
        )
    return folder


def choose_model(
    cfg: Any, lora_model_dir: str | None, base_model: str | None, untrained: bool = False
) -> ModelChoice:
    """The model to load. `--lora-model-dir D`: the adapter in D on `base_model` (or on
    `--base-model`); `--base-model D` alone: the full model D; neither: what training saved in
    `output_dir` (an adapter, on `base_model`, or a full model). When `output_dir` holds
    neither, `untrained` picks the config's own model (`base_model`, with its `lora_model_dir`
    when `adapter` is set); otherwise that is an error."""
    if lora_model_dir:
        folder = check_adapter_dir(lora_model_dir)
        if base_model:
            check_base_model(base_model)
        return ModelChoice(base_model or cfg.base_model, folder, folder.resolve().name)
    if base_model:
        check_base_model(base_model)
        return ModelChoice(base_model, None, Path(base_model).name or base_model)
    out = Path(cfg.output_dir).expanduser()
    if is_adapter(out):
        return ModelChoice(cfg.base_model, out, out.resolve().name)
    if is_full_model(out):
        return ModelChoice(str(out), None, out.resolve().name)
    if untrained:
        configured = getattr(cfg, "lora_model_dir", None) if getattr(cfg, "adapter", None) else None
        adapter = Path(configured) if configured else None
        return ModelChoice(cfg.base_model, adapter, Path(cfg.base_model).name or cfg.base_model)
    state = "does not exist" if not out.exists() else "holds no adapter_config.json nor a model"
    raise WeaveError(
        f"no trained model in output_dir: {out} {state}. Train first (weave train CONFIG), or "
        "point at a model: --lora-model-dir DIR (a saved LoRA adapter) or --base-model DIR "
        "(a full model folder or hub id)"
    )


def model_settings(cfg: Any, choice: ModelChoice) -> dict[str, Any]:
    """The config values that name the chosen model: `base_model` (and `base_model_config` /
    `tokenizer_config` with it when the config sets them and the base changes),
    `lora_model_dir` and `adapter` (kept, or `lora`, with an adapter; none without)."""
    adapter = str(choice.adapter_dir) if choice.adapter_dir else None
    settings: dict[str, Any] = {
        "base_model": choice.base_model,
        "lora_model_dir": adapter,
        "adapter": (getattr(cfg, "adapter", None) or "lora") if adapter else None,
    }
    if choice.base_model != cfg.base_model:
        for key in ("base_model_config", "tokenizer_config"):
            if getattr(cfg, key, None):
                settings[key] = choice.base_model
    return settings


def context_length(model: Any) -> int | None:
    """The model's context window in tokens (from its config), or None when it names none."""
    config = getattr(model, "config", None)
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_ids(model: Any, tokenizer: Any, cfg: Any) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS, the model's generation config's, and
    the end-of-turn tokens (`eot_tokens`, and the usual markers the chat template writes),
    each when it is one token."""
    ids: list[int] = []
    generation = getattr(model, "generation_config", None)
    configured = getattr(generation, "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        ids += value if isinstance(value, list) else [value]
    template = getattr(tokenizer, "chat_template", None)
    markers = list(getattr(cfg, "eot_tokens", None) or [])
    if isinstance(template, str):
        markers += [m for m in END_OF_TURN_MARKERS if m in template]
    for marker in markers:
        pieces = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            ids.append(pieces[0])
    return list(dict.fromkeys(i for i in ids if isinstance(i, int)))


def load_chosen_model(session: Any, tokenizer: Any, family: Any) -> Any:
    """The model `session.cfg` names (see `model_settings`), loaded through the `load_model`
    hook with purpose "infer" (the adapter applied by the adapter plugin); an adapter that does
    not fit its base, or that no plugin applied, is one message."""
    cfg = session.cfg
    adapter = cfg.lora_model_dir if getattr(cfg, "adapter", None) else None
    try:
        model = session.hooks.load_model(cfg, tokenizer, family, purpose="infer")
    except RuntimeError as exc:  # peft: a state dict of other shapes
        if adapter is None:
            raise
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise WeaveError(
            f"the adapter in {adapter} does not fit base_model {cfg.base_model} (was it "
            f"trained on another model?): {detail}"
        ) from None
    if adapter is not None and not hasattr(model, "peft_config"):
        raise WeaveError(
            f"--lora-model-dir {adapter}: no installed plugin applied the adapter (is the lora "
            "plugin blocked with -p no:lora?)"
        )
    return model


def check_generates(model: Any) -> None:
    """Refuse a model that cannot write text (a reward model's classification head), naming
    its class, before any prompt is read."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    can_generate = getattr(inner, "can_generate", None)
    if callable(can_generate) and not can_generate():
        raise WeaveError(
            f"the model this config loads ({type(inner).__name__}) scores text but does not "
            "write it: a reward model (reward_model: true, process_reward_model: true) has no "
            "language-model head, so weave inference, weave serve and weave lm-eval cannot use "
            "it; weave evaluate reports its loss on the config's datasets"
        )


def load_for_inference(session: Any, choice: ModelChoice, raw: bool = False) -> LoadedModel:
    """Load the tokenizer and the model of `choice` through the hooks (purpose "infer"), in
    evaluation mode on the GPU when there is one."""
    import torch
    from axolotl_weave.commands import family_of, load_tokenizer

    cfg = session.cfg.model_copy(update=model_settings(session.cfg, choice))
    session.cfg = cfg
    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    prompter = Prompter(session, tokenizer, raw=raw)
    model = load_chosen_model(session, tokenizer, family)
    check_generates(model)
    placed = getattr(model, "hf_device_map", None) or getattr(model, "is_quantized", False)
    if not placed and torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    model.config.use_cache = True
    folders = [choice.adapter_dir, choice.base_model]
    return LoadedModel(
        model,
        tokenizer,
        prompter,
        choice,
        context_length(model),
        eos_ids(model, tokenizer, cfg),
        load_processor(cfg, folders, tokenizer),
    )
