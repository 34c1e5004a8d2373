"""Shared by the bitsandbytes plugins (bnb_quantization, bnb_optimizers): quieting a notice of
bitsandbytes' CPU backend.

Not a plugin (no entry point): a helper of the plugins in this folder.
"""

from __future__ import annotations

import logging


def _not_the_hub_kernel_notice(record: logging.LogRecord) -> bool:
    """False for bitsandbytes' CPU-backend notice that an optional kernel could be fetched from
    the Hugging Face hub with the `kernels` package: the built-in CPU kernel serves, and a run
    never downloads code."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


def quiet_hub_kernel_notice() -> None:
    """Filter that notice out (once: a logger keeps a filter object once). Done when a
    bitsandbytes plugin loads, before anything imports bitsandbytes."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_the_hub_kernel_notice)
