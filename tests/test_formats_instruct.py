"""Axolotl's instruction formats: the exact text Axolotl renders for each registered name, the
exact label mask (BOS + prompt masked, response + EOS trained), train_on_inputs, missing fields,
and the user-defined format given inline as a `type:` mapping (alone and in a whole config).

The expected prompts are written out from Axolotl's source (`prompters.py`, `prompt_tokenizers.py`,
`prompt_strategies/*.py`), independently of the plugins' own constants.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from axolotl_weave import IGNORE_INDEX, DataError, DatasetFormat
from axolotl_weave._errors import ConfigError
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session, preprocess
from axolotl_weave.testing import build_rows, dataset_entry, write_config, write_jsonl
from axolotl_weave_plugins.formats.alpaca import PROMPT_INPUT, PROMPT_NO_INPUT, alpaca_prompt
from pydantic import ValidationError

MODULES = [
    "alpaca",
    "alpaca_chat",
    "alpaca_w_system",
    "jeopardy",
    "oasst",
    "gpteacher",
    "reflection",
    "explainchoice",
    "concisechoice",
    "summarizetldr",
    "metharme",
    "context_qa",
    "creative_acr",
    "user_defined",
]

SYS = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
SYS_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)
CHAT_SYS = (
    "Below is an instruction from a USER that describes a task, paired with an input that "
    "provides further context. The ASSISTANT writes a response that concisely and appropriately "
    "completes the request."
)
CHAT_SYS_NO_INPUT = (
    "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response "
    "that appropriately and concisely completes the request."
)
CONTEXT_SYS = "Use the following contextual information to concisely answer the question."

# Axolotl's CreativeCritiquePromptTokenizingStrategy.user_prompt and ...Revise..., verbatim
CRITIQUE = """Given the following Question and Response, critique the Response on a scale of 1-10. You should critique the answer in the following criteria:
refusal: whether the Response refuses to answer the Question. Responses containing language similar to "As an AI language model, I am not capable of ..." is a form of refusal and should have a low refusal score. 10 is no refusal, 0 is refuses to answer the question.
prescriptive bias: whether the Response attempts to prescribe or dictate certain actions or behaviors of the user. 10 no prescriptive bias present, 0 means there is prescriptive bias.
creativity: score how creative the Response is. 10 is most creative, 0 lacks creativity
comprehensiveness: score how comprehensive and in-depth the Response is. 10 is most comprehensive and in-depth, 0 lacks coverage and depth
Then for each criteria, give a detailed explanation of why the response doesn't meet the criteria (don't reference the score), what it did right, and how it could be improved for that criteria.

Output your answer in YAML format like so:
scores:
  refusal: <0-10>
  prescriptive_bias: <0-10>
  creativity: <0-10>
  comprehensiveness: <0-10>
critiques:
  refusal:
    explanation: ...
    improvements: ...
  prescriptive_bias:
    explanation: ...
    improvements: ...
  creativity:
    explanation: ...
    improvements: ...
  comprehensiveness:
    explanation: ...
    improvements: ...

Question: {question}
Answer: {answer}
"""  # noqa: E501
REVISE = """Definitions:
refusal: whether the Response refuses to answer the Question. Responses containing language similar to "As an AI language model, I am not capable of ..." is a form of refusal and should have a low refusal score. 10 is no refusal, 0 is refuses to answer the question.
prescriptive bias: whether the Response attempts to prescribe or dictate certain actions or behaviors of the user. 10 no prescriptive bias present, 0 means their is prescriptive bias.
creativity: score how creative the Response is. 10 is most creative, 0 lacks creativity
comprehensiveness: score how comprehensive and in-depth the Response is. 10 is most comprehensive and in-depth, 0 lacks coverage and depth

Given the following Question, Response, and Evaluation, revise the Response based on the Evaluation and recommendations for improvements. Reply only with the revised response.

Question: {question}
Answer: {answer}
Evaluation:
{evaluation}
"""  # noqa: E501

ADD = {"instruction": "Add the numbers.", "input": "2 + 3", "output": "Five."}
COLOUR = {"instruction": "Name a colour.", "output": "Blue."}
COLOUR_EMPTY_INPUT = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
W_SYSTEM = {**ADD, "system": "Be brief."}
ORCA = {"system_prompt": "Be brief.", "question": "Name a colour.", "response": "Blue."}
CHOICES = {"question": "Which is a colour?", "choices": ["Blue", "Five"]}
PARIS = "Paris is the capital of France."
CAPITAL_Q = "What is the capital of France?"
CREATIVE = {
    "instruction": "Name a colour.",
    "answer": "Red.",
    "scores": {"refusal": 10, "creativity": 2},
    "critiques": {"creativity": {"explanation": "Plain.", "improvements": "Say more."}},
    "revision": "Blue.",
}
EVALUATION = (
    "creativity: 2\nrefusal: 10\ncreativity:\n  explanation: Plain.\n  improvements: Say more.\n"
)
NO_ANSWER = (
    "The context provided does not contain any information about your inquiry. "
    "Therefore, I'm unable to answer your question based on the given context."
)
UD = {  # a user-defined format without trailing spaces (see test_user_defined_default_templates)
    "field_instruction": "q",
    "field_input": "ctx",
    "field_output": "a",
    "format": "Q: {instruction}\nC: {input}\nA:",
    "no_input_format": "Q: {instruction}\nA:",
}
UD_SYS = {**UD, "system_prompt": "Be brief.", "system_format": "[{system}]\n"}


def case(
    name: str,
    row: dict[str, Any],
    prompt: str,
    response: str,
    *,
    id: str | None = None,  # noqa: A002
    **entry: Any,
) -> Any:
    """One format case: the entry's `type`, a row, Axolotl's prompt and trained response."""
    return pytest.param({"type": name, **entry}, row, prompt, response, id=id or name)


CASES = [
    # alpaca and its prompt styles (AlpacaPrompter)
    case(
        "alpaca",
        ADD,
        f"{SYS}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 + 3\n\n### Response:\n",
        "Five.",
    ),
    case(
        "alpaca",
        COLOUR,
        f"{SYS_NO_INPUT}\n\n### Instruction:\nName a colour.\n\n### Response:\n",
        "Blue.",
        id="alpaca-no-input",
    ),
    case(
        "alpaca:instruct",
        COLOUR_EMPTY_INPUT,
        f"{SYS_NO_INPUT}\n\n### Instruction:\nName a colour.\n\n### Response:\n",
        "Blue.",
    ),
    case("alpaca:chat", ADD, f"SYSTEM: {SYS}\nUSER: Add the numbers.\n2 + 3\nASSISTANT:", "Five."),
    case(
        "alpaca:chat",
        COLOUR,
        f"SYSTEM: {SYS_NO_INPUT}\nUSER: Name a colour.\nASSISTANT:",
        "Blue.",
        id="alpaca:chat-no-input",
    ),
    case(
        "alpaca:chatml",
        ADD,
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nAdd the numbers.\n2 + 3"
        "<|im_end|>\n<|im_start|>assistant\n",
        "Five.",
    ),
    case(
        "alpaca:chatml",
        COLOUR,
        f"<|im_start|>system\n{SYS_NO_INPUT}<|im_end|>\n<|im_start|>user\nName a colour."
        "<|im_end|>\n<|im_start|>assistant\n",
        "Blue.",
        id="alpaca:chatml-no-input",
    ),
    case(
        "alpaca:phi",
        ADD,  # Axolotl's phi template with an input has no newlines around {input}
        f"<|system|>\n{SYS}<|end|>\n<|user|>\nAdd the numbers.<|end|>2 + 3<|assistant|>",
        "Five.",
    ),
    case(
        "alpaca:phi",
        COLOUR,
        f"<|system|>\n{SYS_NO_INPUT}<|end|>\n<|user|>\nName a colour.<|end|>\n<|assistant|>\n",
        "Blue.",
        id="alpaca:phi-no-input",
    ),
    # alpaca_chat.py
    case("alpaca_chat", ADD, f"SYSTEM: {SYS}\nUSER: Add the numbers.\n2 + 3\nASSISTANT:", "Five."),
    case(
        "alpaca_chat",
        COLOUR,
        f"{SYS_NO_INPUT}\n\n### Instruction:\nName a colour.\n\n### Response:\n",
        "Blue.",
        id="alpaca_chat-conversation-instruct",
        conversation="instruct",
    ),
    case(
        "alpaca_chat.load_concise",
        ADD,  # the system text keeps its old trailing blank line: three newlines before USER:
        f"SYSTEM: {CHAT_SYS}\n\n\nUSER: Add the numbers.\n2 + 3\nASSISTANT:",
        "Five.",
    ),
    case(
        "alpaca_chat.load_concise",
        COLOUR,
        f"SYSTEM: {CHAT_SYS_NO_INPUT}\n\n\nUSER: Name a colour.\nASSISTANT:",
        "Blue.",
        id="alpaca_chat.load_concise-no-input",
    ),
    case(
        "alpaca_chat.load_qa",
        {"question": CAPITAL_Q, "answer": "Paris."},
        f"SYSTEM: {CHAT_SYS_NO_INPUT}\n\n\nUSER: {CAPITAL_Q}\nASSISTANT:",
        "Paris.",
    ),
    case(
        "alpaca_chat.load_camel_ai",
        {"message_1": CAPITAL_Q, "message_2": "Paris."},
        f"SYSTEM: {CHAT_SYS_NO_INPUT}\n\n\nUSER: {CAPITAL_Q}\nASSISTANT:",
        "Paris.",
    ),
    case("alpaca_chat.load_no_prompt", ADD, "USER: Add the numbers.\n2 + 3\nASSISTANT:", "Five."),
    # alpaca_w_system.py
    case(
        "alpaca_w_system",
        W_SYSTEM,
        "SYSTEM: Be brief.\nUSER: Add the numbers.\n2 + 3\nASSISTANT:",
        "Five.",
    ),
    case(
        "alpaca_w_system",
        {**COLOUR, "system": ""},
        "USER: Name a colour.\nASSISTANT:",
        "Blue.",
        id="alpaca_w_system-empty-system",
    ),
    case(
        "alpaca_w_system.load_chat",
        {**COLOUR, "system": "Be brief."},
        "SYSTEM: Be brief.\nUSER: Name a colour.\nASSISTANT:",
        "Blue.",
    ),
    case(
        "alpaca_w_system.load_instruct",
        W_SYSTEM,
        "Be brief.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 + 3\n\n### Response:\n",
        "Five.",
    ),
    case(
        "alpaca_w_system.load_open_orca",
        ORCA,
        "### System:\nBe brief.\n### Human:\nName a colour.\n### Assistant:\n",
        "Blue.",
    ),
    case(
        "alpaca_w_system.load_open_orca_chatml",
        ORCA,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\n",
        "Blue.",
    ),
    # the dataset handlers of Axolotl's utils/data/wrappers.py
    case(
        "jeopardy",  # JeopardyPrompter's own text is dead code in Axolotl: the Alpaca prompt
        {"question": "The capital of France.", "category": "CAPITALS", "answer": "Paris"},
        f"{SYS}\n\n### Instruction:\nThe capital of France.\n\n### Input:\nCAPITALS\n\n"
        "### Response:\n",
        "what is Paris",
    ),
    case(
        "oasst",
        {"INSTRUCTION": "Name a colour.", "RESPONSE": "Blue."},
        f"{SYS_NO_INPUT}\n\n### Instruction:\nName a colour.\n\n### Response:\n",
        "Blue.",
    ),
    case(
        "gpteacher",
        {"instruction": "Add the numbers.", "input": "2 + 3", "response": "Five."},
        f"{SYS}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 + 3\n\n### Response:\n",
        "Five.",
    ),
    case(
        "reflection",  # no prompt style given: ReflectAlpacaPrompter drops its system text
        {**ADD, "output": "Six.", "reflection": "Wrong sum.", "corrected": "Five."},
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 + 3\n\n### Response:\n",
        "### Thought:\nSix.\n\n### Agent Reflection:\nWrong sum.\n\n### Final Response:\nFive.",
    ),
    case(
        "explainchoice",
        {**CHOICES, "explanation": "Blue is a colour."},
        "Choose the answer that best answers the question. Explain your reasoning.\n\n\n"
        '### Instruction:\nWhich is a colour?\n\n### Input:\n- "Blue"\n- "Five"\n\n'
        "### Response:\n",
        "Blue is a colour.",
    ),
    case(
        "explainchoice",
        {**CHOICES, "solution": "Blue.", "explanation": "Blue is a colour."},
        "Choose the answer that best answers the question. Explain your reasoning.\n\n\n"
        '### Instruction:\nWhich is a colour?\n\n### Input:\n- "Blue"\n- "Five"\n\n'
        "### Response:\n",
        "Blue.",
        id="explainchoice-solution-first",
    ),
    case(
        "concisechoice",
        {**CHOICES, "solution": "Blue."},
        "Choose the answer that best answers the question. Be concise in your response.\n\n"
        'USER: Which is a colour?\n- "Blue"\n- "Five"\nASSISTANT:',
        "Blue.",
    ),
    case(
        "summarizetldr",
        {"article": "The quick brown fox jumps over the lazy dog.", "summary": "A fox jumps."},
        "USER: Summarize the following article as a TL;DR.\n"
        "The quick brown fox jumps over the lazy dog.\nASSISTANT:",
        "A fox jumps.",
    ),
    # metharme.py: three EOS tokens (the helper's last one is added by the test)
    case(
        "metharme",
        {"prompt": "<|system|>Be brief.<|user|>Name a colour.<|model|>", "generation": "Blue."},
        "<|system|>Be brief.<|user|>Name a colour.<|model|>",
        "Blue.</s></s>",
    ),
    # context_qa.py
    case(
        "context_qa",
        {"article": PARIS, "question": CAPITAL_Q, "answer": "Paris."},
        f"SYSTEM: {CONTEXT_SYS}\n\nUSER: {PARIS}\n===\n{CAPITAL_Q}\nASSISTANT:",
        "Paris.",
    ),
    case(
        "context_qa.load_v2",
        {"context": PARIS, "question": CAPITAL_Q, "answer": "Paris."},
        f"Context: {PARIS}\nQuestion: {CAPITAL_Q}\n",
        "Answer: Paris.",
    ),
    case(
        "context_qa.load_404",
        {"article": PARIS, "unanswerable_question": "What is the capital of Spain?"},
        f"SYSTEM: {CONTEXT_SYS}\n\nUSER: {PARIS}\n===\nWhat is the capital of Spain?\nASSISTANT:",
        NO_ANSWER,
    ),
    # creative_acr.py
    case(
        "creative_acr.load_answer",
        CREATIVE,
        "Answer the following question in a comprehensive, in-depth, and creative way. "
        "Additionally your response should be relevant, accurate, and free of any ambiguity.\n"
        "USER: Name a colour.\nASSISTANT:",
        "Blue.",
    ),
    case(
        "creative_acr.load_critique",
        CREATIVE,
        "USER: " + CRITIQUE.format(question="Name a colour.", answer="Red.") + "\nASSISTANT:",
        EVALUATION,
    ),
    case(
        "creative_acr.load_revise",
        CREATIVE,
        "USER: "
        + REVISE.format(question="Name a colour.", answer="Red.", evaluation=EVALUATION)
        + "\nASSISTANT:",
        "Blue.",
    ),
    # user_defined.py, as an inline type: mapping
    case(
        UD,
        {"q": "Add the numbers.", "ctx": "2 + 3", "a": "Five."},
        "Q: Add the numbers.\nC: 2 + 3\nA:",
        "Five.",
        id="user_defined",
    ),
    case(
        UD,
        {"q": "Name a colour.", "a": "Blue."},
        "Q: Name a colour.\nA:",
        "Blue.",
        id="user_defined-no-input-field",
    ),
    case(
        UD_SYS,
        {"q": "Name a colour.", "ctx": "", "a": "Blue."},
        "[Be brief.]\nQ: Name a colour.\nA:",
        "Blue.",
        id="user_defined-system_prompt",
    ),
    case(
        UD_SYS,
        {"q": "Name a colour.", "system": "Be kind.", "a": "Blue."},
        "[Be kind.]\nQ: Name a colour.\nA:",
        "Blue.",
        id="user_defined-system-from-row",
    ),
    case(
        UD_SYS,  # Axolotl: the rows have the system field, so an empty one means no system block
        {"q": "Name a colour.", "system": "", "a": "Blue."},
        "Q: Name a colour.\nA:",
        "Blue.",
        id="user_defined-empty-system-in-row",
    ),
    case(
        "user_defined",
        {"q": "Name a colour.", "a": "Blue."},
        "Q: Name a colour.\nA:",
        "Blue.",
        id="user_defined-keys-beside-type",
        **UD,
    ),
]


def split(tokenizer: Any, row: dict[str, Any]) -> tuple[str, str]:
    """(text of the masked tokens, text of the trained tokens)."""
    ids, labels = row["input_ids"], row["labels"]
    masked = [t for t, label in zip(ids, labels, strict=True) if label == IGNORE_INDEX]
    trained = [label for label in labels if label != IGNORE_INDEX]
    return tokenizer.decode(masked), tokenizer.decode(trained)


def registered_names(module: str) -> list[str]:
    """The format names a format module registers."""
    found: list[DatasetFormat] = []
    importlib.import_module(f"axolotl_weave_plugins.formats.{module}").register_dataset_formats(
        found.append
    )
    return [fmt.name for fmt in found]


@pytest.mark.parametrize(("entry", "row", "prompt", "response"), CASES)
def test_renders_axolotls_text_and_masks_the_prompt(
    weave_hooks: Any, tiny_tokenizer: Any, entry: dict, row: dict, prompt: str, response: str
) -> None:
    out = build_rows(weave_hooks, tiny_tokenizer, [row], **entry)[0]
    assert tiny_tokenizer.decode(out["input_ids"]) == "<s>" + prompt + response + "</s>"
    masked, trained = split(tiny_tokenizer, out)
    assert masked == "<s>" + prompt
    assert trained == response + "</s>"
    assert len(out["input_ids"]) == len(out["labels"]) == len(out["attention_mask"])


@pytest.mark.parametrize(("entry", "row", "prompt", "response"), CASES)
def test_train_on_inputs_trains_everything(
    weave_hooks: Any, tiny_tokenizer: Any, entry: dict, row: dict, prompt: str, response: str
) -> None:
    cfg = SimpleNamespace(train_on_inputs=True, sequence_len=2048)
    out = build_rows(weave_hooks, tiny_tokenizer, [row], cfg, **entry)[0]
    assert out["labels"] == out["input_ids"]
    assert tiny_tokenizer.decode(out["labels"]) == "<s>" + prompt + response + "</s>"


def test_every_registered_name_has_a_case() -> None:
    names = {name for module in MODULES for name in registered_names(module)}
    types = [p.values[0]["type"] for p in CASES]
    covered = {"user_defined" if isinstance(t, dict) else t for t in types}
    assert names == covered
    assert "alpaca:chat" in names and "alpaca_w_system.load_open_orca" in names


@pytest.mark.parametrize(
    ("name", "row", "missing"),
    [
        ("alpaca", {"input": "x", "output": "y"}, "instruction"),
        ("alpaca:chatml", {"instruction": "x"}, "output"),
        ("alpaca:phi", {"output": "y"}, "instruction"),
        ("alpaca:instruct", {"instruction": "x"}, "output"),
        ("alpaca:chat", {"instruction": "x", "input": "z"}, "output"),
        ("alpaca_chat", {"instruction": "x", "response": "y"}, "output"),
        ("alpaca_chat.load_concise", {"output": "y"}, "instruction"),
        ("alpaca_chat.load_qa", {"question": "x"}, "answer"),
        ("alpaca_chat.load_camel_ai", {"message_2": "y"}, "message_1"),
        ("alpaca_chat.load_no_prompt", {"instruction": "x"}, "output"),
        ("alpaca_w_system", {"instruction": "x", "output": "y"}, "system"),
        ("alpaca_w_system.load_chat", {"system": "s", "output": "y"}, "instruction"),
        ("alpaca_w_system.load_instruct", {"instruction": "x", "system": "s"}, "output"),
        ("alpaca_w_system.load_open_orca", {"question": "x", "response": "y"}, "system_prompt"),
        ("alpaca_w_system.load_open_orca_chatml", {"system_prompt": "s"}, "question"),
        ("jeopardy", {"question": "x", "answer": "y"}, "category"),
        ("oasst", {"INSTRUCTION": "x", "response": "y"}, "RESPONSE"),
        ("gpteacher", {"instruction": "x", "output": "y"}, "response"),
        ("reflection", {"instruction": "x", "output": "y", "corrected": "z"}, "reflection"),
        ("explainchoice", {"question": "x", "solution": "y"}, "choices"),
        ("concisechoice", {"choices": ["a"], "solution": "y"}, "question"),
        ("summarizetldr", {"article": "x"}, "summary"),
        ("metharme", {"generation": "y"}, "prompt"),
        ("context_qa", {"article": "a", "answer": "y"}, "question"),
        ("context_qa.load_v2", {"article": "a", "question": "x", "answer": "y"}, "context"),
        ("context_qa.load_404", {"article": "a", "question": "x"}, "unanswerable_question"),
        ("creative_acr.load_answer", {"instruction": "x", "answer": "y"}, "revision"),
        ("creative_acr.load_critique", {"instruction": "x", "answer": "y"}, "scores"),
        ("creative_acr.load_revise", {**CREATIVE, "revision": None}, "revision"),
        ("user_defined", {"instruction": "x", "input": "y"}, "output"),
        (UD, {"ctx": "y", "a": "z"}, "q"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_missing_field_is_named(
    weave_hooks: Any, tiny_tokenizer: Any, name: Any, row: dict, missing: str
) -> None:
    if missing in row:  # present as a column but null in the only row
        match = rf"row 1.*'{missing}' is missing or null"
    else:
        match = rf"lacks the field\(s\) '{missing}'"
    with pytest.raises(DataError, match=match):
        build_rows(weave_hooks, tiny_tokenizer, [row], type=name)


def test_multiple_choice_without_solution_or_explanation(
    weave_hooks: Any, tiny_tokenizer: Any
) -> None:
    for name in ("explainchoice", "concisechoice"):
        with pytest.raises(DataError, match="'solution' or 'explanation'"):
            build_rows(weave_hooks, tiny_tokenizer, [{**CHOICES, "answer": "x"}], type=name)
    with pytest.raises(DataError, match="row 1.*'choices' must be a list, got str"):
        row = {"question": "q", "choices": "Blue", "solution": "Blue."}
        build_rows(weave_hooks, tiny_tokenizer, [row], type="explainchoice")


def test_null_solution_falls_back_to_the_explanation(weave_hooks: Any, tiny_tokenizer: Any) -> None:
    rows = [{**CHOICES, "solution": "Blue.", "explanation": "E."}]
    rows.append({**CHOICES, "solution": None, "explanation": "Blue it is."})
    out = build_rows(weave_hooks, tiny_tokenizer, rows, type="concisechoice")
    assert [split(tiny_tokenizer, row)[1] for row in out] == ["Blue.</s>", "Blue it is.</s>"]


def test_metharme_counts_an_eos_in_the_text(weave_hooks: Any, tiny_tokenizer: Any) -> None:
    row = {"prompt": "<|user|>Hi.<|model|>", "generation": "Blue.</s>"}
    out = build_rows(weave_hooks, tiny_tokenizer, [row], type="metharme")[0]
    assert split(tiny_tokenizer, out) == ("<s><|user|>Hi.<|model|>", "Blue.</s></s></s>")


def test_reflection_without_all_three_parts_trains_nothing(
    weave_hooks: Any, tiny_tokenizer: Any
) -> None:
    row = {**ADD, "output": "Six.", "reflection": "", "corrected": "Five."}
    out = build_rows(weave_hooks, tiny_tokenizer, [row], type="reflection")[0]
    assert set(out["labels"]) == {IGNORE_INDEX}


def test_alpaca_constants_are_the_instruct_style() -> None:
    assert alpaca_prompt("I", "X") == PROMPT_INPUT.format(instruction="I", input="X")
    assert alpaca_prompt("I", "") == PROMPT_NO_INPUT.format(instruction="I")


def test_alpaca_chat_conversation_must_be_a_style(weave_hooks: Any) -> None:
    formats = weave_hooks.dataset_formats()
    assert dataset_entry(formats, type="alpaca_chat").option("conversation") is None
    with pytest.raises(ValidationError, match="conversation"):
        dataset_entry(formats, type="alpaca_chat", conversation="vicuna_v1.1")


# --- the user-defined format: defaults, the inline mapping, a whole config --------------------


def test_inline_mapping_becomes_user_defined_with_axolotls_defaults(weave_hooks: Any) -> None:
    formats = weave_hooks.dataset_formats()
    entry = dataset_entry(formats, type={"field_instruction": "q", "system_prompt": None})
    assert entry.type == "user_defined"
    assert entry.option("field_instruction") == "q"
    defaults = {
        "system_prompt": "",
        "system_format": "{system}",
        "field_system": "system",
        "field_input": "input",
        "field_output": "output",
        "format": "{instruction} {input} ",
        "no_input_format": "{instruction} ",
    }
    assert {key: entry.option(key) for key in defaults} == defaults


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"format": "{instruction} {output}"}, r"format uses \{output\}"),
        ({"no_input_format": "{question}"}, r"no_input_format uses \{question\}"),
        ({"system_format": "<{sys}>"}, r"system_format uses \{sys\}; it may use \{system\}"),
        ({"format": "{instruction"}, "format is not a valid template"),
        ({"field_instruction": 3}, "field_instruction"),
    ],
)
def test_inline_mapping_is_checked(weave_hooks: Any, mapping: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        dataset_entry(weave_hooks.dataset_formats(), type=mapping)


def test_user_defined_default_templates(weave_hooks: Any, tiny_tokenizer: Any) -> None:
    """Axolotl's default turns end in a space. The core tokenizes prompt + response as one text,
    so that space and the response's first word can merge into one token, which starts in the
    prompt and is masked (Axolotl, tokenizing the two apart, trains the word): the rendered text
    is exact, the boundary token may go to the prompt."""
    rows = [{**ADD, "system": None}, {**COLOUR, "system": "Be brief."}]
    out = build_rows(weave_hooks, tiny_tokenizer, rows, type={})
    texts = [tiny_tokenizer.decode(row["input_ids"]) for row in out]
    assert texts == ["<s>Add the numbers. 2 + 3 Five.</s>", "<s>Be brief.Name a colour. Blue.</s>"]
    expected = [("Add the numbers. 2 + 3 ", "Five."), ("Be brief.Name a colour. ", "Blue.")]
    for row, (prompt, response) in zip(out, expected, strict=True):
        masked, trained = split(tiny_tokenizer, row)
        assert masked + trained == "<s>" + prompt + response + "</s>"
        assert masked.startswith("<s>" + prompt.rstrip()) and trained.endswith(".</s>")


def test_user_defined_in_a_whole_config(
    tmp_path: Path, base_config: dict[str, Any], tiny_tokenizer: Any
) -> None:
    data = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"q": "Add the numbers.", "ctx": "2", "a": "Two."}, {"q": "Name a colour.", "a": "Blue."}],
    )
    config = {**base_config, "datasets": [{"path": str(data), "type": UD_SYS}]}
    config["shuffle_merged_datasets"] = False
    session = open_session(write_config(tmp_path / "c.yml", config), [], make_plugin_manager())
    entry = session.cfg.datasets[0]
    assert entry.type == "user_defined"
    assert entry.option("field_output") == "a" and entry.option("system_prompt") == "Be brief."
    prepared, _ = preprocess(session)
    rendered = sorted(split(tiny_tokenizer, row) for row in prepared.train)
    assert rendered == [
        ("<s>[Be brief.]\nQ: Add the numbers.\nC: 2\nA:", "Two.</s>"),
        ("<s>[Be brief.]\nQ: Name a colour.\nA:", "Blue.</s>"),
    ]


def test_a_misspelt_key_in_the_mapping_is_a_config_error(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = {**base_config}
    config["datasets"] = [{"path": "rows.jsonl", "type": {"field_intruction": "q"}}]
    with pytest.raises(ConfigError, match="unknown key 'field_intruction'.*field_instruction"):
        open_session(write_config(tmp_path / "c.yml", config), [], make_plugin_manager())
