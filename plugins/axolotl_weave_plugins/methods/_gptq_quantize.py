"""GPTQ-quantizing a small model on the spot, through transformers' GPTQ integration: the
checkpoints that tests and the support matrix train `gptq: true` on (`quantize_gptq`). Needs
`optimum` and `gptqmodel`; runs on the CPU.

Not a plugin (no entry point): a helper of the `gptq` plugin, for test suites and scripts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


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


def quantize_gptq(model_dir: Path, out_dir: Path, texts: Iterable[str], *, bits: int = 4) -> Path:
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
