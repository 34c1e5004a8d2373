"""chat_template's labels by bisection equal the labels from every token's offsets.

The bisection (`_token_labels.mark_by_bisection`) assumes a tokenizer's offsets are plain: in
order, none empty. These tests build each kind of fast tokenizer the `tokenizers` library makes
(byte-level BPE as GPT-2 and Llama 3, SentencePiece-style BPE with byte fallback as Llama 2 and
Mistral, Unigram as T5, WordPiece with accent stripping as BERT), label random texts with
random ranges both ways, and check that the bisection needed no fallback. A tokenizer whose
post-processor trims offsets (RoBERTa's: a whitespace token becomes empty) is not plain: the
check must notice and give the exact labels anyway.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from axolotl_weave_plugins.formats import _token_labels as tl

SPECIALS = ["<|im_start|>", "<|im_end|>"]
PIECES = [
    "the", "model", "Paris", "naïve", "café", "Ünïcödé", "日本語", "テスト", "😀", "👩‍💻", "42",
    "3.14", "x", "é", "ß", "ﬁ", "a\u0301", "  ", "\n", "\n\n", "\t", " ", "   \n", "-", "!?",
]  # fmt: skip
CORPUS = [" ".join(PIECES) * 3, "the quick brown fox jumps over the lazy dog " * 5]


def wrapped(tok: Any) -> Any:
    """`tok` as a transformers fast tokenizer, with chatml's markers as special tokens."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"additional_special_tokens": SPECIALS})
    return fast


def byte_level_bpe(trim_offsets: bool = False) -> Any:
    """GPT-2 / Llama 3 style; with `trim_offsets`, RoBERTa's post-processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if trim_offsets:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return wrapped(tok)


def sentencepiece_bpe() -> Any:
    """Llama 2 / Mistral style: spaces as '▁', a '▁' prepended, unknown characters as bytes."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    byte_tokens = [f"<0x{value:02X}>" for value in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", *byte_tokens], show_progress=False
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 5], trainer=trainer)
    return wrapped(tok)


def unigram() -> Any:
    """T5 style: Unigram over Metaspace pieces, NFKC-normalised."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return wrapped(tok)


def wordpiece() -> Any:
    """BERT style: lower-cased, accents stripped, whitespace dropped (covered by no token)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[UNK]"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return wrapped(tok)


PLAIN = {
    "byte-level BPE": byte_level_bpe,
    "SentencePiece BPE with byte fallback": sentencepiece_bpe,
    "Unigram": unigram,
    "WordPiece": wordpiece,
}


def random_conversations(count: int, seed: int = 0) -> list[tl.Rendered]:
    """Texts of random pieces and chatml markers, with random trained ranges of each kind:
    empty ones, ones that cut a token or a marker, ones at either end of the text."""
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        parts = [rng.choice(PIECES + SPECIALS) for _ in range(rng.randint(0, 40))]
        text = "".join(part + rng.choice(["", " ", ""]) for part in parts)

        found.append(tl.Rendered(text, some_ranges(rng, text), some_ranges(rng, text)))
    return found


def some_ranges(rng: random.Random, text: str) -> list[tuple[int, int]]:
    """Up to four ranges of `text`, of lengths from 0 to 200 characters."""
    ranges = []
    for _ in range(rng.randint(0, 4)):
        a = rng.randint(0, len(text))
        ranges.append((a, min(len(text), a + rng.choice([0, 1, 2, 5, 20, 200]))))
    return ranges


def labelled(tokenizer: Any, rendered: list[tl.Rendered], check: tl.OffsetsCheck | None) -> Any:
    """The batch's labels, in batches of 100 as `map_rows` would hand them."""
    return [
        tl.label_conversations(tokenizer, rendered[at : at + 100], None, check).to_pylist()
        for at in range(0, len(rendered), 100)
    ]


@pytest.mark.parametrize("kind", list(PLAIN))
def test_bisection_gives_the_labels_of_every_token_offsets(kind: str, monkeypatch) -> None:
    monkeypatch.setattr(tl, "FULLY_CHECKED_ROWS", 10**6)  # every row labelled both ways
    tokenizer = PLAIN[kind]()
    rendered = random_conversations(600)
    check = tl.OffsetsCheck()
    by_bisection = labelled(tokenizer, rendered, check)
    assert check.bisect, f"{kind}: a row's labels differed by bisection"
    assert check.checked == 600
    assert by_bisection == labelled(tokenizer, rendered, None)
    trained = sum(
        label != -100 for batch in by_bisection for row in batch for label in row["labels"]
    )
    assert trained > 1000  # the ranges did select tokens


def test_trimmed_offsets_fall_back_to_every_token_offsets() -> None:
    tokenizer = byte_level_bpe(trim_offsets=True)
    whitespace = "x" + " " * 7 + "y"  # the spaces' token is trimmed to no characters
    offsets = tokenizer(whitespace, return_offsets_mapping=True)["offset_mapping"]
    assert any(start == end for start, end in offsets)
    rendered = [tl.Rendered(whitespace, [(0, len(whitespace))], [])] + random_conversations(300)
    check = tl.OffsetsCheck()
    assert labelled(tokenizer, rendered, check) == labelled(tokenizer, rendered, None)
    assert not check.bisect


def test_rows_after_the_first_are_checked_one_in_every_few(monkeypatch) -> None:
    """After `FULLY_CHECKED_ROWS`, a difference in a sampled row still turns bisection off."""
    monkeypatch.setattr(tl, "FULLY_CHECKED_ROWS", 0)
    tokenizer = byte_level_bpe(trim_offsets=True)
    whitespace = tl.Rendered("x" + " " * 7 + "y", [(0, 9)], [])
    first = tl.Rendered("abc", [(0, 3)], [])  # checked, and plain
    rendered = [first, *random_conversations(tl.CHECK_EVERY - 1), whitespace]
    check = tl.OffsetsCheck()
    assert labelled(tokenizer, rendered, check) == labelled(tokenizer, rendered, None)
    assert not check.bisect
    assert check.checked == 2  # rows 0 and CHECK_EVERY of the batch


def test_a_tokenizer_without_backend_encodings_is_labelled_from_its_offsets() -> None:
    """A fast tokenizer whose call returns a plain mapping (no `encodings` to bisect)."""
    tokenizer = byte_level_bpe()

    def as_mapping(texts: list[str], **options: Any) -> dict[str, Any]:
        return dict(tokenizer(texts, **options))

    rendered = random_conversations(50)
    check = tl.OffsetsCheck()
    assert labelled(as_mapping, rendered, check) == labelled(tokenizer, rendered, None)
    assert not check.bisect
