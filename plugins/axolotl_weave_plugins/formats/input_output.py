"""`type: input_output`: template-free rows of text segments, each trained or masked.

Axolotl's `input_output` format (`RawInputOutputStrategy`), same rows and same config. A row is
`{"segments": [{"text": "...", "label": true}, {"text": "...", "label": false}, ...]}`: the
segments follow each other as written and nothing is added (no BOS, no EOS, no spaces: write
`<s>`, `</s>` and the whitespace into the texts; special tokens written in a text are recognised).
Tokens of segments with `label: true` are trained, the others masked (`IGNORE_INDEX`);
`train_on_inputs: true` trains every segment. `label` is required, as in Axolotl (which fails
on a segment without one); it is `true`/`false` (`1`/`0` are accepted, any other value refused,
so that the string "false" cannot silently train).

Tokenized as Axolotl's `RawInputOutputStrategy` does: each segment's text on its own, without
special tokens, and the ids concatenated, so a segment boundary is a token boundary (a
SentencePiece tokenizer such as Llama's or Mistral's starts every segment with its "▁", as
Axolotl's docs show: `<s> Hello\\n hi there!.  goodbye  farewell</s>` for the segments of
`<s>Hello\\nhi there!. goodbye farewell</s>`; put the whitespace where the model will see it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import IGNORE_INDEX, DatasetFormat, hookimpl, map_rows, require_columns

PLUGIN_KIND = "format"


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `input_output`."""
    register(
        DatasetFormat(
            "input_output",
            "template-free segments of text, each label: true (trained) or false (masked)",
            build=build,
        )
    )


def read_segments(row: dict[str, Any]) -> list[tuple[str, bool]]:
    """The row's (text, label) pairs; a malformed segment is a ValueError/TypeError naming it
    (`segments[N]`, counted from 1)."""
    segments = row.get("segments")
    if segments is None:
        raise ValueError("field 'segments' is missing or null")
    if not isinstance(segments, list) or not segments:
        raise TypeError(
            f"field 'segments' must be a non-empty list of {{text, label}} objects, "
            f"got {segments!r:.80}"
        )
    pairs = []
    for number, segment in enumerate(segments, start=1):
        where = f"segments[{number}]"
        if not isinstance(segment, dict):
            raise TypeError(f"{where} must be an object with text and label, got {segment!r:.60}")
        text, label = segment.get("text"), segment.get("label")
        if not isinstance(text, str):
            raise TypeError(f"{where}.text must be a string, got {text!r:.60}")
        if label is None:
            raise ValueError(f"{where}.label is missing; set it to true (trained) or false")
        if not isinstance(label, bool) and label not in (0, 1):
            raise TypeError(f"{where}.label must be true or false, got {label!r:.60}")
        pairs.append((text, bool(label)))
    if not any(text for text, _ in pairs):
        raise ValueError("field 'segments' holds no text (every segment's text is empty)")
    return pairs


def tokenize_segments(
    tokenizer: Any, segments: list[tuple[str, bool]], *, train_on_inputs: bool
) -> dict[str, list[int]]:
    """Axolotl's way: each segment tokenized on its own (no special tokens added), the ids
    concatenated, a segment's tokens trained (its `label`, or `train_on_inputs`) or masked whole."""
    input_ids: list[int] = []
    labels: list[int] = []
    for text, label in segments:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        input_ids += ids
        labels += ids if label or train_on_inputs else [IGNORE_INDEX] * len(ids)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize `segments` rows: trained segments labelled, the others masked."""
    require_columns(dataset, entry, ["segments"])
    train_on_inputs = bool(cfg.train_on_inputs)

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        return tokenize_segments(tokenizer, read_segments(row), train_on_inputs=train_on_inputs)

    return map_rows(dataset, entry, tokenize)
