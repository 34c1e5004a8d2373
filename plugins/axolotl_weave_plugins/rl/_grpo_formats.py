"""GRPO's prompt rows (`type: grpo`): a prompt to generate from, and the row's other columns
for the reward functions.

A row's prompt (column `field_prompt`, default `prompt`) is a conversation (a list of
`{"role", "content"}` messages, rendered with the tokenizer's chat template and its generation
prompt, as TRL's `GRPOTrainer` renders it) or a plain string (tokenized as it is, the tokenizer's
special tokens added, as TRL does). The columns:

- `prompt_input_ids`, `prompt_attention_mask`: the prompt's tokens (right-padded in a batch; the
  step left-pads them for generation);
- `prompt_labels`: the prompt's tokens again, so that the core's fitting to `sequence_len` counts
  the row as one with tokens to train on (a prompt longer than `sequence_len` is dropped,
  truncated or refused as `excess_length_strategy` says; GRPO never reads these labels);
- `grpo_prompt`: the prompt as written (JSON), given back to the reward functions as `prompts`;
- `grpo_columns`: every other column of the row (JSON), given to the reward functions as
  keyword arguments (`answer=[...]`), as TRL passes a dataset's extra columns.
"""

from __future__ import annotations

import json
from typing import Any

from axolotl_weave import PAD_TOKEN, DataError, DatasetFormat, PluginConfig, chat_text, map_rows
from pydantic import Field

PROMPT_COLUMNS: dict[str, int | str | None] = {
    "prompt_input_ids": PAD_TOKEN,
    "prompt_attention_mask": 0,
    "prompt_labels": PAD_TOKEN,
    "grpo_prompt": None,
    "grpo_columns": None,
}
"""The batch columns of GRPO's rows, with their padding (the two text columns: None)."""

EMPTY_PROMPT: dict[str, Any] = {
    "prompt_input_ids": [],
    "prompt_attention_mask": [],
    "prompt_labels": [],
    "grpo_prompt": "",
    "grpo_columns": "{}",
}


class PromptOptions(PluginConfig):
    """Keys of a `type: grpo` entry."""

    transform: str | None = Field(
        None,
        description="Axolotl's GRPO dataset transform, a module.function path: function(cfg) "
        "returns (row_fn, {'remove_columns': [...]}) or row_fn; row_fn(row, tokenizer=...) "
        "returns the columns (prompt, answer...) that replace or join the raw row's (with "
        "'batched': True, it takes and returns columns of many rows, as many rows or more).",
    )

    field_prompt: str = Field(
        "prompt",
        description="Column of the prompt: a list of chat messages (rendered with the chat "
        "template and its generation prompt) or a string.",
    )


def is_conversation(prompt: Any) -> bool:
    """Whether a prompt is a list of chat messages (TRL's conversational format)."""
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
    )


def prompt_ids(
    tokenizer: Any, prompt: Any, template_kwargs: dict[str, Any] | None = None
) -> list[int]:
    """The prompt's token ids, as TRL's `GRPOTrainer._tokenize_prompts` makes them
    (`template_kwargs`: more arguments of the chat template, e.g. `enable_thinking`)."""
    if is_conversation(prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the prompt is a conversation but the tokenizer has no chat template: set "
                "chat_template: (e.g. chatml) or give prompts as strings"
            )
        text = chat_text(tokenizer, prompt, add_generation_prompt=True, **(template_kwargs or {}))
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    raise ValueError(
        "the prompt must be a list of chat messages ({role, content}) or a string, got "
        f"{type(prompt).__name__}"
    )


def chat_template_kwargs(cfg: Any) -> dict[str, Any]:
    """The chat template's extra arguments for GRPO prompts: the top-level
    `chat_template_kwargs`, updated by `trl.chat_template_kwargs`."""
    trl = getattr(cfg, "trl", None)
    return {
        **(getattr(cfg, "chat_template_kwargs", None) or {}),
        **(getattr(trl, "chat_template_kwargs", None) or {}),
    }


def made_transform(path: str | None, cfg: Any) -> tuple[Any, set[str] | None, bool]:
    """(function, columns it removes: None for all, Axolotl's `"__all__"`; whether it is
    batched: rows in, other rows out) of Axolotl's transform at `path`, or (None, {}, False)."""
    if not path:
        return None, set(), False
    from axolotl_weave_plugins.rl._grpo_rewards import import_object

    made = import_object(path, "datasets: transform")(cfg)
    function, options = made if isinstance(made, tuple) else (made, {})
    if not callable(function):
        raise ValueError(f"datasets: transform: '{path}'(cfg) returned no row function")
    options = options or {}
    removed = options.get("remove_columns") or []
    return function, None if removed == "__all__" else set(removed), bool(options.get("batched"))


def row_transform(path: str | None, cfg: Any) -> tuple[Any, set[str] | None]:
    """(row function, columns it removes) of Axolotl's transform at `path` (a batched one is
    refused), or (None, {})."""
    function, removed, batched = made_transform(path, cfg)
    if batched:
        raise ValueError(
            f"datasets: transform: '{path}' is a batched transform (rows in, other rows out), "
            "which this dataset type does not take: give a transform of one row"
        )
    return function, removed


def renumbered(entry: Any) -> Any:
    """A copy of `entry` naming rows by their place among the batched transform's rows (they
    are no longer lines of the file)."""
    from types import SimpleNamespace

    source = getattr(entry, "_source", None)
    copy = entry.model_copy()
    copy._source = SimpleNamespace(
        locate=lambda index: f"row {index + 1} made by its batched transform",
        num_proc=getattr(source, "num_proc", None),
        skip_invalid_rows=bool(getattr(source, "skip_invalid_rows", False)),
    )
    return copy


def expanded(dataset: Any, entry: Any, transform: Any, tokenizer: Any) -> Any:
    """The rows a batched transform makes of the raw rows (as many or more: Axolotl's
    `transform_all_turns` makes one per assistant turn), the raw columns dropped; an error
    names the entry."""

    def batch(rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
        try:
            return transform(dict(rows), tokenizer=tokenizer)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"{entry.label}: its batched transform failed: {type(exc).__name__}: {exc}"
            ) from None

    return dataset.map(batch, batched=True, remove_columns=list(dataset.column_names or []))


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """`type: grpo`: each row's prompt tokenized, its other columns kept for the rewards."""
    field = entry.option("field_prompt", "prompt")
    transform, removed, batched = made_transform(entry.option("transform"), cfg)
    if batched:
        dataset = expanded(dataset, entry, transform, tokenizer)
        transform, removed = None, set()
        entry = renumbered(entry)
    template_kwargs = chat_template_kwargs(cfg)
    needs_truth = getattr(cfg, "rl", None) == "ebft"

    def row_columns(row: dict[str, Any]) -> dict[str, Any]:
        if transform is not None:
            kept = {k: v for k, v in row.items() if removed is not None and k not in removed}
            row = {**kept, **transform(dict(row), tokenizer=tokenizer)}
        if field not in row:
            raise KeyError(f"no prompt column '{field}' (set field_prompt:)")
        if needs_truth and not isinstance(row.get("ground_truth"), str):
            raise KeyError(
                "no ground_truth text: rl: ebft compares each completion with the row's "
                "ground_truth (the reference completion)"
            )
        prompt = row[field]
        ids = prompt_ids(tokenizer, prompt, template_kwargs)
        if not ids:
            raise ValueError("the prompt is empty once tokenized")
        others = {key: value for key, value in row.items() if key != field}
        return {
            "prompt_input_ids": ids,
            "prompt_attention_mask": [1] * len(ids),
            "prompt_labels": ids,
            "grpo_prompt": json.dumps(prompt),
            "grpo_columns": json.dumps(others, default=str),
        }

    return map_rows(dataset, entry, row_columns, empty=EMPTY_PROMPT)


def grpo_format() -> DatasetFormat:
    """The `grpo` dataset type."""
    return DatasetFormat(
        "grpo",
        "GRPO prompts (rl: grpo): a conversation or a string in `prompt`; the other columns go "
        "to the reward functions",
        options=PromptOptions,
        build=build,
        prompt="auto",  # a conversation with the chat template, a string without one
        columns=dict(PROMPT_COLUMNS),
    )
