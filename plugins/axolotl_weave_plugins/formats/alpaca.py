"""`type: alpaca` (and `alpaca:instruct`, `alpaca:chat`, `alpaca:chatml`, `alpaca:phi`).

Mirrors Axolotl's `alpaca` dataset handler: `AlpacaPromptTokenizingStrategy` with
`AlpacaPrompter(prompt_style)`, where `type: alpaca:STYLE` picks the style (default `instruct`).
Row fields: `instruction` (required), `input` (optional), `output` (required).

The prompt (system text, instruction and input) is masked unless `train_on_inputs`; the output
and EOS are trained. The system text and the turn templates of each style are Axolotl's; they
live in `_prompts.py`, shared with the other instruction formats (`alpaca_chat`, `jeopardy`, ...).

Axolotl quirk kept: the `phi` style's template with an input lacks the newlines of its no-input
template (`<|user|>\\n{instruction}<|end|>{input}<|assistant|>`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats._prompts import (
    PROMPT_STYLES,
    build_prompt,
    build_prompt_response_rows,
    style_of,
    styled_formats,
)

PLUGIN_KIND = "format"

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The Alpaca prompt (instruct style) for an instruction and an optional input."""
    return build_prompt(instruction, input_text, style=PROMPT_STYLES["instruct"])


FORMATS = styled_formats("alpaca", "instruction, optional input, output (Stanford Alpaca)")


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `alpaca` and `alpaca:<style>` for each prompt style."""
    for name, description in FORMATS.items():
        register(DatasetFormat(name, description, build=build, prompt=prompt_row))


def prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A row whose instruction is `text` (no input) and whose output is empty:
    the prompt inference renders."""
    return {"instruction": text, "input": "", "output": ""}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize alpaca rows, masking the prompt unless `train_on_inputs`."""
    style = style_of(entry.type)

    def render(row: dict[str, Any]) -> tuple[str, str]:
        instruction = text_field(row, "instruction")
        input_text = text_field(row, "input", required=False)
        prompt = build_prompt(instruction, input_text, style=style)
        return prompt, text_field(row, "output")

    return build_prompt_response_rows(
        entry, dataset, tokenizer, cfg, ["instruction", "output"], render
    )
