"""Preference datasets (`chosen` / `rejected` pairs) under Axolotl's DPO `type:` names.

Each format turns a raw row into a prompt text, a chosen text and a rejected text exactly as
Axolotl's `prompt_strategies/dpo/{chatml,llama3,chat_template,user_defined,zephyr}.py` and
`prompt_strategies/orpo/chat_template.py` (`argilla`) do, then
tokenizes them as TRL's `DPOTrainer` does: prompt+chosen and prompt+rejected tokenized whole
(the tokenizer's BOS kept, EOS appended unless the text ends with it), the prompt being the
common prefix of the tokenized prompt and both completions, masked with `IGNORE_INDEX`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    PAD_TOKEN,
    DatasetFormat,
    PluginConfig,
    chat_text,
    map_rows,
    text_field,
)
from pydantic import Field

PAIR_COLUMNS: dict[str, int | str | None] = {
    "chosen_input_ids": PAD_TOKEN,
    "chosen_labels": IGNORE_INDEX,
    "chosen_attention_mask": 0,
    "rejected_input_ids": PAD_TOKEN,
    "rejected_labels": IGNORE_INDEX,
    "rejected_attention_mask": 0,
}
"""The batch columns of every preference format, with their padding."""

EMPTY_PAIR = {name: [] for name in PAIR_COLUMNS}

Texts = tuple[str, str, str]
"""(prompt, chosen, rejected) as text."""


# --- tokenization ---------------------------------------------------------------------------


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(tokenizer: Any, prompt: str, chosen: str, rejected: str) -> dict[str, list]:
    """The six pair columns of one row, tokenized as TRL's `DPOTrainer` does."""
    eos = tokenizer.eos_token or ""

    def with_eos(text: str) -> str:
        return text if not eos or text.endswith(eos) else text + eos

    prompt_ids = list(tokenizer(prompt)["input_ids"])
    chosen_ids = list(tokenizer(prompt + with_eos(chosen))["input_ids"])
    rejected_ids = list(tokenizer(prompt + with_eos(rejected))["input_ids"])
    cut = min(common_prefix(prompt_ids, chosen_ids), common_prefix(prompt_ids, rejected_ids))
    row: dict[str, list] = {}
    for name, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
        if len(ids) <= cut:
            raise ValueError(f"the {name} response is empty once tokenized")
        row[f"{name}_input_ids"] = ids
        row[f"{name}_labels"] = [IGNORE_INDEX] * cut + ids[cut:]
        row[f"{name}_attention_mask"] = [1] * len(ids)
    return row


# --- Axolotl's chatml.* and llama3.* ----------------------------------------------------------

CHATML = {
    "system": "<|im_start|>system\n{}<|im_end|>\n",
    "user": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
    "end": "<|im_end|>",
}
LLAMA3 = {
    "system": "<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>",
    "user": (
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "end": "<|eot_id|>",
}


def first_key(row: dict[str, Any], names: tuple[str, ...]) -> str:
    """The first of `names` the row gives a value (a key Arrow filled with null is absent)."""
    found = next((name for name in names if row.get(name) is not None), None)
    if found is None:
        others = " or ".join(f"'{name}'" for name in names[1:])
        raise ValueError(f"field '{names[0]}' (or {others}) is missing or null")
    return found


def turn_content(value: Any, index: int, field: str) -> str:
    """`value[index]['content']` of a conversation field, with a clear error."""
    if not isinstance(value, list) or len(value) <= index or "content" not in value[index]:
        raise ValueError(f"field '{field}' must be a conversation of at least {index + 1} turns")
    where = f"{field}[{index}].content"
    return text_field({where: value[index]["content"]}, where)


def templated(template: dict[str, str], read: Callable[[dict[str, Any]], Texts]) -> Callable:
    """A row -> (prompt, chosen, rejected) with Axolotl's system/user/end text around them."""

    def texts(row: dict[str, Any]) -> Texts:
        system, question, chosen, rejected = read(row)
        prompt = template["user"].format(question)
        if system:
            prompt = template["system"].format(system) + prompt
        return prompt, chosen + template["end"], rejected + template["end"]

    return texts


def read_default(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """`default` (Axolotl's `argilla`): prompt/input/question/instruction, chosen(_response)."""
    prompt = first_key(row, ("prompt", "input", "question", "instruction"))
    chosen = first_key(row, ("chosen", "chosen_response"))
    rejected = first_key(row, ("rejected", "rejected_response"))
    return (
        text_field(row, "system", required=False),
        text_field(row, prompt),
        text_field(row, chosen),
        text_field(row, rejected),
    )


def read_fields(question: str) -> Callable[[dict[str, Any]], tuple[str, str, str, str]]:
    """`intel` (question), `icr` (input), `prompt_pairs` (prompt): plain chosen and rejected."""

    def read(row: dict[str, Any]) -> tuple[str, str, str, str]:
        return (
            text_field(row, "system", required=False),
            text_field(row, question),
            text_field(row, "chosen"),
            text_field(row, "rejected"),
        )

    return read


def read_ultra(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """`ultra`: the prompt, and the second turn of the chosen and rejected conversations."""
    return (
        text_field(row, "system", required=False),
        text_field(row, "prompt"),
        turn_content(row["chosen"], 1, "chosen"),
        turn_content(row["rejected"], 1, "rejected"),
    )


def read_argilla_chat(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """`argilla_chat`: the first turn of `chosen` is the prompt; no system."""
    return (
        "",
        turn_content(row["chosen"], 0, "chosen"),
        turn_content(row["chosen"], 1, "chosen"),
        turn_content(row["rejected"], 1, "rejected"),
    )


READERS = {
    "default": read_default,
    "argilla": read_default,
    "intel": read_fields("question"),
    "icr": read_fields("input"),
    "prompt_pairs": read_fields("prompt"),
    "ultra": read_ultra,
    "argilla_chat": read_argilla_chat,
}


# --- chat_template.* ----------------------------------------------------------------------------


class ChatTemplatePairOptions(PluginConfig):
    """Keys of a `chat_template.default` / `chat_template.argilla_chat` preference entry."""

    field_messages: str = Field("messages", description="Column of the prompt's messages.")
    field_chosen: str = Field("chosen", description="Column of the chosen response.")
    field_rejected: str = Field("rejected", description="Column of the rejected response.")
    message_property_mappings: dict[str, str] | None = Field(
        None, description="Names of a message's role and content keys."
    )
    message_field_role: str | None = Field(None, description="Legacy name of the role key.")
    message_field_content: str | None = Field(None, description="Legacy name of the content key.")
    roles: dict[str, list[str]] | None = Field(
        None, description="Role names of the data under each template role."
    )


DEFAULT_ROLES = {
    "user": ["user"],
    "assistant": ["assistant"],
    "system": ["system"],
    "tool": ["tool"],
}
"""A chat_template entry's `roles` when it gives none: each template role under its own name."""


def message_keys(entry: Any) -> dict[str, str]:
    """The names of a message's role and content keys in a chat_template entry's data."""
    mapping = {"role": "role", "content": "content"}
    mapping.update(entry.option("message_property_mappings") or {})
    if entry.option("message_field_role"):
        mapping["role"] = entry.option("message_field_role")
    if entry.option("message_field_content"):
        mapping["content"] = entry.option("message_field_content")
    return mapping


def chat_template_texts(entry: Any, tokenizer: Any, argilla: bool) -> Callable:
    """Axolotl's `chat_template.default` (or `argilla_chat`): the prompt rendered with the
    tokenizer's chat template (the config's `chat_template`) and a generation prompt; each
    response rendered after a dummy user turn, from where its content starts, stripped."""
    mapping = message_keys(entry)
    roles = entry.option("roles") or DEFAULT_ROLES
    role_of = {source: target for target, sources in roles.items() for source in sources}
    field_messages = entry.option("field_messages", "messages")
    field_chosen = entry.option("field_chosen", "chosen")
    field_rejected = entry.option("field_rejected", "rejected")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{entry.label}: the tokenizer has no chat template: set chat_template: in the config"
        )

    def message(raw: Any) -> dict[str, str]:
        if isinstance(raw, str):
            return {"role": "assistant", "content": raw}
        return {"role": role_of[raw[mapping["role"]]], "content": raw[mapping["content"]]}

    def response(raw: Any) -> dict[str, str]:
        return message(raw if isinstance(raw, (str, dict)) else raw[-1])

    def render_response(turn: dict[str, str]) -> str:
        dummy = {"role": "user", "content": "[[dummy_message]]"}
        text = chat_text(tokenizer, [dummy, turn])
        return text[text.find(turn["content"]) :].rstrip()

    def texts(row: dict[str, Any]) -> Texts:
        if argilla:
            messages = [message(m) for m in row[field_chosen][:-1]]
        else:
            messages = row[field_messages]
            if isinstance(messages, str):
                messages = [{mapping["role"]: "user", mapping["content"]: messages}]
            messages = [message(m) for m in messages]
        prompt = chat_text(tokenizer, messages, add_generation_prompt=True)
        chosen = render_response(response(row[field_chosen]))
        rejected = render_response(response(row[field_rejected]))
        return prompt, chosen, rejected

    return texts


# --- zephyr.nectar and ORPO's chat_template.argilla ---------------------------------------------

ZEPHYR_PROMPT = "<|system|>\n</s>\n<|user|>\n{}</s>\n<|assistant|>\n"


def zephyr_nectar(row: dict[str, Any]) -> Texts:
    """Axolotl's `zephyr.nectar`: the zephyr prompt around `prompt`; of the `answers` sorted by
    `rank`, the last is chosen and the one before it rejected (Axolotl's choice, kept as is:
    Nectar's rank 1 is its best answer)."""
    answers = row["answers"]
    if not isinstance(answers, list) or len(answers) < 2:
        raise ValueError("field 'answers' must hold at least 2 ranked answers")
    ranked = sorted(answers, key=lambda answer: answer["rank"])
    return (
        ZEPHYR_PROMPT.format(text_field(row, "prompt")),
        text_field(ranked[-1], "answer"),
        text_field(ranked[-2], "answer"),
    )


def orpo_argilla_texts(entry: Any, tokenizer: Any) -> Callable:
    """Axolotl's ORPO `chat_template.argilla`: the prompt is `system` (if any) and the turns of
    the `chosen` conversation but its last answer (every user turn is `prompt` when the row has
    one), rendered with the chat template and a generation prompt; chosen and rejected are what
    the template adds after the prompt for the last turn of `chosen` and of `rejected`, ending
    with the template's end-of-turn token (trailing whitespace stripped, as the other
    chat_template types)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{entry.label}: the tokenizer has no chat template: set chat_template: in the config"
        )

    def texts(row: dict[str, Any]) -> Texts:
        chosen, rejected = row["chosen"], row["rejected"]
        if not isinstance(chosen, list) or len(chosen) % 2 or not chosen:
            raise ValueError("field 'chosen' must be a conversation of user/assistant turn pairs")
        turn_content(rejected, len(rejected) - 1 if isinstance(rejected, list) else 0, "rejected")
        messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        turns = len(chosen) // 2
        for i in range(turns):
            user = row["prompt"] if "prompt" in row else turn_content(chosen, i * 2, "chosen")
            messages.append({"role": "user", "content": user})
            if i < turns - 1:
                answer = turn_content(chosen, i * 2 + 1, "chosen")
                messages.append({"role": "assistant", "content": answer})
        prompt = chat_text(tokenizer, messages, add_generation_prompt=True)
        completions = []
        for conversation in (chosen, rejected):
            last = {"role": "assistant", "content": conversation[-1]["content"]}
            whole = chat_text(tokenizer, messages + [last])
            if not whole.startswith(prompt):
                raise ValueError(
                    "the chat template does not render the prompt as the start of the "
                    "conversation: chat_template.argilla needs a template that does"
                )
            completions.append(whole[len(prompt) :].rstrip())
        return prompt, completions[0], completions[1]

    return texts


# --- user_defined.default -----------------------------------------------------------------------


class UserDefinedPairOptions(PluginConfig):
    """Keys of a `user_defined.default` preference entry (Axolotl's names)."""

    field_prompt: str = Field("prompt", description="Column of the prompt.")
    field_system: str = Field("system", description="Column of the system message.")
    field_chosen: str = Field("chosen", description="Column of the chosen response.")
    field_rejected: str = Field("rejected", description="Column of the rejected response.")
    prompt_format: str | None = Field(
        None, description="The prompt's text, with {prompt} (and {system}) in it."
    )
    chosen_format: str | None = Field(None, description="The chosen text, with {chosen}.")
    rejected_format: str | None = Field(None, description="The rejected text, with {rejected}.")


def user_defined_texts(entry: Any) -> Callable:
    """Axolotl's `user_defined.default`: the three texts from format strings."""
    field_prompt = entry.option("field_prompt", "prompt")
    field_system = entry.option("field_system", "system")
    field_chosen = entry.option("field_chosen", "chosen")
    field_rejected = entry.option("field_rejected", "rejected")
    prompt_format = entry.option("prompt_format") or "{" + field_prompt + "}"
    chosen_format = entry.option("chosen_format") or "{" + field_chosen + "}"
    rejected_format = entry.option("rejected_format") or "{" + field_rejected + "}"

    def texts(row: dict[str, Any]) -> Texts:
        if "{" + field_system + "}" in prompt_format and row.get(field_system):
            prompt = prompt_format.format(system=row[field_system], prompt=row[field_prompt])
        else:
            prompt = prompt_format.format(prompt=row[field_prompt])
        return (
            prompt,
            chosen_format.format(chosen=row[field_chosen]),
            rejected_format.format(rejected=row[field_rejected]),
        )

    return texts


# --- registration -------------------------------------------------------------------------------


def builder(make_texts: Callable[[Any, Any], Callable[[dict[str, Any]], Texts]]) -> Callable:
    """A `DatasetFormat.build` from a function (entry, tokenizer) -> row -> texts."""

    def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
        texts = make_texts(entry, tokenizer)
        return map_rows(
            dataset, entry, lambda row: tokenize_pair(tokenizer, *texts(row)), empty=EMPTY_PAIR
        )

    return build


def preference_formats() -> list[DatasetFormat]:
    """Every preference `type:` this plugin builds (the KTO names build unpaired rows under
    `rl: kto`, see `_kto_formats`)."""
    from axolotl_weave_plugins.rl import _prompt_rows as rows
    from axolotl_weave_plugins.rl._kto_formats import SHARED_COLUMNS, kto_builder, kto_texts

    formats = []
    for family, template in (("chatml", CHATML), ("llama3", LLAMA3)):
        for name, read in READERS.items():
            texts = templated(template, read)
            build = builder(lambda entry, tokenizer, texts=texts: texts)
            columns = dict(PAIR_COLUMNS)
            if name in kto_texts(family):
                build = kto_builder(build, lambda entry, t=kto_texts(family)[name]: t)
                columns = SHARED_COLUMNS
            formats.append(
                DatasetFormat(
                    f"{family}.{name}",
                    f"preference pairs ({name}) in {family} text (rl:)",
                    build=build,
                    prompt=rows.templated_prompt_row(name),
                    columns=columns,
                )
            )
        formats.append(
            DatasetFormat(
                family,
                f"preference pairs in {family} text (rl:), as {family}.default",
                build=builder(lambda entry, tok, t=templated(template, read_default): t),
                prompt=rows.templated_prompt_row("default"),
                columns=dict(PAIR_COLUMNS),
            )
        )
    for name, argilla, prompt in (
        ("default", False, rows.chat_template_prompt_row),
        ("argilla_chat", True, rows.argilla_chat_prompt_row),
    ):
        formats.append(
            DatasetFormat(
                f"chat_template.{name}",
                "preference pairs rendered with the chat template (rl:)",
                options=ChatTemplatePairOptions,
                build=builder(
                    lambda entry, tok, argilla=argilla: chat_template_texts(entry, tok, argilla)
                ),
                prompt=prompt,
                columns=dict(PAIR_COLUMNS),
            )
        )
    formats.append(
        DatasetFormat(
            "chat_template.argilla",
            "preference pairs (ORPO's argilla) rendered with the chat template (rl:)",
            build=builder(orpo_argilla_texts),
            prompt=rows.orpo_argilla_prompt_row,
            columns=dict(PAIR_COLUMNS),
        )
    )
    formats.append(
        DatasetFormat(
            "zephyr.nectar",
            "preference pairs (Nectar's ranked answers) in zephyr text (rl:)",
            build=builder(lambda entry, tok: zephyr_nectar),
            prompt=rows.zephyr_prompt_row,
            columns=dict(PAIR_COLUMNS),
        )
    )
    from axolotl_weave_plugins.rl._kto_formats import UserDefinedOptions, user_defined_kto

    formats.append(
        DatasetFormat(
            "user_defined.default",
            "preference pairs from prompt/chosen/rejected format strings (rl:)",
            options=UserDefinedOptions,
            build=kto_builder(
                builder(lambda entry, tok: user_defined_texts(entry)), user_defined_kto
            ),
            prompt=rows.user_defined_prompt_row,
            columns=SHARED_COLUMNS,
        )
    )
    return formats
