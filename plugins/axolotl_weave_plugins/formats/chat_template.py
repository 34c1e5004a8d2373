"""`type: chat_template`: conversations rendered with a chat template, trained on chosen turns.

The template is the tokenizer's own, one shipped here as a jinja file (`chat_templates/NAME.jinja`:
every name of Axolotl's `chat_template:` list, chatml, llama3, gemma3, qwen_25, mistral_v7_tekken,
command_a, ..., each holding the model vendor's own template text, so it renders as the vendor's
tokenizer does), or a custom one (`chat_template_jinja`). Option names and defaults follow
Axolotl's, so an Axolotl `datasets:` entry works unchanged.

Labels come from the rendered text itself: the conversation is rendered once, each message's
content is located in it (by a rendering with the contents replaced by markers, made once per
conversation shape, else by rendering again with one content replaced and comparing), the text
is tokenized once, and each token is labelled by where it lies (its character offsets, read by
bisection for a range's first and last tokens: `_token_labels`). So role headers are masked, a
trained turn's content is trained (a token that merges header and content characters is
trained), and the end-of-turn marker after it (`<|im_end|>`, `<|eot_id|>`, `</s>`...) follows
`train_on_eos`. Tokens merge exactly as they do at inference, and templates that trim or move
contents (a system prompt folded into the first user turn) are handled. A slow tokenizer (no
offsets) is refused with a clear error.

`type: sharegpt` (deprecated in Axolotl) is read as `chat_template` with ShareGPT's defaults.

Top-level keys (this plugin's config fields): `chat_template` (also set on the tokenizer, so it is
saved with the model), `chat_template_jinja`, `chat_template_kwargs`, `default_system_message`
and `eot_tokens`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from axolotl_weave import (
    ConfigError,
    DatasetFormat,
    PluginConfig,
    chat_text,
    hookimpl,
    map_rows,
    require_columns,
)
from pydantic import Field, field_validator, model_validator

from ._token_labels import OffsetsCheck, Rendered, label_conversations

PLUGIN_KIND = "format"

log = logging.getLogger("axolotl_weave")

TEMPLATE_DIR = Path(__file__).parent / "chat_templates"
"""Where the named templates live, one `NAME.jinja` each."""

ALIASES = {
    "qwen": "qwen_25",
    "qwen2": "qwen_25",
    "qwen2_5": "qwen_25",
    "qwen25": "qwen_25",
    "mistral": "mistral_v1",
    "phi3": "phi_3",
    "phi35": "phi_35",
    "phi4": "phi_4",
}
"""Other names accepted for a shipped template."""

TOKENIZER_DEFAULT = "tokenizer_default"
FALLBACK_PREFIX = "tokenizer_default_fallback_"
JINJA = "jinja"

FASTCHAT_NAMES = {
    "chatml": "chatml",
    "llama-2": "llama2",
    "llama2": "llama2",
    "llama-3": "llama3",
    "llama3": "llama3",
    "mistral": "mistral_v1",
    "vicuna_v1.1": "vicuna",
    "vicuna": "vicuna",
    "zephyr": "zephyr",
    "gemma": "gemma",
    "phi3": "phi_3",
    "phi-3": "phi_3",
    "alpaca": "alpaca",
    "qwen-7b-chat": "chatml",
    "cohere": "cohere",
}
"""sharegpt's `conversation:` (a FastChat template name) -> the chat template used here."""

KNOWN_END_MARKERS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eot|>",
    "<end_of_turn>",
    "<turn|>",
    "<|end|>",
    "<|END_RESPONSE|>",
    "<|END_OF_TURN_TOKEN|>",
    "<｜end▁of▁sentence｜>",
    "<|eom|>",
    "[|endofturn|]",
)
"""End-of-turn markers recognised when they appear in a template's source."""

DEFAULT_ROLES = {
    "system": ["system"],
    "user": ["user", "human"],
    "assistant": ["assistant", "gpt"],
    "tool": ["tool"],
}
"""Axolotl's default role mapping: target role -> the source role names read as it."""

SENTINEL = "\ue000"
"""Stand-in content (a private-use character) used to locate a message in the rendered text."""

EXTRA_PARTS = ("tool_calls", "reasoning_content")
"""Message keys whose rendering belongs to the message's trained span, besides its content."""

_warned: set[str] = set()


# --- named templates ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def template_names() -> tuple[str, ...]:
    """The names of the shipped templates (the `chat_templates/*.jinja` files)."""
    return tuple(sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja")))


def valid_choices() -> list[str]:
    """Every accepted `chat_template:` value except the `tokenizer_default_fallback_NAME` family."""
    return [*template_names(), *sorted(ALIASES), TOKENIZER_DEFAULT, JINJA]


def check_template_choice(value: str | None) -> str | None:
    """Validate a `chat_template:` value: a shipped name, an alias, tokenizer_default,
    tokenizer_default_fallback_NAME or jinja; otherwise a ValueError with suggestions."""
    if value is None:
        return None
    name = value.removeprefix(FALLBACK_PREFIX)
    if value.startswith(FALLBACK_PREFIX) and name in (*template_names(), *ALIASES):
        return value
    if value in valid_choices():
        return value
    import difflib

    close = difflib.get_close_matches(name, valid_choices(), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(
        f"unknown chat_template '{value}'{hint}; valid: {', '.join(valid_choices())}, "
        f"or {FALLBACK_PREFIX}NAME (the tokenizer's template, else NAME)"
    )


def named_template(name: str) -> str:
    """The jinja source of a shipped template (or alias)."""
    name = ALIASES.get(name, name)
    path = TEMPLATE_DIR / f"{name}.jinja"
    if not path.is_file():
        check_template_choice(name)  # raises with the valid names
        raise ConfigError(f"chat template '{name}' is not shipped")
    return path.read_text(encoding="utf-8").rstrip("\n")


def tokenizer_template(tokenizer: Any) -> str | None:
    """The tokenizer's own chat template (the `default` one when it has several), or None."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


def resolve_template(choice: str, jinja: str | None, tokenizer: Any) -> str:
    """The jinja source that a `chat_template:` choice (and `chat_template_jinja:`) names.

    `jinja` takes `chat_template_jinja` (a template, or the path of a file holding one);
    `tokenizer_default` the tokenizer's; `tokenizer_default_fallback_NAME` the tokenizer's, else
    NAME's; any other value a shipped template.
    """
    if choice == JINJA:
        if not jinja:
            raise ConfigError("chat_template: jinja needs chat_template_jinja: (the template)")
        path = Path(jinja)
        if len(jinja) < 4096 and "{" not in jinja and path.is_file():
            return path.read_text(encoding="utf-8")
        return jinja
    if choice == TOKENIZER_DEFAULT:
        template = tokenizer_template(tokenizer)
        if template is None:
            raise ConfigError(
                "chat_template: tokenizer_default, but the tokenizer has no chat template; name "
                f"one (chat_template: chatml, or {FALLBACK_PREFIX}chatml to prefer the "
                "tokenizer's when it has one)"
            )
        return template
    if choice.startswith(FALLBACK_PREFIX):
        template = tokenizer_template(tokenizer)
        if template is not None:
            return template
        name = choice.removeprefix(FALLBACK_PREFIX)
        warn_once(
            f"fallback:{name}",
            "the tokenizer has no chat template: using '%s' (%s). Its control tokens are new "
            "to the model; consider train_on_inputs or adding them as special tokens",
            name,
            choice,
        )
        return named_template(name)
    return named_template(choice)


def with_default_system(template: str, system: str) -> str:
    """`template` that inserts `system` as the system message of a conversation without one."""
    literal = json.dumps(system)  # a valid jinja string literal
    return (
        "{%- if messages and messages[0]['role'] != 'system' %}"
        f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages %}}"
        "{%- endif %}" + template
    )


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log a warning on the `axolotl_weave` logger once per process for `key`."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


# --- config ---------------------------------------------------------------------------------------


class ChatTemplateSettings(PluginConfig):
    """Top-level keys, with Axolotl's names."""

    chat_template: str | None = Field(
        None,
        description="Chat template for chat_template datasets, also set on the tokenizer (and "
        "saved with the model): a shipped name (chatml, llama3, gemma, qwen_25, ...), "
        "tokenizer_default, tokenizer_default_fallback_NAME, or jinja.",
        json_schema_extra={"affects_data": True},
    )
    chat_template_jinja: str | None = Field(
        None,
        description="A custom jinja chat template (or a file holding one); implies "
        "chat_template: jinja.",
        json_schema_extra={"affects_data": True},
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra variables for the template (e.g. enable_thinking: false).",
        json_schema_extra={"affects_data": True},
    )
    default_system_message: str | None = Field(
        None,
        description="System prompt given to conversations that have none (also built into the "
        "tokenizer's template); with drop_system_message it replaces theirs.",
        json_schema_extra={"affects_data": True},
    )
    eot_tokens: list[str] | None = Field(
        None,
        description="End-of-turn markers that train_on_eos governs; default: those known "
        "markers (<|im_end|>, <|eot_id|>, ...) found in the template, and EOS if it uses it.",
        json_schema_extra={"affects_data": True},
    )

    @field_validator("chat_template")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return check_template_choice(value)

    @model_validator(mode="after")
    def _jinja(self) -> ChatTemplateSettings:
        if self.chat_template == JINJA and not self.chat_template_jinja:
            raise ValueError("chat_template: jinja needs chat_template_jinja: (the template)")
        return self


class ChatTemplateOptions(PluginConfig):
    """Options of a `type: chat_template` entry, with Axolotl's names and defaults."""

    chat_template: str | None = Field(
        None,
        description="This entry's template (as the top-level key); default: the top-level "
        "chat_template, else the tokenizer's.",
    )
    chat_template_jinja: str | None = Field(
        None, description="A custom jinja template for this entry; implies chat_template: jinja."
    )
    field_messages: str = Field("messages", description="Column holding the list of messages.")
    field_system: str = Field(
        "system", description="Column with a system prompt, used when the first message is not one."
    )
    field_tools: str = Field("tools", description="Column with tool definitions for the template.")
    message_property_mappings: dict[str, str] | None = Field(
        None,
        description="Template property -> message key, e.g. {role: from, content: value}; "
        "default {role: role, content: content}.",
    )
    message_field_role: str | None = Field(
        None, description="Old spelling of message_property_mappings.role."
    )
    message_field_content: str | None = Field(
        None, description="Old spelling of message_property_mappings.content."
    )
    message_field_training: str | None = Field(
        None,
        description="Message key of a per-message boolean that overrides roles_to_train, "
        "e.g. training; unset (Axolotl's default), a message's own keys are not read.",
    )
    message_field_training_detail: str | None = Field(
        None,
        description="Message key of a list of {begin_offset, end_offset, train} character "
        "ranges (inclusive) of the content to train.",
    )
    roles: dict[str, list[str]] | None = Field(
        None,
        description="Target role -> source role names, e.g. {user: [human], assistant: [gpt]}; "
        "default: system, user/human, assistant/gpt, tool.",
    )
    roles_to_train: list[str] | None = Field(
        default_factory=lambda: ["assistant"],
        description="Roles whose turns are trained; null trains only the last message.",
    )
    train_on_eos: Literal["all", "turn", "last", "none"] | None = Field(
        "turn",
        description="End-of-turn markers to train: after every turn (all), after each trained "
        "turn (turn), after the last trained turn (last), or none.",
    )
    drop_system_message: bool = Field(False, description="Drop the conversation's system message.")

    @field_validator("chat_template")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return check_template_choice(value)

    @model_validator(mode="after")
    def _consistent(self) -> ChatTemplateOptions:
        if self.chat_template == JINJA and not self.chat_template_jinja:
            raise ValueError("chat_template: jinja needs chat_template_jinja: (the template)")
        if self.chat_template_jinja and not self.chat_template:
            self.chat_template = JINJA
        mappings = dict(self.message_property_mappings or {})
        for prop, legacy in (
            ("role", self.message_field_role),
            ("content", self.message_field_content),
        ):
            if legacy is None:
                continue
            if mappings.get(prop, legacy) != legacy:
                raise ValueError(
                    f"message_field_{prop}: {legacy!r} contradicts message_property_mappings."
                    f"{prop}: {mappings[prop]!r}; keep one"
                )
            mappings[prop] = legacy
        self.message_property_mappings = mappings or None
        return self


class SharegptOptions(ChatTemplateOptions):
    """Options of a `type: sharegpt` entry: chat_template's, with ShareGPT's defaults and keys."""

    field_messages: str = Field("conversations", description="Column holding the conversation.")
    message_property_mappings: dict[str, str] | None = Field(
        default_factory=lambda: {"role": "from", "content": "value"},
        description="Template property -> message key (ShareGPT: from, value).",
    )
    conversation: str | None = Field(
        None,
        description="Old FastChat template name (chatml, llama-2, vicuna_v1.1, ...), mapped "
        "to a chat template.",
    )
    field_human: str | None = Field(None, description="The `from` value of human turns.")
    field_model: str | None = Field(None, description="The `from` value of model turns.")
    roles: dict[str, list[str]] | None = Field(
        None,
        description="{input: [...], output: [...]} (old sharegpt) or {target: [sources]}.",
    )

    @field_validator("conversation")
    @classmethod
    def _known_conversation(cls, value: str | None) -> str | None:
        if value is not None and value not in FASTCHAT_NAMES:
            names = ", ".join(sorted(FASTCHAT_NAMES))
            raise ValueError(f"unknown sharegpt conversation '{value}'; valid: {names}")
        return value


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The top-level chat template keys."""
    return ChatTemplateSettings


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `chat_template`, and `sharegpt` (deprecated, read as chat_template)."""
    register(
        DatasetFormat(
            "chat_template",
            "conversations (messages with role, content) rendered with a chat template",
            options=ChatTemplateOptions,
            build=build,
            prompt="chat",
        )
    )
    register(
        DatasetFormat(
            "sharegpt",
            "deprecated: ShareGPT conversations (from, value), read as chat_template",
            options=SharegptOptions,
            build=build,
            prompt="chat",
        )
    )


@hookimpl(wrapper=True)
def load_tokenizer(cfg: Any) -> Generator[None, Any, Any]:
    """Set the top-level `chat_template` on the loaded tokenizer (it is saved with the model),
    with `default_system_message` built in."""
    tokenizer = yield
    if tokenizer is None:
        return tokenizer
    jinja = getattr(cfg, "chat_template_jinja", None)
    choice = getattr(cfg, "chat_template", None) or (JINJA if jinja else None)
    if choice:
        tokenizer.chat_template = resolve_template(choice, jinja, tokenizer)
    system = getattr(cfg, "default_system_message", None)
    if system and isinstance(getattr(tokenizer, "chat_template", None), str):
        tokenizer.chat_template = with_default_system(tokenizer.chat_template, system)
    return tokenizer


# --- building -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Everything one entry's rows are built with (read once from the entry and config)."""

    template: str
    template_name: str  # how the config named it, for messages
    field_messages: str
    field_system: str
    field_tools: str
    mappings: dict[str, str]
    training_key: str | None
    detail_key: str | None
    role_map: dict[str, str]
    roles_to_train: tuple[str, ...] | None
    train_on_eos: str
    drop_system: bool
    default_system: str | None
    markers: tuple[str, ...]
    train_on_inputs: bool
    template_kwargs: dict[str, Any]
    marked: dict[Any, str] = field(default_factory=dict, compare=False, repr=False)
    """`marked_rendering`'s renderings by conversation shape (filled while rows are read)."""
    offsets: OffsetsCheck = field(default_factory=OffsetsCheck, compare=False, repr=False)
    """Whether tokens are still labelled by bisection (`_token_labels`; checked on the rows)."""


def role_map_of(roles: dict[str, list[str]] | None) -> dict[str, str]:
    """Source role name -> target role; target names and system/user/assistant/tool map to
    themselves. Without `roles`, Axolotl's defaults (human -> user, gpt -> assistant)."""
    mapping = {source: target for target, sources in DEFAULT_ROLES.items() for source in sources}
    if roles:
        mapping = {target: target for target in DEFAULT_ROLES}
        for target, sources in roles.items():
            mapping[target] = target
            for source in [sources] if isinstance(sources, str) else sources:
                mapping[source] = target
    return mapping


def end_markers(template: str, tokenizer: Any, configured: list[str] | None) -> tuple[str, ...]:
    """The end-of-turn strings `train_on_eos` governs: `eot_tokens` when set, else the known
    markers in the template's source; plus EOS when the template writes it."""
    markers = list(configured) if configured else [m for m in KNOWN_END_MARKERS if m in template]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and ("eos_token" in template or eos in template) and eos not in markers:
        markers.append(eos)
    return tuple(markers)


def entry_template(entry: Any, tokenizer: Any, cfg: Any) -> tuple[str, str]:
    """The template of an entry and the name it goes by: its own chat_template, else the
    top-level one, else the tokenizer's."""
    choice = entry.option("chat_template")
    if choice:
        return resolve_template(choice, entry.option("chat_template_jinja"), tokenizer), choice
    jinja = getattr(cfg, "chat_template_jinja", None)
    top = getattr(cfg, "chat_template", None) or (JINJA if jinja else None)
    if top:
        return resolve_template(top, jinja, tokenizer), top
    template = tokenizer_template(tokenizer)
    if template is None:
        raise ConfigError(
            f"{entry.label}: the tokenizer has no chat template; set chat_template: at the top "
            f"level or on the entry (one of: {', '.join(valid_choices())})"
        )
    return template, TOKENIZER_DEFAULT


def sharegpt_settings(entry: Any) -> tuple[str | None, dict[str, list[str]] | None]:
    """The chat template and roles mapping that a sharegpt entry's old keys mean."""
    conversation = entry.option("conversation")
    template = entry.option("chat_template") or (
        FASTCHAT_NAMES[conversation] if conversation else None
    )
    roles = entry.option("roles")
    if roles and set(roles) <= {"input", "output"}:
        roles = {"user": list(roles.get("input", [])), "assistant": list(roles.get("output", []))}
    human, model = entry.option("field_human"), entry.option("field_model")
    if human or model:
        roles = {target: list(sources) for target, sources in (roles or DEFAULT_ROLES).items()}
        if human:
            roles.setdefault("user", []).append(human)
        if model:
            roles.setdefault("assistant", []).append(model)
    return template, roles


def make_plan(entry: Any, tokenizer: Any, cfg: Any) -> Plan:
    """Read an entry's options and the config into a `Plan`; ConfigError when they cannot work."""
    roles = entry.option("roles")
    if entry.type == "sharegpt":
        template_name, roles = sharegpt_settings(entry)
        if template_name:
            template = resolve_template(
                template_name, entry.option("chat_template_jinja"), tokenizer
            )
        elif getattr(cfg, "chat_template", None) or getattr(cfg, "chat_template_jinja", None):
            template, template_name = entry_template(entry, tokenizer, cfg)
        else:
            template_name = f"{FALLBACK_PREFIX}vicuna"
            template = resolve_template(template_name, None, tokenizer)
        warn_once(
            "sharegpt",
            "type: sharegpt is deprecated (as in Axolotl); %s is read as type: chat_template "
            "with field_messages: %s, message_property_mappings: %s. Write that instead.",
            entry.label,
            entry.option("field_messages"),
            entry.option("message_property_mappings"),
        )
    else:
        template, template_name = entry_template(entry, tokenizer, cfg)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{entry.label}: chat_template needs a fast tokenizer (it labels tokens by their "
            f"character offsets); {type(tokenizer).__name__} is a slow one. Use the model's "
            "tokenizer.json (a fast tokenizer) instead"
        )
    role_map = role_map_of(roles)
    to_train = entry.option("roles_to_train")
    markers = end_markers(template, tokenizer, getattr(cfg, "eot_tokens", None))
    if not markers:
        warn_once(
            f"markers:{hash(template)}",
            "%s: no end-of-turn marker found in the chat template, so train_on_eos has nothing "
            "to train; name them with eot_tokens:",
            entry.label,
        )
    for marker in markers:
        if len(tokenizer(marker, add_special_tokens=False)["input_ids"]) > 1:
            warn_once(
                f"split:{marker}",
                "end-of-turn marker %r is not one token for this tokenizer (its pieces are "
                "labelled together); add it as a special token",
                marker,
            )
    return Plan(
        template=template,
        template_name=template_name,
        field_messages=entry.option("field_messages"),
        field_system=entry.option("field_system"),
        field_tools=entry.option("field_tools"),
        mappings={
            "role": "role",
            "content": "content",
            **(entry.option("message_property_mappings") or {}),
        },
        training_key=entry.option("message_field_training"),
        detail_key=entry.option("message_field_training_detail"),
        role_map=role_map,
        roles_to_train=None if to_train is None else tuple(role_map.get(r, r) for r in to_train),
        train_on_eos=entry.option("train_on_eos") or "turn",
        drop_system=bool(entry.option("drop_system_message")),
        default_system=getattr(cfg, "default_system_message", None),
        markers=markers,
        train_on_inputs=bool(getattr(cfg, "train_on_inputs", False)),
        template_kwargs=dict(getattr(cfg, "chat_template_kwargs", None) or {}),
    )


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Render and tokenize each conversation, labelling the trained turns' tokens."""
    plan = make_plan(entry, tokenizer, cfg)
    require_columns(dataset, entry, [plan.field_messages])

    def prepare(row: dict[str, Any]) -> Rendered:
        return render_conversation(tokenizer, plan, row)

    # rows over sequence_len are dropped or cut to their first tokens: a longer text is
    # tokenized from a prefix that gives those tokens (a 10 MB conversation costs its first KBs)
    strategy = getattr(cfg, "excess_length_strategy", None) or "drop"
    limit = getattr(cfg, "sequence_len", None) if strategy in ("drop", "truncate") else None

    def finish(rendered: list[Rendered]) -> Any:  # a pyarrow.Table (an empty batch: [])
        return label_conversations(tokenizer, rendered, limit, plan.offsets)

    return map_rows(dataset, entry, prepare, finish=finish)


# --- one row --------------------------------------------------------------------------------------


@dataclass
class Turn:
    """A message as given to the template, with what decides its training."""

    message: dict[str, Any]
    train: bool | None  # the per-message flag, None when absent
    detail: list[dict[str, Any]] | None


def drop_none(value: Any) -> Any:
    """`value` with None entries of dicts removed, recursively (pyarrow fills missing keys)."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


def read_turns(plan: Plan, row: dict[str, Any]) -> list[Turn]:
    """The row's messages mapped to template roles and properties, system prompt applied."""
    messages = row.get(plan.field_messages)
    if messages is None:
        raise ValueError(f"field '{plan.field_messages}' is missing or null")
    if not isinstance(messages, list):
        raise TypeError(
            f"field '{plan.field_messages}' must be a list of messages, got "
            f"{type(messages).__name__}"
        )
    if not messages:
        raise ValueError(f"field '{plan.field_messages}' is an empty conversation")
    turns = [read_message(plan, i, m) for i, m in enumerate(messages, start=1)]
    system = row.get(plan.field_system)
    if isinstance(system, str) and turns[0].message["role"] != "system":
        turns.insert(0, Turn({"role": "system", "content": system}, None, None))
    if plan.drop_system and turns[0].message["role"] == "system":
        turns = turns[1:]
    if plan.default_system is not None and (not turns or turns[0].message["role"] != "system"):
        turns.insert(0, Turn({"role": "system", "content": plan.default_system}, None, None))
    if not turns:
        raise ValueError(f"field '{plan.field_messages}' has no message left")
    return turns


def read_message(plan: Plan, number: int, raw: Any) -> Turn:
    """One message: mapped properties, the role translated, extra keys passed to the template."""
    where = f"{plan.field_messages}[{number - 1}]"
    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a mapping, got {type(raw).__name__}: {raw!r}")
    raw = drop_none(raw)
    role_key, content_key = plan.mappings["role"], plan.mappings["content"]
    if role_key not in raw:
        raise ValueError(f"{where} has no '{role_key}' (its role); its keys: {', '.join(raw)}")
    source_role = raw[role_key]
    if source_role not in plan.role_map:
        valid = ", ".join(sorted(plan.role_map))
        raise ValueError(
            f"{where} has role '{source_role}', which is not mapped; valid roles: {valid} "
            f"(map it with roles:, e.g. roles: {{assistant: [{source_role}]}})"
        )
    content = raw.get(content_key)
    if content is None and not raw.get("tool_calls"):
        raise ValueError(
            f"{where} has no '{content_key}' (its content); its keys: {', '.join(raw)}"
        )
    if content is not None and not isinstance(content, str):
        raise TypeError(
            f"{where}.{content_key} must be a string, got {type(content).__name__}: {content!r}"
        )
    special = {plan.training_key, plan.detail_key} - {None}
    used = set(plan.mappings.values()) | special
    message = {k: v for k, v in raw.items() if k not in used}
    for prop, key in plan.mappings.items():
        if key in raw:
            message[prop] = raw[key]
    message["role"] = plan.role_map[source_role]
    message["content"] = content or ""
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            try:
                function["arguments"] = json.loads(function["arguments"])
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: tool call arguments are not JSON: {exc}") from None
    train = raw.get(plan.training_key) if plan.training_key else None
    if train is not None and not isinstance(train, bool):
        raise TypeError(f"{where}.{plan.training_key} must be true or false, got {train!r}")
    detail = raw.get(plan.detail_key) if plan.detail_key else None
    if detail is not None and not isinstance(detail, list):
        raise TypeError(f"{where}.{plan.detail_key} must be a list of ranges, got {detail!r}")
    return Turn(message, train, detail)


def render(tokenizer: Any, plan: Plan, messages: list[dict[str, Any]], tools: Any) -> str:
    """The template's text for `messages` (no generation prompt); template errors as ValueError
    naming the template."""
    return chat_text(
        tokenizer,
        messages,
        template_name=plan.template_name,
        system_fix="drop the system message with drop_system_message: true",
        chat_template=plan.template,
        tools=tools,
        add_generation_prompt=False,
        **plan.template_kwargs,
    )


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of `a` and `b` (binary search on slices)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the longest common suffix of `a` and `b`, at most `limit`."""
    low, high = 0, min(len(a), len(b), limit)
    while low < high:
        mid = (low + high + 1) // 2
        if a[len(a) - mid :] == b[len(b) - mid :]:
            low = mid
        else:
            high = mid - 1
    return low


def content_spans(
    tokenizer: Any, plan: Plan, messages: list[dict[str, Any]], text: str, tools: Any
) -> list[tuple[int, int] | None]:
    """Where each message's content lies in `text` (None when the template does not show it).

    Found by rendering the conversation again with that content replaced by a sentinel: the
    text before and after the content is the same in both renderings, and the content is what
    lies between. Tool calls and reasoning (`EXTRA_PARTS`) are found the same way, by rendering
    without them, and join the message's span. `spans_in_one_rendering` finds them all at once
    when it can (one more rendering instead of one per message).
    """
    at_once = spans_in_one_rendering(tokenizer, plan, messages, text, tools)
    if at_once is not None:
        return at_once
    spans: list[tuple[int, int] | None] = []
    for index, message in enumerate(messages):
        variants = [{**message, "content": SENTINEL}]
        # what the message says besides its content (tool calls, reasoning) is part of it too
        variants += [
            {k: v for k, v in message.items() if k != key} for key in EXTRA_PARTS if key in message
        ]
        found: list[tuple[int, int]] = []
        for variant in variants:
            other = render(
                tokenizer, plan, [*messages[:index], variant, *messages[index + 1 :]], tools
            )
            if other == text:
                continue
            start = common_prefix(text, other)
            end = len(text) - common_suffix(text, other, min(len(text), len(other)) - start)
            found.append((start, max(start, end)))
        if found:
            spans.append((min(a for a, _ in found), max(b for _, b in found)))
        else:
            spans.append(None)
    return spans


def spans_in_one_rendering(
    tokenizer: Any, plan: Plan, messages: list[dict[str, Any]], text: str, tools: Any
) -> list[tuple[int, int] | None] | None:
    """`content_spans` from one rendering with every content replaced by its own marker, when
    putting the contents back where the markers are gives `text` exactly (the template shows
    each content as it is); None when it does not, or a message has `EXTRA_PARTS`."""
    if any(key in message for message in messages for key in EXTRA_PARTS):
        return None
    contents = [message.get("content") for message in messages]
    if not all(isinstance(content, str) for content in contents):
        return None
    marked = marked_rendering(tokenizer, plan, messages, tools)
    pattern = re.compile(f"{SENTINEL}(\\d+){SENTINEL}")
    pieces, spans, position, rebuilt = [], [[] for _ in messages], 0, 0
    for match in pattern.finditer(marked):
        index = int(match.group(1))
        if index >= len(messages):
            return None
        before = marked[position : match.start()]
        pieces += [before, contents[index]]
        rebuilt += len(before)
        spans[index].append((rebuilt, rebuilt + len(contents[index])))
        rebuilt += len(contents[index])
        position = match.end()
    pieces.append(marked[position:])
    if "".join(pieces) != text:
        return None
    return [(found[0][0], found[-1][1]) if found else None for found in spans]


MARKED_SHAPES = 1024
"""Conversation shapes whose marked rendering a `Plan` keeps (one per role sequence, typically)."""


def marked_rendering(tokenizer: Any, plan: Plan, messages: list[dict[str, Any]], tools: Any) -> str:
    """The conversation rendered with message `i`'s content replaced by its marker
    (`SENTINEL i SENTINEL`). It depends on the conversation's shape only (each message
    without its content, and the tools), so conversations of one shape render it once; the
    caller checks the result against the real rendering, so a template that does not render
    alike for one shape (a date it prints) only costs the slower search."""
    try:
        shape: Any = (
            tuple(tuple(sorted((k, v) for k, v in m.items() if k != "content")) for m in messages),
            json.dumps(tools, sort_keys=True, default=repr),
        )
        hash(shape)
    except TypeError:  # a value that is not hashable (a list, a mapping): by its JSON
        shape = json.dumps(
            [[{k: v for k, v in m.items() if k != "content"} for m in messages], tools],
            sort_keys=True,
            default=repr,
        )
    found = plan.marked.get(shape)
    if found is None:
        marked = [{**m, "content": f"{SENTINEL}{i}{SENTINEL}"} for i, m in enumerate(messages)]
        found = render(tokenizer, plan, marked, tools)
        if len(plan.marked) < MARKED_SHAPES:
            plan.marked[shape] = found
    return found


def detail_ranges(
    text: str, span: tuple[int, int], content: str, detail: list[dict[str, Any]], where: str
) -> list[tuple[int, int]]:
    """The character ranges of `text` that a message's training detail marks as trained."""
    shown = text[span[0] : span[1]]
    if shown == content:
        base = span[0]
    elif shown == content.strip():
        base = span[0] - (len(content) - len(content.lstrip()))
    else:
        raise ValueError(
            f"{where}: training detail needs the content rendered as given, but the template "
            "changes it"
        )
    ranges = []
    for part in detail:
        if not isinstance(part, dict) or not {"begin_offset", "end_offset"} <= set(part):
            raise ValueError(
                f"{where}: each training detail needs begin_offset, end_offset, train; got {part!r}"
            )
        if part.get("train"):
            ranges.append((base + int(part["begin_offset"]), base + int(part["end_offset"]) + 1))
    return ranges


def should_train(plan: Plan, turn: Turn, index: int, last: int) -> bool:
    """Whether a turn's content is trained: its flag, else its detail, else its role."""
    if turn.train is not None:
        return turn.train
    if turn.detail is not None:
        return bool(turn.detail)
    if plan.train_on_inputs:
        return True
    if plan.roles_to_train is None:  # Axolotl: roles_to_train: null trains the last message
        return index == last
    return turn.message["role"] in plan.roles_to_train


def render_conversation(tokenizer: Any, plan: Plan, row: dict[str, Any]) -> Rendered:
    """One row's text, and the character ranges of what it trains."""
    turns = read_turns(plan, row)
    messages = [turn.message for turn in turns]
    tools = row.get(plan.field_tools)
    tools = drop_none(tools) if isinstance(tools, list) and tools else None
    text = render(tokenizer, plan, messages, tools)
    spans = content_spans(tokenizer, plan, messages, text, tools)
    if any(t.message["role"] == "system" and s is None for t, s in zip(turns, spans, strict=True)):
        warn_once(
            f"hidden-system:{plan.template_name}",
            "chat template '%s' leaves the system message out of some conversations (as the "
            "vendor's template does: Mistral's show it only before a final user message), so "
            "they are trained without it",
            plan.template_name,
        )

    content_ranges: list[tuple[int, int]] = []  # tokens overlapping them are trained
    inside_ranges: list[tuple[int, int]] = []  # tokens wholly inside them are trained
    markers_of: list[list[tuple[int, int]]] = []
    trained_turns = []
    last = len(turns) - 1
    for index, (turn, span) in enumerate(zip(turns, spans, strict=True)):
        markers_of.append(marker_ranges(plan, text, spans, index))
        if span is None or not should_train(plan, turn, index, last):
            continue
        trained_turns.append(index)
        if turn.detail is not None and turn.train is None:
            where = f"{plan.field_messages}[{index}]"
            inside_ranges += detail_ranges(text, span, turn.message["content"], turn.detail, where)
        else:
            content_ranges.append(span)
    if plan.train_on_eos == "all":
        content_ranges += [r for ranges in markers_of for r in ranges]
    elif plan.train_on_eos == "turn":
        content_ranges += [r for i in trained_turns for r in markers_of[i]]
    elif plan.train_on_eos == "last" and trained_turns:
        content_ranges += markers_of[trained_turns[-1]]

    return Rendered(text, content_ranges, inside_ranges)


def marker_ranges(
    plan: Plan, text: str, spans: list[tuple[int, int] | None], index: int
) -> list[tuple[int, int]]:
    """The end-of-turn markers closing message `index`: the first of each kind after its
    content and before the next message's content."""
    span = spans[index]
    if span is None:
        return []
    after = span[1]
    following = [s[0] for s in spans[index + 1 :] if s is not None and s[0] >= after]
    stop = min(following, default=len(text))
    ranges = []
    for marker in plan.markers:
        at = text.find(marker, after, stop)
        if at >= 0:
            ranges.append((at, at + len(marker)))
    return ranges
