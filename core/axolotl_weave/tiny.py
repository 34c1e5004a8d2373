"""Tiny assets built offline: a tokenizer trained on the spot with `tokenizers`, and a small
model of a real architecture config with random weights. For tests, examples and `weave bench`;
needs no pytest (`axolotl_weave.testing` re-exports it for test suites).
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


def build_tiny_llama(
    out_dir: Path,
    texts: Iterable[str] = (SAMPLE_TEXT,),
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """A llama-architecture model with random weights and a local tokenizer, saved to `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(out_dir, texts, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2 + hidden_size // 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return out_dir


class NoLayerToQuantize(ValueError):
    """`quantize_gptq` found no layer it can quantize in the model."""


GPTQ_GROUP_SIZE = 32  # also the width multiple gptqmodel's CPU kernels need


def linear_widths(module: Any) -> tuple[int, int] | None:
    """(input, output) width of a linear layer (`torch.nn.Linear`, or GPT-2's `Conv1D`, whose
    weight is stored transposed); None for any other module."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        rows, columns = module.weight.shape
        return rows, columns
    return None


def gptq_layers(model: Any) -> tuple[str, list[str]]:
    """Where the decoder blocks are (the module list holding most parameters) and the linear
    layers, named inside a block, that every block has and whose widths are multiples of
    `GPTQ_GROUP_SIZE`: what `quantize_gptq` quantizes (a tiny model's odd-width layers, such
    as a router with one output, stay in full precision, as real GPTQ checkpoints keep them)."""
    import torch
    from optimum.gptq.utils import get_layers  # the layers optimum's quantizer would take

    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    blocks_name, blocks = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    per_block = []
    for block in blocks:
        names = set()
        for name, module in get_layers(block).items():
            widths = linear_widths(module)
            if widths and all(width % GPTQ_GROUP_SIZE == 0 for width in widths):
                names.add(name)
        per_block.append(names)
    return blocks_name, sorted(set.intersection(*per_block))


def quantize_gptq(
    model_dir: Path, out_dir: Path, texts: Iterable[str] = (SAMPLE_TEXT,), *, bits: int = 4
) -> Path:
    """GPTQ-quantize the model in `model_dir` (calibrated on `texts`) through transformers'
    GPTQ integration, and save it with its tokenizer to `out_dir`. Needs `optimum` and
    `gptqmodel`; runs on the CPU. Quantizes the layers `gptq_layers` picks, in groups of
    `GPTQ_GROUP_SIZE` input columns."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig

    blocks, layers = gptq_layers(AutoModelForCausalLM.from_pretrained(model_dir))
    if not layers:
        raise NoLayerToQuantize(
            f"no linear layer is in every block of {blocks} with widths that are multiples of "
            f"{GPTQ_GROUP_SIZE} (optimum's quantizer takes the same layer names in every block)"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quantization = GPTQConfig(
        bits=bits,
        group_size=GPTQ_GROUP_SIZE,
        dataset=list(texts),
        tokenizer=tokenizer,
        block_name_to_quantize=blocks,
        modules_in_block_to_quantize=[layers],
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization, device_map="cpu", dtype=torch.float16
    )
    # written, so that loading finds the blocks again (optimum writes null and then looks only
    # for common layouts such as model.layers)
    model.config.quantization_config.block_name_to_quantize = blocks
    model.config.quantization_config.dataset = None  # the calibration texts: not config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
