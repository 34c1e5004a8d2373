"""Axolotl's EBFT dataset transforms (`type: ebft_opencode.transform`, ...) for `rl: ebft`'s
structured mode: each turns a raw row into a `prompt` (chat messages) and its `ground_truth`
(the reference completion), and drops the raw columns.

Each is Axolotl's transform contract: `transform(cfg)` returns `(row function, {"remove_columns":
"__all__"})`, and the row function takes `(row, tokenizer=None)`. A conversation is read from
`messages` (or `conversations`) as `{"role", "content"}` messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

DROP_RAW = {"remove_columns": "__all__"}

AXOLOTL_TYPES = {
    "ebft_opencode.transform": "opencode",
    "ebft_chat_multiturn.transform": "first_turn",
    "ebft_chat_multiturn.transform_last_turn": "last_turn",
    "ebft_chat_multiturn.transform_all_turns": "all_turns",
    "ebft_reasoning.transform": "reasoning",
    "ebft_reasoning.transform_answer_only": "reasoning_answer_only",
    "ebft_reasoning.transform_split_thinking": "reasoning_split_thinking",
}
"""Axolotl's structured-mode `type:` names, and the function here that implements each."""

STRIDED_TYPES = {
    "ebft_strided_structured.transform": "strided_structured",
    "ebft_strided_chat.transform": "strided_chat",
    "ebft_reasoning.transform_strided": "reasoning_strided",
}
"""Axolotl's built-in strided-mode `type:` names, and the function here that implements each
(a strided type may also be the user's own `module.function`, as Axolotl's `ebft_pretrain`)."""

REFUSED_TYPES = {}
"""Axolotl's EBFT `type:` names refused here, and why."""

THINKING_TAGS = (
    ("<think>", "</think>"),
    ("<reasoning>", "</reasoning>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
)


def path_of(name: str) -> str:
    """The `module.function` path of a transform of this module."""
    return f"{__name__}.{name}"


def messages_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's conversation (`messages`, else `conversations`)."""
    messages = row.get("messages", row.get("conversations"))
    if not isinstance(messages, list) or not messages:
        raise KeyError("no conversation: the row needs a non-empty 'messages' list")
    return messages


def split_at_last_answer(
    messages: list[dict[str, Any]], answer: Callable[[str], str] = str
) -> dict[str, Any]:
    """The conversation before its last assistant turn as the prompt, that turn's content
    (through `answer`) as the ground truth."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "assistant":
            return {
                "prompt": list(messages[:index]),
                "ground_truth": answer(messages[index]["content"]),
            }
    raise KeyError("no assistant turn in the conversation to use as the ground truth")


def opencode(cfg: Any, **_: Any) -> tuple[Callable[..., dict[str, Any]], dict[str, str]]:
    """nvidia/OpenCodeInstruct rows: `input` as the user's message, `output` as the truth."""

    def row(example: dict[str, Any], tokenizer: Any = None) -> dict[str, Any]:
        return {
            "prompt": [{"role": "user", "content": example["input"]}],
            "ground_truth": example["output"],
        }

    return row, DROP_RAW


def first_turn(cfg: Any, **_: Any) -> tuple[Callable[..., dict[str, Any]], dict[str, str]]:
    """A conversation's first assistant turn as the truth, what precedes it as the prompt, and
    the turns after it as `remaining_turns` (the reward rolls the completion out through
    them)."""

    def row(example: dict[str, Any], tokenizer: Any = None) -> dict[str, Any]:
        messages = messages_of(example)
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                return {
                    "prompt": list(messages[:index]),
                    "ground_truth": message["content"],
                    "remaining_turns": list(messages[index + 1 :]),
                }
        raise KeyError("no assistant turn in the conversation to use as the ground truth")

    return row, DROP_RAW


def last_turn(cfg: Any, **_: Any) -> tuple[Callable[..., dict[str, Any]], dict[str, str]]:
    """A conversation's last assistant turn as the truth, what precedes it as the prompt."""

    def row(example: dict[str, Any], tokenizer: Any = None) -> dict[str, Any]:
        return split_at_last_answer(messages_of(example))

    return row, DROP_RAW


def all_turns(cfg: Any, **_: Any) -> tuple[Callable[..., dict[str, Any]], dict[str, Any]]:
    """A batched transform: one row per assistant turn of each conversation, the turns before
    it as the prompt and its content as the truth (Axolotl's `transform_all_turns`)."""

    def rows(examples: dict[str, list[Any]], tokenizer: Any = None) -> dict[str, list[Any]]:
        prompts, truths = [], []
        for messages in examples.get("messages", examples.get("conversations", [])):
            for index, message in enumerate(messages or []):
                if message["role"] == "assistant":
                    prompts.append(list(messages[:index]))
                    truths.append(message["content"])
        return {"prompt": prompts, "ground_truth": truths}

    return rows, {"remove_columns": "__all__", "batched": True}


reasoning = last_turn
"""Reasoning rows: the last assistant turn, its thinking (`<think>...</think>`) kept."""


def strip_thinking(text: str) -> str:
    """`text` without its `<think>...</think>` blocks."""
    return re.sub(r"<think>.*?</think>\s*", "", text, flags=re.DOTALL).strip()


def reasoning_answer_only(
    cfg: Any, **_: Any
) -> tuple[Callable[..., dict[str, Any]], dict[str, str]]:
    """Reasoning rows scored on the answer: the truth's thinking blocks removed."""

    def row(example: dict[str, Any], tokenizer: Any = None) -> dict[str, Any]:
        return split_at_last_answer(messages_of(example), strip_thinking)

    return row, DROP_RAW


def with_reasoning_content(message: dict[str, Any]) -> dict[str, Any]:
    """`{role, content, reasoning_content}`: an assistant turn's thinking (between any pair of
    `THINKING_TAGS`) moved to `reasoning_content`, as a template that renders it expects."""
    content = message.get("content", "")
    thinking = message.get("reasoning_content", "")
    if message.get("role") == "assistant" and "reasoning_content" not in message:
        for opening, closing in THINKING_TAGS:
            if opening in content and closing in content:
                start, end = content.find(opening), content.find(closing)
                thinking = content[start + len(opening) : end].strip()
                content = content[end + len(closing) :].strip()
                break
    return {"role": message.get("role", ""), "content": content, "reasoning_content": thinking}


def reasoning_split_thinking(
    cfg: Any, **_: Any
) -> tuple[Callable[..., dict[str, Any]], dict[str, str]]:
    """Reasoning rows whose turns carry their thinking in `reasoning_content`; the truth is the
    whole last answer, `<think>\\n{thinking}\\n</think>\\n\\n{answer}`."""

    def row(example: dict[str, Any], tokenizer: Any = None) -> dict[str, Any]:
        messages = [with_reasoning_content(m) for m in messages_of(example)]
        found = split_at_last_answer(messages)
        last = next(m for m in reversed(messages) if m["role"] == "assistant")
        if last["reasoning_content"]:
            found["ground_truth"] = (
                f"<think>\n{last['reasoning_content']}\n</think>\n\n{last['content']}"
            )
        return found

    return row, DROP_RAW


def strided_structured(cfg: Any, **_: Any) -> tuple[Callable[..., dict[str, Any]], dict[str, str]]:
    """Strided rows of a prompt (`input`, `prompt` or `question`) and its completion (`output`,
    `completion` or `answer`): the prompt's tokens (with the tokenizer's special tokens)
    unlabelled, the completion's labelled; cut to `sequence_len`, the completion first (a
    prompt that fills it keeps one completion token), as Axolotl's transform does, unpadded."""
    length = cfg.sequence_len

    def row(example: dict[str, Any], tokenizer: Any = None) -> dict[str, Any]:
        prompt = example.get("input", example.get("prompt", example.get("question", "")))
        completion = example.get("output", example.get("completion", example.get("answer", "")))
        prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        if len(prompt_ids) + len(completion_ids) > length:
            room = length - len(prompt_ids)
            if room < 1:
                prompt_ids, completion_ids = prompt_ids[: length - 1], completion_ids[:1]
            else:
                completion_ids = completion_ids[:room]
        return {
            "input_ids": prompt_ids + completion_ids,
            "labels": [-100] * len(prompt_ids) + completion_ids,
        }

    return row, DROP_RAW


def chat_ids(tokenizer: Any, messages: list[dict[str, Any]], length: int, prompt: bool) -> list:
    """A conversation's ids through the chat template (with its generation prompt when
    `prompt`), without the tokenizer's special tokens, cut to `length`."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"][:length])


def reasoning_strided(cfg: Any, **_: Any) -> tuple[Callable[..., dict[str, Any]], dict[str, str]]:
    """Strided rows of a reasoning conversation: only the last assistant turn labelled, and with
    `ebft.mask_thinking_ce` its `<think>...</think>` tokens (the tags included) unlabelled, as
    Axolotl's `transform_strided` does; unpadded."""
    length = cfg.sequence_len
    mask_thinking = bool(getattr(getattr(cfg, "ebft", None), "mask_thinking_ce", False))

    def row(example: dict[str, Any], tokenizer: Any = None) -> dict[str, Any]:
        messages = messages_of(example)
        input_ids = chat_ids(tokenizer, messages, length, False)
        labels = [-100] * len(input_ids)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        start = len(chat_ids(tokenizer, messages[:last], length, True))
        end = min(len(chat_ids(tokenizer, messages[: last + 1], length, False)), len(input_ids))
        labels[start:end] = input_ids[start:end]
        if mask_thinking:
            opening, closing = (tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>"))
            if opening is not None and opening != tokenizer.unk_token_id:
                thinking = False
                for i in range(max(0, start - 5), end):
                    thinking = thinking or input_ids[i] == opening
                    if thinking and i >= start:
                        labels[i] = -100
                    if input_ids[i] == closing:
                        thinking = False
        return {"input_ids": input_ids, "labels": labels}

    return row, DROP_RAW


def strided_chat(cfg: Any, **_: Any) -> tuple[Callable[..., dict[str, Any]], dict[str, str]]:
    """Strided rows of a conversation through the chat template (cut to `sequence_len`): every
    assistant turn's tokens labelled, found by rendering the conversation up to each, as
    Axolotl's transform does, unpadded."""
    length = cfg.sequence_len

    def row(example: dict[str, Any], tokenizer: Any = None) -> dict[str, Any]:
        messages = messages_of(example)
        input_ids = chat_ids(tokenizer, messages, length, False)
        labels = [-100] * len(input_ids)
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                start = len(chat_ids(tokenizer, messages[:index], length, True))
                end = min(
                    len(chat_ids(tokenizer, messages[: index + 1], length, False)), len(input_ids)
                )
                labels[start:end] = input_ids[start:end]
        return {"input_ids": input_ids, "labels": labels}

    return row, DROP_RAW
