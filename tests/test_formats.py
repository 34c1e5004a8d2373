"""The built-in formats: exact rendered text and exact label masks."""

from __future__ import annotations

from pathlib import Path

import pytest
from axolotl_weave import IGNORE_INDEX, DataError, DatasetEntry, tokenize_prompt_response
from axolotl_weave._hooks import Hooks
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave_plugins.data.pipeline import build_format
from axolotl_weave_plugins.formats.alpaca import PROMPT_INPUT, PROMPT_NO_INPUT
from datasets import Dataset
from transformers import AutoTokenizer


class Cfg:
    train_on_inputs = False
    sequence_len = 256


@pytest.fixture(scope="module")
def hooks() -> Hooks:
    return Hooks(make_plugin_manager())


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def split(tokenizer, row: dict) -> tuple[str, str]:
    """(text of the masked tokens, text of the trained tokens)."""
    ids, labels = row["input_ids"], row["labels"]
    masked = [t for t, label in zip(ids, labels, strict=True) if label == IGNORE_INDEX]
    trained = [label for label in labels if label != IGNORE_INDEX]
    return tokenizer.decode(masked), tokenizer.decode(trained)


@pytest.mark.parametrize("with_input", [True, False])
def test_alpaca_renders_prompt_and_masks_it(hooks: Hooks, tokenizer, with_input: bool) -> None:
    row = {"instruction": "Add the numbers.", "input": "2 + 3" if with_input else "", "output": "5"}
    entry = DatasetEntry(path="mem", type="alpaca")
    out = build_format(hooks, entry, Dataset.from_list([row]), tokenizer, Cfg())[0]
    masked, trained = split(tokenizer, out)
    template = PROMPT_INPUT if with_input else PROMPT_NO_INPUT
    prompt = template.format(instruction=row["instruction"], input=row["input"])
    assert masked == "<s>" + prompt
    assert trained == "5</s>"
    assert tokenizer.decode(out["input_ids"]) == "<s>" + prompt + "5</s>"
    assert len(out["input_ids"]) == len(out["labels"]) == len(out["attention_mask"])


def test_alpaca_train_on_inputs_trains_everything(hooks: Hooks, tokenizer) -> None:
    cfg = Cfg()
    cfg.train_on_inputs = True
    row = {"instruction": "Say hi.", "input": "", "output": "hi"}
    out = build_format(
        hooks, DatasetEntry(path="mem", type="alpaca"), Dataset.from_list([row]), tokenizer, cfg
    )[0]
    assert out["labels"] == out["input_ids"]


def test_completion_trains_every_token_of_its_field(hooks: Hooks, tokenizer) -> None:
    entry = DatasetEntry(path="mem", type="completion", field="body")
    out = build_format(
        hooks, entry, Dataset.from_list([{"body": "the quick fox"}]), tokenizer, Cfg()
    )[0]
    assert out["labels"] == out["input_ids"]
    assert tokenizer.decode(out["input_ids"]) == "<s>the quick fox</s>"


def test_completion_missing_field_names_it(hooks: Hooks, tokenizer) -> None:
    entry = DatasetEntry(path="data.jsonl", type="completion")
    with pytest.raises(DataError, match="'text'.*its rows have: body"):
        build_format(hooks, entry, Dataset.from_list([{"body": "x"}]), tokenizer, Cfg())


def test_wrong_field_type_names_row_and_field(hooks: Hooks, tokenizer) -> None:
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": None}]
    rows += [{"instruction": "a", "output": "c"}]
    entry = DatasetEntry(path="data.jsonl", type="alpaca")
    with pytest.raises(DataError, match=r"data.jsonl.*row 2.*'output' is missing or null"):
        build_format(hooks, entry, Dataset.from_list(rows), tokenizer, Cfg())


def test_numbers_where_text_is_expected_are_refused(hooks: Hooks, tokenizer) -> None:
    rows = [{"instruction": "a", "output": 7}]
    entry = DatasetEntry(path="data.jsonl", type="alpaca")
    with pytest.raises(DataError, match=r"row 1.*'output' must be a string, got int"):
        build_format(hooks, entry, Dataset.from_list(rows), tokenizer, Cfg())


def test_prompt_and_response_are_tokenized_apart_as_axolotl_does(tokenizer) -> None:
    """Axolotl's `InstructionPromptTokenizingStrategy.tokenize_prompt` (this test used to assert
    that prompt + response was tokenized as one text; Axolotl tokenizes them apart): the prompt
    with BOS, masked; the response alone, its BOS dropped, EOS appended, trained."""
    out = tokenize_prompt_response(
        tokenizer, "Add the numbers. 2 + 3 ", "Five.", train_on_inputs=False
    )
    prompt = tokenizer("Add the numbers. 2 + 3 ")["input_ids"]
    response = tokenizer("Five.")["input_ids"][1:] + [tokenizer.eos_token_id]
    assert out["input_ids"] == prompt + response
    assert out["labels"] == [IGNORE_INDEX] * len(prompt) + response
    # the prompt's trailing space stays its own (masked) token, as at inference
    assert tokenizer.convert_ids_to_tokens(prompt)[-1] == "Ġ"
    whole = tokenizer("Add the numbers. 2 + 3 Five.")["input_ids"] + [tokenizer.eos_token_id]
    assert out["input_ids"] != whole  # one text would merge " Five" across the boundary


def test_an_empty_prompt_leaves_the_response_its_bos(tokenizer) -> None:
    """A raw text (empty prompt) is tokenized whole: BOS, text, EOS."""
    out = tokenize_prompt_response(tokenizer, "", "the quick fox", train_on_inputs=True)
    assert out["input_ids"] == tokenizer("the quick fox")["input_ids"] + [tokenizer.eos_token_id]
    assert out["labels"] == out["input_ids"]
