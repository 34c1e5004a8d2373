"""`type: reflection`: an answer, a reflection on it and a corrected answer, all trained.

Mirrors Axolotl's `reflection` dataset handler (`AlpacaReflectionPTStrategy` with
`ReflectAlpacaPrompter`). Row fields: `instruction`, `input` (optional), `output`, `reflection`,
`corrected`.

The prompt (`### Instruction:` ... `### Response:`) is masked unless `train_on_inputs`; the
trained response is `### Thought:\\n{output}\\n\\n### Agent Reflection:\\n{reflection}\\n\\n###
Final Response:\\n{corrected}` and EOS. As in Axolotl, a row with an empty output, reflection or
corrected gets no response (nothing trained).

Axolotl quirk kept: for `type: reflection` Axolotl passes no prompt style, and
`ReflectAlpacaPrompter` then keeps its class templates, which leave out its long system text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats.alpaca import build_prompt_response_rows

PLUGIN_KIND = "format"

PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
AGENT_LABEL = (
    "### Thought:\n{output}\n\n### Agent Reflection:\n{reflection}\n\n"
    "### Final Response:\n{corrected}"
)


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `reflection`."""
    register(
        DatasetFormat("reflection", "instruction, optional input, output, reflection, corrected")
    )


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize reflection rows, masking the prompt unless `train_on_inputs`."""
    if entry.type != "reflection":
        return None

    def render(row: dict[str, Any]) -> tuple[str, str]:
        instruction = text_field(row, "instruction")
        input_text = text_field(row, "input", required=False)
        if input_text:
            prompt = PROMPT_INPUT.format(instruction=instruction, input=input_text)
        else:
            prompt = PROMPT_NO_INPUT.format(instruction=instruction)
        parts = {name: text_field(row, name) for name in ("output", "reflection", "corrected")}
        return prompt, AGENT_LABEL.format(**parts) if all(parts.values()) else ""

    required = ["instruction", "output", "reflection", "corrected"]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
