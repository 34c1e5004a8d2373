"""Save the trained model in Hugging Face format (safetensors) with its tokenizer.

A LoRA run saves the adapter alone (peft's `save_pretrained`). Files are written to a temporary
folder first and moved into `output_dir` one by one, so a crash mid-save never leaves a
half-written weight file where a good one was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl_weave import hookimpl, staged_into

PLUGIN_KIND = "output"


@hookimpl(tryfirst=True)
def post_train(model: Any, tokenizer: Any, strategy: Any, output_dir: Path) -> None:
    """Write the model (or adapter) and tokenizer to `output_dir` on the main process."""
    strategy.wait_for_everyone()
    if not strategy.is_main_process:
        return
    with staged_into(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
