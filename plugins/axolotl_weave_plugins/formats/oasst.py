"""`type: oasst` (and `oasst:<style>`): OpenAssistant rows in the Alpaca prompt.

Mirrors Axolotl's `oasst` dataset handler (`OpenAssistantPromptTokenizingStrategy` with
`AlpacaPrompter(prompt_style)`, never an input section; `oasst:STYLE` picks any of alpaca's
prompt styles, default `instruct`). Row fields: `INSTRUCTION`, `RESPONSE`. The prompt is masked
unless `train_on_inputs`; the response and EOS are trained.
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

FORMATS = styled_formats("oasst", "INSTRUCTION, RESPONSE (OpenAssistant)")


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `oasst` and `oasst:<style>` for each prompt style."""
    for name, description in FORMATS.items():
        register(DatasetFormat(name, description, build=build, prompt=prompt_row))


def prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A row whose instruction is `text` and whose response is empty:
    the prompt inference renders."""
    return {"INSTRUCTION": text, "RESPONSE": ""}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize OpenAssistant rows, masking the prompt unless `train_on_inputs`."""
    style = style_of(entry.type)

    def render(row: dict[str, Any]) -> tuple[str, str]:
        prompt = build_prompt(text_field(row, "INSTRUCTION"), "", style=style)
        return prompt, text_field(row, "RESPONSE")

    required = ["INSTRUCTION", "RESPONSE"]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
