"""Formats without a prompt: input_output segments, packed pretraining text, tokenized rows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from axolotl_weave import IGNORE_INDEX, DataError
from axolotl_weave_plugins.data.pipeline import build_format
from axolotl_weave_plugins.formats import input_output, pretraining
from axolotl_weave_testing import build_rows, dataset_entry
from datasets import Dataset, IterableDataset


def cfg(sequence_len: int = 2048, train_on_inputs: bool = False) -> SimpleNamespace:
    return SimpleNamespace(sequence_len=sequence_len, train_on_inputs=train_on_inputs)


def entry_with(hooks: Any, *, num_proc: int | None = None, skip_invalid: bool = False, **data):
    """A validated entry with the context the core gives it (processes, skip_invalid_rows)."""
    entry = dataset_entry(hooks.dataset_formats(), **data)
    entry._source = SimpleNamespace(locate=None, num_proc=num_proc, skip_invalid_rows=skip_invalid)
    return entry


def tokens_and_training(tokenizer: Any, row: dict[str, Any]) -> list[tuple[str, bool]]:
    """(decoded token, trained?) for each token of a row; a trained label is the token itself."""
    pairs = []
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        assert label in (token, IGNORE_INDEX)
        pairs.append((tokenizer.decode([token]), label != IGNORE_INDEX))
    return pairs


# --- input_output -------------------------------------------------------------------------------

SEGMENTS = [
    {"text": "<s>Question: capital of", "label": False},
    {"text": " France?\nAnswer: Par", "label": False},  # a boundary inside " Paris"
    {"text": "is.</s>", "label": True},
    {"text": "<s>Add two and thr", "label": True},  # ... and inside " three"
    {"text": "ee. Five", "label": False},
    {"text": ".</s>", "label": True},
]
WHOLE_TEXT = "<s>Question: capital of France?\nAnswer: Paris.</s><s>Add two and three. Five.</s>"


def test_input_output_tokenizes_each_segment_and_labels_it_whole(
    weave_hooks, tiny_tokenizer
) -> None:
    """Axolotl's `RawInputOutputStrategy`: each segment tokenized on its own, no special tokens
    added, the ids concatenated, a segment's tokens trained or masked by its label. (This test
    used to assert that the whole text was tokenized once and labelled by character offsets, a
    token straddling two segments trained when part of it was; Axolotl cuts at each segment.)"""
    row = build_rows(
        weave_hooks, tiny_tokenizer, [{"segments": SEGMENTS}], cfg(), type="input_output"
    )[0]
    assert "".join(s["text"] for s in SEGMENTS) == WHOLE_TEXT
    assert tiny_tokenizer.decode(row["input_ids"]) == WHOLE_TEXT  # nothing added (no BOS, EOS)
    per_segment = [
        t for s in SEGMENTS for t in tiny_tokenizer(s["text"], add_special_tokens=False).input_ids
    ]
    assert row["input_ids"] == per_segment
    assert row["input_ids"] != tiny_tokenizer(WHOLE_TEXT, add_special_tokens=False)["input_ids"]
    # a segment boundary is a token boundary: " Pa" "r" | "is", " th" "r" | "e" "e"
    assert tokens_and_training(tiny_tokenizer, row) == [
        ("<s>", False),
        ("Q", False),
        ("u", False),
        ("est", False),
        ("ion", False),
        (":", False),
        (" capital", False),
        (" of", False),
        (" France", False),
        ("?", False),
        ("\n", False),
        ("A", False),
        ("n", False),
        ("s", False),
        ("w", False),
        ("er", False),
        (":", False),
        (" Pa", False),
        ("r", False),
        ("is", True),
        (".", True),
        ("</s>", True),
        ("<s>", True),
        ("Add", True),
        (" two", True),
        (" and", True),
        (" th", True),
        ("r", True),
        ("e", False),
        ("e", False),
        (".", False),
        (" Five", False),
        (".", True),
        ("</s>", True),
    ]
    assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_input_output_boundaries_between_tokens_are_exact(weave_hooks, tiny_tokenizer) -> None:
    segments = [
        {"text": "What is the capital of France?", "label": 0},  # 0 and 1: false and true
        {"text": " Paris.", "label": 1},
        {"text": " Name a colour.", "label": 0},
        {"text": " Blue.", "label": 1},
    ]
    row = build_rows(
        weave_hooks, tiny_tokenizer, [{"segments": segments}], cfg(), type="input_output"
    )[0]
    masked = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label < 0]
    trained = [label for label in row["labels"] if label != IGNORE_INDEX]
    assert tiny_tokenizer.decode(masked) == "What is the capital of France? Name a colour."
    assert tiny_tokenizer.decode(trained) == " Paris. Blue."


def test_input_output_train_on_inputs_trains_every_segment(weave_hooks, tiny_tokenizer) -> None:
    rows = [{"segments": SEGMENTS}]
    row = build_rows(
        weave_hooks, tiny_tokenizer, rows, cfg(train_on_inputs=True), type="input_output"
    )[0]
    assert row["labels"] == row["input_ids"]


def test_input_output_needs_no_offsets(tiny_tokenizer) -> None:
    """A slow tokenizer (no offsets) gets the same per-segment tokenization."""

    class SlowTokenizer:
        is_fast = False

        def __call__(self, text: str, **kwargs: Any) -> Any:
            assert "return_offsets_mapping" not in kwargs
            return tiny_tokenizer(text, **kwargs)

    segments = [(s["text"], s["label"]) for s in SEGMENTS]
    row = input_output.tokenize_segments(SlowTokenizer(), segments, train_on_inputs=False)
    expected_ids, expected_labels = [], []
    for text, label in segments:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        expected_ids += ids
        expected_labels += ids if label else [IGNORE_INDEX] * len(ids)
    assert row["input_ids"] == expected_ids
    assert row["labels"] == expected_labels


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (None, "field 'segments' is missing or null"),
        ([], "field 'segments' must be a non-empty list"),
        ([{"text": "x", "label": None}], r"segments\[1\].label is missing; set it to true"),
        ([{"text": None, "label": True}], r"segments\[1\].text must be a string, got None"),
        ([{"text": "", "label": True}, {"text": "", "label": False}], "holds no text"),
    ],
)
def test_input_output_bad_row_names_row_and_segment(
    weave_hooks, tiny_tokenizer, second: Any, message: str
) -> None:
    rows = [{"segments": [{"text": "fine", "label": True}]}, {"segments": second}]
    with pytest.raises(DataError, match=r"'rows' \(type: input_output\), row 2: .*" + message):
        build_rows(weave_hooks, tiny_tokenizer, rows, type="input_output")


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ("hi", "field 'segments' must be a non-empty list of {text, label} objects, got 'hi'"),
        (["hi"], r"segments\[1\] must be an object with text and label, got 'hi'"),
        ([{"text": "hi", "label": True}, {"text": "x"}], r"segments\[2\].label is missing"),
        ([{"text": "hi", "label": "false"}], r"segments\[1\].label must be true or false"),
        ([{"text": "hi", "label": 2}], r"segments\[1\].label must be true or false, got 2"),
        ([{"text": 3, "label": True}], r"segments\[1\].text must be a string, got 3"),
    ],
)
def test_input_output_segments_of_other_shapes_are_refused(segments: Any, message: str) -> None:
    """Shapes one Arrow column cannot mix with others (checked on the row as JSON gives it)."""
    with pytest.raises((TypeError, ValueError), match=message):
        input_output.read_segments({"segments": segments})


def test_input_output_skip_invalid_rows_empties_the_bad_row(weave_hooks, tiny_tokenizer) -> None:
    rows = [
        {"segments": [{"text": "Blue.", "label": True}]},
        {"segments": [{"text": "x", "label": None}]},
    ]
    entry = entry_with(weave_hooks, type="input_output", skip_invalid=True)
    built = build_format(weave_hooks, entry, Dataset.from_list(rows), tiny_tokenizer, cfg())
    assert tiny_tokenizer.decode(built[0]["input_ids"]) == "Blue."
    assert built[1]["input_ids"] == []  # the core drops and counts it


# --- pretraining --------------------------------------------------------------------------------

TEXTS = [
    "the quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris.",
    "Add two and three. Five.",
]


def documents(tokenizer: Any, texts: list[str]) -> list[int]:
    """The texts as one id stream: each with the tokenizer's BOS, then EOS."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return stream


def blocks_of(stream: list[int], size: int) -> list[list[int]]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


@pytest.mark.parametrize("name", ["pretraining", "pretrain"])
def test_pretraining_packs_texts_into_full_blocks(weave_hooks, tiny_tokenizer, name) -> None:
    rows = build_rows(weave_hooks, tiny_tokenizer, [{"text": t} for t in TEXTS], cfg(8), type=name)
    stream = documents(tiny_tokenizer, TEXTS)
    assert len(stream) % 8 > 1  # a shorter last block, kept
    assert [row["input_ids"] for row in rows] == blocks_of(stream, 8)
    assert [len(row["input_ids"]) for row in rows[:-1]] == [8] * (len(rows) - 1)
    assert 1 < len(rows[-1]["input_ids"]) < 8
    assert all(row["labels"] == row["input_ids"] for row in rows)  # every token trained
    assert all(row["attention_mask"] == [1] * len(row["input_ids"]) for row in rows)
    text = tiny_tokenizer.decode([t for row in rows for t in row["input_ids"]])
    assert text == "".join(f"<s>{t}</s>" for t in TEXTS)  # documents cross block boundaries


def test_pretraining_reads_text_column_or_field(weave_hooks, tiny_tokenizer) -> None:
    rows = [{"body": t, "id": i} for i, t in enumerate(TEXTS)]
    expected = blocks_of(documents(tiny_tokenizer, TEXTS), 16)
    for key in ("text_column", "field"):
        built = build_rows(
            weave_hooks, tiny_tokenizer, rows, cfg(16), type="pretraining", **{key: "body"}
        )
        assert [row["input_ids"] for row in built] == expected
        assert set(built[0]) == {"input_ids", "labels", "attention_mask"}  # raw columns gone
    with pytest.raises(DataError, match="text_column: 'body' and field: 'id' name different"):
        build_rows(
            weave_hooks, tiny_tokenizer, rows, type="pretraining", text_column="body", field="id"
        )


def test_pretraining_on_a_stream_gives_the_same_blocks(weave_hooks, tiny_tokenizer) -> None:
    entry = entry_with(weave_hooks, type="pretraining", text_column="body")
    table = Dataset.from_list([{"body": t, "id": i} for i, t in enumerate(TEXTS)])
    built = build_format(weave_hooks, entry, table.to_iterable_dataset(), tiny_tokenizer, cfg(8))
    assert isinstance(built, IterableDataset)  # still a stream, tokenized as it is read
    assert built.column_names == ["input_ids", "labels", "attention_mask"]
    rows = list(built)
    assert [row["input_ids"] for row in rows] == blocks_of(documents(tiny_tokenizer, TEXTS), 8)
    assert all(row["labels"] == row["input_ids"] for row in rows)
    table_rows = build_rows(
        weave_hooks, tiny_tokenizer, table.to_list(), cfg(8), type="pretraining", field="body"
    )
    assert rows == table_rows  # same values (and types) as the map-style dataset


def test_pretraining_stream_of_unknown_columns(weave_hooks, tiny_tokenizer) -> None:
    """A stream may know its columns only when read: they are peeked, then removed."""
    table = Dataset.from_list([{"text": t, "meta": "x"} for t in TEXTS])
    entry = entry_with(weave_hooks, type="pretraining")
    stream = table.to_iterable_dataset().map(lambda row: row)  # features unknown after a map
    assert stream.column_names is None
    built = build_format(weave_hooks, entry, stream, tiny_tokenizer, cfg(8))
    assert [row["input_ids"] for row in built] == blocks_of(documents(tiny_tokenizer, TEXTS), 8)
    stream = table.to_iterable_dataset().map(lambda row: row)
    entry = entry_with(weave_hooks, type="pretraining", text_column="body")
    with pytest.raises(DataError, match="lacks the text column 'body'; its rows have: text, meta"):
        build_format(weave_hooks, entry, stream, tiny_tokenizer, cfg(8))
    empty = Dataset.from_list([{"text": "x"}]).to_iterable_dataset().skip(1).map(lambda r: r)
    with pytest.raises(DataError, match=r"'rows' \(type: pretraining\): the stream has no rows"):
        build_format(weave_hooks, entry, empty, tiny_tokenizer, cfg(8))


def test_pretraining_packs_each_batch_of_rows(weave_hooks, tiny_tokenizer, monkeypatch) -> None:
    """Rows are packed ROWS_PER_BATCH at a time; a batch's leftover is its own shorter row."""
    monkeypatch.setattr(pretraining, "ROWS_PER_BATCH", 2)
    texts = [*TEXTS, "Name a colour. Blue."]
    table = [{"text": t} for t in texts]
    rows = build_rows(weave_hooks, tiny_tokenizer, table, cfg(8), type="pretraining")
    expected = blocks_of(documents(tiny_tokenizer, texts[:2]), 8)
    expected += blocks_of(documents(tiny_tokenizer, texts[2:]), 8)
    assert [row["input_ids"] for row in rows] == expected


def test_pretraining_on_several_processes(weave_hooks, tiny_tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(pretraining, "ROWS_PER_BATCH", 2)
    texts = [*TEXTS, "Name a colour. Blue."]
    entry = entry_with(weave_hooks, type="pretraining", num_proc=2)
    table = Dataset.from_list([{"text": t} for t in texts])
    built = build_format(weave_hooks, entry, table, tiny_tokenizer, cfg(8))
    expected = blocks_of(documents(tiny_tokenizer, texts[:2]), 8)
    expected += blocks_of(documents(tiny_tokenizer, texts[2:]), 8)
    assert built["input_ids"] == expected


def test_pretraining_block_edges(tiny_tokenizer) -> None:
    assert pretraining.cut_blocks([[1, 2, 3], [4, 5]], 2) == [[1, 2], [3, 4]]  # [5] trains nothing
    assert pretraining.cut_blocks([[1, 2, 3], [4]], 2) == [[1, 2], [3, 4]]
    assert pretraining.cut_blocks([[1, 2, 3]], 2) == [[1, 2]]
    assert pretraining.cut_blocks([], 2) == []
    # a text that already ends in EOS gets no second one; an empty text adds nothing
    eos = tiny_tokenizer.eos_token_id
    packed = pretraining.pack_texts(tiny_tokenizer, ["Blue.</s>", "", "Five."], 64)
    assert packed["input_ids"] == [documents(tiny_tokenizer, ["Blue.", "Five."])]
    assert packed["input_ids"][0].count(eos) == 2


def test_pretraining_bad_text_names_the_row(weave_hooks, tiny_tokenizer) -> None:
    rows = [{"text": TEXTS[0]}, {"text": None}, {"text": TEXTS[1]}]
    with pytest.raises(
        DataError, match=r"'rows' \(type: pretraining\), row 2: field 'text' is missing or null"
    ):
        build_rows(weave_hooks, tiny_tokenizer, rows, cfg(8), type="pretraining")
    numbers = Dataset.from_list([{"body": 1}, {"body": 2}])
    with pytest.raises(DataError, match=r"row 1: field 'body' must be a string, got int: 1"):
        build_rows(weave_hooks, tiny_tokenizer, numbers.to_list(), type="pretraining", field="body")


def test_pretraining_bad_text_in_a_stream_names_the_row_after_skip(
    weave_hooks, tiny_tokenizer
) -> None:
    rows = [{"text": TEXTS[0]}, {"text": TEXTS[1]}, {"text": None}]
    entry = entry_with(weave_hooks, type="pretraining", skip=1)
    stream = Dataset.from_list(rows).to_iterable_dataset().skip(1)  # as the core hands it over
    built = build_format(weave_hooks, entry, stream, tiny_tokenizer, cfg(8))
    with pytest.raises(DataError, match=r"row 3: field 'text' is missing or null"):
        list(built)


def test_pretraining_skip_invalid_rows(weave_hooks, tiny_tokenizer) -> None:
    rows = [{"text": TEXTS[0]}, {"text": None}, {"text": TEXTS[1]}]
    expected = blocks_of(documents(tiny_tokenizer, [TEXTS[0], TEXTS[1]]), 8)
    entry = entry_with(weave_hooks, type="pretraining", skip_invalid=True)
    built = build_format(weave_hooks, entry, Dataset.from_list(rows), tiny_tokenizer, cfg(8))
    # a dataset: the bad row becomes one empty row, which the core drops and counts as invalid
    assert built["input_ids"] == [*expected, []]
    assert built["labels"][-1] == built["attention_mask"][-1] == []
    # a stream: the bad row is left out
    stream = Dataset.from_list(rows).to_iterable_dataset()
    built = build_format(weave_hooks, entry, stream, tiny_tokenizer, cfg(8))
    assert [row["input_ids"] for row in built] == expected


def test_pretraining_missing_column(weave_hooks, tiny_tokenizer) -> None:
    with pytest.raises(DataError, match=r"lacks the text column 'text'; its rows have: body"):
        build_rows(weave_hooks, tiny_tokenizer, [{"body": "x"}], type="pretraining")


# --- already tokenized --------------------------------------------------------------------------


def test_tokenized_rows_are_used_as_given(weave_hooks, tiny_tokenizer) -> None:
    last = len(tiny_tokenizer) - 1
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 0], "x": 1},
        {"input_ids": [8, last], "labels": None, "attention_mask": None, "x": 2},
    ]
    for type_ in ("", None):
        out = build_rows(weave_hooks, tiny_tokenizer, rows, type=type_)
        assert out[0] == {
            "input_ids": [5, 6, 7],
            "labels": [-100, 6, 7],
            "attention_mask": [1, 1, 0],
        }
        assert out[1] == {"input_ids": [8, last], "labels": [8, last], "attention_mask": [1, 1]}


def test_tokenized_columns_may_be_left_out(weave_hooks, tiny_tokenizer) -> None:
    out = build_rows(weave_hooks, tiny_tokenizer, [{"input_ids": [1, 9, 2]}])
    assert out == [{"input_ids": [1, 9, 2], "labels": [1, 9, 2], "attention_mask": [1, 1, 1]}]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"input_ids": None}, "column 'input_ids' is missing or null"),
        ({"input_ids": []}, "column 'input_ids' is empty"),
        (
            {"input_ids": [1, 2], "labels": [1]},
            "column 'labels' has 1 values but 'input_ids' has 2; they must be the same length",
        ),
        (
            {"input_ids": [1, 2], "attention_mask": [1, 1, 1]},
            "column 'attention_mask' has 3 values but 'input_ids' has 2",
        ),
        (
            {"input_ids": [1, 99999]},
            r"column 'input_ids' holds 99999 at position 1, outside the tokenizer's ids 0\.\.",
        ),
        ({"input_ids": [-1, 2]}, "column 'input_ids' holds -1 at position 0"),
        (
            {"input_ids": [1, 2], "labels": [1, -5]},
            "column 'labels' holds -5 at position 1; a label is a token id .* or -100",
        ),
        ({"input_ids": [1, 2], "labels": [99999, 2]}, "column 'labels' holds 99999 at position 0"),
        (
            {"input_ids": [1, 2], "attention_mask": [1, 2]},
            "column 'attention_mask' holds 2 at position 1; it must hold only 0 and 1",
        ),
    ],
)
def test_tokenized_rows_are_checked(weave_hooks, tiny_tokenizer, row, message: str) -> None:
    rows = [{"input_ids": [1]}, row]  # the first is fine (its other columns null: defaults)
    with pytest.raises(DataError, match=r"'rows' \(type: pre-tokenized\), row 2: .*" + message):
        build_rows(weave_hooks, tiny_tokenizer, rows)


def test_tokenized_float_ids_are_refused(weave_hooks, tiny_tokenizer) -> None:
    rows = [{"input_ids": [1.0, 2.5]}]
    message = r"row 1: TypeError: column 'input_ids' must be a list of integers; item 0 is float"
    with pytest.raises(DataError, match=message):
        build_rows(weave_hooks, tiny_tokenizer, rows)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"input_ids": "1 2 3"}, "column 'input_ids' must be a list of integers, got str: '1 2 3'"),
        ({"input_ids": [1, "2"]}, "column 'input_ids' must be a list of integers; item 1 is str"),
        ({"input_ids": [1, True]}, "item 1 is bool"),
        ({"input_ids": [1], "labels": 1}, "column 'labels' must be a list of integers, got int"),
    ],
)
def test_tokenized_values_of_other_shapes_are_refused(row: dict, message: str) -> None:
    """Shapes one Arrow column cannot mix with others (checked on the row as JSON gives it)."""
    from axolotl_weave_plugins.formats import tokenized

    with pytest.raises(TypeError, match=message):
        tokenized.check_row(row, 100)


def test_tokenized_rows_need_input_ids(weave_hooks, tiny_tokenizer) -> None:
    with pytest.raises(DataError, match=r"lacks the field\(s\) 'input_ids'; its rows have: text"):
        build_rows(weave_hooks, tiny_tokenizer, [{"text": "hi"}])


def test_tokenized_is_not_a_registered_type(weave_hooks) -> None:
    formats = weave_hooks.dataset_formats()
    assert "" not in formats and None not in formats
    assert dataset_entry(formats, type="").type is None


# --- the core's reading of nested fields, through these formats ---------------------------------


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
    tmp_path: Path, base_config: dict, second: dict, message: str
) -> None:
    from axolotl_weave._run import open_session, preprocess
    from axolotl_weave_testing import write_config

    first = {"segments": [{"text": "ok", "label": True}], "input_ids": [1, 2]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(first) + "\n\n" + json.dumps(second) + "\n")
    config = {**base_config, "datasets": [{"path": str(path), "type": "input_output"}]}
    with pytest.raises(DataError, match=r"rows.jsonl:3: " + re.escape(message)):
        preprocess(open_session(write_config(tmp_path / "c.yml", config)))
