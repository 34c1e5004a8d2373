"""`batch_ids` (core `_encoding.py`): the backend's fast call gives the ids of the tokenizer's
own call, and the data check notices where it would not.

Each kind of post-processor decides what truncation keeps: the bundled llama tokenizer (a BOS
before), a byte-level BPE with a BOS and an EOS around each text (truncation must keep the EOS),
and a BERT-style WordPiece with [CLS] and [SEP]. Texts carry special tokens written in the text
too, read as one token by default and as plain text with `split_special_tokens`.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from axolotl_weave import _encoding
from axolotl_weave._encoding import CHECK_EVERY, CHECKED_TEXTS, batch_ids, called_ids

PIECES = [
    "the", "model", "Paris", "naïve", "café", "日本語", "😀", "42", "3.14", "x", "  ", "\n",
    "\t", " ", "-", "!?", "<|im_end|>", "[SEP]",
]  # fmt: skip
CORPUS = [" ".join(PIECES) * 3, "the quick brown fox jumps over the lazy dog " * 5]


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(PIECES, k=rng.randint(1, 40))) for _ in range(count)]


def wrapped(tok: Any, **specials: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    fast.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    return fast


def bpe_with_bos_and_eos() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    return wrapped(tok, bos_token="<s>", eos_token="</s>")


def bert_wordpiece() -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[UNK]", "[CLS]", "[SEP]"]
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return wrapped(tok, cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")


@pytest.fixture(params=["llama", "bpe_bos_eos", "bert_wordpiece"])
def tokenizer(request: pytest.FixtureRequest, tiny_tokenizer: Any) -> Any:
    if request.param == "llama":
        return tiny_tokenizer
    return {"bpe_bos_eos": bpe_with_bos_and_eos, "bert_wordpiece": bert_wordpiece}[request.param]()


@pytest.mark.parametrize("split_special_tokens", [False, True])
@pytest.mark.parametrize("options", [{}, {"truncation": True, "max_length": 12}])
def test_the_fast_call_gives_the_ids_of_the_tokenizers_own_call(
    tokenizer: Any, options: dict[str, Any], split_special_tokens: bool
) -> None:
    tokenizer.split_special_tokens = split_special_tokens
    texts = random_texts(600)
    try:
        expected = [list(ids) for ids in tokenizer(texts, **options)["input_ids"]]
        for _ in range(2):  # every text checked, then sampled ones only
            # the backend left set up otherwise (truncation, special tokens) by another call
            other = {} if options else {"truncation": True, "max_length": 5}
            tokenizer(texts[:2], split_special_tokens=not split_special_tokens, **other)
            assert batch_ids(tokenizer, texts, **options) == expected
    finally:
        tokenizer.split_special_tokens = False
    assert _encoding.CHECKS[tokenizer].trusted  # the fast call was used throughout
    if options:
        assert max(map(len, expected)) == 12
        ends = {ids[-1] for ids in expected}
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id != 2:  # not llama's
            assert ends == {tokenizer.eos_token_id}  # truncation kept the EOS
    _encoding.CHECKS.pop(tokenizer)


class SkewedBackend:
    """A backend whose fast call drops the last id of each text containing `marker`."""

    def __init__(self, backend: Any, marker: str) -> None:
        self.backend, self.marker = backend, marker

    def encode_batch_fast(self, texts: list[str]) -> list[Any]:
        class Ids:
            def __init__(self, ids: list[int]) -> None:
                self.ids = ids

        encodings = self.backend.encode_batch_fast(texts)
        return [
            Ids(encoding.ids[:-1] if self.marker in text else encoding.ids)
            for text, encoding in zip(texts, encodings, strict=True)
        ]


class Skewed:
    """A tokenizer whose own call adds something its backend's fast call does not."""

    def __init__(self, tokenizer: Any, marker: str) -> None:
        self.tokenizer = tokenizer
        self.backend_tokenizer = SkewedBackend(tokenizer.backend_tokenizer, marker)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer(*args, **kwargs)


def test_a_difference_in_the_first_texts_goes_back_to_the_tokenizers_call(
    tiny_tokenizer: Any,
) -> None:
    skewed = Skewed(tiny_tokenizer, "zebra")
    texts = ["a plain text", "a zebra text", *random_texts(50)]
    assert batch_ids(skewed, texts) == called_ids(tiny_tokenizer, texts)
    assert not _encoding.CHECKS[skewed].trusted
    assert batch_ids(skewed, texts) == called_ids(tiny_tokenizer, texts)


def test_after_the_first_texts_one_in_every_few_is_still_checked(tiny_tokenizer: Any) -> None:
    skewed = Skewed(tiny_tokenizer, "zebra")
    first = random_texts(CHECKED_TEXTS + 1)  # the first goes through the call, uncounted
    assert batch_ids(skewed, first) == called_ids(tiny_tokenizer, first)
    check = _encoding.CHECKS[skewed]
    assert check.trusted and check.checked == CHECKED_TEXTS

    def next_sampled() -> int:
        """The index, in the next batch, of the one text among them the check samples."""
        return CHECK_EVERY - check.seen % CHECK_EVERY

    texts = random_texts(next_sampled(), seed=1)  # no text sampled in this batch
    texts[5] = "a zebra, not sampled"
    wrong = batch_ids(skewed, texts)
    assert wrong[5] != called_ids(tiny_tokenizer, texts[5:6])[0] and check.trusted
    texts = random_texts(CHECK_EVERY, seed=2)
    texts[next_sampled()] = "a zebra, sampled"
    assert batch_ids(skewed, texts) == called_ids(tiny_tokenizer, texts)
    assert not check.trusted


def test_a_tokenizer_without_a_fast_backend_call_is_called_as_it_is(tiny_tokenizer: Any) -> None:
    class Plain:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return tiny_tokenizer(*args, **kwargs)

    texts = random_texts(20)
    assert batch_ids(Plain(), texts) == called_ids(tiny_tokenizer, texts)
