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


def chat_text(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    template_name: str | None = None,
    system_fix: str = "remove the system message",
    **kwargs: Any,
) -> str:
    """`messages` as the tokenizer's chat template renders them (`apply_chat_template` with
    `tokenize=False`; `kwargs` passed on). A template that refuses the conversation (Gemma's
    raises on a system message) raises `ValueError` saying so, with `system_fix` when the
    refusal is of a system message; a format's row function turns it into a message naming the
    row. `template_name` names the template in that message."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except TemplateError as exc:
        which = f"chat template '{template_name}'" if template_name else "the chat template"
        hint = ""
        if "system" in str(exc).lower() and messages and messages[0].get("role") == "system":
            hint = (
                f" (this template has no system role: {system_fix}, or choose a template that "
                "has one)"
            )
        raise ValueError(f"{which} refused the conversation: {exc}{hint}") from None


def fit_embeddings(model: Any, tokenizer: Any, cfg: Any) -> None:
    """Size the model's embedding rows for `tokenizer`, as the loader keys ask: grown to its
    length when it has more tokens, cut down to it with `shrink_embeddings`, rounded up to a
    multiple of 32 with `resize_token_embeddings_to_32x`; new rows start at the mean of the
    others with `mean_resizing_embeddings`, else at the model's own initialisation."""
    rows = model.get_input_embeddings().num_embeddings
    shrink = getattr(cfg, "shrink_embeddings", False)
    wanted = len(tokenizer) if shrink else max(len(tokenizer), rows)
    if getattr(cfg, "resize_token_embeddings_to_32x", False):
        wanted = -(-wanted // 32) * 32
    if wanted != rows:
        mean = bool(getattr(cfg, "mean_resizing_embeddings", False))
        model.resize_token_embeddings(wanted, mean_resizing=mean)
