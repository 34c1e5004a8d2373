"""One device (GPU, else CPU), or plain DDP when launched with several processes.

The fallback (`trylast`) of `wrap_distributed`: accelerate detects `accelerate launch` or
`torchrun` and gives data parallelism; FSDP and DeepSpeed plugins answer before it.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import hookimpl, resolve_precision

PLUGIN_KIND = "distributed"


@hookimpl(trylast=True)
def wrap_distributed(cfg: Any) -> Any:
    """An `accelerate.Accelerator` with the config's mixed precision."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision=resolve_precision(cfg).mixed_precision)
