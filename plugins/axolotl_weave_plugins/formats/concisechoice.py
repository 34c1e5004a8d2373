"""`type: concisechoice` (and `concisechoice:<style>`): a multiple choice, answered concisely.

Mirrors Axolotl's `concisechoice` dataset handler
(`AlpacaMultipleChoicePromptTokenizingStrategy` with `MultipleChoiceConcisePrompter`). Row
fields: `question`, `choices` (a list, rendered one per line as `- "choice"`), and `solution`
or, when the rows have no (or a null) `solution`, `explanation` (the response).

The prompt (the system text, then `USER: question`, the choices, `ASSISTANT:`) is masked unless
`train_on_inputs`; the response, appended right after `ASSISTANT:` as in Axolotl, and EOS are
trained.

Axolotl quirk kept: `MultipleChoiceConcisePrompter` sets its USER/ASSISTANT turns whatever the
style, so `concisechoice:instruct`, `:chat`, `:chatml` and `:phi` all render as `concisechoice`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl

from axolotl_weave_plugins.formats._choices import choice_fields, require_choice_columns
from axolotl_weave_plugins.formats._prompts import (
    PROMPT_STYLES,
    PromptStyle,
    build_prompt,
    build_prompt_response_rows,
)

PLUGIN_KIND = "format"

SYSTEM_PROMPT = "Choose the answer that best answers the question. Be concise in your response.\n\n"
STYLE = PromptStyle(
    "{system}", PROMPT_STYLES["chat"].turn_format, PROMPT_STYLES["chat"].turn_no_input_format
)
"""Axolotl's prompter sets only the chat turns, leaving the system format bare."""

FORMATS = {
    "concisechoice": "question, choices, solution or explanation (concise)",
    **{
        f"concisechoice:{name}": f"concisechoice rows (Axolotl ignores the '{name}' style)"
        for name in PROMPT_STYLES
    },
}


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `concisechoice` and `concisechoice:<style>` (the same) for each prompt style."""
    for name, description in FORMATS.items():
        register(DatasetFormat(name, description, build=build))


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize multiple-choice rows, masking the prompt unless `train_on_inputs`."""
    require_choice_columns(dataset, entry)

    def render(row: dict[str, Any]) -> tuple[str, str]:
        question, choices, answer = choice_fields(row)
        prompt = build_prompt(
            question, choices, style=STYLE, system=SYSTEM_PROMPT, system_no_input=SYSTEM_PROMPT
        )
        return prompt, answer

    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, [], render)
