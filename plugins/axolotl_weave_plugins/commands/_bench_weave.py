"""The weave run of `weave bench`: the config's own pipeline and the core's loop on the synthetic
rows, with a probe plugin registered for the run that clocks each step.

Not a plugin (no entry point): a helper of the `bench` command plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from axolotl_weave import WeaveError, hookimpl

from axolotl_weave_plugins.commands._bench_measure import MemoryMeter, RunResult, StepRecorder

if TYPE_CHECKING:
    import numpy as np

    from axolotl_weave_plugins.commands.bench import BenchSettings


class WeaveProbe:
    """A plugin registered for the weave run only: records each step, keeps a weak reference to
    the model (to check that it is freed before HF runs)."""

    def __init__(self, recorder: StepRecorder) -> None:
        self.recorder = recorder
        self.model_ref: Any = None

    @hookimpl
    def on_train_begin(self, state: Any) -> None:
        """Training starts: the clock's zero."""
        self.recorder.begin(state.tokens_seen)

    @hookimpl
    def on_step_end(self, state: Any, model: Any) -> None:
        """A step ended; the loop has already counted its real tokens in `tokens_seen`."""
        self.recorder.step_end(state.global_step, state.tokens_seen)
        if self.model_ref is None:
            import weakref

            self.model_ref = weakref.ref(model)


def weave_efficiency(trainer: Any, lengths: np.ndarray) -> tuple[float, float]:
    """(efficiency of weave's micro-batches, efficiency of the same micro-batch size unpacked and
    padded to the longest): real tokens / slots. A batch plan that knows its own efficiency
    (the packed one: its bins' fill) says it."""
    import numpy as np
    from axolotl_weave import epoch_order, padded_efficiency

    cfg = trainer.cfg
    order = np.asarray(epoch_order(len(lengths), cfg.seed, 0), dtype=np.int64)
    unpacked = padded_efficiency(lengths[order], cfg.micro_batch_size)
    efficiency = getattr(trainer.plan, "efficiency", None)
    if efficiency is not None:
        return efficiency(), unpacked
    if cfg.pad_to_sequence_len:
        return float(lengths.sum()) / (len(lengths) * cfg.sequence_len), unpacked
    return unpacked, unpacked


def run_weave(
    session: Any,
    family: Any,
    tokenizer: Any,
    train_set: Any,
    lengths: np.ndarray | None,
    settings: BenchSettings,
    meter: MemoryMeter,
) -> tuple[RunResult, Any]:
    """Build the config's trainer on the synthetic rows, run it, and measure it; returns the
    result and a weak reference to the trained model (to check that it was freed). Running out
    of GPU memory is an error saying what to lower. `lengths` (None for preference pairs) gives
    the padding efficiency."""
    import torch
    from axolotl_weave.commands import build_trainer, run_scoped_plugins

    cfg = session.cfg
    packed = getattr(cfg, "sample_packing", False)  # a key of the packing plugin (if installed)
    probe = WeaveProbe(StepRecorder("weave", settings))
    pm = session.hooks.pm
    pm.register(probe, name="weave-bench-probe")
    try:
        with run_scoped_plugins(session):  # the config's run-scoped plugins, as `weave train`
            trainer = build_trainer(session, family, tokenizer, train_set)
            efficiency, unpacked = (
                weave_efficiency(trainer, lengths) if lengths is not None else (None, None)
            )
            meter.reset()
            state = trainer.run()
        peak = meter.peak_gib()
        reserved = meter.reserved_gib()
        trainer.strategy.free_memory()
        del trainer
    except torch.OutOfMemoryError:
        raise WeaveError(
            f"the weave run ran out of GPU memory ({cfg.micro_batch_size} x "
            f"{'packed bins of ' if packed else 'rows up to '}{cfg.sequence_len} "
            "tokens per micro-batch): lower micro_batch_size or sequence_len, or turn on "
            "gradient checkpointing"
        ) from None
    finally:
        pm.unregister(probe)
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    if packed:
        micro = f"{cfg.micro_batch_size} bin(s) of {cfg.sequence_len}"
    elif lengths is None:
        micro = f"{cfg.micro_batch_size} pair(s)"
    else:
        micro = f"{cfg.micro_batch_size} row(s)"
    result = probe.recorder.result(
        peak_memory_gib=peak,
        packing_efficiency=efficiency,
        micro_batch=micro,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        final_loss=losses[-1] if losses else None,
        extra={"unpacked_efficiency": unpacked, "peak_reserved_gib": reserved},
    )
    return result, probe.model_ref
