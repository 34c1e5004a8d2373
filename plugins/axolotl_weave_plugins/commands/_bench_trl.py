"""The baseline of `weave bench --baseline trl` for a DPO or IPO config: TRL's `DPOTrainer`.

What a TRL user would write for the same job, on the same model: the base loaded as the config's
plugins load it (`load_model`, with its LoRA adapter and quantization; the reference is then the
base without the adapter, as in weave, else TRL's own copy of the model), `DPOConfig` with the
config's optimizer, schedule, precision, `rl_beta` and loss types, TRL's collator and loss. Both
runs read the same token ids (`_bench_data.synthetic_pairs`), with the same accumulation steps
and the same real tokens per optimizer step (TRL's pairs per micro-batch are chosen to match
weave's micro-batches, which may be packed bins; `--hf-micro-batch` fixes them); TRL's
tokenizing of text is skipped (`_prepare_dataset` returns the already tokenized rows), as
weave's data pipeline is.

Not a plugin (no entry point): a helper of the `bench` command plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave import ConfigError, MissingDependencyError

from axolotl_weave_plugins.commands._bench_hf import (
    argument_values,
    baseline_optimizers,
    fresh_accelerator_state,
    make_callback,
    train_and_measure,
)
from axolotl_weave_plugins.commands._bench_measure import MemoryMeter, RunResult, StepRecorder

if TYPE_CHECKING:
    from axolotl_weave_plugins.commands.bench import BenchSettings

TRL_METHODS = ("dpo", "ipo")
"""`rl:` values TRL's `DPOTrainer` runs (others have no baseline here)."""


def check_trl_baseline(cfg: Any) -> None:
    """Refuse `--baseline trl` for a config TRL's `DPOTrainer` cannot run, or without trl."""
    import importlib.util

    if cfg.rl not in TRL_METHODS:
        has = f"rl: {cfg.rl} (use --baseline none)" if cfg.rl else "no rl: (use --baseline hf)"
        raise ConfigError(
            f"weave bench --baseline trl compares rl: {' or '.join(TRL_METHODS)} with TRL's "
            f"DPOTrainer; this config has {has}"
        )
    if importlib.util.find_spec("trl") is None:
        raise MissingDependencyError(
            "weave bench --baseline trl needs TRL: pip install 'axolotl-weave[rl-reference]'"
        )


def plan_trl_rows(
    weave_tokens_per_step: float | None, accumulation: int, pair_tokens: float, fixed: int | None
) -> int:
    """TRL's pairs per micro-batch for the same real tokens per optimizer step as weave's (whose
    micro-batches may be packed bins), unless `--hf-micro-batch` fixed them."""
    return fixed or max(1, round((weave_tokens_per_step or 0) / (accumulation * pair_tokens)))


def dpo_arguments(cfg: Any, rows: int, max_steps: int, output_dir: Path) -> Any:
    """`DPOConfig`: the HF baseline's arguments with `rows` pairs per micro-batch and the
    config's accumulation, and the config's DPO keys (`rl_beta`, `dpo_loss_type`, ...)."""
    from trl import DPOConfig

    values = argument_values(cfg, rows, cfg.gradient_accumulation_steps, max_steps, output_dir)
    loss_types = ["ipo"] if cfg.rl == "ipo" else list(cfg.dpo_loss_type or ["sigmoid"])
    return DPOConfig(
        **values,
        beta=cfg.rl_beta,
        loss_type=loss_types,
        loss_weights=cfg.dpo_loss_weights,
        label_smoothing=cfg.dpo_label_smoothing or 0.0,
        use_weighting=bool(cfg.dpo_use_weighting),
        max_length=None,  # every synthetic sequence fits sequence_len, as weave's
        precompute_ref_log_probs=bool(cfg.precompute_ref_log_probs),
    )


def run_trl(
    session: Any,
    family: Any,
    tokenizer: Any,
    pairs: Any,
    rows: int,
    settings: BenchSettings,
    meter: MemoryMeter,
    workdir: Path,
    say: Callable[[str], None],
) -> RunResult:
    """Train with TRL's `DPOTrainer` on `pairs`, `rows` pairs per micro-batch, for the bench's
    steps and measure it. Running out of GPU memory is a result (the row says so), not a
    crash."""
    import torch
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        """`DPOTrainer` on rows already holding `prompt_ids`, `chosen_ids`, `rejected_ids`."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset

    cfg = session.cfg
    micro = f"{rows} pair(s)"
    fresh_accelerator_state()
    recorder, losses = StepRecorder("trl", settings), []

    def build() -> Any:
        model = session.hooks.load_model(cfg, tokenizer, family, purpose="train")
        return PreTokenizedDPOTrainer(
            model=model,
            args=dpo_arguments(cfg, rows, settings.total_steps, workdir / "trl"),
            train_dataset=pairs,
            processing_class=tokenizer,
            callbacks=[make_callback(recorder, losses, say, name="trl")],
            optimizers=baseline_optimizers(cfg, model, session.hooks),
        )

    try:
        peak = train_and_measure(build, meter)
    except torch.OutOfMemoryError:
        return RunResult(
            name="trl",
            micro_batch=micro,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            error=f"out of memory at {micro} per micro-batch (try --hf-micro-batch)",
        )
    return recorder.result(
        peak_memory_gib=peak,
        micro_batch=micro,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        final_loss=losses[-1] if losses else None,
        extra={"peak_reserved_gib": meter.reserved_gib()},
    )
