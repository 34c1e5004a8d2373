"""Toy reward functions for `examples/grpo.yml` (`rl: grpo`).

A reward function is called as TRL calls one: ``f(prompts=..., completions=...,
completion_ids=..., **columns)``, a list entry per completion; ``columns`` are the dataset row's
other columns (here `answer`). With chat prompts each completion is
``[{"role": "assistant", "content": text}]``. Return one float per completion (None: not
scored by this function).
"""

from __future__ import annotations

from typing import Any


def text_of(completion: Any) -> str:
    """A completion's text, whether chat messages or a string."""
    return completion[0]["content"] if isinstance(completion, list) else completion


def correct_answer(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the completion contains the row's `answer`, else 0.0."""
    return [
        1.0 if expected in text_of(completion) else 0.0
        for completion, expected in zip(completions, answer, strict=True)
    ]


def brevity(completions: list[Any], **kwargs: Any) -> list[float]:
    """Shorter is better: 1.0 for an empty answer, falling to 0.0 at 40 characters."""
    return [max(0.0, 1.0 - len(text_of(completion)) / 40) for completion in completions]
