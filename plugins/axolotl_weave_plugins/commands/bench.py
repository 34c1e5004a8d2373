"""`weave bench CONFIG`: time a config for N optimizer steps after a warm-up, on synthetic data, and
with `--baseline hf` compare it with plain Hugging Face Trainer in the same process.

What runs: the config's own pipeline (`load_model` with its adapters and quantization,
`patch_attention`, `build_loss`, `wrap_distributed`, the core's loop with its packing), fed with
synthetic samples instead of `datasets:`: token ids drawn uniformly from the model's vocabulary
(special ids left out), lengths log-normal (median `--median-length`, `--length-sigma`) clipped
to `--min-length..--max-length`, every token trained. `--shape NAME` replaces `base_model` by a
random-weight model of a named architecture (`_bench_shapes.py`), built once into a cache folder,
so nothing is downloaded.

What it prints, per run (weave, then hf):

- real tokens/s: non-padding tokens of the timed steps / their wall time (steps
  `warmup+1 .. warmup+steps`, CUDA synchronised at each step's end);
- MFU: `6·N` FLOPs per real token (`4·N` when the base is frozen: `adapter:` set), N = every
  parameter of the architecture including the embeddings, over the GPU's dense bf16 peak
  (known from its name, or `--peak-tflops`); attention's own FLOPs are not counted;
- peak memory: `torch.cuda.max_memory_allocated` on a GPU, the process's peak resident set size
  on a CPU;
- packing efficiency: real tokens / token slots of the micro-batches (packed bins, or rows
  padded to the longest);
- real tokens per optimizer step, the micro-batch, and the last step's loss (a sanity check:
  about ln(vocabulary) for random weights).

The HF baseline gets the same weights, samples, precision, optimizer, learning-rate schedule,
adapter and quantization, pads each micro-batch to its longest sample and uses sdpa attention; its
rows per micro-batch and accumulation steps are chosen so that its real tokens per optimizer step
match weave's (`--hf-micro-batch` / `--hf-grad-accum` fix them instead).

This module holds the command, its settings and the order of the runs; beside it, one job each:
`_bench_shapes.py` (the named architectures and their cached random-weight models),
`_bench_data.py` (the synthetic samples), `_bench_measure.py` (clock, memory, profiler, MFU),
`_bench_weave.py` (the weave run), `_bench_hf.py` (the HF baseline and its budget) and
`_bench_report.py` (the table, the notes, the JSON).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer
from axolotl_weave import ConfigError, hookimpl

PLUGIN_KIND = "command"


# --- settings ----------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """The command's own options (the config's keys come from CONFIG and its overrides)."""

    shape: str | None = None
    steps: int = 20
    warmup: int = 5
    samples: int = 6000
    median_length: int = 300
    length_sigma: float = 1.0
    min_length: int = 16
    max_length: int | None = None  # None: the config's sequence_len
    baseline: str = "none"
    seed: int = 0
    peak_tflops: float | None = None
    profile_dir: Path | None = None
    profile_steps: int = 3
    json_path: Path | None = None
    hf_micro_batch: int | None = None
    hf_grad_accum: int | None = None
    cache_dir: str | None = None

    def check(self) -> None:
        """Refuse impossible values with one message naming the option."""
        problems = []
        for name in ("steps", "samples", "median_length", "min_length", "profile_steps"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1")
        if self.warmup < 0:
            problems.append("--warmup must be 0 or more")
        if self.length_sigma < 0:
            problems.append("--length-sigma must be 0 or more")
        if self.max_length is not None and self.max_length < self.min_length:
            problems.append(
                f"--max-length {self.max_length} is less than --min-length {self.min_length}"
            )
        if self.baseline not in ("none", "hf", "trl"):
            problems.append(f"--baseline: '{self.baseline}' is not one of: none, hf, trl")
        for name in ("peak_tflops", "hf_micro_batch", "hf_grad_accum"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive")
        if problems:
            raise ConfigError("weave bench: " + "; ".join(problems))

    @property
    def total_steps(self) -> int:
        """Optimizer steps per run: warm-up, timed, then profiled (with `--profile`)."""
        return self.warmup + self.steps + (self.profile_steps if self.profile_dir else 0)


# --- the runs ----------------------------------------------------------------------------------

PAIR_METHODS = ("dpo", "ipo", "orpo", "simpo")
"""`rl:` methods trained on preference pairs: timed on synthetic pairs (`synthetic_pairs`)."""


def check_method(cfg: Any, settings: BenchSettings) -> bool:
    """Whether the config trains on preference pairs; refuses what bench cannot time or
    compare (another `rl:`, a baseline of another kind of training)."""
    if cfg.rl is not None and cfg.rl not in PAIR_METHODS:
        raise ConfigError(
            f"weave bench times supervised fine-tuning and rl: {', '.join(PAIR_METHODS)} on "
            f"synthetic data; rl: {cfg.rl} needs data of its own (time it with weave train)"
        )
    if settings.baseline == "hf" and cfg.rl is not None:
        raise ConfigError(
            "--baseline hf compares supervised fine-tuning with transformers.Trainer; for "
            f"rl: {cfg.rl} use --baseline trl (dpo, ipo) or none"
        )
    if settings.baseline == "trl":
        from axolotl_weave_plugins.commands._bench_trl import check_trl_baseline

        check_trl_baseline(cfg)
    return cfg.rl is not None


def bench_overrides(
    raw: dict[str, Any], settings: BenchSettings, output_dir: Path, model_path: Path | None
) -> list[str]:
    """Overrides appended to the user's: no checkpoints or evals, a temporary output folder,
    the step count, the seed, and the shape's model as `base_model`."""
    extra = [
        f"--max_steps={settings.total_steps}",
        f"--output_dir={json.dumps(str(output_dir))}",
        "--save_steps=null",
        "--saves_per_epoch=null",
        "--eval_steps=null",
        "--evals_per_epoch=null",
        "--val_set_size=0",
        "--test_datasets=[]",
        "--resume_from_checkpoint=null",
        "--logging_steps=1",
        f"--seed={settings.seed}",
    ]
    if model_path is not None:
        extra += [
            f"--base_model={json.dumps(str(model_path))}",
            "--base_model_config=null",
            "--tokenizer_config=null",
            "--revision_of_model=null",
        ]
    if not raw.get("datasets") and not raw.get("pretraining_dataset"):
        from axolotl_weave_plugins.commands._bench_data import SYNTHETIC_DATASET

        extra.append(f"--datasets=[{{path: {SYNTHETIC_DATASET}}}]")
    return extra


def run_bench(
    config: str, overrides: list[str], pm: Any, settings: BenchSettings, say: Callable[[str], None]
) -> dict[str, Any]:
    """The whole benchmark: validate, build or find the model, run weave (then HF); returns the
    results as a JSON-ready mapping."""
    from axolotl_weave.commands import load_config_data

    from axolotl_weave_plugins.commands import _bench_shapes

    settings.check()
    shape = _bench_shapes.get_shape(settings.shape) if settings.shape else None
    raw = load_config_data(config, overrides)
    if shape is None and not raw.get("base_model"):
        raise ConfigError(
            f"{config}: give base_model: (a local folder or hub name) or --shape NAME for a "
            f"random-weight model (known: {', '.join(_bench_shapes.SHAPES)})"
        )
    root = _bench_shapes.cache_root(settings.cache_dir)
    with tempfile.TemporaryDirectory(prefix="weave-bench-", ignore_cleanup_errors=True) as tmp:
        return _run_bench(config, overrides, pm, settings, say, raw, shape, root, Path(tmp))


def _run_bench(
    config: str,
    overrides: list[str],
    pm: Any,
    settings: BenchSettings,
    say: Callable[[str], None],
    raw: dict[str, Any],
    shape: Any,
    root: Path,
    workdir: Path,
) -> dict[str, Any]:
    """`run_bench` inside its temporary folder."""
    from axolotl_weave import resolve_precision
    from axolotl_weave.commands import family_of, load_tokenizer, open_session

    from axolotl_weave_plugins.commands import _bench_shapes

    model_path = _bench_shapes.model_dir(shape, root) if shape else None
    extra = bench_overrides(raw, settings, workdir / "weave", model_path)
    session = open_session(config, [*overrides, *extra], pm)
    cfg = session.cfg
    if settings.max_length is None:  # defaults follow the config
        settings.max_length = max(cfg.sequence_len, settings.min_length)
        settings.median_length = min(settings.median_length, settings.max_length)
    if settings.max_length > cfg.sequence_len:
        raise ConfigError(
            f"--max-length {settings.max_length} is more than sequence_len {cfg.sequence_len}: "
            "every sample must fit a sequence; lower --max-length or raise sequence_len"
        )
    pairs = check_method(cfg, settings)
    # what would be refused is refused above, before the libraries' seconds of imports
    from transformers import AutoConfig, set_seed

    from axolotl_weave_plugins.commands import _bench_data, _bench_hf, _bench_report
    from axolotl_weave_plugins.commands import _bench_measure as measure
    from axolotl_weave_plugins.commands._bench_weave import run_weave

    if shape is not None:
        _bench_shapes.ensure_model(shape, root, say)

    precision = resolve_precision(cfg)  # TF32 is applied by build_trainer
    set_seed(cfg.seed)
    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    model_config = AutoConfig.from_pretrained(
        cfg.base_model_config or cfg.base_model,
        revision=cfg.revision_of_model,
        trust_remote_code=cfg.trust_remote_code,
    )
    text_config = model_config.get_text_config()
    lengths = _bench_data.sample_lengths(settings)
    avoid = _bench_data.special_ids(tokenizer, text_config)
    vocab = int(text_config.vocab_size)
    trl_set = None
    if pairs:
        train_set, trl_set = _bench_data.synthetic_pairs(lengths, vocab, avoid, settings.seed)
    else:
        train_set = _bench_data.synthetic_dataset(lengths, vocab, avoid, settings.seed)
    params = measure.architecture_parameters(
        model_config, trust_remote_code=cfg.trust_remote_code, name=cfg.base_model
    )
    flops_factor = measure.flops_factor(cfg)
    flops_per_token = flops_factor * params if params else None
    device = measure.device_name()
    peak = measure.peak_tflops(device, settings.peak_tflops)
    meter = measure.MemoryMeter()
    what = "pairs, prompt + chosen" if pairs else "samples"
    say(
        f"bench: {_bench_data.describe_samples(lengths).replace('samples', what, 1)}; "
        f"{settings.warmup} warm-up step(s), {settings.steps} timed; device {device}"
    )

    say("bench: [bold]weave[/] run")
    weave, model_ref = run_weave(
        session, family, tokenizer, train_set, None if pairs else lengths, settings, meter
    )
    measure.free_memory(model_ref)
    runs = [weave]
    hf_budget = None
    if settings.baseline == "hf":
        rows, accumulation = _bench_hf.plan_hf_budget(
            cfg, lengths, weave.packing_efficiency or 1.0, settings
        )
        hf_budget = {"micro_batch_rows": rows, "gradient_accumulation_steps": accumulation}
        say(
            f"bench: [bold]hf[/] run (plain transformers.Trainer, padding to the longest, "
            f"sdpa): {rows} row(s) per micro-batch x {accumulation}"
        )
        set_seed(cfg.seed)
        hf = _bench_hf.run_hf(
            session,
            family,
            tokenizer,
            train_set,
            rows,
            accumulation,
            settings,
            meter,
            workdir / "hf",
            say,
        )
        measure.free_memory()
        runs.append(hf)
    pair_tokens = _bench_data.mean_pair_tokens(trl_set) if pairs else None
    if settings.baseline == "trl":
        from axolotl_weave_plugins.commands._bench_trl import plan_trl_rows, run_trl

        accumulation = cfg.gradient_accumulation_steps
        rows = plan_trl_rows(
            weave.tokens_per_step, accumulation, pair_tokens, settings.hf_micro_batch
        )
        hf_budget = {"micro_batch_rows": rows, "gradient_accumulation_steps": accumulation}
        say(
            f"bench: [bold]trl[/] run (TRL's DPOTrainer on the same pairs): {rows} pair(s) per "
            f"micro-batch x {accumulation}"
        )
        set_seed(cfg.seed)
        runs.append(
            run_trl(session, family, tokenizer, trl_set, rows, settings, meter, workdir, say)
        )
        measure.free_memory()
    for run in runs:
        run.mfu = measure.mfu(run.tokens_per_second, flops_per_token, peak)
        if pair_tokens and run.tokens_per_second:
            run.extra["pairs_per_second"] = run.tokens_per_second / pair_tokens
    return {
        "command": _bench_report.command_line(),
        "config": config,
        "overrides": overrides,
        "shape": shape.name if shape else None,
        "base_model": cfg.base_model,
        "device": device,
        "peak_tflops": peak,
        "parameters": params,
        "flops_per_token": flops_per_token,
        "flops_factor": flops_factor,
        "memory_kind": meter.kind,
        "preference": pairs,
        "precision": precision.mixed_precision,
        "data": _bench_data.data_summary(settings, lengths),
        "timing": {"warmup_steps": settings.warmup, "timed_steps": settings.steps},
        "hf_budget": hf_budget,
        "runs": {run.name: asdict(run) for run in runs},
        "ratio": _bench_report.ratios(runs),
    }


# --- the command -------------------------------------------------------------------------------


def bench_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    shape: str | None = typer.Option(
        None, "--shape", help="Random-weight model of a named architecture instead of base_model."
    ),
    steps: int = typer.Option(20, "--steps", help="Timed optimizer steps."),
    warmup: int = typer.Option(5, "--warmup", help="Optimizer steps before timing starts."),
    samples: int = typer.Option(6000, "--samples", help="Synthetic samples."),
    median_length: int = typer.Option(300, "--median-length", help="Median sample length."),
    length_sigma: float = typer.Option(
        1.0, "--length-sigma", help="Sigma of the log-normal length distribution."
    ),
    min_length: int = typer.Option(16, "--min-length", help="Shortest sample (clipped)."),
    max_length: int | None = typer.Option(
        None, "--max-length", help="Longest sample (clipped; default: the config's sequence_len)."
    ),
    baseline: str = typer.Option(
        "none",
        "--baseline",
        help="hf: also run plain Hugging Face Trainer and compare; trl: TRL's DPOTrainer "
        "(rl: dpo or ipo).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the samples and of the config."),
    peak: float | None = typer.Option(
        None, "--peak-tflops", help="The device's dense bf16 peak in TFLOP/s (for MFU)."
    ),
    profile: Path | None = typer.Option(
        None, "--profile", help="Profile a few steps after the timed ones; traces go here."
    ),
    profile_steps: int = typer.Option(3, "--profile-steps", help="Steps --profile records."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the results here."),
    hf_micro_batch: int | None = typer.Option(
        None, "--hf-micro-batch", help="HF rows per micro-batch (default: weave's real tokens)."
    ),
    hf_grad_accum: int | None = typer.Option(
        None, "--hf-grad-accum", help="HF accumulation steps (default: weave's tokens per step)."
    ),
    cache_dir: str | None = typer.Option(
        None, "--cache-dir", help="Where --shape models are built (default $WEAVE_CACHE)."
    ),
) -> None:
    """Time a config on synthetic data: real tokens/s, MFU, peak memory, packing efficiency;
    `--baseline hf` compares with plain Hugging Face Trainer. Extra `--key value` pairs override
    the config."""
    from axolotl_weave.commands import console

    from axolotl_weave_plugins.commands._bench_report import print_results, write_json

    settings = BenchSettings(
        shape=shape,
        steps=steps,
        warmup=warmup,
        samples=samples,
        median_length=median_length,
        length_sigma=length_sigma,
        min_length=min_length,
        max_length=max_length,
        baseline=baseline,
        seed=seed,
        peak_tflops=peak,
        profile_dir=profile,
        profile_steps=profile_steps,
        json_path=json_path,
        hf_micro_batch=hf_micro_batch,
        hf_grad_accum=hf_grad_accum,
        cache_dir=cache_dir,
    )
    results = run_bench(config, list(ctx.args), ctx.obj.pm, settings, console.print)
    print_results(results, console)
    if json_path is not None:
        write_json(json_path, results)
        console.print(f"results written to {json_path}")


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave bench CONFIG [--shape NAME] [--baseline hf] [...] [--key value ...]`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("bench", context_settings=OVERRIDES)(user_errors(bench_command))
