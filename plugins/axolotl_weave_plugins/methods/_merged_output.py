"""Replacing a saved LoRA adapter in `output_dir` by the whole merged model, for methods whose
adapter alone no longer describes the trained model (ReLoRA after a restart, LoftQ on its
quantized base).

Not a plugin (no entry point): a helper of `relora` and `loftq`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl_weave import staged_into

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def save_merged_model(model: Any, tokenizer: Any, output_dir: Path) -> None:
    """Merge the peft `model`'s adapter and write the whole model with its tokenizer into
    `output_dir` (through a staging folder), removing the adapter files it replaces."""
    merged = model.merge_and_unload()
    with staged_into(output_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name in ADAPTER_FILES:
            (output_dir / name).unlink(missing_ok=True)
