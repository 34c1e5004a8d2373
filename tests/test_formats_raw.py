"""Formats without a prompt: input_output segments, packed pretraining text, tokenized rows."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from axolotl_weave import IGNORE_INDEX, DataError
from axolotl_weave.testing import build_rows, dataset_entry
from datasets import Dataset


def cfg(sequence_len: int = 2048, train_on_inputs: bool = False) -> SimpleNamespace:
    return SimpleNamespace(sequence_len=sequence_len, train_on_inputs=train_on_inputs)


def masked_and_trained(tokenizer: Any, row: dict[str, Any]) -> tuple[str, str]:
    pairs = list(zip(row["input_ids"], row["labels"], strict=True))
    masked = tokenizer.decode([t for t, label in pairs if label == IGNORE_INDEX])
    trained = tokenizer.decode([label for _, label in pairs if label != IGNORE_INDEX])
    return masked, trained


# --- input_output -------------------------------------------------------------------------------

SEGMENTS = [
    {"text": "<s>Question: capital of", "label": False},
    {"text": " France?\nAnswer:", "label": False},
    {"text": " Paris.</s>", "label": True},
    {"text": "<s>Note", "label": False},
    {"text": "worthy</s>", "label": True},  # the boundary falls inside a word
]


def test_input_output_trains_exactly_the_labelled_segments(weave_hooks, tiny_tokenizer) -> None:
    row = build_rows(
        weave_hooks, tiny_tokenizer, [{"segments": SEGMENTS}], cfg(), type="input_output"
    )[0]
    ids = []
    for segment in SEGMENTS:
        ids += tiny_tokenizer(segment["text"], add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == ids  # each segment tokenized on its own, nothing added
    assert tiny_tokenizer.decode(row["input_ids"]) == "".join(s["text"] for s in SEGMENTS)
    masked, trained = masked_and_trained(tiny_tokenizer, row)
    assert masked == "<s>Question: capital of France?\nAnswer:<s>Note"
    assert trained == " Paris.</s>worthy</s>"
    assert row["attention_mask"] == [1] * len(ids)


def test_input_output_train_on_inputs_trains_every_segment(weave_hooks, tiny_tokenizer) -> None:
    rows = [{"segments": SEGMENTS}]
    row = build_rows(
        weave_hooks, tiny_tokenizer, rows, cfg(train_on_inputs=True), type="input_output"
    )[0]
    assert row["labels"] == row["input_ids"]


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ([], "field 'segments' must be a non-empty list"),
        ([{"text": "hi"}], r"segments\[1\].label must be true or false, got None"),
        ([{"text": 3, "label": True}], r"segments\[1\].text must be a string, got 3"),
        (["hi"], r"segments\[1\] must be an object"),
    ],
)
def test_input_output_bad_segments(weave_hooks, tiny_tokenizer, segments, message: str) -> None:
    with pytest.raises(DataError, match=r"\(type: input_output\), row 1: .*" + message):
        build_rows(weave_hooks, tiny_tokenizer, [{"segments": segments}], type="input_output")


# --- pretraining --------------------------------------------------------------------------------

TEXTS = ["the quick brown fox jumps over the lazy dog.", "What is the capital of France? Paris."]


def expected_blocks(tokenizer: Any, texts: list[str], block: int) -> list[list[int]]:
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return [stream[i : i + block] for i in range(0, len(stream), block)]


@pytest.mark.parametrize("name", ["pretraining", "pretrain"])
def test_pretraining_packs_texts_into_full_blocks(weave_hooks, tiny_tokenizer, name) -> None:
    rows = build_rows(weave_hooks, tiny_tokenizer, [{"text": t} for t in TEXTS], cfg(8), type=name)
    blocks = expected_blocks(tiny_tokenizer, TEXTS, 8)
    assert [row["input_ids"] for row in rows] == blocks
    assert all(len(row["input_ids"]) == 8 for row in rows[:-1])
    assert all(row["labels"] == row["input_ids"] for row in rows)
    text = tiny_tokenizer.decode([t for row in rows for t in row["input_ids"]])
    assert text == "<s>" + TEXTS[0] + "</s><s>" + TEXTS[1] + "</s>"


def test_pretraining_on_a_stream_gives_the_same_blocks(weave_hooks, tiny_tokenizer) -> None:
    entry = dataset_entry(weave_hooks.dataset_formats(), type="pretraining", text_column="body")
    stream = Dataset.from_list([{"body": t, "id": i} for i, t in enumerate(TEXTS)])
    built = weave_hooks.build_dataset(entry, stream.to_iterable_dataset(), tiny_tokenizer, cfg(8))
    assert not hasattr(built, "__len__")  # still a stream
    assert [row["input_ids"] for row in built] == expected_blocks(tiny_tokenizer, TEXTS, 8)


def test_pretraining_bad_text(weave_hooks, tiny_tokenizer) -> None:
    rows = [{"text": TEXTS[0]}, {"text": None}, {"text": TEXTS[1]}]
    with pytest.raises(DataError, match=r"row 2: field 'text' must be a string"):
        build_rows(weave_hooks, tiny_tokenizer, rows, cfg(8), type="pretraining")
    entry = dataset_entry(weave_hooks.dataset_formats(), type="pretraining")
    entry._source = SimpleNamespace(locate=None, num_proc=None, skip_invalid_rows=True)
    built = weave_hooks.build_dataset(entry, Dataset.from_list(rows), tiny_tokenizer, cfg(8))
    assert [row["input_ids"] for row in built] == expected_blocks(tiny_tokenizer, TEXTS, 8)


def test_pretraining_missing_column(weave_hooks, tiny_tokenizer) -> None:
    with pytest.raises(DataError, match=r"lacks the text column 'text'; its rows have: body"):
        build_rows(weave_hooks, tiny_tokenizer, [{"body": "x"}], type="pretraining")


# --- already tokenized --------------------------------------------------------------------------


def test_tokenized_rows_are_used_as_given(weave_hooks, tiny_tokenizer) -> None:
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
        {"input_ids": [8, 9], "labels": None, "attention_mask": None},
    ]
    out = build_rows(weave_hooks, tiny_tokenizer, rows, type="")
    assert out[0] == rows[0]
    assert out[1] == {"input_ids": [8, 9], "labels": [8, 9], "attention_mask": [1, 1]}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"input_ids": "1 2 3"}, "column 'input_ids' must be a list of integers"),
        ({"input_ids": [1.0, 2.5]}, "column 'input_ids' must be a list of integers"),
        ({"input_ids": []}, "column 'input_ids' is empty"),
        (
            {"input_ids": [1, 2], "labels": [1]},
            "column 'labels' has 1 values but 'input_ids' has 2",
        ),
        ({"input_ids": [1, 99999]}, "column 'input_ids' holds 99999, outside the tokenizer's ids"),
        ({"input_ids": [1, 2], "labels": [1, -5]}, "column 'labels' holds -5"),
        (
            {"input_ids": [1, 2], "attention_mask": [1, 2]},
            "'attention_mask' must hold only 0 and 1",
        ),
    ],
)
def test_tokenized_rows_are_checked(weave_hooks, tiny_tokenizer, row, message: str) -> None:
    with pytest.raises(DataError, match=r"\(type: pre-tokenized\), row 1: .*" + message):
        build_rows(weave_hooks, tiny_tokenizer, [row])


def test_tokenized_rows_need_input_ids(weave_hooks, tiny_tokenizer) -> None:
    with pytest.raises(DataError, match="lacks the field.*'input_ids'"):
        build_rows(weave_hooks, tiny_tokenizer, [{"text": "hi"}])


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"segments": "text"}, "field 'segments' is a string here but an array at line 1"),
        (
            {"segments": [{"text": 3, "label": True}]},
            "field 'segments[].text' is a number here but a string at line 1",
        ),
        ({"input_ids": [1, "2"]}, "field 'input_ids[]' is a string here but a number at line 1"),
    ],
)
def test_a_type_that_changes_between_lines_is_named(
    tmp_path, base_config, second: dict, message: str
) -> None:
    import json

    from axolotl_weave._run import open_session, preprocess
    from axolotl_weave.testing import write_config

    first = {"segments": [{"text": "ok", "label": True}], "input_ids": [1, 2]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(first) + "\n\n" + json.dumps(second) + "\n")
    config = {**base_config, "datasets": [{"path": str(path), "type": "input_output"}]}
    with pytest.raises(DataError, match=r"rows.jsonl:3: " + re.escape(message)):
        preprocess(open_session(write_config(tmp_path / "c.yml", config)))
