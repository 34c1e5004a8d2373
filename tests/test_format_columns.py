"""A format's declared columns survive fitting and caching; data sources are a registry.

A test plugin registers `test_pairs`, a preference-style format whose rows have two token
sequences (chosen and rejected, each with its labels) and a scalar `label`, the shape DPO or KTO
rows take; it is not packable, so `excess_length_strategy: split` is refused for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave import (
    IGNORE_INDEX,
    PAD_TOKEN,
    DataError,
    DatasetFormat,
    DataSource,
    PreparedData,
    hookimpl,
    map_rows,
    rows_table,
    tokenize_prompt_response,
)
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session, preprocess
from axolotl_weave_testing import write_config, write_jsonl

PAIR_COLUMNS: dict[str, int | str | None] = {
    "chosen_input_ids": PAD_TOKEN,
    "chosen_labels": IGNORE_INDEX,
    "rejected_input_ids": PAD_TOKEN,
    "rejected_labels": IGNORE_INDEX,
    "label": None,
}
SEQUENCES = [name for name, pad in PAIR_COLUMNS.items() if pad is not None]


def build_pairs(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize prompt + chosen and prompt + rejected; the prompt masked."""

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"label": row["label"]}
        for side in ("chosen", "rejected"):
            enc = tokenize_prompt_response(
                tokenizer, row["prompt"], row[side], train_on_inputs=False
            )
            out[f"{side}_input_ids"], out[f"{side}_labels"] = enc["input_ids"], enc["labels"]
        return out

    empty = {name: [] if pad is not None else None for name, pad in PAIR_COLUMNS.items()}
    return map_rows(dataset, entry, tokenize, empty=empty)


class PairsPlugin:
    """Registers the `test_pairs` format with its columns."""

    @hookimpl
    def register_dataset_formats(self, register: Callable[[DatasetFormat], None]) -> None:
        register(DatasetFormat("test_pairs", build=build_pairs, columns=dict(PAIR_COLUMNS)))


def pair_rows() -> list[dict[str, Any]]:
    """Rows whose chosen answer is long and rejected answer short (or the other way round)."""
    long = "the quick brown fox jumps over the lazy dog " * 3
    return [
        {"prompt": f"Question {i}: ", "chosen": long if i % 2 else "yes", "rejected": "no"}
        | {"label": bool(i % 3)}
        for i in range(8)
    ]


def prepare(
    tmp_path: Path, base_config: dict[str, Any], rows: list | None = None, **keys: Any
) -> PreparedData:
    data_file = write_jsonl(tmp_path / "pairs.jsonl", rows or pair_rows())
    entry = {"path": str(data_file), "type": "test_pairs"}
    config = {**base_config, "datasets": [entry], "shuffle_merged_datasets": False, **keys}
    pm = make_plugin_manager()
    pm.register(PairsPlugin(), name="test_pairs_format")
    session = open_session(write_config(tmp_path / "pairs.yml", config), [], pm)
    data, _ = preprocess(session)
    return data


def targets(row: dict[str, Any]) -> int:
    """Trained tokens of a row over both labels columns, shifted by one as the loss sees them."""
    return sum(1 for c in ("chosen_labels", "rejected_labels") for t in row[c][1:] if t != -100)


def test_declared_columns_survive_fitting_and_the_cache(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    data = prepare(tmp_path, base_config, sequence_len=512)
    assert not data.from_cache
    assert set(PAIR_COLUMNS) | {"length", "n_targets"} == set(data.train.column_names)
    rows = list(data.train)
    assert len(rows) == 8
    assert sorted(row["label"] for row in rows) == sorted(bool(i % 3) for i in range(8))
    for row in rows:
        assert row["length"] == max(len(row[c]) for c in SEQUENCES)
        assert row["n_targets"] == targets(row) > 0
        assert len(row["chosen_input_ids"]) == len(row["chosen_labels"])
    assert data.stats.target_tokens == sum(targets(row) for row in rows)

    again = prepare(tmp_path, base_config, sequence_len=512)
    assert again.from_cache and again.cache_dir == data.cache_dir
    assert again.train.column_names == data.train.column_names
    assert list(again.train) == rows


def test_drop_drops_a_row_when_any_sequence_column_is_too_long(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    whole = list(prepare(tmp_path / "whole", base_config, sequence_len=512).train)
    limit = max(len(r["rejected_input_ids"]) for r in whole) + 2
    over = [r for r in whole if max(len(r[c]) for c in SEQUENCES) > limit]
    assert over and len(over) < len(whole)  # only the rows with a long chosen answer

    data = prepare(tmp_path / "drop", base_config, sequence_len=limit)
    assert data.stats.dropped_too_long == len(over)
    assert len(data.train) == len(whole) - len(over)
    assert all(row["length"] <= limit for row in data.train)


def test_truncate_cuts_each_sequence_column_and_keeps_the_others(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    whole = list(prepare(tmp_path / "whole", base_config, sequence_len=512).train)
    limit = max(len(r["rejected_input_ids"]) for r in whole) + 2
    data = prepare(
        tmp_path / "truncate", base_config, sequence_len=limit, excess_length_strategy="truncate"
    )
    assert data.stats.truncated == sum(
        1 for r in whole if max(len(r[c]) for c in SEQUENCES) > limit
    )
    fitted = list(data.train)
    assert len(fitted) == len(whole)  # the build keeps the rows in order
    for before, after in zip(whole, fitted, strict=True):
        for column in SEQUENCES:
            assert after[column] == before[column][:limit]
        assert after["label"] == before["label"]
        assert after["length"] == min(before["length"], limit)
        assert after["n_targets"] == targets(after)


def test_split_is_refused_for_a_format_that_cannot_be_packed(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    with pytest.raises(DataError) as info:
        prepare(tmp_path, base_config, sequence_len=16, excess_length_strategy="split")
    message = str(info.value)
    assert "split" in message and "'test_pairs'" in message
    assert "chosen_input_ids" in message and "drop, truncate or raise" in message


def test_a_skipped_bad_row_is_dropped_and_counted(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    rows = pair_rows()
    del rows[2]["rejected"]
    data = prepare(tmp_path, base_config, rows, sequence_len=512, skip_invalid_rows=True)
    assert data.stats.dropped_invalid == 1
    assert len(data.train) == len(rows) - 1
    assert None not in data.train["label"]


def test_a_format_registered_without_build_falls_back_to_the_build_dataset_hook(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    class LegacyFormat:
        @hookimpl
        def register_dataset_formats(self, register: Callable[[DatasetFormat], None]) -> None:
            register(DatasetFormat("test_legacy"))

        @hookimpl
        def build_dataset(self, entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
            if entry.type != "test_legacy":
                return None

            def tokenize(row: dict[str, Any]) -> dict[str, Any]:
                return tokenize_prompt_response(tokenizer, "", row["text"], train_on_inputs=True)

            return map_rows(dataset, entry, tokenize)

    data_file = write_jsonl(tmp_path / "text.jsonl", [{"text": f"row {i}"} for i in range(4)])
    config = {**base_config, "datasets": [{"path": str(data_file), "type": "test_legacy"}]}
    pm = make_plugin_manager()
    pm.register(LegacyFormat(), name="test_legacy_format")
    data, tokenizer = preprocess(open_session(write_config(tmp_path / "c.yml", config), [], pm))
    texts = sorted(tokenizer.decode(row["input_ids"]) for row in data.train)
    assert texts == [f"<s>row {i}</s>" for i in range(4)]


def test_a_plugin_data_source_is_asked_first_and_keys_the_cache(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    """A `tryfirst` source claims its own URLs; its `identity` changes the cache folder."""
    version = {"value": "1"}

    def load(entry: Any, streaming: bool = False) -> Any:
        count = 6 if version["value"] == "1" else 5
        return rows_table([{"text": f"{entry.path} {i}"} for i in range(count)])

    class MemorySource:
        @hookimpl(tryfirst=True)
        def register_data_sources(self, register: Callable[[DataSource], None]) -> None:
            register(
                DataSource(
                    "test_memory",
                    claims=lambda entry: entry.path.startswith("test-mem://"),
                    load=load,
                    identity=lambda entry: f"v{version['value']}",
                )
            )

    config = {
        **base_config,
        "datasets": [{"path": "test-mem://rows", "type": "completion"}],
        "val_set_size": 0,
    }
    pm = make_plugin_manager()
    pm.register(MemorySource(), name="test_memory_source")
    session = open_session(write_config(tmp_path / "m.yml", config), [], pm)
    first, _ = preprocess(session)
    assert len(first.train) == 6 and not first.from_cache
    assert preprocess(session)[0].from_cache
    version["value"] = "2"
    changed, _ = preprocess(session)
    assert not changed.from_cache and changed.cache_dir != first.cache_dir
    assert len(changed.train) == 5
