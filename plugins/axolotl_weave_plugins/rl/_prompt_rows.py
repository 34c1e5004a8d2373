"""Prompt rows of the preference `type:`s: what `weave inference` and `weave serve` build the
training prompt from (`DatasetFormat.prompt`).

Each function takes the `datasets:` entry and a user's text and gives one raw row of its type
with that text as the question and empty answers: the type's own `build` turns it into the
tokens training saw before every answer (the masked start of `chosen_input_ids`, or of
`completion_input_ids` under `rl: kto`). A row holds the fields of both the pairs and KTO's
unpaired rows where a type name builds both, so it builds under either `rl:`. The chat_template
types render answers through the template and find them by their content, so theirs hold a
placeholder that no template writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave_plugins.rl._formats import DEFAULT_ROLES, message_keys

ANSWER = "[[weave answer]]"
"""The answers of a chat_template type's prompt row (the template must show a content to be
found; the prompt ends before it)."""

QUESTION_FIELD = {
    "default": "instruction",  # the pairs read prompt, input, question or instruction; KTO this
    "argilla": "instruction",
    "intel": "question",
    "icr": "input",
    "prompt_pairs": "prompt",
    "ultra": "prompt",
}
"""The field holding the question, for the chatml.* and llama3.* types that read one."""

PromptRow = Callable[[Any, str], dict[str, Any]]


def unanswered() -> dict[str, Any]:
    """The empty answers of a pair and of KTO's unpaired row."""
    return {"chosen": "", "rejected": "", "completion": "", "label": True}


def templated_prompt_row(name: str) -> PromptRow:
    """The prompt row of `chatml.NAME` / `llama3.NAME` (and the bare `chatml`, `llama3`)."""
    if name == "argilla_chat":  # the question is the first turn of the answers' conversations
        return lambda entry, text: (
            {
                field: [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
                for field in ("chosen", "rejected", "completion")
            }
            | {"label": True}
        )
    if name == "ultra":  # the answers are the second turn of a conversation
        turns = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
        return lambda entry, text: {
            **unanswered(),
            "prompt": text,
            "chosen": turns,
            "rejected": turns,
        }
    return lambda entry, text: {**unanswered(), QUESTION_FIELD[name]: text}


def data_role(entry: Any, role: str) -> str:
    """The name a chat_template entry's data gives template role `role` (the first of its
    `roles` names)."""
    return ((entry.option("roles") or DEFAULT_ROLES).get(role) or [role])[0]


def chat_template_prompt_row(entry: Any, text: str) -> dict[str, Any]:
    """The prompt row of `chat_template.default`: one user message in the entry's keys and role
    name, the placeholder answers."""
    keys = message_keys(entry)
    user = data_role(entry, "user")
    return {
        entry.option("field_messages", "messages"): [{keys["role"]: user, keys["content"]: text}],
        entry.option("field_chosen", "chosen"): ANSWER,
        entry.option("field_rejected", "rejected"): ANSWER,
    }


def argilla_chat_prompt_row(entry: Any, text: str) -> dict[str, Any]:
    """The prompt row of `chat_template.argilla_chat`: each answer a conversation of the user's
    message and the placeholder, in the entry's keys and role names."""
    keys = message_keys(entry)
    turns = [
        {keys["role"]: data_role(entry, "user"), keys["content"]: text},
        {keys["role"]: data_role(entry, "assistant"), keys["content"]: ANSWER},
    ]
    return {
        entry.option("field_chosen", "chosen"): turns,
        entry.option("field_rejected", "rejected"): turns,
    }


def orpo_argilla_prompt_row(entry: Any, text: str) -> dict[str, Any]:
    """The prompt row of ORPO's `chat_template.argilla`: the user's message and the placeholder
    as both conversations."""
    turns = [{"role": "user", "content": text}, {"role": "assistant", "content": ANSWER}]
    return {"chosen": turns, "rejected": turns}


def zephyr_prompt_row(entry: Any, text: str) -> dict[str, Any]:
    """The prompt row of `zephyr.nectar`: the prompt and two empty ranked answers."""
    return {"prompt": text, "answers": [{"answer": "", "rank": 1}, {"answer": "", "rank": 2}]}


def user_defined_prompt_row(entry: Any, text: str) -> dict[str, Any]:
    """The prompt row of `user_defined.default`, in the entry's field names."""
    return {
        entry.option("field_prompt", "prompt"): text,
        entry.option("field_chosen", "chosen"): "",
        entry.option("field_rejected", "rejected"): "",
        entry.option("field_completion", "completion"): "",
        entry.option("field_label", "label"): True,
    }
