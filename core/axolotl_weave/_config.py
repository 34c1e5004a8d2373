"""The config: pydantic models with Axolotl's key names, plus loading YAML, URLs and overrides.

The root model is the core's `CoreConfig` merged with every plugin's `add_config_fields` model;
unknown keys are errors (with "did you mean ...?"). Compatibility plugins (`adapt_config_data`)
rewrite the raw mapping first: the Axolotl plugin drops keys Axolotl knows and nothing here
implements, with a warning, so that an Axolotl YAML still runs.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import logging
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from axolotl_weave._errors import ConfigError
from axolotl_weave._overrides import apply_overrides
from axolotl_weave._types import DatasetFormat

if TYPE_CHECKING:
    from collections.abc import Callable

    from axolotl_weave._hooks import Hooks

log = logging.getLogger("axolotl_weave")

AutoBool = bool | Literal["auto"]


def fields_at(model: type[BaseModel], path: list[Any]) -> set[str]:
    """The keys the mapping at `path` (`["trl"]`, `["datasets", 0]`) accepts: the fields of
    the model found by following the annotations (through optional values and lists); none
    where the path leads elsewhere."""
    import typing

    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue  # a list item: the item model is found with the list's field
        fields = getattr(current, "model_fields", None)
        if not fields or str(part) not in fields:
            return set()
        current = fields[str(part)].annotation
        while not (isinstance(current, type) and issubclass(current, BaseModel)):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            if not args:
                return set()
            current = args[0]
    return set(getattr(current, "model_fields", {}))


def did_you_mean(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """' (did you mean X?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def first_format(formats: dict[str, DatasetFormat], flag: str) -> DatasetFormat | None:
    """The first registered format with `flag` set: `inline` (builds a `type:` given as a
    mapping) or `streams` (the default type of `pretraining_dataset:` entries)."""
    return next((fmt for fmt in formats.values() if getattr(fmt, flag)), None)


class PluginConfig(BaseModel):
    """Base of a plugin's config fields (`add_config_fields`); every field needs a default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DatasetEntry(BaseModel):
    """One item of `datasets:`. Format-specific keys are checked against the format's options."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    path: str = Field(
        description="Local file or folder, a dataset saved with save_to_disk, a hub name, an "
        "https URL, or an s3:// / gs:// path."
    )
    type: str | None = Field(
        None,
        description="Dataset format: a registered `type:` name (`weave plugin list`), a mapping "
        "defining a prompt format inline, or empty for rows that are already tokenized.",
    )
    ds_type: Literal["json", "jsonl", "csv", "parquet", "arrow", "text"] | None = Field(
        None, description="File type when the extension does not say it."
    )
    data_files: str | list[str] | None = Field(None, description="Files inside `path` to load.")
    split: str = Field("train", description="Split to load.")
    name: str | None = Field(None, description="Dataset configuration name (hub datasets).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    field: str | None = Field(
        None, description="Column holding the text (for formats that read one)."
    )
    shards: int | None = Field(None, gt=0, description="Split the rows into this many shards...")
    shards_idx: int | None = Field(None, ge=0, description="...and keep this one (default 0).")
    skip: int | None = Field(
        None, ge=0, description="Rows to skip at the start (streamed pretraining_dataset)."
    )

    _source: Any = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _inline_type(cls, data: Any, info: ValidationInfo) -> Any:
        """`type:` as a mapping defines a format inline: its keys become the inline format's
        options, and `type` its name."""
        if not isinstance(data, dict) or not isinstance(data.get("type"), dict):
            return data
        formats: dict[str, DatasetFormat] = (info.context or {}).get("formats", {})
        inline = first_format(formats, "inline")
        if inline is None:
            raise ValueError(
                "type: is a mapping (an inline prompt format), but no installed plugin builds "
                "inline formats"
            )
        mapping = data["type"]
        clash = sorted(set(mapping) & (set(data) - {"type"}))
        if clash:
            raise ValueError(f"{', '.join(clash)} given both in type: and beside it; keep one")
        return {**data, **mapping, "type": inline.name}

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None, info: ValidationInfo) -> str | None:
        formats: dict[str, DatasetFormat] = (info.context or {}).get("formats", {})
        if value == "":
            return None
        if value is not None and formats and value not in formats:
            valid = ", ".join(sorted(formats))
            raise ValueError(
                f"unknown dataset type '{value}'{did_you_mean(value, formats)}; valid: {valid}"
            )
        return value

    @model_validator(mode="after")
    def _format_options(self, info: ValidationInfo) -> DatasetEntry:
        formats: dict[str, DatasetFormat] = (info.context or {}).get("formats", {})
        extra = dict(self.__pydantic_extra__ or {})
        fmt = formats.get(self.type or "")
        allowed = set(fmt.options.model_fields) if fmt and fmt.options else set()
        problems = []
        for key in list(extra):
            if key in allowed:
                continue
            hint = did_you_mean(key, allowed | set(DatasetEntry.model_fields))
            problems.append(f"unknown key '{key}'{hint}")
        if problems:
            raise ValueError("; ".join(problems))
        if fmt and fmt.options:
            options = fmt.options.model_validate({k: v for k, v in extra.items() if k in allowed})
            self.__pydantic_extra__.update(options.model_dump())
        if self.shards_idx is not None and (self.shards is None or self.shards_idx >= self.shards):
            raise ValueError(f"shards_idx={self.shards_idx} needs shards: greater than it")
        return self

    def option(self, name: str, default: Any = None) -> Any:
        """A format-specific option of this entry (validated by the format's options model)."""
        return (self.__pydantic_extra__ or {}).get(name, default)

    @property
    def label(self) -> str:
        """How messages name this entry: its path and type."""
        return f"dataset '{self.path}' (type: {self.type or 'pre-tokenized'})"

    def where(self, index: int) -> str:
        """Where row `index` (0-based, of the rows handed to `build_dataset`) comes from:
        'file:line' for JSON Lines, else 'row N' (1-based)."""
        locate = getattr(self._source, "locate", None)
        return locate(index) if locate else f"row {index + 1}"

    @property
    def num_proc(self) -> int | None:
        """Processes to tokenize with (the config's `dataset_processes`), None for this one."""
        return getattr(self._source, "num_proc", None)

    @property
    def skip_invalid_rows(self) -> bool:
        """Whether a bad row is dropped and counted (`skip_invalid_rows: true`) or fatal."""
        return bool(getattr(self._source, "skip_invalid_rows", False))


class CoreConfig(BaseModel):
    """Keys the core itself reads. Plugins add theirs through `add_config_fields`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)

    # model and tokenizer
    base_model: str = Field(description="Hub name or local path of the model to fine-tune.")
    base_model_config: str | None = Field(None, description="Where to read the model config.")
    tokenizer_config: str | None = Field(None, description="Where to load the tokenizer from.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")
    revision_of_model: str | None = Field(
        None, description="Hub revision (branch, tag or commit) of base_model."
    )
    special_tokens: dict[str, str] = Field(
        default_factory=dict, description="Tokens to set, e.g. {pad_token: '<pad>'}."
    )
    tokens: list[str] = Field(
        default_factory=list, description="New tokens to add to the vocabulary (embeddings grow)."
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="Extra plugin modules (import paths); Axolotl's plugin paths map onto ours.",
    )

    # data (the datasets' own keys are the data_pipeline plugin's)
    sequence_len: int = Field(2048, gt=0, description="Longest sequence in tokens.")
    train_on_inputs: bool = Field(False, description="Train on prompt tokens too.")
    pad_to_sequence_len: bool | None = Field(
        None, description="Pad every micro-batch to sequence_len (static shapes)."
    )

    # training loop
    rl: str | None = Field(
        None,
        description="A training method a plugin registers instead of supervised fine-tuning "
        "(see `weave plugin list`).",
        json_schema_extra={"affects_data": True},
    )
    output_dir: str = Field("./outputs", description="Where checkpoints and the model go.")
    overwrite_output_dir: bool = Field(
        False, description="Train into an output_dir that holds another run's model."
    )
    micro_batch_size: int = Field(1, gt=0, description="Rows per forward pass per device.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per step.")
    eval_batch_size: int | None = Field(None, gt=0, description="Defaults to micro_batch_size.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many steps.")
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate.")
    optimizer: str = Field(
        "adamw_torch",
        description="A registered name (see `weave plugin list`), e.g. adamw_torch or sgd.",
    )
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="Adam epsilon.")
    lr_scheduler: str = Field(
        "cosine",
        description="Schedule after the warm-up: a registered name (cosine, linear, constant...).",
    )
    warmup_steps: int | float | None = Field(
        None, ge=0, description="Linear warm-up steps; below 1, a fraction of the steps."
    )
    warmup_ratio: float | None = Field(None, ge=0, le=1, description="Warm-up as a fraction.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay (not on biases, norms).")
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping; 0 disables.")
    bf16: AutoBool = Field("auto", description="bfloat16 weights and autocast; auto detects.")
    fp16: AutoBool = Field(False, description="float16 mixed precision.")
    tf32: AutoBool = Field("auto", description="TensorFloat-32 matmuls on Ampere+ GPUs.")
    seed: int = Field(42, description="Seed for shuffling, init and dropout.")
    resume_from_checkpoint: str | None = Field(
        None, description="A checkpoint folder, or 'auto' for the newest in output_dir."
    )

    @field_validator("optimizer", "lr_scheduler", "rl")
    @classmethod
    def _registered(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A name some plugin registered (the registry's names come in the context)."""
        registry, things = {
            "optimizer": ("optimizers", "optimizers"),
            "lr_scheduler": ("lr_schedulers", "learning-rate schedules"),
            "rl": ("rl_methods", "training methods"),
        }[info.field_name or ""]
        names = (info.context or {}).get(registry)
        if value is None or names is None or value in names:  # None: without the registry
            return value
        if not names:
            raise ValueError(
                f"unknown {info.field_name} '{value}': no installed plugin registers {things} "
                "(is one blocked? see `weave plugin list`)"
            )
        raise ValueError(
            f"unknown {info.field_name} '{value}'{did_you_mean(value, names)}; "
            f"valid: {', '.join(names)}"
        )

    @field_validator("warmup_steps")
    @classmethod
    def _whole_or_fraction(cls, value: float | None) -> float | None:
        """A step count, or a fraction of the steps below 1 (as transformers reads it)."""
        if isinstance(value, float) and value >= 1:
            if not value.is_integer():
                raise ValueError(f"{value}: a whole number of steps, or a fraction below 1")
            return int(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CoreConfig:
        if self.bf16 is True and self.fp16 is True:
            raise ValueError("bf16 and fp16 are both true; choose one")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set warmup_steps or warmup_ratio, not both")
        return self


def build_config_model(plugin_fields: list[tuple[str, type[BaseModel]]]) -> type[CoreConfig]:
    """Merge the core's fields with each plugin's (name, model); a field declared twice fails,
    and so does a validator name two models share (in the merged class one would silently
    replace the other)."""
    owners = {name: "core" for name in CoreConfig.model_fields}
    validators = {name: "core" for name in validator_names(CoreConfig)}
    for plugin_name, model in plugin_fields:
        for kind, names, seen in (
            ("config field", model.model_fields, owners),
            ("config validator", validator_names(model), validators),
        ):
            for name in names:
                if name in seen and seen[name] != plugin_name:
                    raise ConfigError(
                        f"{kind} '{name}' is declared by both '{seen[name]}' and '{plugin_name}'"
                    )
                seen[name] = plugin_name
    # the core's keys first (in errors and config.yml), then the plugins' as before
    bases = (*(model for _, model in plugin_fields), CoreConfig)
    # a module-level name per set of plugin models, so that a config pickles by reference (the
    # tokenizing processes of `dataset_processes` receive it inside the format's function)
    key = hashlib.sha256(
        repr([(n, m.__module__, m.__qualname__) for n, m in plugin_fields]).encode()
    )
    name = f"WeaveConfig_{key.hexdigest()[:12]}"
    model = create_model(name, __base__=bases, __module__=__name__)  # type: ignore[call-overload]
    globals()[name] = model
    return model


def validator_names(model: type[BaseModel]) -> list[str]:
    """The names of a model's own field and model validators."""
    decorators = model.__pydantic_decorators__
    return [*decorators.field_validators, *decorators.model_validators]


def read_config_source(source: str | Path) -> dict[str, Any]:
    """Read a YAML config from a file path or an https URL into a mapping."""
    text_source = str(source)
    try:
        if text_source.startswith(("https://", "http://")):
            with urllib.request.urlopen(text_source, timeout=30) as response:  # noqa: S310
                text = response.read().decode()
        else:
            text = Path(text_source).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {text_source}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {text_source}: {exc}") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{text_source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{text_source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{text_source}: the top level must be a mapping of keys to values")
    return without_empty_values(data)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of the YAML file names one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping of `node`; a repeated key raises `DuplicateKeyError` with both lines."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(
                    f"key '{key}' is given twice (lines {seen[key]} and {line}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def without_empty_values(value: Any) -> Any:
    """`value` with every mapping key whose value is empty (`key:` with nothing after it,
    YAML's null) removed, at any depth: as in Axolotl, an empty key is unset and takes its
    default."""
    if isinstance(value, dict):
        return {k: without_empty_values(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_empty_values(item) for item in value]
    return value


def known_config_keys(
    data: dict[str, Any], model: type[BaseModel], formats: dict[str, DatasetFormat]
) -> frozenset[str]:
    """The keys `model` validates in `data`: every top-level field, and `SECTION.N.KEY` for each
    key that entry N of a list of dataset entries validates (the entry's own fields and its
    format's options); one entry given alone (a mapping) is entry 0."""
    known = set(model.model_fields)
    for section, info in model.model_fields.items():
        entries = data.get(section)
        entries = [entries] if isinstance(entries, dict) else entries
        if info.annotation != list[DatasetEntry] or not isinstance(entries, list):
            continue
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            kind = entry.get("type")
            if isinstance(kind, dict):
                fmt = first_format(formats, "inline")
            elif isinstance(kind, str) and kind:
                fmt = formats.get(kind)
            elif section == "pretraining_dataset":  # as the data pipeline's settings fill it
                fmt = first_format(formats, "streams")
            else:
                fmt = None
            keys = set(DatasetEntry.model_fields)
            keys |= set(fmt.options.model_fields) if fmt and fmt.options else set()
            known |= {f"{section}.{index}.{key}" for key in keys}
    return frozenset(known)


def validate_config(
    data: dict[str, Any],
    model: type[CoreConfig],
    formats: dict[str, DatasetFormat],
    source: str,
    hooks: Hooks,
) -> CoreConfig:
    """Validate `data` against `model` and the registries of `hooks` (formats, optimizers,
    schedules), after compatibility plugins adapted a copy of it (`adapt_config_data`): one
    `ConfigError` lists every problem; the plugins' warnings are logged."""
    data = copy.deepcopy(data)  # plugins edit it in place
    warnings = hooks.adapt_config_data(data, known_config_keys(data, model, formats))
    context: dict[str, Any] = {
        "formats": formats,
        "optimizers": sorted(hooks.optimizers()),
        "lr_schedulers": sorted(hooks.lr_schedulers()),
        "rl_methods": hooks.rl_methods(),
    }
    try:
        cfg = model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, model, source, hooks.explain_unknown_key)
        ) from None
    for warning in warnings:
        log.warning("%s", warning)
    return cfg


def format_validation_error(
    exc: ValidationError,
    model: type[BaseModel],
    source: str,
    explain: Callable[[str], str | None] | None = None,
) -> str:
    """One readable line per key at fault: what is wrong, and what would be valid; `explain`
    (a plugin's `explain_unknown_key`) may say why an unknown top-level key is refused.

    The alternatives of a union (`bf16: true | auto`) fail separately in pydantic; they are
    merged into one line for their key.
    """
    problems: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        keys = [part for part in err["loc"] if not _is_union_tag(part)]
        loc = ".".join(str(p) for p in keys) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = explain(str(keys[0])) if explain and len(keys) == 1 else None
            known = fields_at(model, keys[:-1])
            msg = reason or f"unknown key{did_you_mean(str(keys[-1]), known)}"
        elif err["type"] == "missing":
            field = model.model_fields.get(str(keys[0])) if len(keys) == 1 else None
            desc = f" ({field.description})" if field and field.description else ""
            msg = f"required key is missing{desc}"
        elif err["type"] == "literal_error" or err["type"].endswith(("_type", "_parsing")):
            msg = f"{msg}; got {err['input']!r}"
        if msg not in problems.setdefault(loc, []):
            problems[loc].append(msg)
    lines = [f"{source}: {len(problems)} problem(s) in the config:"]
    lines += [f"  - {loc}: {' or '.join(msgs)}" for loc, msgs in problems.items()]
    return "\n".join(lines)


def _is_union_tag(part: str | int) -> bool:
    """Whether a pydantic error location part names a union member ('bool', "literal['auto']")."""
    return isinstance(part, str) and (
        part in ("bool", "int", "float", "str", "none")
        or "[" in part
        or part.startswith("function-")
    )


def load_config_data(source: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw mapping of a config file or URL with CLI `--key value` overrides applied."""
    data = read_config_source(source)
    return apply_overrides(data, overrides or [])
