"""Save the trained model in Hugging Face format (safetensors) with its tokenizer.

A LoRA run saves the adapter alone (peft's `save_pretrained`). Files are written to a temporary
folder first and moved into `output_dir` one by one, so a crash mid-save never leaves a
half-written weight file where a good one was.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from axolotl_weave import hookimpl, move_into

PLUGIN_KIND = "output"


@hookimpl(tryfirst=True)
def post_train(model: Any, tokenizer: Any, strategy: Any, output_dir: Path) -> None:
    """Write the model (or adapter) and tokenizer to `output_dir` on the main process."""
    strategy.wait_for_everyone()
    if not strategy.is_main_process:
        return
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into(staging, output_dir)
