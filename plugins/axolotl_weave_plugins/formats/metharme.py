"""`type: metharme`: a prompt and a generation, the generation followed by three EOS tokens.

Mirrors Axolotl's `prompt_strategies/metharme.py` (`MetharmePromptTokenizingStrategy` with
`MetharmePrompter`: no system text, the prompt field as is). Row fields: `prompt` (usually with
Metharme's `<|system|>`, `<|user|>`, `<|model|>` markers in it), `generation`.

The prompt is masked unless `train_on_inputs`; the generation and three EOS tokens are trained
(Axolotl's `num_eos_tokens=3`; an EOS the text already ends with counts as one of them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    DatasetFormat,
    hookimpl,
    map_rows,
    require_columns,
    text_field,
    tokenize_prompt_response,
)

PLUGIN_KIND = "format"

NUM_EOS_TOKENS = 3


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `metharme`."""
    register(
        DatasetFormat("metharme", "prompt, generation (Metharme; three EOS tokens)", build=build)
    )


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize prompt/generation rows, masking the prompt unless `train_on_inputs`."""
    require_columns(dataset, entry, ["prompt", "generation"])
    train_on_inputs = bool(cfg.train_on_inputs)
    eos = tokenizer.eos_token_id

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        out = tokenize_prompt_response(
            tokenizer,
            text_field(row, "prompt"),
            text_field(row, "generation"),
            train_on_inputs=train_on_inputs,
        )
        if eos is not None and out["input_ids"] and out["input_ids"][-1] == eos:
            trained = out["labels"][-1] != IGNORE_INDEX
            for _ in range(NUM_EOS_TOKENS - 1):  # tokenize_prompt_response added the first
                out["input_ids"].append(eos)
                out["labels"].append(eos if trained else IGNORE_INDEX)
                out["attention_mask"].append(1)
        return out

    return map_rows(dataset, entry, tokenize)
