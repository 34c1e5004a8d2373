"""One device (GPU, else CPU), or plain DDP when launched with several processes.

The fallback (`trylast`) of `wrap_distributed`: accelerate detects `accelerate launch` or
`torchrun` and gives data parallelism; FSDP and DeepSpeed plugins answer before it.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import AccelerateStrategy, hookimpl, resolve_precision

PLUGIN_KIND = "distributed"


@hookimpl(trylast=True)
def wrap_distributed(cfg: Any) -> AccelerateStrategy:
    """An `AccelerateStrategy` on an `accelerate.Accelerator` with the config's mixed precision.

    accelerate keeps its state in a process-wide singleton; a second run in the same process
    (a notebook, a sweep, the tests) may ask for another precision, so a single-process run
    starts from a fresh state. Under a multi-process launch the state is left alone.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    if PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    return AccelerateStrategy(Accelerator(mixed_precision=resolve_precision(cfg).mixed_precision))
