"""`type: jeopardy` (and `jeopardy:<style>`): Jeopardy clues, trained as "what is <answer>".

Mirrors Axolotl's `jeopardy` dataset handler (`JeopardyPromptTokenizingStrategy` with
`JeopardyPrompter(prompt_style)`; `jeopardy:STYLE` picks any of alpaca's prompt styles, default
`instruct`). Row fields: `question` (the clue, as the instruction), `category` (as the input;
empty or null leaves the input section out), `answer`.

Axolotl quirk kept: `JeopardyPrompter` defines a Jeopardy-specific prompt in an attribute that
Axolotl's current `AlpacaPrompter` no longer reads, so the rendered prompt is the style's Alpaca
prompt (for `instruct`, the plain Alpaca one). The prompt is masked unless `train_on_inputs`;
"what is " + answer and EOS are trained.
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

FORMATS = styled_formats("jeopardy", "question (clue), category, answer (Jeopardy)")


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `jeopardy` and `jeopardy:<style>` for each prompt style."""
    for name, description in FORMATS.items():
        register(DatasetFormat(name, description, build=build, prompt=prompt_row))


def prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A row whose clue is `text` (no category) and whose answer is empty:
    the prompt inference renders."""
    return {"question": text, "category": "", "answer": ""}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize Jeopardy rows, masking the prompt unless `train_on_inputs`."""
    style = style_of(entry.type)

    def render(row: dict[str, Any]) -> tuple[str, str]:
        category = text_field(row, "category", required=False)
        prompt = build_prompt(text_field(row, "question"), category, style=style)
        return prompt, "what is " + text_field(row, "answer")

    required = ["question", "category", "answer"]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
