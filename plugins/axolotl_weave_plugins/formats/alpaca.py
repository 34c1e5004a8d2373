"""`type: alpaca` (and `alpaca:instruct`, `alpaca:chat`, `alpaca:chatml`, `alpaca:phi`).

Mirrors Axolotl's `alpaca` dataset handler: `AlpacaPromptTokenizingStrategy` with
`AlpacaPrompter(prompt_style)`, where `type: alpaca:STYLE` picks the style (default `instruct`).
Row fields: `instruction` (required), `input` (optional), `output` (required).

The prompt (system text, instruction and input) is masked unless `train_on_inputs`; the output
and EOS are trained. The system text and the turn templates of each style are Axolotl's; the
helpers here are shared by the other instruction formats (`alpaca_chat`, `jeopardy`, ...).

Axolotl quirk kept: the `phi` style's template with an input lacks the newlines of its no-input
template (`<|user|>\\n{instruction}<|end|>{input}<|assistant|>`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from axolotl_weave import (
    DatasetFormat,
    hookimpl,
    map_rows,
    require_columns,
    text_field,
    tokenize_prompt_response,
)

PLUGIN_KIND = "format"

SYSTEM_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
SYSTEM_NO_INPUT_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class PromptStyle:
    """The templates of one Axolotl prompt style: `{system}`, `{instruction}`, `{input}`."""

    system_format: str
    turn_format: str
    turn_no_input_format: str


PROMPT_STYLES: dict[str, PromptStyle] = {
    "instruct": PromptStyle(
        "{system}\n\n",
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Response:\n",
    ),
    "chat": PromptStyle(
        "SYSTEM: {system}\n",
        "USER: {instruction}\n{input}\nASSISTANT:",
        "USER: {instruction}\nASSISTANT:",
    ),
    "chatml": PromptStyle(
        "<|im_start|>system\n{system}<|im_end|>\n",
        "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
    ),
    "phi": PromptStyle(
        "<|system|>\n{system}<|end|>\n",
        "<|user|>\n{instruction}<|end|>{input}<|assistant|>",
        "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
    ),
}
"""Axolotl's `PromptStyle` values and the templates `AlpacaPrompter` uses for each."""


def build_prompt(
    instruction: str,
    input_text: str,
    *,
    style: PromptStyle,
    system: str = SYSTEM_PROMPT,
    system_no_input: str = SYSTEM_NO_INPUT_PROMPT,
) -> str:
    """Axolotl's `AlpacaPrompter.build_prompt`: system block (if any) + turn, by whether there
    is an input (a non-empty string)."""
    if input_text:
        head = style.system_format.format(system=system) if system else ""
        return head + style.turn_format.format(instruction=instruction, input=input_text)
    head = style.system_format.format(system=system_no_input) if system_no_input else ""
    return head + style.turn_no_input_format.format(instruction=instruction)


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The Alpaca prompt (instruct style) for an instruction and an optional input."""
    return build_prompt(instruction, input_text, style=PROMPT_STYLES["instruct"])


def build_prompt_response_rows(
    entry: Any,
    dataset: Any,
    tokenizer: Any,
    cfg: Any,
    required: list[str],
    render: Callable[[dict[str, Any]], tuple[str, str]],
) -> Any:
    """Check the `required` columns, then tokenize each row's `render(row) -> (prompt, response)`:
    the prompt masked unless `train_on_inputs`, the response and EOS trained."""
    require_columns(dataset, entry, required)
    train_on_inputs = bool(cfg.train_on_inputs)

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        prompt, response = render(row)
        return tokenize_prompt_response(
            tokenizer, prompt, response, train_on_inputs=train_on_inputs
        )

    return map_rows(dataset, entry, tokenize)


def styled_formats(base: str, description: str) -> dict[str, str]:
    """`base` and `base:<style>` for each of Axolotl's prompt styles, with descriptions."""
    styled = {
        f"{base}:{name}": f"{base} rows in Axolotl's '{name}' prompt style"
        for name in PROMPT_STYLES
    }
    return {base: description, **styled}


def style_of(format_name: str) -> PromptStyle:
    """The prompt style a `base:<style>` name asks for (`instruct` without one)."""
    return PROMPT_STYLES[format_name.partition(":")[2] or "instruct"]


FORMATS = styled_formats("alpaca", "instruction, optional input, output (Stanford Alpaca)")


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `alpaca` and `alpaca:<style>` for each prompt style."""
    for name, description in FORMATS.items():
        register(DatasetFormat(name, description))


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize alpaca rows, masking the prompt unless `train_on_inputs`."""
    if entry.type not in FORMATS:
        return None
    style = style_of(entry.type)

    def render(row: dict[str, Any]) -> tuple[str, str]:
        instruction = text_field(row, "instruction")
        input_text = text_field(row, "input", required=False)
        prompt = build_prompt(instruction, input_text, style=style)
        return prompt, text_field(row, "output")

    return build_prompt_response_rows(
        entry, dataset, tokenizer, cfg, ["instruction", "output"], render
    )
