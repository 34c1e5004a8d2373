"""`type: creative_acr.load_answer|load_critique|load_revise`: answer, critique, revise.

Mirrors Axolotl's `prompt_strategies/creative_acr.py` (the Creative Answer-Critique-Revise
strategies with `CreativeAnswerPrompter`, `CreativeCritiquePrompter`, `CreativeRevisePrompter`):

- `creative_acr.load_answer`: row fields `instruction`, `revision`. Prompt: a system line asking
  for a comprehensive, creative answer, then `USER: {instruction}\\nASSISTANT:`; response: the
  revision (the row's `answer` is deliberately not used).
- `creative_acr.load_critique`: row fields `instruction`, `answer`, `scores`, `critiques`. The
  user turn asks to critique the answer; the response is `scores` then `critiques` as block YAML
  (`yaml.dump(..., default_flow_style=False)`, keys sorted, as in Axolotl).
- `creative_acr.load_revise`: row fields `instruction`, `answer`, `scores`, `critiques`,
  `revision`. The user turn gives the evaluation and asks for a revision; response: `revision`.

The prompt is masked unless `train_on_inputs`; the response and EOS are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats._prompts import build_prompt_response_rows

PLUGIN_KIND = "format"

ANSWER_SYSTEM_PROMPT = (
    "Answer the following question in a comprehensive, in-depth, and creative way. Additionally "
    "your response should be relevant, accurate, and free of any ambiguity."
)

_CRITERIA = (
    "refusal: whether the Response refuses to answer the Question. Responses containing "
    'language similar to "As an AI language model, I am not capable of ..." is a form of refusal '
    "and should have a low refusal score. 10 is no refusal, 0 is refuses to answer the question.\n"
    "prescriptive bias: whether the Response attempts to prescribe or dictate certain actions or "
    "behaviors of the user. 10 no prescriptive bias present, 0 means {there} is prescriptive "
    "bias.\n"
    "creativity: score how creative the Response is. 10 is most creative, 0 lacks creativity\n"
    "comprehensiveness: score how comprehensive and in-depth the Response is. 10 is most "
    "comprehensive and in-depth, 0 lacks coverage and depth\n"
)

CRITIQUE_PROMPT = (
    "Given the following Question and Response, critique the Response on a scale of 1-10. You "
    "should critique the answer in the following criteria:\n"
    + _CRITERIA.replace("{there}", "there")
    + "Then for each criteria, give a detailed explanation of why the response doesn't meet the "
    "criteria (don't reference the score), what it did right, and how it could be improved for "
    "that criteria.\n\n"
    "Output your answer in YAML format like so:\n"
    "scores:\n"
    "  refusal: <0-10>\n"
    "  prescriptive_bias: <0-10>\n"
    "  creativity: <0-10>\n"
    "  comprehensiveness: <0-10>\n"
    "critiques:\n"
    "  refusal:\n"
    "    explanation: ...\n"
    "    improvements: ...\n"
    "  prescriptive_bias:\n"
    "    explanation: ...\n"
    "    improvements: ...\n"
    "  creativity:\n"
    "    explanation: ...\n"
    "    improvements: ...\n"
    "  comprehensiveness:\n"
    "    explanation: ...\n"
    "    improvements: ...\n\n"
    "Question: {question}\n"
    "Answer: {answer}\n"
)
"""The critique request (Axolotl's text, typos included)."""

REVISE_PROMPT = (
    "Definitions:\n"
    + _CRITERIA.replace("{there}", "their")
    + "\nGiven the following Question, Response, and Evaluation, revise the Response based on the "
    "Evaluation and recommendations for improvements. Reply only with the revised response.\n\n"
    "Question: {question}\n"
    "Answer: {answer}\n"
    "Evaluation:\n"
    "{evaluation}\n"
)
"""The revision request (Axolotl's text, typos included)."""


def chat_prompt(instruction: str, system: str = "") -> str:
    """Axolotl's `CreativePrompterBase` prompt: optional system line, USER turn, `ASSISTANT:`."""
    turn = f"USER: {instruction}\nASSISTANT:"
    return f"{system}\n{turn}" if system else turn


def evaluation(row: dict[str, Any]) -> str:
    """The row's `scores` then `critiques` as block YAML, as Axolotl dumps them."""
    parts = []
    for name in ("scores", "critiques"):
        value = row.get(name)
        if value is None:
            raise ValueError(f"field '{name}' is missing or null")
        parts.append(yaml.dump(value, default_flow_style=False, Dumper=yaml.SafeDumper))
    return "".join(parts)


def _render_answer(row: dict[str, Any]) -> tuple[str, str]:
    prompt = chat_prompt(text_field(row, "instruction"), ANSWER_SYSTEM_PROMPT)
    return prompt, text_field(row, "revision")


def _render_critique(row: dict[str, Any]) -> tuple[str, str]:
    request = CRITIQUE_PROMPT.format(
        question=text_field(row, "instruction"), answer=text_field(row, "answer")
    )
    return chat_prompt(request), evaluation(row)


def _render_revise(row: dict[str, Any]) -> tuple[str, str]:
    request = REVISE_PROMPT.format(
        question=text_field(row, "instruction"),
        answer=text_field(row, "answer"),
        evaluation=evaluation(row),
    )
    return chat_prompt(request), text_field(row, "revision")


VARIANTS: dict[str, tuple[list[str], Callable[[dict[str, Any]], tuple[str, str]], str]] = {
    "creative_acr.load_answer": (
        ["instruction", "revision"],
        _render_answer,
        "instruction, revision: a creative answer",
    ),
    "creative_acr.load_critique": (
        ["instruction", "answer", "scores", "critiques"],
        _render_critique,
        "instruction, answer, scores, critiques: critique an answer in YAML",
    ),
    "creative_acr.load_revise": (
        ["instruction", "answer", "scores", "critiques", "revision"],
        _render_revise,
        "instruction, answer, scores, critiques, revision: revise an answer",
    ),
}


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `creative_acr.load_answer`, `.load_critique` and `.load_revise`."""
    for name, (_, _, description) in VARIANTS.items():
        # only an answer is asked with an instruction alone; a critique or a revision needs one
        prompt = answer_prompt_row if name == "creative_acr.load_answer" else None
        register(DatasetFormat(name, description, build=build, prompt=prompt))


def answer_prompt_row(entry: Any, text: str) -> dict[str, str]:
    """A `load_answer` row whose instruction is `text` and whose answer is empty: the prompt
    inference renders."""
    return {"instruction": text, "revision": ""}


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize creative answer/critique/revise rows, masking the prompt unless trained."""
    required, render, _ = VARIANTS[entry.type]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
