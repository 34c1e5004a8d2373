"""`type: chat_template` (and the deprecated `sharegpt`): every shipped template's rendering and
masks, the options with Axolotl's names, the tokenizer wrapper, and clear errors for bad input."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from axolotl_weave import IGNORE_INDEX, ConfigError, DataError
from axolotl_weave._run import load_tokenizer, open_session
from axolotl_weave_plugins.data.pipeline import build_format
from axolotl_weave_plugins.formats import chat_template as ct
from axolotl_weave_testing import build_rows, dataset_entry, run_weave, write_config, write_jsonl
from pydantic import ValidationError
from transformers import AutoTokenizer

CONTROL_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|im_sep|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eot|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜end▁of▁sentence｜>",
    "<|turn>",
    "<turn|>",
    "<|bom|>",
    "<|eom|>",
    "[|system|]",
    "[|user|]",
    "[|assistant|]",
    "[|endofturn|]",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
]

# the end-of-turn marker(s) each shipped template closes an assistant turn with
END_OF_TURN = {
    "alpaca": "</s>",
    "aya": "<|END_OF_TURN_TOKEN|>",
    "chatml": "<|im_end|>",
    "cohere": "<|END_OF_TURN_TOKEN|>",
    "command_a": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    "command_a_rag": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    "command_a_tool_use": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    "deepseek_v2": "</s>",
    "deepseek_v3": "<｜end▁of▁sentence｜>",
    "exaone": "[|endofturn|]",
    "exaone4": "[|endofturn|]",
    "falcon_h1": "<|im_end|>",
    "gemma": "<end_of_turn>",
    "gemma3": "<end_of_turn>",
    "gemma3n": "<end_of_turn>",
    "gemma4": "<turn|>",
    "gemma4_unified": "<turn|>",
    "jamba": "<|eom|>",
    "llama2": "</s>",
    "llama3": "<|eot_id|>",
    "llama3_2_vision": "<|eot_id|>",
    "llama4": "<|eot|>",
    "llava": "",  # LLaVA's turns end with a space, no marker
    "metharme": "",  # Metharme ends the conversation, not a turn, with EOS (below)
    "mistral_v1": "</s>",
    "mistral_v2v3": "</s>",
    "mistral_v3_tekken": "</s>",
    "mistral_v7_tekken": "</s>",
    "nemotron_h": "<|im_end|>",
    "phi_3": "<|end|>",
    "phi_35": "<|end|>",
    "phi_4": "<|im_end|>",
    "pixtral": "</s>",
    "qwen2_vl": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "qwen3_5": "<|im_end|>",
    "qwen_25": "<|im_end|>",
    "vicuna": "</s>",
    "zephyr": "</s>",
}
TRAINED_ELSE = {"metharme": "Paris.Five.</s>"}
NO_SYSTEM_ROLE = {"gemma"}  # the vendor's template refuses a system message

SYSTEM = "Be brief."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Two plus three?"},
    {"role": "assistant", "content": "Five."},
]


@pytest.fixture(scope="module")
def tok(tiny_llama_dir: Path) -> Any:
    """The tiny tokenizer with the templates' control tokens added as special tokens."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": CONTROL_TOKENS})
    return tokenizer


@pytest.fixture
def fresh_tok(tiny_llama_dir: Path) -> Any:
    """A tokenizer a test may change (its chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": CONTROL_TOKENS})
    return tokenizer


def cfg(**settings: Any) -> SimpleNamespace:
    """A config with the keys the format reads."""
    base = {
        "train_on_inputs": False,
        "sequence_len": 2048,
        "chat_template": None,
        "chat_template_jinja": None,
        "chat_template_kwargs": {},
        "default_system_message": None,
        "eot_tokens": None,
    }
    return SimpleNamespace(**{**base, **settings})


def build(hooks: Any, tokenizer: Any, rows: list[dict], config: Any = None, **entry: Any) -> list:
    """build_rows for a chat_template entry (the type unless given)."""
    entry.setdefault("type", "chat_template")
    return build_rows(hooks, tokenizer, rows, config or cfg(), **entry)


def trained(tokenizer: Any, row: dict) -> str:
    """The text of the trained tokens, in order."""
    ids = [label for label in row["labels"] if label != IGNORE_INDEX]
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def masked(tokenizer: Any, row: dict) -> str:
    """The text of the masked tokens, in order."""
    ids = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label < 0]
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def rendering(tokenizer: Any, template: str, messages: list[dict], **kwargs: Any) -> str:
    """The template's own rendering of `messages`."""
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def assert_ids_are_the_rendering(tokenizer: Any, row: dict, text: str) -> None:
    """The ids are the rendered text tokenized once, and decode back to it."""
    assert row["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(row["input_ids"], clean_up_tokenization_spaces=False) == text
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"])


def no_space(text: str) -> str:
    return re.sub(r"\s", "", text)


# --- every shipped template -----------------------------------------------------------------------


def test_every_shipped_template_is_tested() -> None:
    assert set(ct.template_names()) == set(END_OF_TURN)
    assert {"chatml", "llama3", "gemma", "phi_3", "qwen_25", "alpaca", "mistral_v1"} <= set(
        ct.template_names()
    )


@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_named_template_renders_and_masks(weave_hooks, tok, name: str) -> None:
    messages = CONVERSATION[1:] if name in NO_SYSTEM_ROLE else CONVERSATION
    row = build(weave_hooks, tok, [{"messages": messages}], chat_template=name)[0]
    text = rendering(tok, ct.named_template(name), messages)
    assert_ids_are_the_rendering(tok, row, text)
    eot = END_OF_TURN[name]
    expected = TRAINED_ELSE.get(name, f"Paris.{eot}Five.{eot}")
    got = trained(tok, row)
    # a template that puts a space before the content merges it into the content's first token
    assert no_space(got) == no_space(expected), got
    assert got.strip().startswith("Paris.")
    hidden = masked(tok, row)
    for content in (SYSTEM, "Capital of France?", "Two plus three?"):
        assert (content in hidden) == (content in text)  # Mistral's may leave the system out
    assert "Capital of France?" in hidden
    assert "Paris" not in hidden and "Five" not in hidden


@pytest.mark.parametrize(
    "name", ["chatml", "llama3", "gemma3", "gemma4", "phi_35", "qwen_25", "zephyr", "command_a"]
)
def test_trained_text_is_exact_where_no_space_precedes_content(weave_hooks, tok, name) -> None:
    row = build(weave_hooks, tok, [{"messages": CONVERSATION}], chat_template=name)[0]
    eot = END_OF_TURN[name]
    assert trained(tok, row) == f"Paris.{eot}Five.{eot}"


def test_aliases_name_the_same_template() -> None:
    assert ct.named_template("qwen") == ct.named_template("qwen_25")
    assert ct.named_template("mistral") == ct.named_template("mistral_v1")


def test_template_that_trims_contents(weave_hooks, tok) -> None:
    messages = [
        {"role": "user", "content": "  Capital of France?\n"},
        {"role": "assistant", "content": "\n Paris.  "},
    ]
    row = build(weave_hooks, tok, [{"messages": messages}], chat_template="llama3")[0]
    assert_ids_are_the_rendering(tok, row, rendering(tok, ct.named_template("llama3"), messages))
    assert trained(tok, row) == "Paris.<|eot_id|>"


def test_one_marked_rendering_per_conversation_shape(weave_hooks, fresh_tok, monkeypatch) -> None:
    """Conversations that differ only in their contents share the rendering that locates the
    contents, with the same rows as rendering it for each one; a new shape renders its own."""
    rows = [
        {"messages": [{**m, "content": f"{m['content']} {n}"} for m in CONVERSATION]}
        for n in range(6)
    ] + [{"messages": CONVERSATION[1:3]}]
    renders = []
    real = fresh_tok.apply_chat_template
    monkeypatch.setattr(
        fresh_tok, "apply_chat_template", lambda *a, **k: renders.append(1) or real(*a, **k)
    )
    monkeypatch.setattr(ct, "MARKED_SHAPES", 0)  # none kept: two renderings a row
    expected = build(weave_hooks, fresh_tok, rows, chat_template="chatml")
    assert len(renders) == 2 * len(rows)
    monkeypatch.undo()
    monkeypatch.setattr(
        fresh_tok, "apply_chat_template", lambda *a, **k: renders.append(1) or real(*a, **k)
    )
    renders.clear()
    assert build(weave_hooks, fresh_tok, rows, chat_template="chatml") == expected
    assert len(renders) == len(rows) + 2  # each row once, and each of the two shapes once
    assert trained(fresh_tok, expected[0]) == "Paris. 0<|im_end|>Five. 0<|im_end|>"


def test_qwen3_reasoning_is_trained_with_the_last_answer(weave_hooks, tok) -> None:
    messages = [
        {"role": "user", "content": "Two plus three?"},
        {"role": "assistant", "content": "<think>2+3</think>Five."},
    ]
    row = build(weave_hooks, tok, [{"messages": messages}], chat_template="qwen3")[0]
    text = rendering(tok, ct.named_template("qwen3"), messages)
    assert "<think>\n2+3\n</think>\n\nFive." in text
    assert_ids_are_the_rendering(tok, row, text)
    assert trained(tok, row) == "2+3\n</think>\n\nFive.<|im_end|>"


def test_tools_and_tool_calls_render(weave_hooks, tok) -> None:
    tools = [{"type": "function", "function": {"name": "add", "description": "Add numbers."}}]
    messages = [
        {"role": "user", "content": "Two plus three?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}],
        },
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "Five."},
    ]
    row = build(weave_hooks, tok, [{"messages": messages, "tools": tools}], chat_template="qwen_25")
    text = tok.decode(row[0]["input_ids"], clean_up_tokenization_spaces=False)
    assert '"name": "add"' in text and '{"name": "add", "arguments": {"a": 2, "b": 3}}' in text
    assert "<tool_response>\n5\n</tool_response>" in text
    assert trained(tok, row[0]).endswith("Five.<|im_end|>")
    assert '"arguments"' in trained(tok, row[0])  # the tool call is the assistant's to learn


def test_offsets_work_without_special_control_tokens(weave_hooks, tiny_tokenizer) -> None:
    row = build(weave_hooks, tiny_tokenizer, [{"messages": CONVERSATION}], chat_template="chatml")
    text = rendering(tiny_tokenizer, ct.named_template("chatml"), CONVERSATION)
    assert_ids_are_the_rendering(tiny_tokenizer, row[0], text)
    assert no_space(trained(tiny_tokenizer, row[0])) == "Paris.<|im_end|>Five.<|im_end|>"


# --- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("turn", "Paris.<|im_end|>Five.<|im_end|>"),
        ("all", "<|im_end|><|im_end|>Paris.<|im_end|><|im_end|>Five.<|im_end|>"),
        ("last", "Paris.Five.<|im_end|>"),
        ("none", "Paris.Five."),
    ],
)
def test_train_on_eos(weave_hooks, tok, mode: str, expected: str) -> None:
    rows = [{"messages": CONVERSATION}]
    row = build(weave_hooks, tok, rows, chat_template="chatml", train_on_eos=mode)[0]
    assert trained(tok, row) == expected


def test_train_on_eos_defaults_to_turn() -> None:
    entry = dataset_entry(_formats(), type="chat_template")
    assert entry.option("train_on_eos") == "turn"
    assert entry.option("roles_to_train") == ["assistant"]
    assert entry.option("field_messages") == "messages"
    # unset, as in Axolotl (it used to default to "training", reading a key Axolotl ignores)
    assert entry.option("message_field_training") is None


def _formats() -> dict:
    from axolotl_weave._hooks import Hooks
    from axolotl_weave._pluginmanager import make_plugin_manager

    return Hooks(make_plugin_manager()).dataset_formats()


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["user"], "Capital of France?<|im_end|>Two plus three?<|im_end|>"),
        (["system", "assistant"], "Be brief.<|im_end|>Paris.<|im_end|>Five.<|im_end|>"),
        (["gpt"], "Paris.<|im_end|>Five.<|im_end|>"),  # a source name means its target role
        ([], ""),
        (None, "Five.<|im_end|>"),  # Axolotl: null trains the last message only
    ],
)
def test_roles_to_train(weave_hooks, tok, roles, expected: str) -> None:
    rows = [{"messages": CONVERSATION}]
    row = build(weave_hooks, tok, rows, chat_template="chatml", roles_to_train=roles)[0]
    assert trained(tok, row) == expected


def test_train_on_inputs_trains_every_content_but_not_headers(weave_hooks, tok) -> None:
    rows = [{"messages": CONVERSATION}]
    row = build(weave_hooks, tok, rows, cfg(train_on_inputs=True), chat_template="chatml")[0]
    assert trained(tok, row) == (
        "Be brief.<|im_end|>Capital of France?<|im_end|>Paris.<|im_end|>"
        "Two plus three?<|im_end|>Five.<|im_end|>"
    )


def test_roles_mapping(weave_hooks, tok) -> None:
    messages = [
        {"role": "person", "content": "Capital of France?"},
        {"role": "bot", "content": "Paris."},
    ]
    roles = {"user": ["person"], "assistant": ["bot"]}
    row = build(weave_hooks, tok, [{"messages": messages}], chat_template="chatml", roles=roles)[0]
    standard = [{"role": "user", "content": "Capital of France?"}]
    standard.append({"role": "assistant", "content": "Paris."})
    assert_ids_are_the_rendering(tok, row, rendering(tok, ct.named_template("chatml"), standard))
    assert trained(tok, row) == "Paris.<|im_end|>"


def test_default_roles_map_sharegpt_names(weave_hooks, tok) -> None:
    messages = [{"role": "human", "content": "Hi?"}, {"role": "gpt", "content": "Paris."}]
    row = build(weave_hooks, tok, [{"messages": messages}], chat_template="chatml")[0]
    assert "<|im_start|>user\nHi?" in tok.decode(row["input_ids"])
    assert trained(tok, row) == "Paris.<|im_end|>"


def test_per_message_training_flags(weave_hooks, tok) -> None:
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["training"] = False  # first answer not trained
    messages[3]["training"] = True  # the second question trained
    rows = [{"messages": messages}]
    row = build(weave_hooks, tok, rows, chat_template="chatml", message_field_training="training")[
        0
    ]
    assert trained(tok, row) == "Two plus three?<|im_end|>Five.<|im_end|>"
    assert "training" not in tok.decode(row["input_ids"])


def test_per_message_training_keys_are_ignored_unless_named(weave_hooks, tok) -> None:
    """Axolotl reads a message's flag only under `message_field_training` (default unset): a
    `training` key alone changes nothing (this used to be honoured by default)."""
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["training"] = False
    messages[3]["training"] = True
    row = build(weave_hooks, tok, [{"messages": messages}], chat_template="chatml")[0]
    plain = build(weave_hooks, tok, [{"messages": CONVERSATION}], chat_template="chatml")[0]
    assert row["labels"] == plain["labels"] and row["input_ids"] == plain["input_ids"]
    assert trained(tok, row) == "Paris.<|im_end|>Five.<|im_end|>"


def test_custom_training_field(weave_hooks, tok) -> None:
    messages = [dict(m) for m in CONVERSATION]
    messages[4]["train"] = False
    rows = [{"messages": messages}]
    row = build(weave_hooks, tok, rows, chat_template="chatml", message_field_training="train")[0]
    assert trained(tok, row) == "Paris.<|im_end|>"


def test_training_detail_trains_only_the_marked_characters(weave_hooks, tok) -> None:
    content = "I'm doing very well, thank you!"
    detail = [
        {"begin_offset": 0, "end_offset": 8, "train": False},
        {"begin_offset": 9, "end_offset": 18, "train": True},
        {"begin_offset": 19, "end_offset": 30, "train": False},
    ]
    messages = [
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": content, "train_detail": detail},
    ]
    row = build(
        weave_hooks,
        tok,
        [{"messages": messages}],
        chat_template="chatml",
        message_field_training_detail="train_detail",
    )[0]
    assert trained(tok, row) == " very well<|im_end|>"


def test_field_and_property_mappings(weave_hooks, tok) -> None:
    convo = [{"from": m["role"], "value": m["content"], "extra": None} for m in CONVERSATION]
    mappings = {"role": "from", "content": "value"}
    new = build(
        weave_hooks,
        tok,
        [{"conversations": convo}],
        chat_template="chatml",
        field_messages="conversations",
        message_property_mappings=mappings,
    )[0]
    old = build(
        weave_hooks,
        tok,
        [{"conversations": convo}],
        chat_template="chatml",
        field_messages="conversations",
        message_field_role="from",
        message_field_content="value",
    )[0]
    plain = build(weave_hooks, tok, [{"messages": CONVERSATION}], chat_template="chatml")[0]
    assert new == old == plain


def test_system_column_is_used_when_the_conversation_has_none(weave_hooks, tok) -> None:
    rows = [{"messages": CONVERSATION[1:], "system": SYSTEM}]
    row = build(weave_hooks, tok, rows, chat_template="chatml")[0]
    plain = build(weave_hooks, tok, [{"messages": CONVERSATION}], chat_template="chatml")[0]
    assert row == plain


def test_drop_system_message(weave_hooks, tok) -> None:
    rows = [{"messages": CONVERSATION}]
    row = build(weave_hooks, tok, rows, chat_template="chatml", drop_system_message=True)[0]
    text = rendering(tok, ct.named_template("chatml"), CONVERSATION[1:])
    assert_ids_are_the_rendering(tok, row, text)


def test_default_system_message(weave_hooks, tok) -> None:
    config = cfg(default_system_message="Answer in French.")
    given = [{"role": "system", "content": "Answer in French."}, *CONVERSATION[1:]]
    expected = rendering(tok, ct.named_template("chatml"), given)
    # a conversation without a system message gets the default...
    row = build(weave_hooks, tok, [{"messages": CONVERSATION[1:]}], config, chat_template="chatml")
    assert_ids_are_the_rendering(tok, row[0], expected)
    # ...one with its own keeps it, unless drop_system_message: then the default replaces it
    row = build(weave_hooks, tok, [{"messages": CONVERSATION}], config, chat_template="chatml")
    assert "Be brief." in tok.decode(row[0]["input_ids"])
    rows = [{"messages": CONVERSATION}]
    row = build(weave_hooks, tok, rows, config, chat_template="chatml", drop_system_message=True)
    assert_ids_are_the_rendering(tok, row[0], expected)


def test_default_system_message_built_into_a_template(tok) -> None:
    template = ct.with_default_system(ct.named_template("chatml"), 'Say "hi".\n')
    without = rendering(tok, template, CONVERSATION[1:])
    assert without.startswith('<|im_start|>system\nSay "hi".\n<|im_end|>\n<|im_start|>user')
    assert rendering(tok, template, CONVERSATION).startswith("<|im_start|>system\nBe brief.")


def test_tokenizer_default_and_fallback(weave_hooks, fresh_tok) -> None:
    rows = [{"messages": CONVERSATION}]
    with pytest.raises(ConfigError, match="tokenizer has no chat template"):
        build(weave_hooks, fresh_tok, rows, chat_template="tokenizer_default")
    with pytest.raises(ConfigError, match="tokenizer has no chat template"):
        build(weave_hooks, fresh_tok, rows)  # no template anywhere
    fallback = build(
        weave_hooks, fresh_tok, rows, chat_template="tokenizer_default_fallback_llama3"
    )
    llama3 = rendering(fresh_tok, ct.named_template("llama3"), CONVERSATION)
    assert_ids_are_the_rendering(fresh_tok, fallback[0], llama3)

    fresh_tok.chat_template = ct.named_template("gemma3")
    gemma = rendering(fresh_tok, ct.named_template("gemma3"), CONVERSATION)
    for choice in ("tokenizer_default", "tokenizer_default_fallback_llama3", None):
        row = build(weave_hooks, fresh_tok, rows, chat_template=choice)[0]
        assert_ids_are_the_rendering(fresh_tok, row, gemma)
        assert trained(fresh_tok, row) == "Paris.<end_of_turn>Five.<end_of_turn>"


def test_top_level_template_applies_unless_the_entry_names_one(weave_hooks, tok) -> None:
    rows = [{"messages": CONVERSATION}]
    row = build(weave_hooks, tok, rows, cfg(chat_template="llama3"))[0]
    assert trained(tok, row) == "Paris.<|eot_id|>Five.<|eot_id|>"
    row = build(weave_hooks, tok, rows, cfg(chat_template="llama3"), chat_template="chatml")[0]
    assert trained(tok, row) == "Paris.<|im_end|>Five.<|im_end|>"


CUSTOM = (
    "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }} ###END\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)


def test_chat_template_jinja(weave_hooks, tok, tmp_path: Path) -> None:
    rows = [{"messages": CONVERSATION}]
    config = cfg(eot_tokens=["###END"])
    row = build(weave_hooks, tok, rows, config, chat_template_jinja=CUSTOM)[0]
    assert_ids_are_the_rendering(tok, row, rendering(tok, CUSTOM, CONVERSATION))
    assert no_space(trained(tok, row)) == "Paris.###ENDFive.###END"
    # explicit `chat_template: jinja`, the template in a file
    path = tmp_path / "custom.jinja"
    path.write_text(CUSTOM)
    same = build(
        weave_hooks, tok, rows, config, chat_template="jinja", chat_template_jinja=str(path)
    )
    assert same[0] == row
    # the top-level key
    top = build(weave_hooks, tok, rows, cfg(eot_tokens=["###END"], chat_template_jinja=CUSTOM))
    assert top[0] == row


def test_chat_template_kwargs_reach_the_template(weave_hooks, tok) -> None:
    template = "{% for m in messages %}{{ greeting }} {{ m['content'] }}</s>{% endfor %}"
    rows = [{"messages": CONVERSATION[1:3]}]
    config = cfg(chat_template_kwargs={"greeting": "Hey"})
    row = build(weave_hooks, tok, rows, config, chat_template_jinja=template)[0]
    assert tok.decode(row["input_ids"]) == "Hey Capital of France?</s>Hey Paris.</s>"
    assert trained(tok, row) == " Paris.</s>"


# --- sharegpt -------------------------------------------------------------------------------------

SHAREGPT = [
    {"from": "system", "value": SYSTEM},
    {"from": "human", "value": "Capital of France?"},
    {"from": "gpt", "value": "Paris."},
    {"from": "human", "value": "Two plus three?"},
    {"from": "gpt", "value": "Five."},
]


def test_sharegpt_is_read_as_chat_template_with_a_warning(
    weave_hooks, tok, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(ct, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        row = build(
            weave_hooks, tok, [{"conversations": SHAREGPT}], type="sharegpt", conversation="chatml"
        )[0]
        build(
            weave_hooks, tok, [{"conversations": SHAREGPT}], type="sharegpt", conversation="chatml"
        )
    warnings = [r for r in caplog.records if "sharegpt is deprecated" in r.getMessage()]
    assert len(warnings) == 1
    assert "field_messages: conversations" in warnings[0].getMessage()
    plain = build(weave_hooks, tok, [{"messages": CONVERSATION}], chat_template="chatml")[0]
    assert row == plain


def test_sharegpt_conversation_names_map_to_templates(weave_hooks, tok) -> None:
    rows = [{"conversations": SHAREGPT}]
    row = build(weave_hooks, tok, rows, type="sharegpt", conversation="llama-2")[0]
    assert_ids_are_the_rendering(
        tok, row, rendering(tok, ct.named_template("llama2"), CONVERSATION)
    )
    # no conversation: the old default, Vicuna (when neither config nor tokenizer has a template)
    row = build(weave_hooks, tok, rows, type="sharegpt")[0]
    assert_ids_are_the_rendering(
        tok, row, rendering(tok, ct.named_template("vicuna"), CONVERSATION)
    )


def test_sharegpt_old_role_keys(weave_hooks, tok) -> None:
    convo = [
        {"from": "asker", "value": "Capital of France?"},
        {"from": "answerer", "value": "Paris."},
    ]
    rows = [{"conversations": convo}]
    plain = build(weave_hooks, tok, [{"messages": CONVERSATION[1:3]}], chat_template="chatml")[0]
    fields = build(
        weave_hooks,
        tok,
        rows,
        type="sharegpt",
        conversation="chatml",
        field_human="asker",
        field_model="answerer",
    )[0]
    roles = {"input": ["asker"], "output": ["answerer"]}
    io = build(weave_hooks, tok, rows, type="sharegpt", conversation="chatml", roles=roles)[0]
    assert fields == io == plain


# --- the tokenizer wrapper, through a whole config -----------------------------------------------


@pytest.fixture
def chat_config(tmp_path: Path, base_config: dict[str, Any]) -> Path:
    rows = [{"messages": CONVERSATION[1:]} for _ in range(8)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    config = {
        **base_config,
        "chat_template": "chatml",
        "default_system_message": "Be brief.",
        "sequence_len": 1024,  # the control tokens are many pieces for the tiny tokenizer
        "datasets": [{"path": str(data), "type": "chat_template", "train_on_eos": "turn"}],
    }
    return write_config(tmp_path / "config.yml", config)


def test_tokenizer_gets_the_top_level_template(chat_config: Path) -> None:
    session = open_session(chat_config)
    assert session.cfg.chat_template == "chatml"
    tokenizer = load_tokenizer(session, None)
    chatml = ct.named_template("chatml")
    assert tokenizer.chat_template == ct.with_default_system(chatml, "Be brief.")
    text = tokenizer.apply_chat_template(CONVERSATION[1:3], tokenize=False)
    assert text == rendering(tokenizer, chatml, CONVERSATION[:3])


def test_preprocess_with_a_chat_template(chat_config: Path, tmp_path: Path) -> None:
    result = run_weave("preprocess", str(chat_config), cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "8 train / 0 eval rows" in " ".join(result.stdout.split())


# --- bad input ------------------------------------------------------------------------------------


def test_unknown_template_name_is_refused_at_validation() -> None:
    with pytest.raises(ValidationError, match=r"unknown chat_template 'chatmll' \(did you mean"):
        dataset_entry(_formats(), type="chat_template", chat_template="chatmll")
    with pytest.raises(ValidationError, match="valid: .*llama3"):
        ct.ChatTemplateSettings(chat_template="lama3")
    with pytest.raises(ValidationError, match="unknown chat_template"):
        ct.ChatTemplateSettings(chat_template="tokenizer_default_fallback_nope")
    assert ct.ChatTemplateSettings(chat_template="tokenizer_default_fallback_qwen").chat_template


def test_top_level_name_is_checked_in_the_config(tmp_path: Path, base_config) -> None:
    path = write_config(tmp_path / "config.yml", {**base_config, "chat_template": "gema"})
    with pytest.raises(ConfigError, match=r"chat_template.*did you mean gemma"):
        open_session(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"chat_template": "jinja"}, "chat_template: jinja needs chat_template_jinja"),
        (
            {"message_field_role": "from", "message_property_mappings": {"role": "speaker"}},
            "contradicts",
        ),
        ({"type": "sharegpt", "conversation": "vicuna_v9"}, "unknown sharegpt conversation"),
        ({"train_on_eos": "sometimes"}, "train_on_eos"),
    ],
)
def test_bad_options_are_refused(entry: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        dataset_entry(_formats(), **{"type": "chat_template", **entry})


def test_missing_messages_field(weave_hooks, tok) -> None:
    with pytest.raises(DataError, match=r"lacks the field\(s\) 'messages'; its rows have: chat"):
        build(weave_hooks, tok, [{"chat": []}], chat_template="chatml")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (None, r"row 1: ValueError: field 'messages' is missing or null"),
        ([], r"row 1: ValueError: field 'messages' is an empty conversation"),
        ("hello", r"row 1: TypeError: field 'messages' must be a list"),
        ([{"content": "Hi"}], r"row 1: ValueError: messages\[0\] has no 'role'"),
        ([{"role": "user"}], r"row 1: ValueError: messages\[0\] has no 'content'"),
        ([{"role": "user", "content": 3}], r"messages\[0\].content must be a string, got int"),
        (
            [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hey"}],
            r"messages\[1\] has role 'bot', which is not mapped; valid roles: assistant, gpt, "
            r"human, system, tool, user",
        ),
        (["hi"], r"messages\[0\] must be a mapping"),
        ([{"role": "user", "content": "Hi", "training": "yes"}], r"training must be true or false"),
    ],
)
def test_bad_rows_name_the_row_and_the_problem(weave_hooks, tok, messages, message: str) -> None:
    with pytest.raises(DataError, match=r"dataset 'rows' \(type: chat_template\), .*" + message):
        rows = [{"messages": messages}]
        build(weave_hooks, tok, rows, chat_template="chatml", message_field_training="training")


def test_a_bad_row_after_good_ones_is_named(weave_hooks, tok) -> None:
    rows = [{"messages": CONVERSATION}, {"messages": [{"role": "user", "content": None}]}]
    with pytest.raises(DataError, match=r"row 2: ValueError: messages\[0\] has no 'content'"):
        build(weave_hooks, tok, rows, chat_template="chatml")


def test_template_refusing_a_conversation_names_the_row(weave_hooks, tok) -> None:
    messages = [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hey"}]
    with pytest.raises(DataError, match=r"row 1: .*refused the conversation.*alternate"):
        build(weave_hooks, tok, [{"messages": messages}], chat_template="gemma")


def test_gemma_refuses_a_system_message_naming_the_template_and_row(weave_hooks, tok) -> None:
    # Gemma 1/2's own template raises on a system message; nothing is folded silently
    rows = [{"messages": CONVERSATION[1:]}, {"messages": CONVERSATION}]
    with pytest.raises(
        DataError,
        match=r"row 2: ValueError: chat template 'gemma' refused the conversation: System role "
        r"not supported \(this template has no system role: drop the system message with "
        r"drop_system_message: true",
    ):
        build(weave_hooks, tok, rows, chat_template="gemma")
    row = build(weave_hooks, tok, rows, chat_template="gemma", drop_system_message=True)[1]
    assert_ids_are_the_rendering(
        tok, row, rendering(tok, ct.named_template("gemma"), CONVERSATION[1:])
    )


def test_template_leaving_the_system_message_out_warns(weave_hooks, tok, caplog, monkeypatch):
    # Mistral v2/v3 show the system prompt only before a final user message, as Mistral's do
    monkeypatch.setattr(ct, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        row = build(weave_hooks, tok, [{"messages": CONVERSATION}], chat_template="mistral_v2v3")
    assert SYSTEM not in tok.decode(row[0]["input_ids"])
    assert any(
        "chat template 'mistral_v2v3' leaves the system message out" in r.getMessage()
        for r in caplog.records
    )
    asks = CONVERSATION[:4]
    text = rendering(tok, ct.named_template("mistral_v2v3"), asks)
    assert text.endswith(f"[INST] {SYSTEM}\n\nTwo plus three?[/INST]")


def test_bad_rows_can_be_skipped(weave_hooks, tok) -> None:
    from datasets import Dataset

    entry = dataset_entry(
        weave_hooks.dataset_formats(), type="chat_template", chat_template="chatml"
    )
    entry._source = SimpleNamespace(skip_invalid_rows=True, num_proc=None)
    rows = [{"messages": CONVERSATION}, {"messages": []}]
    built = build_format(weave_hooks, entry, Dataset.from_list(rows), tok, cfg())
    assert built[1]["input_ids"] == [] and len(built[0]["input_ids"]) > 0


def test_slow_tokenizer_is_refused_clearly(weave_hooks) -> None:
    slow = SimpleNamespace(is_fast=False, chat_template=None, eos_token="</s>")
    with pytest.raises(ConfigError, match="needs a fast tokenizer"):
        build(weave_hooks, slow, [{"messages": CONVERSATION}], chat_template="chatml")
