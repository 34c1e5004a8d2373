"""`type: alpaca`: instruction / input / output rows in the Alpaca prompt.

The prompt (with the instruction and optional input) is masked unless `train_on_inputs`; the
output and EOS are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import (
    DatasetFormat,
    hookimpl,
    map_rows,
    require_columns,
    text_field,
    tokenize_prompt_response,
)

PLUGIN_KIND = "format"

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The Alpaca prompt for an instruction and an optional input."""
    if input_text.strip():
        return PROMPT_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_NO_INPUT.format(instruction=instruction)


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `alpaca`."""
    register(DatasetFormat("alpaca", "instruction, optional input, output (Stanford Alpaca)"))


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize alpaca rows, masking the prompt unless `train_on_inputs`."""
    if entry.type != "alpaca":
        return None
    require_columns(dataset, entry, ["instruction", "output"])

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        prompt = alpaca_prompt(
            text_field(row, "instruction"), text_field(row, "input", required=False)
        )
        return tokenize_prompt_response(
            tokenizer, prompt, text_field(row, "output"), train_on_inputs=cfg.train_on_inputs
        )

    return map_rows(dataset, entry, tokenize)
