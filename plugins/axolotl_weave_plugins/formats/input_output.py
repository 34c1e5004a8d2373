"""`type: input_output`: template-free rows of text segments, each trained or not.

Mirrors Axolotl's `input_output` strategy (`RawInputOutputStrategy`). A row is
`{"segments": [{"text": "...", "label": true}, ...]}`. Each segment is tokenized on its own,
without special tokens, and the ids are concatenated: the user controls every token, BOS and EOS
included (write them into the text). Segments with `label: true` are trained, the others masked;
`train_on_inputs` trains every segment. `label` is required, as in Axolotl.
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
        DatasetFormat("input_output", "segments of text, each with label: true (trained) or false")
    )


def read_segments(row: dict[str, Any]) -> list[tuple[str, bool]]:
    """The (text, label) pairs of a row; a malformed segment is a ValueError naming it."""
    segments = row.get("segments")
    if not isinstance(segments, list) or not segments:
        raise ValueError(f"field 'segments' must be a non-empty list, got {segments!r}")
    pairs = []
    for number, segment in enumerate(segments, start=1):
        if not isinstance(segment, dict):
            raise TypeError(f"segments[{number}] must be an object with text and label")
        text, label = segment.get("text"), segment.get("label")
        if not isinstance(text, str):
            raise TypeError(f"segments[{number}].text must be a string, got {text!r}")
        if not isinstance(label, bool):
            raise TypeError(f"segments[{number}].label must be true or false, got {label!r}")
        pairs.append((text, label))
    return pairs


def tokenize_segments(
    tokenizer: Any, segments: list[tuple[str, bool]], *, train_on_inputs: bool
) -> dict[str, list[int]]:
    """Concatenate each segment's ids (no special tokens added); label the trained ones."""
    input_ids: list[int] = []
    labels: list[int] = []
    for text, label in segments:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        input_ids += ids
        labels += ids if label or train_on_inputs else [IGNORE_INDEX] * len(ids)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


@hookimpl
def build_dataset(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize segment rows."""
    if entry.type != "input_output":
        return None
    require_columns(dataset, entry, ["segments"])

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        return tokenize_segments(tokenizer, read_segments(row), train_on_inputs=cfg.train_on_inputs)

    return map_rows(dataset, entry, tokenize)
