"""The dataset pipeline: sources, mixing, splitting, fitting to length, caching, bad input."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave import DataError, MissingDependencyError, PreparedData, drop_summary
from axolotl_weave._run import load_tokenizer, open_session, preprocess
from axolotl_weave_plugins.data._cache import fingerprint
from axolotl_weave_testing import alpaca_rows, write_config, write_jsonl
from datasets import Dataset, DatasetDict


def prepare(tmp_path: Path, config: dict[str, Any]) -> PreparedData:
    session = open_session(write_config(tmp_path / "config.yml", config))
    data, _ = preprocess(session)
    return data


def with_data(base: dict[str, Any], *entries: dict[str, Any], **keys: Any) -> dict[str, Any]:
    return {**base, "datasets": list(entries), **keys}


def outputs(data: PreparedData) -> set[str]:
    """The trained text of every row, as a set of token-id tuples (order-free)."""
    return {tuple(row["input_ids"]) for row in data.train}


# --- sources ------------------------------------------------------------------------------------


def test_json_array_file_and_line_numbers(tmp_path: Path, base_config: dict[str, Any]) -> None:
    rows = alpaca_rows(6)
    rows[4]["output"] = 7  # a number where the other rows have a string
    path = tmp_path / "rows.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r, indent=1) for r in rows) + "\n]\n")
    with pytest.raises(DataError) as info:
        prepare(tmp_path, with_data(base_config, {"path": str(path), "type": "alpaca"}))
    message = str(info.value)
    start_of_row_5 = path.read_text().splitlines().index("{", 1 + 5 * 4) + 1
    assert f"rows.json:{start_of_row_5}: field 'output' is a number here but a string" in message


def test_file_types_and_folders_give_the_same_rows(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    rows = alpaca_rows(24)
    jsonl = write_jsonl(tmp_path / "jsonl" / "part.jsonl", rows)
    folder = tmp_path / "mixed"
    folder.mkdir()
    Dataset.from_list(rows[:12]).to_parquet(str(folder / "a.parquet"))
    Dataset.from_list(rows[12:]).to_parquet(str(folder / "b.parquet"))
    Dataset.from_list(rows).to_csv(str(tmp_path / "rows.csv"), index=False)
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    DatasetDict(
        {"train": Dataset.from_list(alpaca_rows(3)), "extra": Dataset.from_list(rows)}
    ).save_to_disk(str(tmp_path / "saved_dict"))
    sources = [
        {"path": str(jsonl)},
        {"path": str(jsonl.parent)},
        {"path": str(folder)},
        {"path": str(folder), "data_files": ["a.parquet", "b.parquet"]},
        {"path": str(tmp_path / "rows.csv")},
        {"path": str(tmp_path / "saved")},
        {"path": str(tmp_path / "saved_dict"), "split": "extra"},
    ]
    results = []
    for index, source in enumerate(sources):
        config = with_data(
            base_config,
            {**source, "type": "alpaca"},
            dataset_prepared_path=str(tmp_path / f"prepared{index}"),
        )
        results.append(outputs(prepare(tmp_path, config)))
    assert len(results[0]) > 10
    assert all(result == results[0] for result in results), [len(r) for r in results]


def test_a_saved_dataset_dict_names_its_splits(tmp_path: Path, base_config: dict[str, Any]) -> None:
    DatasetDict({"train": Dataset.from_list(alpaca_rows(3))}).save_to_disk(str(tmp_path / "s"))
    config = with_data(base_config, {"path": str(tmp_path / "s"), "type": "alpaca", "split": "x"})
    with pytest.raises(DataError, match="has no split 'x'; it has: train"):
        prepare(tmp_path, config)


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local http server (no network needed) over a folder."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def test_an_https_url_is_downloaded_once_and_refetched_when_it_changes(
    tmp_path: Path,
    base_config: dict[str, Any],
    http_folder: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEAVE_CACHE", str(tmp_path / "cache"))
    url, root = http_folder
    write_jsonl(root / "rows.jsonl", alpaca_rows(12))
    config = with_data(base_config, {"path": f"{url}/rows.jsonl", "type": "alpaca"})
    first = prepare(tmp_path, config)
    assert not first.from_cache and first.stats.rows_in == 12
    assert prepare(tmp_path, config).from_cache
    write_jsonl(root / "rows.jsonl", alpaca_rows(14))
    third = prepare(tmp_path, config)
    assert not third.from_cache and third.stats.rows_in == 14


def test_a_broken_line_in_a_downloaded_file_names_the_line(
    tmp_path: Path,
    base_config: dict[str, Any],
    http_folder: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEAVE_CACHE", str(tmp_path / "cache"))
    url, root = http_folder
    (root / "rows.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    config = with_data(base_config, {"path": f"{url}/rows.jsonl", "type": "alpaca"})
    with pytest.raises(DataError, match=r"rows.jsonl:2: invalid JSON"):
        prepare(tmp_path, config)


def test_fsspec_paths_are_read_through_fsspec(
    tmp_path: Path, base_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    monkeypatch.setenv("WEAVE_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    lines = "".join(json.dumps(r) + "\n" for r in alpaca_rows(9))
    fs.pipe("/weave-test/data/rows.jsonl", lines.encode())
    config = with_data(base_config, {"path": "memory://weave-test/data", "type": "alpaca"})
    assert prepare(tmp_path, config).stats.rows_in == 9


def test_a_missing_fsspec_backend_names_the_package(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs is installed")
    except ImportError:
        pass
    config = with_data(base_config, {"path": "s3://bucket/rows.jsonl", "type": "alpaca"})
    with pytest.raises(MissingDependencyError, match=r"needs s3fs \(pip install s3fs\)"):
        prepare(tmp_path, config)


def test_shards_keep_one_part_and_name_rows_by_their_line(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    rows = alpaca_rows(12)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    entry = {"path": str(path), "type": "alpaca", "shards": 3, "shards_idx": 1}
    data = prepare(tmp_path, with_data(base_config, entry))
    assert data.stats.rows_in == 4
    del rows[6]["output"]  # line 7 is in shard 1 (lines 5-8)
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"rows.jsonl:7: .*'output'"):
        prepare(tmp_path, with_data(base_config, entry))


def test_shards_idx_beyond_shards_is_a_config_error(
    tmp_path: Path, base_config: dict[str, Any], alpaca_file: Path
) -> None:
    from axolotl_weave import ConfigError

    entry = {"path": str(alpaca_file), "type": "alpaca", "shards": 2, "shards_idx": 2}
    with pytest.raises(ConfigError, match="shards_idx=2 needs shards: greater than it"):
        prepare(tmp_path, with_data(base_config, entry))


# --- mixing, splitting, deduplication -----------------------------------------------------------


def test_dataset_shard_keeps_one_contiguous_shard_of_the_merged_rows(
    tmp_path: Path, base_config: dict[str, Any], alpaca_file: Path
) -> None:
    """Axolotl's `dataset_shard_num` / `dataset_shard_idx`: the merged, shuffled rows cut into
    contiguous shards, one kept, before the eval split; the shards are disjoint and together
    are every row, and each has its own cache."""
    whole = prepare(tmp_path, base_config)
    shards = [
        prepare(tmp_path, {**base_config, "dataset_shard_num": 3, "dataset_shard_idx": i})
        for i in range(3)
    ]
    assert [len(s.train) for s in shards] == [11, 11, 10]
    rows = [tuple(row["input_ids"]) for row in whole.train]
    assert [tuple(row["input_ids"]) for s in shards for row in s.train] == rows
    assert len({s.cache_dir for s in shards} | {whole.cache_dir}) == 4
    split = prepare(
        tmp_path,
        {**base_config, "dataset_shard_num": 2, "dataset_shard_idx": 1, "val_set_size": 4},
    )
    assert len(split.train) == 12 and split.eval is not None and len(split.eval) == 4
    held = {tuple(r["input_ids"]) for r in split.train} | {
        tuple(r["input_ids"]) for r in split.eval
    }
    assert held == set(rows[16:])


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"dataset_shard_num": 2}, "dataset_shard_num needs dataset_shard_idx too"),
        ({"dataset_shard_idx": 0}, "dataset_shard_idx needs dataset_shard_num too"),
        ({"dataset_shard_num": 2, "dataset_shard_idx": 2}, "dataset_shard_idx: 2 is not below"),
        ({"dataset_shard_num": 0, "dataset_shard_idx": 0}, "dataset_shard_num"),
    ],
)
def test_dataset_shard_keys_refused(
    tmp_path: Path, base_config: dict[str, Any], keys: dict[str, Any], message: str
) -> None:
    from axolotl_weave import ConfigError

    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", {**base_config, **keys}))


def test_datasets_are_mixed_and_shuffled_with_the_seed(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(10))
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"plain text {i}"} for i in range(10)])
    entries = [{"path": str(a), "type": "alpaca"}, {"path": str(b), "type": "completion"}]

    def run(name: str, **keys: Any) -> list[dict[str, Any]]:
        config = with_data(base_config, *entries, dataset_prepared_path=str(tmp_path / name))
        return list(prepare(tmp_path, {**config, **keys}).train)

    def ids(rows: list[dict[str, Any]]) -> list[tuple[int, ...]]:
        return [tuple(row["input_ids"]) for row in rows]

    same_seed, again = run("p1"), run("p2")
    other_seed = run("p3", seed=7)
    in_order = run("p4", shuffle_merged_datasets=False)
    assert len(same_seed) == 20 and ids(same_seed) == ids(again)
    assert ids(other_seed) != ids(same_seed) and set(ids(other_seed)) == set(ids(same_seed))
    # unshuffled: the alpaca rows (prompt masked) first, then the completion rows (all trained)
    fully_trained = [row["labels"] == row["input_ids"] for row in in_order]
    assert fully_trained == [False] * 10 + [True] * 10
    assert fully_trained != [row["labels"] == row["input_ids"] for row in same_seed]


@pytest.mark.parametrize(("size", "eval_rows"), [(0.25, 8), (5, 5)])
def test_val_set_size_fraction_or_count(
    tmp_path: Path, base_config: dict[str, Any], alpaca_file: Path, size: float, eval_rows: int
) -> None:
    data = prepare(tmp_path, {**base_config, "val_set_size": size})
    assert data.eval is not None and len(data.eval) == eval_rows
    assert len(data.train) == 32 - eval_rows
    assert data.stats.eval_rows == eval_rows


def test_test_datasets_give_the_eval_set(tmp_path: Path, base_config: dict[str, Any]) -> None:
    held_out = write_jsonl(tmp_path / "held.jsonl", alpaca_rows(40)[32:])
    config = {**base_config, "test_datasets": [{"path": str(held_out), "type": "alpaca"}]}
    data = prepare(tmp_path, config)
    assert len(data.train) == 32 and data.eval is not None and len(data.eval) == 8
    assert [d["where"] for d in data.stats.per_dataset] == ["datasets[0]", "test_datasets[0]"]


def test_test_datasets_and_val_set_size_conflict(
    tmp_path: Path, base_config: dict[str, Any], alpaca_file: Path
) -> None:
    from axolotl_weave import ConfigError

    config = {**base_config, "val_set_size": 0.1, "test_datasets": [{"path": str(alpaca_file)}]}
    with pytest.raises(ConfigError, match="val_set_size or test_datasets, not both"):
        prepare(tmp_path, config)


def test_exact_deduplication_drops_repeats_and_eval_rows_seen_in_training(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    rows = alpaca_rows(8)
    path = write_jsonl(tmp_path / "dups.jsonl", rows + rows[:3])
    new = [{"instruction": "Name a colour.", "output": c} for c in ("red", "blue")]
    held = write_jsonl(tmp_path / "held.jsonl", rows[:2] + new)
    config = with_data(
        base_config,
        {"path": str(path), "type": "alpaca"},
        test_datasets=[{"path": str(held), "type": "alpaca"}],
        dataset_exact_deduplication=True,
    )
    data = prepare(tmp_path, config)
    assert len(data.train) == len({json.dumps(r, sort_keys=True) for r in rows}) == 8
    assert data.eval is not None and len(data.eval) == 2  # the two seen in training are gone
    assert data.stats.dropped_duplicates == 3 + 2
    without = prepare(tmp_path, {**config, "dataset_exact_deduplication": False})
    assert len(without.train) == 11


# --- rows over sequence_len ---------------------------------------------------------------------


@pytest.fixture
def long_and_short(tmp_path: Path) -> Path:
    rows = [{"text": "the quick brown fox jumps over the lazy dog. " * 6}, {"text": "Paris."}]
    return write_jsonl(tmp_path / "texts.jsonl", rows)


def fit_config(base: dict[str, Any], path: Path, strategy: str | None) -> dict[str, Any]:
    """The texts as one trained `input_output` segment each (no special tokens added): a format
    that leaves long rows to `excess_length_strategy` (`completion` splits them itself, as in
    Axolotl)."""
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    segments = [{"segments": [{"text": text, "label": True}]} for text in texts]
    data = write_jsonl(path.with_name("segments.jsonl"), segments)
    config = with_data(base, {"path": str(data), "type": "input_output"}, sequence_len=16)
    return {**config, "excess_length_strategy": strategy} if strategy else config


def test_long_rows_are_dropped_by_default(
    tmp_path: Path, base_config: dict[str, Any], long_and_short: Path
) -> None:
    data = prepare(tmp_path, fit_config(base_config, long_and_short, None))
    assert len(data.train) == 1 and data.stats.dropped_too_long == 1


def test_long_rows_truncated(
    tmp_path: Path, base_config: dict[str, Any], long_and_short: Path, tiny_tokenizer: Any
) -> None:
    data = prepare(tmp_path, fit_config(base_config, long_and_short, "truncate"))
    text = json.loads(long_and_short.read_text().splitlines()[0])["text"]
    full = tiny_tokenizer(text, add_special_tokens=False)
    truncated = [row for row in data.train if row["length"] == 16]
    assert len(data.train) == 2 and data.stats.truncated == 1
    assert truncated[0]["input_ids"] == full["input_ids"][:16]
    assert truncated[0]["labels"] == full["input_ids"][:16]


def test_long_rows_split_into_pieces(
    tmp_path: Path, base_config: dict[str, Any], long_and_short: Path, tiny_tokenizer: Any
) -> None:
    data = prepare(tmp_path, fit_config(base_config, long_and_short, "split"))
    text = json.loads(long_and_short.read_text().splitlines()[0])["text"]
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [ids[i : i + 16] for i in range(0, len(ids), 16)]
    pieces = [p for p in pieces if len(p) > 1]  # a 1-token piece has nothing to predict
    got = {tuple(row["input_ids"]) for row in data.train}
    assert {tuple(p) for p in pieces} <= got
    assert all(row["length"] <= 16 for row in data.train)
    assert data.stats.split == 1


@pytest.mark.parametrize(
    ("strategy", "sequence_len"), [(None, 4096), ("truncate", 16), ("split", 16)]
)
def test_min_sample_len_drops_and_counts_the_shorter_rows(
    tmp_path: Path,
    base_config: dict[str, Any],
    long_and_short: Path,
    strategy: str | None,
    sequence_len: int,
) -> None:
    """Axolotl's `min_sample_len`: a row (or a piece of a split one) of fewer tokens, once fitted
    to `sequence_len`, is dropped and counted; every other row is kept as it is without it."""
    config = {**fit_config(base_config, long_and_short, strategy), "sequence_len": sequence_len}
    (tmp_path / "every").mkdir()
    every = prepare(tmp_path / "every", config)
    minimum = max(row["length"] for row in every.train)
    expected = {tuple(row["input_ids"]) for row in every.train if row["length"] >= minimum}
    assert 0 < len(expected) < len(every.train)
    (tmp_path / "min").mkdir()
    kept = prepare(tmp_path / "min", {**config, "min_sample_len": minimum})
    assert outputs(kept) == expected
    assert kept.stats.dropped_too_short == len(every.train) - len(expected)
    assert f"dropped: shorter than min_sample_len ({kept.stats.dropped_too_short})" in (
        drop_summary(kept.stats, sequence_len)
    )


def test_long_rows_raise_naming_the_line(
    tmp_path: Path, base_config: dict[str, Any], long_and_short: Path
) -> None:
    with pytest.raises(
        DataError, match=r"segments.jsonl:1: \d+ tokens, longer than sequence_len=16"
    ):
        prepare(tmp_path, fit_config(base_config, long_and_short, "raise"))


# --- bad rows -----------------------------------------------------------------------------------


def test_skip_invalid_rows_drops_and_counts_them(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    rows = alpaca_rows(10)
    del rows[2]["output"]
    rows[5]["output"] = None
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    config = with_data(base_config, {"path": str(path), "type": "alpaca"})
    with pytest.raises(DataError, match=r"bad.jsonl:3: .*'output'"):
        prepare(tmp_path, config)
    data = prepare(tmp_path, {**config, "skip_invalid_rows": True})
    assert len(data.train) == 8 and data.stats.dropped_invalid == 2


def test_several_processes_give_the_same_rows(tmp_path: Path, base_config: dict[str, Any]) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", alpaca_rows(64))
    config = with_data(base_config, {"path": str(path), "type": "alpaca"})
    one = prepare(tmp_path, {**config, "dataset_prepared_path": str(tmp_path / "a")})
    two = prepare(
        tmp_path,
        {**config, "dataset_processes": 2, "dataset_prepared_path": str(tmp_path / "b")},
    )
    assert [r["input_ids"] for r in one.train] == [r["input_ids"] for r in two.train]


def test_a_missing_file_names_the_entry(tmp_path: Path, base_config: dict[str, Any]) -> None:
    config = with_data(base_config, {"path": str(tmp_path / "nope.jsonl"), "type": "alpaca"})
    with pytest.raises(DataError, match=r"nope.jsonl' \(type: alpaca\): no such file"):
        prepare(tmp_path, config)


# --- the cache ----------------------------------------------------------------------------------


def test_second_run_loads_the_cache(tmp_path: Path, base_config: dict[str, Any]) -> None:
    first = prepare(tmp_path, base_config)
    second = prepare(tmp_path, base_config)
    assert not first.from_cache and second.from_cache
    assert first.cache_dir == second.cache_dir
    assert [r["input_ids"] for r in first.train] == [r["input_ids"] for r in second.train]


@pytest.mark.parametrize(
    "change",
    [
        "file content",
        "format",
        "sequence_len",
        "train_on_inputs",
        "excess_length_strategy",
        "tokenizer",
        "chat template",
    ],
)
def test_the_fingerprint_changes_with_what_shapes_the_output(
    tmp_path: Path, base_config: dict[str, Any], alpaca_file: Path, change: str
) -> None:
    session = open_session(write_config(tmp_path / "config.yml", base_config))
    tokenizer = load_tokenizer(session, None)
    before = fingerprint(session.cfg, tokenizer, session.hooks)
    config = dict(base_config)
    if change == "file content":
        write_jsonl(alpaca_file, alpaca_rows(31))
    elif change == "format":
        config["datasets"] = [{"path": str(alpaca_file), "type": "completion", "field": "output"}]
    elif change == "sequence_len":
        config["sequence_len"] = 64
    elif change == "train_on_inputs":
        config["train_on_inputs"] = True
    elif change == "excess_length_strategy":
        config["excess_length_strategy"] = "truncate"
    session = open_session(write_config(tmp_path / "config.yml", config))
    if change == "tokenizer":
        tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    elif change == "chat template":
        tokenizer.chat_template = "{{ messages }}"
    after = fingerprint(session.cfg, tokenizer, session.hooks)
    assert after != before
    assert fingerprint(session.cfg, tokenizer, session.hooks) == after  # stable


def test_an_interrupted_cache_write_leaves_no_cache(
    tmp_path: Path, base_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = Dataset.save_to_disk

    def crash(self: Dataset, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(Dataset, "save_to_disk", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path, base_config)
    prepared = Path(base_config["dataset_prepared_path"])
    assert calls["n"] == 1 and list(prepared.iterdir()) == []
    monkeypatch.setattr(Dataset, "save_to_disk", real)
    assert not prepare(tmp_path, base_config).from_cache
    assert prepare(tmp_path, base_config).from_cache


# --- end to end -----------------------------------------------------------------------------


def test_the_chat_example_trains_and_saves_its_template(tmp_path: Path) -> None:
    from axolotl_weave_plugins.formats.chat_template import named_template
    from axolotl_weave_testing import run_weave
    from transformers import AutoTokenizer

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    result = run_weave(
        "train",
        "examples/chat.yml",
        "--max_steps",
        "3",
        "--output_dir",
        str(out),
        "--dataset_prepared_path",
        str(tmp_path / "prepared"),
        "--bf16",
        "false",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert "step 3/3" in result.stdout
    assert AutoTokenizer.from_pretrained(out).chat_template == named_template("vicuna")


def test_pretraining_dataset_streams_from_skip(
    tmp_path: Path, base_config: dict[str, Any], tiny_tokenizer: Any
) -> None:
    texts = [{"text": f"text number {i}."} for i in range(10)]
    path = write_jsonl(tmp_path / "texts.jsonl", texts)
    config = {k: v for k, v in base_config.items() if k != "datasets"}
    config["pretraining_dataset"] = [{"path": str(path), "skip": 3}]
    data = prepare(tmp_path, config)
    assert data.streaming and data.cache_dir is None
    first = next(iter(data.train))
    assert tiny_tokenizer.decode(first["input_ids"]).startswith("<s>text number 3.</s><s>text")


def test_a_streamed_completion_dataset_trains_packed(
    tmp_path: Path, base_config: dict[str, Any], tiny_tokenizer: Any
) -> None:
    """Axolotl's usual `pretraining_dataset:` entry (`type: completion`, a `field`), streamed:
    tokenized and cut into pieces lazily, its columns known, packed and trained."""
    from axolotl_weave_testing import train_with

    texts = [{"body": f"text number {i}. " * 20} for i in range(40)]
    path = write_jsonl(tmp_path / "texts.jsonl", texts)
    config = {k: v for k, v in base_config.items() if k != "datasets"}
    config["pretraining_dataset"] = [{"path": str(path), "type": "completion", "field": "body"}]
    data = prepare(tmp_path, config)
    assert data.streaming and set(data.train.column_names) >= {"input_ids", "labels"}
    first = next(iter(data.train))
    assert len(first["input_ids"]) == base_config["sequence_len"]
    assert tiny_tokenizer.decode(first["input_ids"]).startswith("<s>text number 0.")
    state = train_with({**config, "sample_packing": True, "max_steps": 2}, tmp_path / "t.yml")
    assert state.global_step == 2


def test_train_on_split_picks_the_split(tmp_path: Path, base_config: dict[str, Any]) -> None:
    splits = {"train": alpaca_rows(3), "validation": alpaca_rows(12)}
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(
        str(tmp_path / "saved")
    )
    entry = {"path": str(tmp_path / "saved"), "type": "alpaca", "train_on_split": "validation"}
    assert prepare(tmp_path, with_data(base_config, entry)).stats.rows_in == 12


def test_an_unreachable_hub_dataset_is_one_clear_error(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    from axolotl_weave_testing import run_weave_in_process

    entry = {"path": "someone/not-a-dataset", "type": "alpaca", "revision": "v2"}
    path = write_config(tmp_path / "hub.yml", with_data(base_config, entry))
    result = run_weave_in_process("preprocess", str(path))  # offline: HF_DATASETS_OFFLINE=1
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert (
        "error: dataset 'someone/not-a-dataset' (type: alpaca) is neither a local file or folder"
        in message
    )
    assert "(looked for " in message and "nor a loadable hub dataset" in message
    assert "Traceback" not in result.stderr
