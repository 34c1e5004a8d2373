"""Token ids at the tokenizer's own speed, for formats that need no offsets.

A fast tokenizer's call (`tokenizer(texts)`) runs its backend's `encode_batch`, which tracks
every token's character offsets. The backend's `encode_batch_fast` tracks none and gives the
same ids with about a quarter less work. The tokenizer's call also sets the backend up first
(truncation, how special tokens in the text are read), so one text still goes through that
call, and the rest through `encode_batch_fast` with the backend as it left it.

Nothing promises that a tokenizer class adds nothing of its own around its backend, so the
data is the check: the first `CHECKED_TEXTS` texts of each tokenizer in each process are
encoded both ways, and one in `CHECK_EVERY` after them; on any difference that tokenizer goes
back to its own call for good (the batch at hand included).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("axolotl_weave")

CHECKED_TEXTS = 256
"""Texts encoded both ways before the backend's fast call is trusted alone."""

CHECK_EVERY = 64
"""After those, one text in this many is still encoded both ways."""


@dataclass
class FastCheck:
    """One tokenizer's standing, in this process: whether its backend's fast call is used."""

    trusted: bool = True
    checked: int = 0
    seen: int = 0

    def sampled(self) -> bool:
        """Whether the next text is encoded both ways."""
        self.seen += 1
        if self.checked < CHECKED_TEXTS or self.seen % CHECK_EVERY == 0:
            self.checked += 1
            return True
        return False


CHECKS: weakref.WeakKeyDictionary[Any, FastCheck] = weakref.WeakKeyDictionary()


def called_ids(tokenizer: Any, texts: list[str], **options: Any) -> list[list[int]]:
    """`tokenizer(texts, **options)`'s ids, one list per text (no masks built)."""
    found = tokenizer(texts, return_attention_mask=False, return_token_type_ids=False, **options)
    return [ids if isinstance(ids, list) else list(ids) for ids in found["input_ids"]]


def batch_ids(tokenizer: Any, texts: list[str], **options: Any) -> list[list[int]]:
    """The ids `tokenizer(texts, **options)` gives (with its special tokens; `options` such as
    `truncation` and `max_length`), by the backend's fast call where the data shows the two
    agree (see the module's docstring)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if len(texts) < 2 or not hasattr(backend, "encode_batch_fast"):
        return called_ids(tokenizer, texts, **options)
    check = CHECKS.setdefault(tokenizer, FastCheck())
    if not check.trusted:
        return called_ids(tokenizer, texts, **options)
    found = called_ids(tokenizer, texts[:1], **options)  # sets the backend up for this call
    found += [encoding.ids for encoding in backend.encode_batch_fast(texts[1:])]
    sample = [index for index in range(1, len(texts)) if check.sampled()]
    if sample:
        expected = called_ids(tokenizer, [texts[index] for index in sample], **options)
        if expected != [found[index] for index in sample]:
            check.trusted = False
            log.debug("the tokenizer's backend gives other ids than its call: using its call")
            return called_ids(tokenizer, texts, **options)
    return found
