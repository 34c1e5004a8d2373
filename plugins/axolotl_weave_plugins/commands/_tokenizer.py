"""A tokenizer trained offline on the spot with `tokenizers`: `weave bench` builds its
random-weight models on it, and `axolotl_weave_testing` its tiny test models.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

SAMPLE_TEXT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request. Instruction: Input: Response: the quick brown fox jumps over the "
    "lazy dog. What is the capital of France? Paris. Add two and three. Five. Reverse the word "
    "cat. tac. Name a colour. Blue. 0 1 2 3 4 5 6 7 8 9 + - = , . ? ! : ; ( ) # \n"
)


def train_tokenizer(
    out_dir: Path,
    texts: Iterable[str] = (SAMPLE_TEXT,),
    vocab_size: int = 512,
    pad_token: str | None = None,
) -> Any:
    """Train a llama-style byte-level BPE tokenizer (`<s>` BOS added, `</s>` EOS, `pad_token` if
    given) into `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=pad_token,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    return hf
