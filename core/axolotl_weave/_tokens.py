"""Tokenizer helpers for plugin authors (re-exported by `axolotl_weave`)."""

from __future__ import annotations

from typing import Any

SYMBOLIC_TOKENS = ("unk_token", "eos_token")
"""Candidate names that `set_pad_token` reads off the tokenizer instead of its vocabulary."""


def set_pad_token(tokenizer: Any, *candidates: str) -> None:
    """Give `tokenizer` a pad token if it has none: the first of `candidates` that it has.

    A candidate is a token string, taken when it is in the tokenizer's vocabulary, or one of the
    symbolic names `"unk_token"` / `"eos_token"`, which stand for the tokenizer's own unk / eos
    token and are taken when the tokenizer has one. A tokenizer that already has a pad token,
    or has none of the candidates, is left as it is. For example
    `set_pad_token(tokenizer, "<pad>", "unk_token", "eos_token")`.
    """
    if tokenizer.pad_token is not None:
        return
    vocab: dict[str, int] | None = None
    for candidate in candidates:
        if candidate in SYMBOLIC_TOKENS:
            token = getattr(tokenizer, candidate, None)
            if token is not None:
                tokenizer.pad_token = token
                return
            continue
        if vocab is None:
            vocab = tokenizer.get_vocab()
        if candidate in vocab:
            tokenizer.pad_token = candidate
            return
