"""Secrets in the config (API keys, tokens, passwords): found by the key's name or the value's
shape and replaced, so that neither the saved `config.yml` nor a tracker's parameters hold one."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"

SECRET_WORDS = (
    "token",
    "key",
    "keys",
    "secret",
    "secrets",
    "password",
    "passwords",
    "passwd",
    "credential",
    "credentials",
    "auth",
    "authorization",
)
"""A config key holding one of these words (`hf_token`, `comet_api_key`, `apikey`) is a secret;
`special_tokens`, `tokenizer_config` and `resize_token_embeddings_to_32x` are not."""

NOT_SECRET_AFTER_TOKEN = frozenset({"embeddings", "id", "ids"})
NOT_SECRET_BEFORE_TOKEN = frozenset({"pad", "bos", "eos", "unk", "sep", "cls", "mask", "eot"})
"""`pad_token: <pad>` (inside `special_tokens:`) names a vocabulary token, not a secret."""

SECRET_VALUES = (
    re.compile(r"(?<=://)([^/:@\s]+):[^/@\s]+@"),  # https://user:password@host
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),  # a Hugging Face token
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),  # an API key of the OpenAI kind
)


def is_secret(name: str) -> bool:
    """Whether the config key `name` holds a secret (an API key, a token, a password)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else ""
        before = words[index - 1] if index else ""
        if word.endswith("token") and (
            following in NOT_SECRET_AFTER_TOKEN or before in NOT_SECRET_BEFORE_TOKEN
        ):
            continue
        if any(word.endswith(secret) for secret in SECRET_WORDS):
            return True
    return False


def redact_text(text: str) -> str:
    """`text` with the passwords of URLs and token-looking strings replaced."""
    text = SECRET_VALUES[0].sub(rf"\1:{REDACTED}@", text)
    for pattern in SECRET_VALUES[1:]:
        text = pattern.sub(REDACTED, text)
    return text


def redacted(value: Any, name: str = "") -> Any:
    """`value` (the config as JSON-like data) with the value of every secret key replaced by
    `[redacted]` (an unset one is kept: None says it was not set), at any depth."""
    if name and is_secret(name) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, dict):
        return {key: redacted(item, str(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
