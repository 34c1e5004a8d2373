"""`type: gpteacher` (and `gpteacher:<style>`): GPTeacher rows in the Alpaca prompt.

Mirrors Axolotl's `gpteacher` dataset handler (`GPTeacherPromptTokenizingStrategy` with
`GPTeacherPrompter(prompt_style)`, which is `AlpacaPrompter`; `gpteacher:STYLE` picks any of
alpaca's prompt styles, default `instruct`). Row fields:
`instruction`, `input` (optional), `response`. The prompt is masked unless `train_on_inputs`;
the response and EOS are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats._prompts import (
    build_prompt,
    build_prompt_response_rows,
    style_of,
    styled_formats,
)

PLUGIN_KIND = "format"

FORMATS = styled_formats("gpteacher", "instruction, optional input, response (GPTeacher)")


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `gpteacher` and `gpteacher:<style>` for each prompt style."""
    for name, description in FORMATS.items():
        register(DatasetFormat(name, description, build=build, prompt=prompt_row))


def prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A row whose instruction is `text` (no input) and whose response is empty:
    the prompt inference renders."""
    return {"instruction": text, "input": "", "response": ""}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize GPTeacher rows, masking the prompt unless `train_on_inputs`."""
    style = style_of(entry.type)

    def render(row: dict[str, Any]) -> tuple[str, str]:
        input_text = text_field(row, "input", required=False)
        prompt = build_prompt(text_field(row, "instruction"), input_text, style=style)
        return prompt, text_field(row, "response")

    required = ["instruction", "response"]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
