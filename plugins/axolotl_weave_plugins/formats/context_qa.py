"""`type: context_qa` and variants: answer a question from a context passage.

Mirrors Axolotl's `prompt_strategies/context_qa.py`:

- `context_qa` (`load`): `AlpacaContextPrompter` in the chat style; row fields `article`,
  `question`, `answer`. Prompt: `SYSTEM: Use the following contextual information to concisely
  answer the question.` then `USER: {article}\\n===\\n{question}\\nASSISTANT:`.
- `context_qa.load_v2`: `ContextV2Prompter`, no system text; row fields `context`, `question`,
  `answer`. Prompt `Context: ...\\nQuestion: ...\\n`, response `Answer: {answer}`.
- `context_qa.load_404`: as `context_qa` with row fields `article`, `unanswerable_question`;
  the response is a fixed refusal to answer from the context.

The prompt is masked unless `train_on_inputs`; the response and EOS are trained. Axolotl quirk
kept: the system text ends in a newline and the chat system format adds one, so a blank line
precedes `USER:`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import DatasetFormat, hookimpl, text_field

from axolotl_weave_plugins.formats._prompts import (
    PROMPT_STYLES,
    build_prompt,
    build_prompt_response_rows,
)

PLUGIN_KIND = "format"

SYSTEM_PROMPT = "Use the following contextual information to concisely answer the question.\n"
NO_ANSWER = (
    "The context provided does not contain any information about your inquiry. "
    "Therefore, I'm unable to answer your question based on the given context."
)


def _context_prompt(article: str, question: str) -> str:
    return build_prompt(
        f"{article}\n===\n{question}",
        "",
        style=PROMPT_STYLES["chat"],
        system=SYSTEM_PROMPT,
        system_no_input=SYSTEM_PROMPT,
    )


def _render(row: dict[str, Any]) -> tuple[str, str]:
    prompt = _context_prompt(text_field(row, "article"), text_field(row, "question"))
    return prompt, text_field(row, "answer")


def _render_v2(row: dict[str, Any]) -> tuple[str, str]:
    prompt = f"Context: {text_field(row, 'context')}\nQuestion: {text_field(row, 'question')}\n"
    return prompt, "Answer: " + text_field(row, "answer")


def _render_404(row: dict[str, Any]) -> tuple[str, str]:
    prompt = _context_prompt(text_field(row, "article"), text_field(row, "unanswerable_question"))
    return prompt, NO_ANSWER


VARIANTS: dict[str, tuple[list[str], Callable[[dict[str, Any]], tuple[str, str]], str]] = {
    "context_qa": (
        ["article", "question", "answer"],
        _render,
        "article, question, answer: answer from the article",
    ),
    "context_qa.load_v2": (
        ["context", "question", "answer"],
        _render_v2,
        "context, question, answer as Context:/Question:/Answer:",
    ),
    "context_qa.load_404": (
        ["article", "unanswerable_question"],
        _render_404,
        "article, unanswerable_question: trains a fixed 'not in the context' answer",
    ),
}


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register `context_qa`, `context_qa.load_v2` and `context_qa.load_404`."""
    for name, (_, _, description) in VARIANTS.items():
        register(DatasetFormat(name, description, build=build))


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize context QA rows, masking the prompt unless `train_on_inputs`."""
    required, render, _ = VARIANTS[entry.type]
    return build_prompt_response_rows(entry, dataset, tokenizer, cfg, required, render)
