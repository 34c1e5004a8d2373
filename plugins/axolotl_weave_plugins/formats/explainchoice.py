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

from axolotl_weave import DataError, DatasetFormat, hookimpl, require_columns, text_field

from axolotl_weave_plugins.formats.alpaca import (
    build_prompt,
    build_prompt_response_rows,
    style_of,
    styled_formats,
)

PLUGIN_KIND = "format"

SYSTEM_PROMPT = "Choose the answer that best answers the question. Explain your reasoning.\n"
FORMATS = styled_formats("explainchoice", "question, choices, solution or explanation (explained)")


def require_choice_columns(dataset: Any, entry: Any) -> None:
    """Raise a `DataError` unless the rows have question, choices and solution or explanation."""
    require_columns(dataset, entry, ["question", "choices"])
    if "solution" not in dataset.column_names and "explanation" not in dataset.column_names:
        raise DataError(
            f"dataset '{entry.path}' (type: {entry.type}) lacks the field 'solution' or "
            f"'explanation'; its rows have: {', '.join(dataset.column_names)}"
        )


def choice_fields(row: dict[str, Any]) -> tuple[str, str, str]:
    """(question, choices as `- "choice"` lines, solution or explanation) of a row."""
    choices = row.get("choices")
    if not isinstance(choices, list):
        raise TypeError(
            f"field 'choices' must be a list, got {type(choices).__name__}: {choices!r}"
        )
    rendered = "\n".join(f'- "{choice}"' for choice in choices)
    answer_field = "solution" if row.get("solution") is not None else "explanation"
    return text_field(row, "question"), rendered, text_field(row, answer_field)


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `explainchoice` and `explainchoice:<style>` for each prompt style."""
    for name, description in FORMATS.items():
        register(DatasetFormat(name, description))


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize multiple-choice rows, masking the prompt unless `train_on_inputs`."""
    if entry.type not in FORMATS:
        return None
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
