"""`type: oasst`: OpenAssistant rows in the Alpaca prompt.

Mirrors Axolotl's `oasst` dataset handler (`OpenAssistantPromptTokenizingStrategy` with
`AlpacaPrompter`, instruct style, never an input section). Row fields: `INSTRUCTION`,
`RESPONSE`. The prompt is masked unless `train_on_inputs`; the response and EOS are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats.alpaca import alpaca_prompt, build_prompt_response_rows

PLUGIN_KIND = "format"


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `oasst`."""
    register(DatasetFormat("oasst", "INSTRUCTION, RESPONSE (OpenAssistant)"))


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize OpenAssistant rows, masking the prompt unless `train_on_inputs`."""
    if entry.type != "oasst":
        return None

    def render(row: dict[str, Any]) -> tuple[str, str]:
        return alpaca_prompt(text_field(row, "INSTRUCTION"), ""), text_field(row, "RESPONSE")

    required = ["INSTRUCTION", "RESPONSE"]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
