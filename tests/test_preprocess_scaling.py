"""Preprocessing that scales (issue 19): a huge row costs what its kept tokens cost, JSON Lines
stream to Arrow a chunk of rows at a time, trained tokens are counted a batch at a time, the
tokenized columns reach Arrow without `datasets`' per-value inspection, and two processes give
the rows one process gives."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from axolotl_weave import (
    IGNORE_INDEX,
    DataError,
    PreparedData,
    encode_all,
    tokenize_prompt_responses,
)
from axolotl_weave._rows import arrow_batch, encode_truncated, stable_prefix
from axolotl_weave._run import open_session, preprocess
from axolotl_weave_plugins.data import _fitting
from axolotl_weave_plugins.data.pipeline import column_sum
from axolotl_weave_plugins.sources import files
from axolotl_weave_testing import alpaca_rows, build_rows, write_config, write_jsonl
from datasets import Dataset

WORDS = "the model reads a long text and learns what comes next in it".split()


def text_of(rng: random.Random, chars: int) -> str:
    """Words joined into a text of about `chars` characters."""
    picked, length = [], 0
    while length < chars:
        word = rng.choice(WORDS)
        picked.append(word)
        length += len(word) + 1
    return " ".join(picked)


class CountingTokenizer:
    """The real tokenizer, counting the characters it is handed (what its work grows with)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.chars = 0

    def __call__(self, texts: list[str], **options: Any) -> Any:
        self.chars += sum(len(text) for text in texts)
        return self.tokenizer(texts, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


# --- a huge row -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [8, 300])
def test_a_huge_text_is_tokenized_from_a_prefix_with_the_same_ids(
    tiny_tokenizer: Any, max_length: int
) -> None:
    rng = random.Random(0)
    huge = text_of(rng, 300_000)
    for text in (huge, huge.replace(" ", ""), "é漢字🙂 " * 30_000):
        counting = CountingTokenizer(tiny_tokenizer)
        (ids,) = encode_all(counting, [text], max_length)
        whole = tiny_tokenizer([text], truncation=True, max_length=max_length)["input_ids"][0]
        assert ids == list(whole)
        assert counting.chars < 50_000  # a prefix, not the whole text
    short = ["a short text", ""]
    assert encode_all(tiny_tokenizer, short, max_length)[0] == list(
        tiny_tokenizer(short[:1], truncation=True, max_length=max_length)["input_ids"][0]
    )
    assert encode_all(tiny_tokenizer, short, max_length)[1] == []


def test_stable_prefix_grows_until_the_kept_ids_settle(tiny_tokenizer: Any) -> None:
    text = text_of(random.Random(1), 50_000)
    head = stable_prefix(tiny_tokenizer, text, 100, add_special_tokens=False)
    assert text.startswith(head) and len(head) < len(text)
    kept = tiny_tokenizer([head], add_special_tokens=False)["input_ids"][0][:100]
    assert kept == tiny_tokenizer([text], add_special_tokens=False)["input_ids"][0][:100]
    short = "too short for the limit"
    assert stable_prefix(tiny_tokenizer, short, 100) == short
    assert encode_truncated(tiny_tokenizer, short, 100) == list(
        tiny_tokenizer([short])["input_ids"][0]
    )


def test_a_one_mb_row_costs_no_more_than_one_mb_of_rows(tiny_tokenizer: Any) -> None:
    """Linear, not worse: one 1 MB text against the same megabyte as ordinary texts, through
    the function the prompt formats call (a generous bound: the huge row is far cheaper)."""
    rng = random.Random(2)
    pieces = [text_of(rng, 700) for _ in range(1_400)]
    encode_all(tiny_tokenizer, pieces[:50], 1024)  # warm up

    def seconds(texts: list[str]) -> float:
        start = time.perf_counter()
        encode_all(tiny_tokenizer, texts, 1024)
        return time.perf_counter() - start

    rows = min(seconds(pieces) for _ in range(2))
    huge = min(seconds([" ".join(pieces)]) for _ in range(2))
    assert huge < 2 * rows + 0.05, (huge, rows)


def test_weave_preprocess_keeps_a_huge_rows_first_tokens(
    tmp_path: Path, base_config: dict[str, Any], tiny_tokenizer: Any
) -> None:
    output = text_of(random.Random(3), 1_000_000)
    rows = [{"instruction": "Summarise.", "input": "", "output": output}, *alpaca_rows(4)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = {
        **base_config,
        "datasets": [{"path": str(path), "type": "alpaca"}],
        "sequence_len": 64,
        "excess_length_strategy": "truncate",
    }
    data = prepared(tmp_path, config)
    assert data.stats.truncated >= 1
    prompt = tiny_tokenizer(
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSummarise.\n\n### Response:\n"
    )["input_ids"]
    huge = [row for row in data.train if row["input_ids"][: len(prompt)] == prompt]
    assert len(huge) == 1 and len(huge[0]["input_ids"]) == 64
    response = tiny_tokenizer(output[:5000])["input_ids"][1:]
    assert huge[0]["input_ids"][len(prompt) :] == response[: 64 - len(prompt)]
    assert huge[0]["labels"] == [IGNORE_INDEX] * len(prompt) + response[: 64 - len(prompt)]


def test_a_huge_conversation_keeps_its_first_tokens_and_labels(
    weave_hooks: Any, tiny_tokenizer: Any
) -> None:
    answer = text_of(random.Random(4), 200_000)
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Go on."},
                {"role": "assistant", "content": answer},
            ]
        }
    ]
    built = {}
    for strategy in ("truncate", "split"):  # split needs every token: no prefix
        cfg = SimpleNamespace(
            train_on_inputs=False,
            sequence_len=64,
            excess_length_strategy=strategy,
            chat_template=None,
            chat_template_jinja=None,
            chat_template_kwargs={},
            default_system_message=None,
            eot_tokens=None,
        )
        (row,) = build_rows(
            weave_hooks, tiny_tokenizer, rows, cfg, type="chat_template", chat_template="chatml"
        )
        built[strategy] = row
    cut, whole = built["truncate"], built["split"]
    assert 64 < len(cut["input_ids"]) < len(whole["input_ids"]) // 10
    assert cut["input_ids"][:64] == whole["input_ids"][:64]
    assert cut["labels"][:64] == whole["labels"][:64]
    assert any(label != IGNORE_INDEX for label in cut["labels"][:64])


def prepared(tmp_path: Path, config: dict[str, Any]) -> PreparedData:
    session = open_session(write_config(tmp_path / "config.yml", config))
    data, _ = preprocess(session)
    return data


# --- memory: JSON Lines streamed to Arrow, counts a batch at a time ----------------------------


def test_json_lines_stream_to_arrow_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "JSON_CHUNK_ROWS", 2)
    rows = [
        {"a": None, "m": [{"role": "user", "content": "hi"}]},
        {"a": None, "m": [{"role": "user", "content": "yo"}]},
        {"a": "x", "m": [{"role": "user", "content": "x", "name": "n"}], "b": 1},
        {"a": "y", "m": [], "b": 2},
        {"a": None, "m": [{"role": "user", "content": "last"}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    entry = SimpleNamespace(label="datasets[0]")
    dataset, lines = files.json_dataset(entry, path)
    assert dataset.cache_files  # on disk, memory-mapped: not a table built in memory
    assert lines == range(1, 6)
    assert dataset.column_names == ["a", "m", "b"]
    assert dataset[2] == rows[2]
    assert dataset[0] == {**rows[0], "m": [{**rows[0]["m"][0], "name": None}], "b": None}
    assert dataset["a"] == [r["a"] for r in rows]

    path.write_text(json.dumps(rows[2]) + "\n\n" + json.dumps(rows[3]) + "\n")
    _, lines = files.json_dataset(entry, path)
    assert list(lines) == [1, 3]

    path.write_text("\n".join(json.dumps({"n": v}) for v in (1, 2, 3, "four")) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:4: field 'n' is a string here but a number"):
        files.json_dataset(entry, path)
    path.write_text('{"n": 1}\n{"n": 2\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: invalid JSON"):
        files.json_dataset(entry, path)
    path.write_text("\n  \n")
    with pytest.raises(DataError, match="the file is empty"):
        files.json_dataset(entry, path)


def test_trained_counts_a_batch_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = [[IGNORE_INDEX, 5, 6], [], [7, 8], [IGNORE_INDEX] * 3, [1], [2, IGNORE_INDEX, 3]]
    dataset = Dataset.from_dict({"labels": labels})
    whole = _fitting.trained_counts(dataset, "labels").tolist()
    monkeypatch.setattr(_fitting, "COUNT_BATCH_ROWS", 4)
    assert _fitting.trained_counts(dataset, "labels").tolist() == whole == [2, 0, 1, 0, 0, 1]


def test_trained_counts_follow_the_definition_on_random_rows() -> None:
    rng = random.Random(0)
    labels = [
        None if rng.random() < 0.05 else [rng.choice([IGNORE_INDEX, 3, 7]) for _ in range(size)]
        for size in (rng.choice([0, 0, 1, 2, 5, 40]) for _ in range(500))
    ]
    # the loss trains each label but the first (no token predicts it) that is not ignored
    expected = [sum(x != IGNORE_INDEX for x in (row or [])[1:]) for row in labels]
    values = pa.array(labels, type=pa.list_(pa.int64()))
    assert _fitting.batch_trained_counts(values).tolist() == expected
    # as a chunked array (the cache's files): chunk by chunk, an empty chunk among them
    pieces = [values.slice(0, 7), values.slice(7, 0), values.slice(7, 250), values.slice(257)]
    chunked = pa.chunked_array(pieces)
    assert _fitting.batch_trained_counts(chunked).tolist() == expected


def test_stats_sum_a_shuffled_and_filtered_column_by_batches() -> None:
    dataset = Dataset.from_dict({"length": list(range(200_000)), "other": [1] * 200_000})
    picked = dataset.select(range(0, 200_000, 3)).shuffle(seed=0)
    assert column_sum(picked, "length") == sum(range(0, 200_000, 3))


# --- speed: Arrow columns, processes ---------------------------------------------------------


def test_token_columns_become_one_arrow_table() -> None:
    table = arrow_batch({"input_ids": [[1, 2], [3]], "length": [2, 1]})
    assert isinstance(table, pa.Table)
    assert table.to_pydict() == {"input_ids": [[1, 2], [3]], "length": [2, 1]}
    mixed = {"input_ids": [[1, 2]], "text": ["a"]}
    assert arrow_batch(mixed) is mixed  # text: left to datasets, as before
    empty = {"input_ids": [[]], "labels": [[]]}
    assert arrow_batch(empty) is empty
    large = arrow_batch({"input_ids": [[2**40, -100], [1]], "labels": [[-100, 3], [1]]})
    assert large.schema.field("input_ids").type == pa.list_(pa.int64())
    assert large.to_pydict() == {"input_ids": [[2**40, -100], [1]], "labels": [[-100, 3], [1]]}
    flags = {"input_ids": [[1, True]]}
    assert arrow_batch(flags) is flags  # a bool is not an id: left to datasets, as before


@pytest.mark.parametrize("train_on_inputs", [False, True])
@pytest.mark.parametrize("keeps_bos", [True, False])
def test_prompt_response_table_holds_the_rows_of_the_list(
    tiny_tokenizer: Any, train_on_inputs: bool, keeps_bos: bool
) -> None:
    """The columnar rows of `tokenize_prompt_responses(table=True)` are its row mappings, for
    empty prompts and responses, truncated parts and texts that end with EOS."""
    rng = random.Random(5)
    eos = tiny_tokenizer.eos_token
    texts = ["", "", eos, "the end" + eos] + [text_of(rng, rng.randint(1, 200)) for _ in range(40)]
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(200)] + [("", ""), ("a", "")]
    options = {
        "train_on_inputs": train_on_inputs,
        "max_length": 30,
        "empty_prompt_keeps_bos": keeps_bos,
    }
    rows = tokenize_prompt_responses(tiny_tokenizer, pairs, **options)
    table = tokenize_prompt_responses(tiny_tokenizer, pairs, table=True, **options)
    assert table.schema == arrow_batch({k: [r[k] for r in rows] for k in rows[0]}).schema
    assert table.to_pylist() == rows
    assert any(row["labels"][0] == IGNORE_INDEX for row in rows if row["labels"]) != train_on_inputs
    assert any(not row["input_ids"] for row in rows)  # ("", ""): an empty row
    assert not tokenize_prompt_responses(tiny_tokenizer, [], table=True, **options).num_rows


def test_a_finish_may_return_an_arrow_table_and_a_bad_row_is_still_found() -> None:
    """`map_rows` takes a `pyarrow.Table` from a format's `finish` as the batch's columns; when
    the batch raises, it finds the bad row one at a time (with `skip_invalid_rows`: emptied)."""
    from axolotl_weave import map_rows

    def finish(texts: list[str]) -> Any:
        if "bad" in texts:
            raise ValueError("a bad row")
        ids = [[len(text)] * len(text) for text in texts]
        return pa.table({"input_ids": ids, "labels": ids, "attention_mask": ids})

    entry = SimpleNamespace(skip_invalid_rows=True, num_proc=None, label="rows", path="rows")
    entry.type = "test"
    entry.where = lambda index: f"row {index + 1}"
    rows = Dataset.from_dict({"text": ["ab", "bad", "c"]})
    built = map_rows(rows, entry, lambda row: row["text"], finish=finish)
    assert built["input_ids"] == [[2, 2], [], [1]]
    good = map_rows(rows.select([0, 2]), entry, lambda row: row["text"], finish=finish)
    assert good["labels"] == [[2, 2], [1]]


def test_two_processes_give_the_rows_of_one(tmp_path: Path, base_config: dict[str, Any]) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(64))
    results = []
    for processes in (1, 2):
        config = {
            **base_config,
            "datasets": [{"path": str(path), "type": "alpaca"}],
            "dataset_processes": processes,
            "dataset_prepared_path": str(tmp_path / f"prepared{processes}"),
            "shuffle_merged_datasets": False,
        }
        data = prepared(tmp_path, config)
        results.append([(row["input_ids"], row["labels"]) for row in data.train])
    assert len(results[0]) == 64 and results[0] == results[1]
