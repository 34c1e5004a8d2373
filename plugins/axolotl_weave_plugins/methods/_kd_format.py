"""`type: axolotl.integrations.kd.chat_template`: a conversation rendered with the tokenizer's
chat template, with the teacher's top-k log-probabilities of its tokens as extra columns.

A row holds the conversation (`field_messages`, messages with `role` and `content`) and the
teacher's top-k per token (`logprobs_field`), in either of Axolotl's two layouts:

- its current one (the `load` of Axolotl's module): `logprobs_field` is a list, per token, of
  the k log-probabilities, and a `target_token_ids` column the list, per token, of their k ids;
- its legacy one (vLLM's output): per token, a list of `{"token": "token_id:ID", "logprob": X}`.

A position may be empty or null (vLLM gives none for the first token). The entries describe the
*last* `len(logprobs)` tokens of the rendered conversation, as in Axolotl (fewer entries than
tokens are right-aligned; more is refused, where Axolotl slices them inconsistently). Entry p
describes token p, the teacher's distribution of that token given the tokens before it, the
same alignment as `labels`: the loss pairs the student's prediction at position t with entry
t + 1, as it pairs it with `labels[t + 1]`.

Columns made, one entry per token, k values each (k: the row's smallest non-empty top-k; longer
positions are cut to it): `target_token_ids`, `target_logprobs` (renormalised over the k, at
`kd_temperature`: `log_softmax(logprob * temperature / kd_temperature)`, `temperature` being the
entry's sampling temperature of the teacher, Axolotl's key, 1 by default) and `target_mask` (1
where the teacher gave the token and its label is trained).

Labels: the tokens of the turns whose role is in `roles_to_train` (default `assistant`) are
trained, from the end of the rendering of the conversation before the turn with the generation
prompt to the end of the turn's rendering, trailing whitespace excluded (so the end-of-turn
marker is trained, the newline after it not). This is a smaller tokenisation than
`type: chat_template`'s (no per-message training flags, no `train_on_eos` choice).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    SFT_COLUMNS,
    ConfigError,
    DataError,
    DatasetFormat,
    PluginConfig,
    chat_text,
    map_rows,
    require_columns,
)
from pydantic import Field

FORMAT_NAME = "axolotl.integrations.kd.chat_template"
"""The dataset `type:` name, Axolotl's."""

KD_COLUMNS = ("target_token_ids", "target_logprobs", "target_mask")
"""The teacher's columns: per token, k values each (the core fits them with the tokens and pads
them, the vectors too, with zeros)."""

EMPTY_ROW: dict[str, list[Any]] = {name: [] for name in (*SFT_COLUMNS, *KD_COLUMNS)}
"""A row refused with `skip_invalid_rows: true` (the core drops it)."""


class KdChatTemplateOptions(PluginConfig):
    """The keys of a `datasets:` entry of the distillation format."""

    field_messages: str = Field("messages", description="Column holding the conversation.")
    logprobs_field: str = Field(
        "logprobs", description="Column holding the teacher's top-k log-probabilities per token."
    )
    temperature: float = Field(
        1.0, gt=0, description="The temperature the teacher's log-probabilities were taken at."
    )
    roles_to_train: list[str] = Field(
        default_factory=lambda: ["assistant"], description="Roles whose turns are trained."
    )


def kd_format() -> DatasetFormat:
    """The registered distillation format (its columns carry the teacher's targets)."""
    return DatasetFormat(
        FORMAT_NAME,
        description="Chat-template conversations with a teacher's top-k log-probabilities "
        "per token (kd_trainer: true).",
        options=KdChatTemplateOptions,
        build=build,
        prompt="chat",
        columns={**SFT_COLUMNS, **dict.fromkeys(KD_COLUMNS, 0)},  # padded with a zero mask
    )


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize an entry's conversations and turn the teacher's log-probabilities into the
    target columns (see the module)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"{entry.label}: the tokenizer has no chat template; set chat_template: (e.g. chatml)"
        )
    messages = entry.option("field_messages", "messages")
    logprobs = entry.option("logprobs_field", "logprobs")
    require_columns(dataset, entry, [messages, logprobs])
    scale = float(entry.option("temperature", 1.0)) / float(getattr(cfg, "kd_temperature", 1.0))
    roles = tuple(entry.option("roles_to_train", ["assistant"]))
    row_fn = partial(
        tokenize_row,
        tokenizer=tokenizer,
        messages_field=messages,
        logprobs_field=logprobs,
        roles=roles,
        scale=scale,
    )
    return map_rows(dataset, entry, row_fn, empty=EMPTY_ROW)


def tokenize_row(
    row: dict[str, Any],
    *,
    tokenizer: Any,
    messages_field: str,
    logprobs_field: str,
    roles: tuple[str, ...],
    scale: float,
) -> dict[str, list[Any]]:
    """One raw row as tokens, labels and the teacher's target columns."""
    messages = [{"role": m["role"], "content": m["content"]} for m in row[messages_field]]
    input_ids, labels = tokenize_conversation(tokenizer, messages, roles)
    teacher = teacher_positions(row, logprobs_field)
    targets = target_columns(teacher, labels, scale, len(tokenizer), logprobs_field)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": [1] * len(input_ids),
        **targets,
    }


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, Any]], roles: tuple[str, ...]
) -> tuple[list[int], list[int]]:
    """The conversation's tokens and labels: the turns of `roles` trained (see the module)."""
    text = chat_text(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] not in roles:
            continue
        before = chat_text(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        through = chat_text(tokenizer, messages[: index + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError(
                "the chat template does not render the conversation turn by turn (a rendering "
                "of its first turns is not a prefix of the whole); use type: chat_template"
            )
        spans.append((len(before), len(through.rstrip())))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if any(start < stop and end > first for first, stop in spans):
            labels[position] = input_ids[position]
    return input_ids, labels


def teacher_positions(
    row: dict[str, Any], logprobs_field: str
) -> list[tuple[list[int], list[float]] | None]:
    """The teacher's (ids, log-probabilities) per position, None where it gave none, from
    either layout (see the module)."""
    raw = row[logprobs_field]
    if not isinstance(raw, list):
        raise DataError(f"{logprobs_field} is not a list (one entry per token)")
    ids_column = row.get("target_token_ids")
    positions: list[tuple[list[int], list[float]] | None] = []
    for position, entry in enumerate(raw):
        if not entry:
            positions.append(None)
        elif isinstance(entry[0], dict):
            ids = [int(str(item["token"]).rsplit(":", 1)[-1]) for item in entry]
            positions.append((ids, [float(item["logprob"]) for item in entry]))
        else:
            if ids_column is None:
                raise DataError(
                    f"{logprobs_field} holds bare log-probabilities, which need a "
                    "target_token_ids column (their token ids per position) beside it"
                )
            ids = [int(i) for i in (ids_column[position] or [])]
            if len(ids) != len(entry):
                raise DataError(
                    f"token {position}: {len(entry)} log-probabilities in {logprobs_field} but "
                    f"{len(ids)} ids in target_token_ids"
                )
            positions.append((ids, [float(x) for x in entry]))
    return positions


def target_columns(
    teacher: list[tuple[list[int], list[float]] | None],
    labels: list[int],
    scale: float,
    vocab_size: int,
    logprobs_field: str,
) -> dict[str, list[list[Any]]]:
    """`target_token_ids`, `target_logprobs` and `target_mask`, one entry per token of
    `labels`, the teacher's entries right-aligned on the tokens (see the module)."""
    sizes = [len(entry[0]) for entry in teacher if entry is not None]
    if not sizes:
        raise DataError(f"{logprobs_field} has no teacher log-probabilities")
    k = min(sizes)
    offset = len(labels) - len(teacher)
    if offset < 0:
        raise DataError(
            f"{logprobs_field} has {len(teacher)} positions, more than the {len(labels)} tokens "
            "of the rendered conversation (the teacher must have scored these very tokens)"
        )
    ids_out: list[list[int]] = [[0] * k for _ in range(offset)]
    logprobs_out: list[list[float]] = [[0.0] * k for _ in range(offset)]
    mask_out: list[list[int]] = [[0] * k for _ in range(offset)]
    for position, entry in enumerate(teacher, start=offset):
        if entry is None:
            ids_out.append([0] * k)
            logprobs_out.append([0.0] * k)
            mask_out.append([0] * k)
            continue
        ids, values = entry[0][:k], entry[1][:k]
        if any(not 0 <= i < vocab_size for i in ids):
            raise DataError(f"token {position}: a teacher token id is outside the vocabulary")
        ids_out.append(ids)
        logprobs_out.append(renormalised(values, scale))
        mask_out.append([int(labels[position] != IGNORE_INDEX)] * k)
    return {"target_token_ids": ids_out, "target_logprobs": logprobs_out, "target_mask": mask_out}


def renormalised(logprobs: list[float], scale: float) -> list[float]:
    """`log_softmax(scale * logprobs)`: the top-k distribution renormalised, at the temperature
    the teacher's was taken at divided by `scale` (Axolotl's `p ** (T_gen / T_kd)`,
    renormalised)."""
    scaled = [scale * value for value in logprobs]
    top = max(scaled)
    if math.isinf(top):
        raise DataError("a token's teacher log-probabilities are all -inf")
    log_total = top + math.log(sum(math.exp(value - top) for value in scaled))
    return [value - log_total for value in scaled]
