"""KTO's unpaired rows (`rl: kto`) under Axolotl's KTO `type:` names.

Axolotl's KTO types (`prompt_strategies/kto/{chatml,llama3,user_defined}.py`) share their names
with the preference types (`chatml.argilla`, `chatml.intel`, `chatml.ultra`, `llama3.*`,
`user_defined.default`...): as in Axolotl, `rl:` decides what a name builds. Under `rl: kto` a row
is a prompt, one completion and a boolean `label` (desirable or not), tokenized as TRL's
`KTOTrainer` does: the prompt alone and prompt+completion (EOS appended unless the completion
ends with it), the prompt being their common prefix, masked with `IGNORE_INDEX`. The columns are
`completion_input_ids`, `completion_labels`, `completion_attention_mask` and the scalar `label`.

The formats whose name both methods use declare `SHARED_COLUMNS`, one dict that holds the pair
columns or the KTO ones: set for the run (`configure`, so a run from the tokenized cache collates
the right columns) and again by every build (which knows `cfg.rl`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import IGNORE_INDEX, PAD_TOKEN, map_rows, text_field
from pydantic import Field

from axolotl_weave_plugins.rl._formats import (
    CHATML,
    LLAMA3,
    PAIR_COLUMNS,
    UserDefinedPairOptions,
    common_prefix,
    turn_content,
)

UNPAIRED_COLUMNS: dict[str, int | str | None] = {
    "completion_input_ids": PAD_TOKEN,
    "completion_labels": IGNORE_INDEX,
    "completion_attention_mask": 0,
    "label": None,
}
"""The batch columns of KTO's rows, with their padding (`label`: a scalar, not padded)."""

EMPTY_UNPAIRED: dict[str, Any] = {
    "completion_input_ids": [],
    "completion_labels": [],
    "completion_attention_mask": [],
    "label": None,
}

SHARED_COLUMNS: dict[str, int | str | None] = dict(PAIR_COLUMNS)
"""The columns of the type names KTO shares with the pairs: the pairs', or KTO's under rl: kto."""

Unpaired = tuple[str, str, bool]
"""(prompt, completion, label) as text and a boolean."""


def use_kto_columns(kto: bool) -> None:
    """Make the shared type names declare KTO's columns (or the pairs')."""
    wanted = UNPAIRED_COLUMNS if kto else PAIR_COLUMNS
    if SHARED_COLUMNS != wanted:
        SHARED_COLUMNS.clear()
        SHARED_COLUMNS.update(wanted)


def as_label(value: Any) -> bool:
    """A row's label: a boolean (0/1 accepted), with a clear error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"the KTO label must be a boolean (true: desirable), got {value!r}")


def tokenize_unpaired(tokenizer: Any, prompt: str, completion: str, label: bool) -> dict:
    """The KTO columns of one row, tokenized as TRL's `KTOTrainer` does."""
    eos = tokenizer.eos_token or ""
    if eos and not completion.endswith(eos):
        completion += eos
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    ids = list(tokenizer(prompt + completion)["input_ids"])
    cut = common_prefix(prompt_ids, ids)
    if len(ids) <= cut:
        raise ValueError("the completion is empty once tokenized")
    return {
        "completion_input_ids": ids,
        "completion_labels": [IGNORE_INDEX] * cut + ids[cut:],
        "completion_attention_mask": [1] * len(ids),
        "label": label,
    }


# --- Axolotl's kto/chatml.py and kto/llama3.py ------------------------------------------------


def templated(template: dict[str, str], question: str) -> Callable[[dict[str, Any]], Unpaired]:
    """`argilla` (instruction), `intel` (question), `ultra` and `prompt_pairs` (prompt): the
    system (if any) and user turns around the question, the completion ended."""

    def texts(row: dict[str, Any]) -> Unpaired:
        prompt = template["user"].format(text_field(row, question))
        if row.get("system"):
            prompt = template["system"].format(text_field(row, "system")) + prompt
        return prompt, text_field(row, "completion") + template["end"], as_label(row["label"])

    return texts


def chatml_argilla_chat(row: dict[str, Any]) -> Unpaired:
    """chatml `argilla_chat`: the first turn of the `completion` conversation is the prompt."""
    return (
        CHATML["user"].format(turn_content(row["completion"], 0, "completion")),
        turn_content(row["completion"], 1, "completion") + CHATML["end"],
        as_label(row["label"]),
    )


def llama3_argilla_chat(row: dict[str, Any]) -> Unpaired:
    """llama3 `argilla_chat`: every turn but the last is the prompt, with its role."""
    turns = row["completion"]
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'completion' must be a conversation")
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    prompt = "".join(
        header.format(turn["role"]) + turn["content"] + LLAMA3["end"] for turn in turns[:-1]
    )
    prompt += header.format("assistant")
    return (
        prompt,
        turn_content(turns, len(turns) - 1, "completion") + LLAMA3["end"],
        (as_label(row["label"])),
    )


def kto_texts(family: str) -> dict[str, Callable[[dict[str, Any]], Unpaired]]:
    """The KTO types of a family (`chatml` or `llama3`) -> their row -> texts."""
    template = CHATML if family == "chatml" else LLAMA3
    return {
        "argilla": templated(template, "instruction"),
        "intel": templated(template, "question"),
        "ultra": templated(template, "prompt"),
        "prompt_pairs": templated(template, "prompt"),
        "argilla_chat": chatml_argilla_chat if family == "chatml" else llama3_argilla_chat,
    }


KTO_TYPES = frozenset(
    [f"{family}.{name}" for family in ("chatml", "llama3") for name in kto_texts(family)]
    + ["user_defined.default"]
)
"""The `type:` names that build KTO's unpaired rows under `rl: kto`."""


# --- user_defined.default -----------------------------------------------------------------------


class UserDefinedOptions(UserDefinedPairOptions):
    """Keys of a `user_defined.default` entry: the pairs' and KTO's (Axolotl's names)."""

    field_completion: str = Field("completion", description="KTO: column of the completion.")
    field_label: str = Field("label", description="KTO: column of the boolean label.")
    completion_format: str | None = Field(
        None, description="KTO: the completion's text, with {completion} in it."
    )


def user_defined_kto(entry: Any) -> Callable[[dict[str, Any]], Unpaired]:
    """Axolotl's KTO `user_defined.default`: prompt and completion from format strings, the
    label from `field_label`. (`completion_format` takes `{completion}` or the field's name.)"""
    field_prompt = entry.option("field_prompt", "prompt")
    field_system = entry.option("field_system", "system")
    field_completion = entry.option("field_completion", "completion")
    field_label = entry.option("field_label", "label")
    prompt_format = entry.option("prompt_format") or "{" + field_prompt + "}"
    completion_format = entry.option("completion_format") or "{" + field_completion + "}"

    def texts(row: dict[str, Any]) -> Unpaired:
        if "{" + field_system + "}" in prompt_format and row.get(field_system):
            prompt = prompt_format.format(system=row[field_system], prompt=row[field_prompt])
        else:
            prompt = prompt_format.format(prompt=row[field_prompt])
        value = row[field_completion]
        completion = completion_format.format(**{"completion": value, field_completion: value})
        return prompt, completion, as_label(row[field_label])

    return texts


# --- registration -------------------------------------------------------------------------------


def kto_builder(pair_build: Callable, make_texts: Callable) -> Callable:
    """A `DatasetFormat.build` that builds pairs, or KTO's rows under `rl: kto`; `make_texts`
    is entry -> (row -> texts)."""

    def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
        kto = getattr(cfg, "rl", None) == "kto"
        use_kto_columns(kto)
        if not kto:
            return pair_build(entry, dataset, tokenizer, cfg)
        texts = make_texts(entry)
        return map_rows(
            dataset,
            entry,
            lambda row: tokenize_unpaired(tokenizer, *texts(row)),
            empty=EMPTY_UNPAIRED,
        )

    return build
