"""`type: explainchoice` (and `explainchoice:<style>`): a multiple-choice question, explained.

Mirrors Axolotl's `explainchoice` dataset handler (`AlpacaMultipleChoicePromptTokenizingStrategy`
with `MultipleChoiceExplainPrompter(prompt_style)`; `explainchoice:STYLE` picks any of alpaca's
prompt styles, default `instruct`, around this prompter's own system text). Row fields:
`question` (the instruction), `choices` (a list, rendered one per line as `- "choice"` in the
input section), and `solution` or, when the rows have no (or a null) `solution`, `explanation`
(the response).

The prompt is masked unless `train_on_inputs`; the response and EOS are trained. Axolotl quirk
kept: the system text ends in a newline, which every style keeps inside its system block (so
in the instruct style three newlines precede `### Instruction:`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl

from axolotl_weave_plugins.formats._choices import choice_fields, require_choice_columns
from axolotl_weave_plugins.formats._prompts import (
    build_prompt,
    build_prompt_response_rows,
    style_of,
    styled_formats,
)

PLUGIN_KIND = "format"

SYSTEM_PROMPT = "Choose the answer that best answers the question. Explain your reasoning.\n"
FORMATS = styled_formats("explainchoice", "question, choices, solution or explanation (explained)")


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `explainchoice` and `explainchoice:<style>` for each prompt style."""
    for name, description in FORMATS.items():
        register(DatasetFormat(name, description, build=build))


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize multiple-choice rows, masking the prompt unless `train_on_inputs`."""
    require_choice_columns(dataset, entry)
    style = style_of(entry.type)

    def render(row: dict[str, Any]) -> tuple[str, str]:
        question, choices, answer = choice_fields(row)
        prompt = build_prompt(
            question,
            choices,
            style=style,
            system=SYSTEM_PROMPT,
            system_no_input=SYSTEM_PROMPT,
        )
        return prompt, answer

    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, [], render)
