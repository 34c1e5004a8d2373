"""`type: alpaca_w_system.*`: Alpaca rows whose system text comes from the row.

Mirrors Axolotl's `prompt_strategies/alpaca_w_system.py`
(`InstructionWSystemPromptTokenizingStrategy` with `SystemDataPrompter` /
`OpenOrcaSystemDataPrompter`):

- `alpaca_w_system` (Axolotl's `load`, which is `load_chat`) and `alpaca_w_system.load_chat`:
  chat style; row fields `instruction`, `input` (optional), `output`, `system`.
- `alpaca_w_system.load_instruct`: the same fields in the `### Instruction:` style.
- `alpaca_w_system.load_open_orca`: OpenOrca rows, `### System:` / `### Human:` /
  `### Assistant:` headers; row fields `system_prompt`, `question`, `response`.
- `alpaca_w_system.load_open_orca_chatml`: OpenOrca rows in ChatML.

An empty or null system value leaves the system block out. The prompt (system block and turn) is
masked unless `train_on_inputs`; the response and EOS are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats._prompts import (
    PROMPT_STYLES,
    PromptStyle,
    build_prompt,
    build_prompt_response_rows,
)

PLUGIN_KIND = "format"

OPEN_ORCA_STYLES: dict[str, PromptStyle] = {
    "instruct": PromptStyle(
        "### System:\n{system}\n",
        "### Human:\n{instruction}\n### Additional Context:\n{input}\n### Assistant:\n",
        "### Human:\n{instruction}\n### Assistant:\n",
    ),
    "chatml": PROMPT_STYLES["chatml"],
}
"""`OpenOrcaSystemDataPrompter`'s templates."""

ALPACA_FIELDS = ("instruction", "input", "output", "system")
OPEN_ORCA_FIELDS = ("question", None, "response", "system_prompt")

# name -> (style, fields read as (instruction, input, response, system), description)
VARIANTS: dict[str, tuple[PromptStyle, tuple[str, str | None, str, str], str]] = {
    "alpaca_w_system": (
        PROMPT_STYLES["chat"],
        ALPACA_FIELDS,
        "instruction, optional input, output, system (from the row), chat style",
    ),
    "alpaca_w_system.load_chat": (
        PROMPT_STYLES["chat"],
        ALPACA_FIELDS,
        "same as alpaca_w_system",
    ),
    "alpaca_w_system.load_instruct": (
        PROMPT_STYLES["instruct"],
        ALPACA_FIELDS,
        "instruction, optional input, output, system, ### Instruction: style",
    ),
    "alpaca_w_system.load_open_orca": (
        OPEN_ORCA_STYLES["instruct"],
        OPEN_ORCA_FIELDS,
        "OpenOrca: system_prompt, question, response",
    ),
    "alpaca_w_system.load_open_orca_chatml": (
        OPEN_ORCA_STYLES["chatml"],
        OPEN_ORCA_FIELDS,
        "OpenOrca: system_prompt, question, response in ChatML",
    ),
}


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `alpaca_w_system` and its `load_*` variants."""
    for name, (_, _, description) in VARIANTS.items():
        register(DatasetFormat(name, description, build=build, prompt=prompt_row))


def prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A row of the entry's variant whose instruction is `text`, with no input, no system text
    and an empty response: the prompt inference renders."""
    _, (instruction_field, _, response_field, system_field), _ = VARIANTS[entry.type]
    return {instruction_field: text, response_field: "", system_field: ""}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize rows with their own system text, masking the prompt unless `train_on_inputs`."""
    style, (instruction_field, input_field, response_field, system_field), _ = VARIANTS[entry.type]

    def render(row: dict[str, Any]) -> tuple[str, str]:
        system = text_field(row, system_field, required=False)
        instruction = text_field(row, instruction_field)
        input_text = text_field(row, input_field, required=False) if input_field else ""
        prompt = build_prompt(
            instruction, input_text, style=style, system=system, system_no_input=system
        )
        return prompt, text_field(row, response_field)

    required = [instruction_field, response_field, system_field]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
