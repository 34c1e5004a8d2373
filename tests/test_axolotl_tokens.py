"""The trained tokens of an Axolotl config and data, exactly as Axolotl makes them (issue 15).

Each test writes out the input ids and labels that Axolotl's strategy produces (read from its
source: `prompt_tokenizers.py`, `prompt_strategies/completion.py`, `metharme.py`,
`input_output.py`, `chat_template.py`) on the tiny llama's byte-level BPE tokenizer (`<s>` BOS
added, `</s>` EOS; "Ġ" is a space in its token names).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from axolotl_weave import IGNORE_INDEX
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session, preprocess
from axolotl_weave_testing import build_rows, write_config, write_jsonl

FOX = "the quick brown fox jumps over the lazy dog."
ADD = {"instruction": "Add the numbers.", "input": "2 + 3", "output": "Five."}


def cfg(sequence_len: int = 2048, train_on_inputs: bool = False) -> SimpleNamespace:
    return SimpleNamespace(sequence_len=sequence_len, train_on_inputs=train_on_inputs)


def tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


def masked(ids: list[int]) -> list[int]:
    return [IGNORE_INDEX] * len(ids)


# --- 1. completion: a long text is cut into sequence_len pieces, every piece trained -----------


def test_completion_cuts_a_long_text_into_sequence_len_pieces(weave_hooks, tiny_tokenizer) -> None:
    """`CompletionPromptTokenizingStrategy.tokenize_prompt`: BOS + text + EOS, then consecutive,
    non-overlapping pieces of `sequence_len`: BOS only in the first, EOS only in the last."""
    text = f"{FOX} {FOX}"
    rows = build_rows(weave_hooks, tiny_tokenizer, [{"text": text}], cfg(10), type="completion")
    ids = tiny_tokenizer(text)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert len(ids) == 24
    assert [row["input_ids"] for row in rows] == [ids[0:10], ids[10:20], ids[20:24]]
    assert [tokens(tiny_tokenizer, row["input_ids"]) for row in rows] == [
        ["<s>", "t", "h", "e", "Ġquick", "Ġbrown", "Ġfox", "Ġjumps", "Ġover", "Ġthe"],
        ["Ġlazy", "Ġdog", ".", "Ġthe", "Ġquick", "Ġbrown", "Ġfox", "Ġjumps", "Ġover", "Ġthe"],
        ["Ġlazy", "Ġdog", ".", "</s>"],
    ]
    for row in rows:  # every token of every piece trained
        assert row["labels"] == row["input_ids"]
        assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_completion_reads_at_most_64_sequence_lens_of_a_text(weave_hooks, tiny_tokenizer) -> None:
    """Axolotl's completion loader tokenizes with `max_length=sequence_len * 64`: the rest of the
    text is lost, and a text that fills it gets no EOS."""
    text = " ".join([FOX] * 30)
    assert len(tiny_tokenizer(text)["input_ids"]) > 2 * 64
    rows = build_rows(weave_hooks, tiny_tokenizer, [{"text": text}], cfg(2), type="completion")
    assert len(rows) == 64
    assert [t for row in rows for t in row["input_ids"]] == tiny_tokenizer(text)["input_ids"][:128]
    assert tiny_tokenizer.eos_token_id not in rows[-1]["input_ids"]


def test_completion_of_an_empty_text_gives_no_row(weave_hooks, tiny_tokenizer) -> None:
    """Axolotl's `_tokenize` returns nothing for an empty text (this used to train BOS, EOS)."""
    rows = [{"text": ""}, {"text": "Paris."}, {"text": ""}]
    out = build_rows(weave_hooks, tiny_tokenizer, rows, cfg(), type="completion")
    assert [tokens(tiny_tokenizer, row["input_ids"]) for row in out] == [
        ["<s>", "Pa", "ris", ".", "</s>"]
    ]


@pytest.mark.parametrize("strategy", [None, "drop", "truncate", "split", "raise"])
def test_completion_is_split_whatever_excess_length_strategy_says(
    tmp_path: Path, base_config: dict[str, Any], tiny_tokenizer: Any, strategy: str | None
) -> None:
    """Axolotl splits completion rows in the strategy, before `excess_length_strategy` applies
    (this used to drop the row by default): every piece is trained; a one-token last piece has
    nothing to predict and is dropped, as Axolotl drops rows shorter than `min_sample_len`."""
    text = f"{FOX} {FOX} Paris"  # 25 ids with BOS and EOS: pieces of 8, 8, 8 and 1
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": text}, {"text": ""}])
    config = {**base_config, "datasets": [{"path": str(data), "type": "completion"}]}
    config.update(sequence_len=8, shuffle_merged_datasets=False)
    if strategy:
        config["excess_length_strategy"] = strategy
    session = open_session(write_config(tmp_path / "c.yml", config), [], make_plugin_manager())
    prepared, _ = preprocess(session)
    ids = tiny_tokenizer(text)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert len(ids) == 25
    assert [row["input_ids"] for row in prepared.train] == [ids[0:8], ids[8:16], ids[16:24]]
    assert all(row["labels"] == row["input_ids"] for row in prepared.train)
    assert prepared.stats.dropped_too_long == prepared.stats.truncated == 0


def test_completion_skip_invalid_rows_counts_the_bad_row(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": "Paris."}, {"text": None}])
    config = {**base_config, "datasets": [{"path": str(data), "type": "completion"}]}
    config["skip_invalid_rows"] = True
    session = open_session(write_config(tmp_path / "c.yml", config), [], make_plugin_manager())
    prepared, _ = preprocess(session)
    assert len(prepared.train) == 1 and prepared.stats.dropped_invalid == 1


# --- 2. the prompt/response boundary: tokenized apart, as Axolotl does -------------------------


def test_a_prompt_ending_in_a_space_keeps_its_own_token(weave_hooks, tiny_tokenizer) -> None:
    """`InstructionPromptTokenizingStrategy.tokenize_prompt`: `_tokenize(prompt)` with BOS, all
    masked; `_tokenize(response)` on its own, BOS dropped, EOS appended, all trained. One text
    would give "Ġ3", "ĠFive" and train the prompt's space inside " Five"."""
    row = build_rows(weave_hooks, tiny_tokenizer, [ADD], cfg(), type={})[0]  # user_defined
    ids = row["input_ids"]
    assert tokens(tiny_tokenizer, ids) == [
        *("<s>", "Add", "Ġthe", "Ġnumbers", ".", "Ġ2", "Ġ+", "Ġ3", "Ġ"),  # "{instruction} {input} "
        *("F", "iv", "e", ".", "</s>"),  # "Five." tokenized as a text of its own
    ]
    assert row["labels"] == masked(ids[:9]) + ids[9:]
    whole = tiny_tokenizer("Add the numbers. 2 + 3 Five.")["input_ids"]
    assert tokens(tiny_tokenizer, whole)[-3:] == ["Ġ3", "ĠFive", "."]


def test_alpaca_rows_are_the_prompt_ids_then_the_response_ids(weave_hooks, tiny_tokenizer) -> None:
    row = build_rows(weave_hooks, tiny_tokenizer, [ADD], cfg(), type="alpaca")[0]
    prompt = (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 + 3\n\n### Response:\n"
    )
    prompt_ids = tiny_tokenizer(prompt)["input_ids"]
    response_ids = tiny_tokenizer("Five.")["input_ids"][1:] + [tiny_tokenizer.eos_token_id]
    assert row["input_ids"] == prompt_ids + response_ids
    assert row["labels"] == masked(prompt_ids) + response_ids
    assert tokens(tiny_tokenizer, response_ids) == ["F", "iv", "e", ".", "</s>"]


def test_each_part_is_truncated_to_sequence_len(weave_hooks, tiny_tokenizer) -> None:
    """`_tokenize` truncates the prompt and the response to `sequence_len` each; a response that
    fills it gets no EOS (the core then drops the row, longer than `sequence_len`)."""
    row = {"instruction": FOX, "output": FOX}
    out = build_rows(
        weave_hooks, tiny_tokenizer, [row], cfg(4), type={"no_input_format": "{instruction}"}
    )[0]
    fox = tiny_tokenizer(FOX)["input_ids"]
    assert out["input_ids"] == fox[:4] + fox[1:4]
    assert out["labels"] == masked(fox[:4]) + fox[1:4]


def test_jeopardy_trains_what_is_and_the_answer_as_one_text(weave_hooks, tiny_tokenizer) -> None:
    row = {"question": "The capital of France.", "category": "", "answer": "Paris"}
    out = build_rows(weave_hooks, tiny_tokenizer, [row], cfg(), type="jeopardy")[0]
    response = tiny_tokenizer("what is Paris")["input_ids"][1:] + [tiny_tokenizer.eos_token_id]
    assert out["input_ids"][-len(response) :] == response
    assert out["labels"] == masked(out["input_ids"][: -len(response)]) + response


def test_input_output_segments_are_tokenized_apart(weave_hooks, tiny_tokenizer) -> None:
    """`RawInputOutputStrategy`: each segment alone, no special tokens added, labelled whole."""
    segments = [
        {"text": "Answer: Par", "label": False},
        {"text": "is.", "label": True},
    ]
    row = build_rows(
        weave_hooks, tiny_tokenizer, [{"segments": segments}], cfg(), type="input_output"
    )[0]
    assert tokens(tiny_tokenizer, row["input_ids"]) == [
        "A",
        "n",
        "s",
        "w",
        "er",
        ":",
        "ĠPa",
        "r",
        "is",
        ".",
    ]
    assert row["labels"] == masked(row["input_ids"][:8]) + row["input_ids"][8:]


# --- 3. empty fields ----------------------------------------------------------------------------


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_an_empty_response_adds_no_eos(weave_hooks, tiny_tokenizer, train_on_inputs) -> None:
    """`_tokenize("")` is empty, so the row is the prompt alone: no EOS (this used to add a
    masked EOS, trained with train_on_inputs). Masked, the core drops it (no trained token)."""
    row = {"instruction": "Name a colour.", "output": ""}
    out = build_rows(
        weave_hooks, tiny_tokenizer, [row], cfg(train_on_inputs=train_on_inputs), type="alpaca"
    )[0]
    prompt = tiny_tokenizer(
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n"
    )["input_ids"]
    assert out["input_ids"] == prompt
    assert out["labels"] == (prompt if train_on_inputs else masked(prompt))


def test_metharme_empty_generation_trains_three_eos(weave_hooks, tiny_tokenizer) -> None:
    """Metharme's `_tokenize` has no empty-text case: "" is BOS, three EOS are appended, BOS is
    dropped."""
    row = {"prompt": "<|user|>Name a colour.<|model|>", "generation": ""}
    out = build_rows(weave_hooks, tiny_tokenizer, [row], cfg(), type="metharme")[0]
    prompt = tiny_tokenizer(row["prompt"])["input_ids"]
    eos = [tiny_tokenizer.eos_token_id] * 3
    assert out["input_ids"] == prompt + eos
    assert out["labels"] == masked(prompt) + eos


def test_metharme_empty_prompt_is_bos(weave_hooks, tiny_tokenizer) -> None:
    row = {"prompt": "", "generation": "Blue."}
    out = build_rows(weave_hooks, tiny_tokenizer, [row], cfg(), type="metharme")[0]
    assert tokens(tiny_tokenizer, out["input_ids"]) == [
        "<s>",
        "Bl",
        "ue",
        ".",
        "</s>",
        "</s>",
        "</s>",
    ]
    assert out["labels"] == [IGNORE_INDEX, *out["input_ids"][1:]]


def test_metharme_adds_no_eos_past_sequence_len(weave_hooks, tiny_tokenizer) -> None:
    """Each of the three EOS is added only while the generation's ids (BOS counted) are fewer
    than `sequence_len`: with 4 ids and `sequence_len` 5, one EOS."""
    row = {"prompt": "Q:", "generation": "Blue."}
    out = build_rows(weave_hooks, tiny_tokenizer, [row], cfg(5), type="metharme")[0]
    assert tokens(tiny_tokenizer, out["input_ids"])[-4:] == ["Bl", "ue", ".", "</s>"]


def test_reflection_with_an_empty_part_trains_its_eos(weave_hooks, tiny_tokenizer) -> None:
    row = {**ADD, "output": "Six.", "reflection": "", "corrected": "Five."}
    out = build_rows(weave_hooks, tiny_tokenizer, [row], cfg(), type="reflection")[0]
    prompt = tiny_tokenizer(
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 + 3\n\n### Response:\n"
    )["input_ids"]
    assert out["input_ids"] == prompt + [tiny_tokenizer.eos_token_id]
    assert out["labels"] == masked(prompt) + [tiny_tokenizer.eos_token_id]


# --- 4. chat_template: message_field_training is unset unless the entry names it ----------------


@pytest.mark.parametrize(("field", "trained"), [(None, "Paris.<|im_end|>"), ("training", "")])
def test_a_message_training_key_is_read_only_when_named(
    weave_hooks, tiny_tokenizer, field: str | None, trained: str
) -> None:
    messages = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris.", "training": False},
    ]
    entry: dict[str, Any] = {"type": "chat_template", "chat_template": "chatml"}
    if field:
        entry["message_field_training"] = field
    out = build_rows(weave_hooks, tiny_tokenizer, [{"messages": messages}], cfg(), **entry)[0]
    labels = [label for label in out["labels"] if label != IGNORE_INDEX]
    assert tiny_tokenizer.decode(labels) == trained
