"""The reward models' datasets under Axolotl's `type:` names.

- `bradley_terry.chat_template`: rows of `system` (optional), `input`, `chosen` and `rejected`
  texts, as Axolotl's `prompt_strategies/bradley_terry/chat_template.py` reads them: each of the
  conversations [system, user `input`, assistant `chosen`] and [system, user `input`, assistant
  `rejected`] is rendered whole with the tokenizer's chat template (the config's
  `chat_template`) and tokenized without adding special tokens, as `apply_chat_template` does.
- `stepwise_supervised`: rows of `prompt`, `completions` (the steps) and `labels` (one bool a
  step), tokenized as Axolotl's `prompt_strategies/stepwise_supervised.py` (after TRL's
  PRMTrainer): BOS + prompt, then each step followed by `step_separator`, the step's label on
  the last token of the step (its separator's), `IGNORE_INDEX` everywhere else.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    PAD_TOKEN,
    DatasetFormat,
    PluginConfig,
    chat_text,
    map_rows,
    require_columns,
)
from pydantic import Field

PAIR_COLUMNS: dict[str, int | str | None] = {
    "chosen_input_ids": PAD_TOKEN,
    "chosen_attention_mask": 0,
    "chosen_labels": IGNORE_INDEX,
    "rejected_input_ids": PAD_TOKEN,
    "rejected_attention_mask": 0,
    "rejected_labels": IGNORE_INDEX,
}
"""The batch columns of a Bradley-Terry pair, with their padding. The `*_labels` columns are not
read by the loss: they are the ids with the first one masked, so that the core's row accounting
(a row with no trained token is dropped) keeps every pair."""

EMPTY_PAIR = {name: [] for name in PAIR_COLUMNS}

STEPWISE_COLUMNS: dict[str, int | str | None] = {
    "input_ids": PAD_TOKEN,
    "labels": IGNORE_INDEX,
    "attention_mask": 0,
}
"""A stepwise row: token ids, a step label (0 or 1) on the last token of each step."""


def conversation_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The conversation rendered with the chat template, tokenized as `apply_chat_template`."""
    text = chat_text(tokenizer, messages, system_fix="remove the rows' system field")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def bradley_terry_pair(tokenizer: Any, row: dict[str, Any]) -> dict[str, list[int]]:
    """One row's pair columns (Axolotl's `bradley_terry.chat_template`)."""
    out: dict[str, list[int]] = {}
    for side in ("chosen", "rejected"):
        messages = []
        if row.get("system"):
            messages.append({"role": "system", "content": row["system"]})
        messages.append({"role": "user", "content": row["input"]})
        messages.append({"role": "assistant", "content": row[side]})
        ids = conversation_ids(tokenizer, messages)
        if not ids:
            raise ValueError(f"the {side} conversation is empty once tokenized")
        out[f"{side}_input_ids"] = ids
        out[f"{side}_attention_mask"] = [1] * len(ids)
        out[f"{side}_labels"] = [IGNORE_INDEX, *ids[1:]]
    return out


def build_bradley_terry(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """`type: bradley_terry.chat_template`: chosen and rejected conversations, tokenized."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{entry.label}: the tokenizer has no chat template: set chat_template: in the config"
        )
    require_columns(dataset, entry, ["input", "chosen", "rejected"])
    return map_rows(
        dataset, entry, lambda row: bradley_terry_pair(tokenizer, row), empty=EMPTY_PAIR
    )


class StepwiseOptions(PluginConfig):
    """Keys of a `stepwise_supervised` entry (TRL's PRMTrainer settings, Axolotl's defaults)."""

    step_separator: str = Field("\n", description="Text appended to every step.")
    max_completion_length: int | None = Field(
        None, gt=0, description="Keep the first tokens of the steps only."
    )
    train_on_last_step_only: bool = Field(
        False, description="Label the last step only (the others masked)."
    )


RAW_LABELS = "step_labels"
"""The raw rows' `labels` (one bool a step), renamed while the rows are built."""


def stepwise_row(
    tokenizer: Any,
    row: dict[str, Any],
    separator: str = "\n",
    max_completion_length: int | None = None,
    last_step_only: bool = False,
) -> dict[str, list[int]]:
    """One row of `stepwise_supervised`, exactly as Axolotl's strategy tokenizes it."""
    steps, step_labels = row["completions"], row[RAW_LABELS]
    if not isinstance(steps, list) or not isinstance(step_labels, list):
        raise ValueError("'completions' and 'labels' must be lists (one label a step)")
    if len(steps) != len(step_labels):
        raise ValueError(f"{len(steps)} completions but {len(step_labels)} labels")
    prompt_ids = list(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    if last_step_only:
        labels = [IGNORE_INDEX] * (len(step_labels) - 1) + [int(step_labels[-1])]
    else:
        labels = [int(label) for label in step_labels]
    separator_ids = list(tokenizer.encode(separator, add_special_tokens=False))
    completion_ids: list[int] = []
    completion_labels: list[int] = []
    for step, label in zip(steps, labels, strict=True):
        ids = list(tokenizer(step, add_special_tokens=False)["input_ids"]) + separator_ids
        if not ids:
            raise ValueError("a step (with its step_separator) is empty once tokenized")
        completion_ids += ids
        completion_labels += [IGNORE_INDEX] * (len(ids) - 1) + [label]
    if max_completion_length:
        completion_ids = completion_ids[:max_completion_length]
        completion_labels = completion_labels[:max_completion_length]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    input_ids = prompt_ids + completion_ids
    return {
        "input_ids": input_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_labels,
        "attention_mask": [1] * len(input_ids),
    }


def build_stepwise(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """`type: stepwise_supervised`: prompt and labelled steps, for a process reward model."""
    separator = entry.option("step_separator", "\n")
    limit = entry.option("max_completion_length")
    last_only = bool(entry.option("train_on_last_step_only", False))
    require_columns(dataset, entry, ["prompt", "completions", "labels"])
    # the raw bool `labels` renamed: `datasets` would give the built `labels` column its type
    dataset = dataset.rename_column("labels", RAW_LABELS)
    return map_rows(
        dataset, entry, lambda row: stepwise_row(tokenizer, row, separator, limit, last_only)
    )


def reward_formats() -> list[DatasetFormat]:
    """The formats this plugin registers."""
    return [
        DatasetFormat(
            "bradley_terry.chat_template",
            "reward model pairs: system/input/chosen/rejected, rendered with the chat template",
            build=build_bradley_terry,
            columns=dict(PAIR_COLUMNS),
        ),
        DatasetFormat(
            "stepwise_supervised",
            "process reward model rows: prompt, completions (steps) and one label a step",
            options=StepwiseOptions,
            build=build_stepwise,
            columns=dict(STEPWISE_COLUMNS),
        ),
    ]
