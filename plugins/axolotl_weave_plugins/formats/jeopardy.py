"""`type: jeopardy`: Jeopardy clues; the answer is trained as "what is <answer>".

Mirrors Axolotl's `jeopardy` dataset handler (`JeopardyPromptTokenizingStrategy` with
`JeopardyPrompter`). Row fields: `question` (the clue, as the instruction), `category` (as the
input; empty or null leaves the input section out), `answer`.

Axolotl quirk kept: `JeopardyPrompter` defines a Jeopardy-specific prompt in an attribute that
Axolotl's current `AlpacaPrompter` no longer reads, so the rendered prompt is the plain Alpaca
(instruct) one. The prompt is masked unless `train_on_inputs`; "what is " + answer and EOS are
trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats.alpaca import alpaca_prompt, build_prompt_response_rows

PLUGIN_KIND = "format"


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `jeopardy`."""
    register(DatasetFormat("jeopardy", "question (clue), category, answer (Jeopardy)"))


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize Jeopardy rows, masking the prompt unless `train_on_inputs`."""
    if entry.type != "jeopardy":
        return None

    def render(row: dict[str, Any]) -> tuple[str, str]:
        prompt = alpaca_prompt(
            text_field(row, "question"), text_field(row, "category", required=False)
        )
        return prompt, "what is " + text_field(row, "answer")

    required = ["question", "category", "answer"]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
