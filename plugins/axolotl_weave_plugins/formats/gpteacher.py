"""`type: gpteacher`: GPTeacher rows in the Alpaca prompt.

Mirrors Axolotl's `gpteacher` dataset handler (`GPTeacherPromptTokenizingStrategy` with
`GPTeacherPrompter`, which is `AlpacaPrompter` in the instruct style). Row fields:
`instruction`, `input` (optional), `response`. The prompt is masked unless `train_on_inputs`;
the response and EOS are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats.alpaca import alpaca_prompt, build_prompt_response_rows

PLUGIN_KIND = "format"


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `gpteacher`."""
    register(DatasetFormat("gpteacher", "instruction, optional input, response (GPTeacher)"))


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize GPTeacher rows, masking the prompt unless `train_on_inputs`."""
    if entry.type != "gpteacher":
        return None

    def render(row: dict[str, Any]) -> tuple[str, str]:
        prompt = alpaca_prompt(
            text_field(row, "instruction"), text_field(row, "input", required=False)
        )
        return prompt, text_field(row, "response")

    required = ["instruction", "response"]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
