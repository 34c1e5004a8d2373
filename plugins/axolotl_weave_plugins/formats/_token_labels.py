"""Labels for rendered conversations: each token is trained by where it lies in the text.

A token is trained when it overlaps a trained range (a content, an end-of-turn marker) or lies
wholly inside a trained detail, and covers at least one character. That is read from the
tokens' character offsets. But asking the tokenizer for every token's offsets makes its batched
call about half again as slow (a Python tuple per token, then read into numpy). Where the
offsets are *plain* (each token's start and end never before the previous token's, and no
token empty), the trained tokens of a range are one run, whose ends are found by bisection
over a few tokens' offsets (`Encoding.token_to_chars`).

Every fast tokenizer seen so far has plain offsets, but nothing promises it (a post-processor
that trims offsets makes a whitespace token empty). So the data itself is the check: the first
`FULLY_CHECKED_ROWS` rows are labelled both ways, and one row in `CHECK_EVERY` after them; on
any difference the entry goes back to every token's offsets for the rest of its rows (the
batch at hand included). Each process of `dataset_processes` checks its own rows.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import chain
from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    flat_int_lists,
    prefix_chars,
    stable_prefix,
    supervised_table,
)

log = logging.getLogger("axolotl_weave")

FULLY_CHECKED_ROWS = 256
"""Rows labelled both ways before bisection is trusted alone (a tokenizer whose offsets are not
plain shows it in nearly every row: a trimmed whitespace token, say)."""

CHECK_EVERY = 64
"""After those, one row in this many is still labelled both ways."""


@dataclass
class Rendered:
    """A conversation as text, with the character ranges whose tokens are trained."""

    text: str
    overlapping: list[tuple[int, int]]
    """Ranges of the trained contents and markers: a token overlapping one is trained."""
    inside: list[tuple[int, int]]
    """Ranges of the trained details: a token wholly inside one is trained."""


@dataclass
class OffsetsCheck:
    """One entry's choice, in one process, between bisection and every token's offsets."""

    bisect: bool = True
    """Whether ranges are still found by bisection (False: every token's offsets)."""
    checked: int = 0
    """Rows labelled both ways so far."""


def label_conversations(
    tokenizer: Any,
    rendered: list[Rendered],
    limit: int | None = None,
    check: OffsetsCheck | None = None,
) -> Any:
    """Input ids and labels of rendered conversations, a `pyarrow.Table` with a row each,
    tokenized in one batched call. With `limit`, only a text's first `limit` tokens matter (and
    that it has more): a text far longer is tokenized from a `stable_prefix` (the same first
    tokens, offsets and labels). `check` carries the bisection's state from batch to batch
    (without it, every token's offsets are read)."""
    import numpy as np

    if not rendered:
        return []
    check = check or OffsetsCheck(bisect=False)
    texts = [one.text for one in rendered]
    if limit:
        longest = prefix_chars(limit)
        texts = [
            stable_prefix(tokenizer, text, limit, add_special_tokens=False)
            if len(text) > longest
            else text
            for text in texts
        ]
    encoded = encode(tokenizer, texts, offsets=not check.bisect)
    if check.bisect and getattr(encoded, "encodings", None) is None:
        check.bisect = False  # no backend encodings to ask (not a `tokenizers` tokenizer)
        encoded = encode(tokenizer, texts, offsets=True)
    sizes, flat_ids = flat_int_lists(encoded["input_ids"])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    if check.bisect:
        trained = trained_by_bisection(encoded.encodings, rendered, starts, check)
    else:
        trained = trained_by_offsets(encoded["offset_mapping"], rendered, starts)
    # the batch's columns built from the flat arrays (no Python list per row and column)
    return supervised_table(starts, flat_ids, np.where(trained, flat_ids, IGNORE_INDEX))


def encode(tokenizer: Any, texts: list[str], offsets: bool) -> Any:
    """The texts' ids in one batched call (no special tokens added), with every token's
    offsets if asked."""
    return tokenizer(
        texts,
        add_special_tokens=False,
        return_offsets_mapping=offsets,
        return_attention_mask=False,
        return_token_type_ids=False,
    )


def trained_by_offsets(offsets: list[Any], rendered: list[Rendered], starts: Any) -> Any:
    """Which tokens of the batch are trained, from every token's `(start, end)` offsets (a
    list of them per row)."""
    import numpy as np

    total = int(starts[-1])
    spans = spans_array(offsets, total)
    trained = np.zeros(total, dtype=bool)
    bounds = starts.tolist()
    for one, start, end in zip(rendered, bounds[:-1], bounds[1:], strict=True):
        mark_by_offsets(trained[start:end], spans[start:end], one)  # views: set in place
    return trained


def spans_array(offsets: list[Any], total: int) -> Any:
    """Rows' offsets (a list of `(start, end)` tuples per row, `total` in all) as one
    `(total, 2)` numpy array, read at once (a numpy array per row is slow)."""
    import numpy as np

    pairs = chain.from_iterable(chain.from_iterable(offsets))
    return np.fromiter(pairs, dtype=np.int64, count=2 * total).reshape(-1, 2)


def mark_by_offsets(row: Any, spans: Any, one: Rendered) -> None:
    """Set `row[t]` for each trained token `t` of one conversation, from its tokens' offsets
    (`spans`, one `(start, end)` per token): the definition."""
    import numpy as np

    begins, ends = spans[:, :1], spans[:, 1:]
    if one.overlapping:
        ranges = np.asarray(one.overlapping, dtype=np.int64)
        row |= ((begins < ranges[:, 1]) & (ends > ranges[:, 0])).any(axis=1)
    if one.inside:
        ranges = np.asarray(one.inside, dtype=np.int64)
        row |= ((ranges[:, 0] <= begins) & (ends <= ranges[:, 1])).any(axis=1)
    row &= (ends > begins)[:, 0]


def trained_by_bisection(
    encodings: list[Any], rendered: list[Rendered], starts: Any, check: OffsetsCheck
) -> Any:
    """Which tokens of the batch are trained, each range's run of tokens found by bisection;
    rows checked against `mark_by_offsets` as the module says (on a difference, `check` turns
    bisection off and the whole batch is labelled from every token's offsets)."""
    import numpy as np

    trained = np.zeros(int(starts[-1]), dtype=bool)
    bounds = starts.tolist()
    for index, (one, encoding) in enumerate(zip(rendered, encodings, strict=True)):
        row = trained[bounds[index] : bounds[index + 1]]  # a view: set in place
        mark_by_bisection(row, encoding, one)
        if check.checked < FULLY_CHECKED_ROWS or index % CHECK_EVERY == 0:
            check.checked += 1
            exact = np.zeros(len(row), dtype=bool)
            mark_by_offsets(exact, spans_array([encoding.offsets], len(row)), one)
            if not np.array_equal(exact, row):
                log.debug(
                    "this tokenizer's offsets are not plain (a token empty or out of order): "
                    "labelling from every token's offsets"
                )
                check.bisect = False
                offsets = [encoding.offsets for encoding in encodings]
                return trained_by_offsets(offsets, rendered, starts)
    return trained


def mark_by_bisection(row: Any, encoding: Any, one: Rendered) -> None:
    """Set `row[t]` for each trained token `t` of one conversation, assuming plain offsets:
    the tokens overlapping `[a, b)` run from the first that ends after `a` to the last that
    begins before `b`; those inside it from the first that begins at or after `a` to the last
    that ends at or before `b`."""
    tokens = range(len(row))
    if not tokens:
        return

    def begin(token: int) -> int:
        return encoding.token_to_chars(token)[0]

    def end(token: int) -> int:
        return encoding.token_to_chars(token)[1]

    for a, b in one.overlapping:
        first = bisect_right(tokens, a, key=end)
        row[first : bisect_left(tokens, b, lo=first, key=begin)] = True
    for a, b in one.inside:
        first = bisect_left(tokens, a, key=begin)
        row[first : bisect_right(tokens, b, lo=first, key=end)] = True
