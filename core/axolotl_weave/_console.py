"""Terminal output: one rich console, and logging through it (the training loop plugin draws
its progress bar on `console`)."""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler

PIPED_WIDTH = 160
"""Width of tables and messages when output goes to a file or pipe (rich would use 80)."""

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)
for _console in (console, err_console):
    if not _console.is_terminal:
        _console.soft_wrap = True  # in a pipe or file a message is one line, never wrapped
        if "COLUMNS" not in os.environ:
            _console.width = PIPED_WIDTH


def setup_logging(verbose: bool = False) -> None:
    """Send the `axolotl_weave` logger to stderr through rich (INFO, or DEBUG when verbose)."""
    logger = logging.getLogger("axolotl_weave")
    logger.handlers.clear()
    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(
            console=err_console, show_path=False, show_time=False, markup=False
        )
    else:  # in a pipe or file: plain lines, not padded to the width
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    for noisy in ("datasets", "transformers", "accelerate", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quiet_libraries() -> None:
    """Turn off the libraries' own bars (weight loading, dataset internals) and their deprecation
    chatter; our own bars and messages remain.

    Called when the tokenizer loads (not at CLI start-up or validation, which must not import
    the libraries).
    """
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    # torchao, which transformers imports when it is installed: its CUDA-only extensions that
    # do not load without a GPU, and torch's deprecation notes on the enums it registers
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
