"""`type: alpaca_chat` and its variants: Alpaca rows in the USER/ASSISTANT chat prompt style.

Mirrors Axolotl's `prompt_strategies/alpaca_chat.py`:

- `alpaca_chat` (`load`): `AlpacaPrompter("chat")`; row fields `instruction`, `input`
  (optional), `output`. The entry key `conversation:` (instruct, chat, chatml, phi) picks
  another prompt style, as in Axolotl.
- `alpaca_chat.load_concise`: `AlpacaConcisePrompter` (a USER/ASSISTANT system text asking for
  concise answers); fields `instruction`, `input` (optional), `output`.
- `alpaca_chat.load_qa`: `AlpacaChatPrompter`; fields `question`, `answer`.
- `alpaca_chat.load_camel_ai`: `AlpacaChatPrompter`; fields `message_1` (prompt),
  `message_2` (response).
- `alpaca_chat.load_no_prompt`: `UnpromptedPrompter("chat")`, no system text; fields
  `instruction`, `input` (optional), `output`.

The prompt is masked unless `train_on_inputs`; the response and EOS are trained.

Axolotl quirks kept: the concise/chat system texts still end in a blank line from before Axolotl
added `system_format`, so the rendered prompt has three newlines before `USER:`. Axolotl's docs
name the response field `response` for `alpaca_chat` and `load_concise`; its code reads
`output`, which is what is read here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from axolotl_weave import DatasetFormat, PluginConfig, hookimpl, text_field
from pydantic import Field

from axolotl_weave_plugins.formats._prompts import (
    PROMPT_STYLES,
    SYSTEM_NO_INPUT_PROMPT,
    SYSTEM_PROMPT,
    build_prompt,
    build_prompt_response_rows,
)

PLUGIN_KIND = "format"

CHAT_SYSTEM_PROMPT = (
    "Below is an instruction from a USER that describes a task, paired with an input that "
    "provides further context. The ASSISTANT writes a response that concisely and appropriately "
    "completes the request.\n\n"
)
CHAT_SYSTEM_NO_INPUT_PROMPT = (
    "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response "
    "that appropriately and concisely completes the request.\n\n"
)


class AlpacaChatOptions(PluginConfig):
    """Entry keys of `type: alpaca_chat`."""

    conversation: Literal["instruct", "chat", "chatml", "phi"] | None = Field(
        None, description="Prompt style (default chat), as Axolotl's alpaca_chat reads it."
    )


# name -> (required fields, fields read as (instruction, input, response), system texts)
VARIANTS: dict[str, tuple[tuple[str, str | None, str], tuple[str, str]]] = {
    "alpaca_chat": (("instruction", "input", "output"), (SYSTEM_PROMPT, SYSTEM_NO_INPUT_PROMPT)),
    "alpaca_chat.load_concise": (
        ("instruction", "input", "output"),
        (CHAT_SYSTEM_PROMPT, CHAT_SYSTEM_NO_INPUT_PROMPT),
    ),
    "alpaca_chat.load_qa": (
        ("question", None, "answer"),
        (CHAT_SYSTEM_PROMPT, CHAT_SYSTEM_NO_INPUT_PROMPT),
    ),
    "alpaca_chat.load_camel_ai": (
        ("message_1", None, "message_2"),
        (CHAT_SYSTEM_PROMPT, CHAT_SYSTEM_NO_INPUT_PROMPT),
    ),
    "alpaca_chat.load_no_prompt": (("instruction", "input", "output"), ("", "")),
}

DESCRIPTIONS = {
    "alpaca_chat": "instruction, optional input, output in the USER:/ASSISTANT: chat style",
    "alpaca_chat.load_concise": "alpaca_chat asking for concise answers",
    "alpaca_chat.load_qa": "question, answer in the USER:/ASSISTANT: chat style",
    "alpaca_chat.load_camel_ai": "message_1, message_2 (CamelAI) in the chat style",
    "alpaca_chat.load_no_prompt": "alpaca_chat without a system text",
}


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `alpaca_chat` and its `load_*` variants."""
    for name, description in DESCRIPTIONS.items():
        options = AlpacaChatOptions if name == "alpaca_chat" else None
        register(DatasetFormat(name, description, options=options, build=build, prompt=prompt_row))


def prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A row of the entry's variant whose instruction is `text` (no input) and whose response
    is empty: the prompt inference renders."""
    (instruction_field, _, response_field), _ = VARIANTS[entry.type]
    return {instruction_field: text, response_field: ""}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize rows in the alpaca chat prompt, masking the prompt unless `train_on_inputs`."""
    (instruction_field, input_field, response_field), (system, system_no_input) = VARIANTS[
        entry.type
    ]
    style_name = entry.option("conversation") if entry.type == "alpaca_chat" else None
    style = PROMPT_STYLES[style_name or "chat"]

    def render(row: dict[str, Any]) -> tuple[str, str]:
        instruction = text_field(row, instruction_field)
        input_text = text_field(row, input_field, required=False) if input_field else ""
        prompt = build_prompt(
            instruction, input_text, style=style, system=system, system_no_input=system_no_input
        )
        return prompt, text_field(row, response_field)

    return build_prompt_response_rows(
        entry, dataset, tokenizer, cfg, [instruction_field, response_field], render
    )
