"""The baseline of `weave bench --baseline hf`: plain Hugging Face `transformers.Trainer`.

What a Hugging Face user would write for the same job, on the same model: the base loaded as
the config's plugins load it (`load_model`: `from_pretrained` in the run's dtype with
transformers' default attention, quantized and wrapped in peft's LoRA as the config's keys say),
`DataCollatorForSeq2Seq` padding each micro-batch to its longest sample, the same optimizer,
schedule, precision, gradient clipping and gradient checkpointing. Nothing else of weave's
pipeline runs: no packing, no attention patches or kernels, no weave loss. Its rows per micro-batch
and accumulation steps are planned here too (`plan_hf_budget`).

Not a plugin (no entry point): a helper of the `bench` command plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave import IGNORE_INDEX, batch_tokens, resolve_precision

from axolotl_weave_plugins.commands._bench_measure import MemoryMeter, RunResult, StepRecorder

if TYPE_CHECKING:
    import numpy as np

    from axolotl_weave_plugins.commands.bench import BenchSettings

HF_OPTIMIZERS = {
    "adamw_torch": "adamw_torch",
    "adamw": "adamw_torch",
    "adamw_torch_fused": "adamw_torch_fused",
    "sgd": "sgd",
}
"""weave `optimizer:` → `TrainingArguments.optim`; other names (plugin optimizers, plain adam)
are built by weave's own builder and handed to the Trainer, so the optimizer is the same."""

HF_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
"""weave `lr_scheduler:` → `TrainingArguments.lr_scheduler_type` where the names differ (weave's
constant has warm-up); the other registered names are transformers' own."""


class CountingCollator:
    """Wraps a collator and counts real tokens and token slots of every micro-batch it makes."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], Any]) -> None:
        self.inner = inner
        self.real = 0
        self.slots = 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        """Collate `features` (padding to the longest) and count."""
        batch = self.inner(features)
        self.real += batch_tokens(batch)
        self.slots += int(batch["input_ids"].numel())
        return batch

    @property
    def efficiency(self) -> float | None:
        """Real tokens / slots over every micro-batch collated so far."""
        return self.real / self.slots if self.slots else None


def plan_hf_budget(
    cfg: Any, lengths: np.ndarray, efficiency: float, settings: BenchSettings
) -> tuple[int, int]:
    """HF's rows per micro-batch and accumulation steps for the same real tokens per optimizer
    step as weave: rows = weave's real tokens per micro-batch / mean sample length (unless
    `--hf-micro-batch`), then accumulation = weave's tokens per step / HF's per micro-batch
    (unless `--hf-grad-accum`)."""
    mean = float(lengths.mean())
    if getattr(cfg, "sample_packing", False):  # a key of the packing plugin (if installed)
        weave_micro = cfg.micro_batch_size * cfg.sequence_len * efficiency
    else:
        weave_micro = cfg.micro_batch_size * mean
    weave_step = weave_micro * cfg.gradient_accumulation_steps
    rows = settings.hf_micro_batch or max(1, round(weave_micro / mean))
    accumulation = settings.hf_grad_accum or max(1, round(weave_step / (rows * mean)))
    return rows, accumulation


def load_hf_model(session: Any, tokenizer: Any, family: Any) -> Any:
    """The model the config's plugins load for training (`load_model`, purpose "train"):
    quantized and wrapped in LoRA as the config's `load_in_4bit` / `load_in_8bit` / `adapter`
    keys say; no attention patch or kernel (`patch_attention` does not run)."""
    return session.hooks.load_model(session.cfg, tokenizer, family, purpose="train")


def training_arguments(
    cfg: Any, rows: int, accumulation: int, max_steps: int, output_dir: Path
) -> Any:
    """The `TrainingArguments` of the baseline (`argument_values`)."""
    from transformers import TrainingArguments

    return TrainingArguments(**argument_values(cfg, rows, accumulation, max_steps, output_dir))


def argument_values(
    cfg: Any, rows: int, accumulation: int, max_steps: int, output_dir: Path
) -> dict[str, Any]:
    """The `TrainingArguments` values of a baseline (HF's, and TRL's beneath its own): the
    config's optimizer settings, no saving, no evaluation, no reporting; non-padding tokens
    counted."""
    import torch
    from axolotl_weave.commands import warmup_steps

    precision = resolve_precision(cfg)
    checkpointing = bool(getattr(cfg, "gradient_checkpointing", False))
    checkpointing_kwargs = getattr(cfg, "gradient_checkpointing_kwargs", None) or {
        "use_reentrant": False
    }
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=rows,
        gradient_accumulation_steps=accumulation,
        max_steps=max_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_epsilon=cfg.adam_epsilon,
        optim=HF_OPTIMIZERS.get(cfg.optimizer, "adamw_torch"),
        lr_scheduler_type=HF_SCHEDULERS.get(cfg.lr_scheduler, cfg.lr_scheduler),
        warmup_steps=warmup_steps(cfg, max_steps),
        max_grad_norm=cfg.max_grad_norm or 0.0,
        bf16=precision.mixed_precision == "bf16",
        fp16=precision.mixed_precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs=checkpointing_kwargs if checkpointing else None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
    )


def make_callback(
    recorder: StepRecorder, losses: list[float], say: Callable[[str], None], name: str = "hf"
) -> Any:
    """A `TrainerCallback` that records every step and keeps the losses (`name` in progress)."""
    from transformers import TrainerCallback

    class BenchCallback(TrainerCallback):
        """Steps and loss of the HF run."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Training starts: the clock's zero."""
            recorder.begin(state.num_input_tokens_seen)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """A step ended; `num_input_tokens_seen` already counts its real tokens."""
            recorder.step_end(state.global_step, state.num_input_tokens_seen)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            """Keep the loss, and show progress as weave's loop does."""
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                say(f"{name} step {state.global_step}/{state.max_steps} | loss {logs['loss']:.4g}")

    return BenchCallback()


def run_hf(
    session: Any,
    family: Any,
    tokenizer: Any,
    train_set: Any,
    rows: int,
    accumulation: int,
    settings: BenchSettings,
    meter: MemoryMeter,
    output_dir: Path,
    say: Callable[[str], None],
) -> RunResult:
    """Train with plain `transformers.Trainer` for the bench's steps and measure it. Running
    out of GPU memory is a result (the row says so), not a crash."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer

    cfg = session.cfg
    micro = f"{rows} row(s)"
    fresh_accelerator_state()
    recorder, losses = StepRecorder("hf", settings), []
    collator = CountingCollator(
        DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)
    )

    def build() -> Any:
        model = load_hf_model(session, tokenizer, family)
        return Trainer(
            model=model,
            args=training_arguments(cfg, rows, accumulation, settings.total_steps, output_dir),
            train_dataset=train_set,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[make_callback(recorder, losses, say)],
            optimizers=baseline_optimizers(cfg, model, session.hooks),
        )

    try:
        peak = train_and_measure(build, meter)
    except torch.OutOfMemoryError:
        return RunResult(
            name="hf",
            micro_batch=micro,
            gradient_accumulation_steps=accumulation,
            error=f"out of memory at {rows} rows per micro-batch (try --hf-micro-batch)",
        )
    return recorder.result(
        peak_memory_gib=peak,
        packing_efficiency=collator.efficiency,
        micro_batch=micro,
        gradient_accumulation_steps=accumulation,
        final_loss=losses[-1] if losses else None,
        extra={"peak_reserved_gib": meter.reserved_gib()},
    )


def fresh_accelerator_state() -> None:
    """Forget the accelerator state weave's run set (its precision), in a single process."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    if PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def baseline_optimizers(cfg: Any, model: Any, hooks: Any) -> tuple[Any, Any]:
    """The `optimizers=` of a baseline's Trainer: (None, None), the Trainer building the
    optimizer by name, unless the Trainer does not know the config's (a plugin's optimizer,
    bitsandbytes' 8-bit ones): then weave's own builder makes it, so both runs use the same."""
    if cfg.optimizer in HF_OPTIMIZERS:
        return None, None
    from axolotl_weave.commands import build_optimizer

    return build_optimizer(cfg, model, hooks), None


def train_and_measure(build: Callable[[], Any], meter: MemoryMeter) -> float:
    """Build a baseline's Trainer, train it quietly (its console callbacks removed) with memory
    measured from its start, and return the peak; the trainer's model, optimizer and
    accelerator memory are released whatever happens (a `torch.OutOfMemoryError` passes)."""
    from transformers import PrinterCallback, ProgressCallback

    trainer = None
    try:
        trainer = build()
        for noisy in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(noisy)
        meter.reset()
        trainer.train()
        return meter.peak_gib()
    finally:
        if trainer is not None:
            trainer.accelerator.free_memory()
            trainer.model = trainer.model_wrapped = trainer.optimizer = None
            if hasattr(trainer, "ref_model"):  # TRL's preference trainers
                trainer.ref_model = None
        del trainer
