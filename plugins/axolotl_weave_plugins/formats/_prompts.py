"""Shared by the instruction format plugins (`alpaca`, `alpaca_chat`, `jeopardy`, ...): Axolotl's
prompt styles, `AlpacaPrompter.build_prompt`, and the prompt/response tokenization (Axolotl's: the
prompt and the response tokenized apart, so the boundary is where inference puts it).

Not a plugin (no entry point): a helper of the format plugins in this folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from axolotl_weave import map_rows, require_columns, tokenize_prompt_responses

SYSTEM_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
SYSTEM_NO_INPUT_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)


@dataclass(frozen=True)
class PromptStyle:
    """The templates of one Axolotl prompt style: `{system}`, `{instruction}`, `{input}`."""

    system_format: str
    turn_format: str
    turn_no_input_format: str


PROMPT_STYLES: dict[str, PromptStyle] = {
    "instruct": PromptStyle(
        "{system}\n\n",
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Response:\n",
    ),
    "chat": PromptStyle(
        "SYSTEM: {system}\n",
        "USER: {instruction}\n{input}\nASSISTANT:",
        "USER: {instruction}\nASSISTANT:",
    ),
    "chatml": PromptStyle(
        "<|im_start|>system\n{system}<|im_end|>\n",
        "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
    ),
    "phi": PromptStyle(
        "<|system|>\n{system}<|end|>\n",
        "<|user|>\n{instruction}<|end|>{input}<|assistant|>",
        "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
    ),
}
"""Axolotl's `PromptStyle` values and the templates `AlpacaPrompter` uses for each."""


def build_prompt(
    instruction: str,
    input_text: str,
    *,
    style: PromptStyle,
    system: str = SYSTEM_PROMPT,
    system_no_input: str = SYSTEM_NO_INPUT_PROMPT,
) -> str:
    """Axolotl's `AlpacaPrompter.build_prompt`: system block (if any) + turn, by whether there
    is an input (a non-empty string)."""
    if input_text:
        head = style.system_format.format(system=system) if system else ""
        return head + style.turn_format.format(instruction=instruction, input=input_text)
    head = style.system_format.format(system=system_no_input) if system_no_input else ""
    return head + style.turn_no_input_format.format(instruction=instruction)


def build_prompt_response_rows(
    entry: Any,
    dataset: Any,
    tokenizer: Any,
    cfg: Any,
    required: list[str],
    render: Callable[[dict[str, Any]], tuple[str, str]],
) -> Any:
    """Check the `required` columns, then tokenize each row's `render(row) -> (prompt, response)`
    as Axolotl's `InstructionPromptTokenizingStrategy` does (see `axolotl_prompt_responses`),
    a batch of rows per tokenizer call."""
    require_columns(dataset, entry, required)
    train_on_inputs = bool(cfg.train_on_inputs)
    max_length = cfg.sequence_len

    def finish(pairs: list[tuple[str, str]]) -> Any:  # a pyarrow.Table
        return axolotl_prompt_responses(
            tokenizer, pairs, train_on_inputs=train_on_inputs, max_length=max_length
        )

    return map_rows(dataset, entry, render, finish=finish)


def axolotl_prompt_responses(
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    *,
    train_on_inputs: bool,
    max_length: int,
) -> Any:
    """Axolotl's `tokenize_prompt` of each (prompt, response) pair, as a `pyarrow.Table`: the
    prompt (BOS, masked unless `train_on_inputs`) and the response (its own tokens, BOS
    dropped, EOS appended, trained) tokenized apart, each truncated to `max_length`
    (`sequence_len`); an empty response adds nothing, not even EOS.

    `tokenize_prompt_responses` does this, except that by default an empty prompt leaves the
    response its BOS there (a raw text); Axolotl tokenizes an empty prompt to nothing and still
    drops the response's BOS, so that is asked for here (a user-defined turn can render empty).
    """
    return tokenize_prompt_responses(
        tokenizer,
        pairs,
        train_on_inputs=train_on_inputs,
        max_length=max_length,
        empty_prompt_keeps_bos=False,
        table=True,
    )


def styled_formats(base: str, description: str) -> dict[str, str]:
    """`base` and `base:<style>` for each of Axolotl's prompt styles, with descriptions."""
    styled = {
        f"{base}:{name}": f"{base} rows in Axolotl's '{name}' prompt style"
        for name in PROMPT_STYLES
    }
    return {base: description, **styled}


def style_of(format_name: str) -> PromptStyle:
    """The prompt style a `base:<style>` name asks for (`instruct` without one)."""
    return PROMPT_STYLES[format_name.partition(":")[2] or "instruct"]
