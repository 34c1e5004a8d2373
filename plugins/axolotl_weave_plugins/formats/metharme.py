"""`type: metharme`: a prompt and a generation, the generation followed by three EOS tokens.

Mirrors Axolotl's `prompt_strategies/metharme.py` (`MetharmePromptTokenizingStrategy` with
`MetharmePrompter`: no system text, the prompt field as is). Row fields: `prompt` (usually with
Metharme's `<|system|>`, `<|user|>`, `<|model|>` markers in it), `generation`.

Tokenized as Axolotl's strategy does: the prompt and the generation apart, each with the
tokenizer's special tokens (BOS) and truncated to `sequence_len`. The prompt is masked unless
`train_on_inputs`. The generation loses its BOS and gains three EOS tokens (Axolotl's
`num_eos_tokens=3`; an EOS the text already ends with counts as one of them; none is added
past `sequence_len` tokens), all trained. Unlike the other instruction formats, an empty field
is still tokenized: an empty generation trains three EOS tokens, an empty prompt is just BOS.
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
)

PLUGIN_KIND = "format"

NUM_EOS_TOKENS = 3


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `metharme`."""
    register(
        DatasetFormat(
            "metharme",
            "prompt, generation (Metharme; three EOS tokens)",
            build=build,
            prompt=prompt_row,
        )
    )


def prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A row whose prompt is `text` and whose generation is empty: the prompt inference
    renders."""
    return {"prompt": text, "generation": ""}


def metharme_ids(
    tokenizer: Any, text: str, max_length: int, *, add_eos: bool, strip_bos: bool
) -> list[int]:
    """Axolotl's `MetharmePromptTokenizingStrategy._tokenize`: `text` with the special tokens,
    truncated to `max_length`; then up to three EOS (one fewer when it ends with EOS, none past
    `max_length`), then the leading BOS dropped. No special case for an empty text."""
    ids = list(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
    if not ids:
        return []
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    wanted = NUM_EOS_TOKENS - (1 if ids[-1] == eos else 0)
    if add_eos and eos is not None:
        for _ in range(wanted):
            if len(ids) < max_length:
                ids.append(eos)
    if strip_bos and bos is not None and ids[0] == bos:
        ids = ids[1:]
    return ids


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize prompt/generation rows, masking the prompt unless `train_on_inputs`."""
    require_columns(dataset, entry, ["prompt", "generation"])
    train_on_inputs = bool(cfg.train_on_inputs)
    max_length = cfg.sequence_len

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        prompt = metharme_ids(
            tokenizer, text_field(row, "prompt"), max_length, add_eos=False, strip_bos=False
        )
        generation = metharme_ids(
            tokenizer, text_field(row, "generation"), max_length, add_eos=True, strip_bos=True
        )
        input_ids = prompt + generation
        labels = (prompt if train_on_inputs else [IGNORE_INDEX] * len(prompt)) + generation
        return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}

    return map_rows(dataset, entry, tokenize)
