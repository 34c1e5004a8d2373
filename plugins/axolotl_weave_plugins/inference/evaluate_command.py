"""`weave evaluate CONFIG [--lora-model-dir D | --base-model D]`: the loss (and perplexity) of
a model or adapter on the config's datasets, printed as a table and written to
`OUTPUT_DIR/eval_results.json`.

The rows are the training pipeline's (`preprocess`: the same formats, masking, filters and
cache): the eval split when the config has one (`val_set_size`, `test_datasets`), else every
row. The model loads through the `load_model` hook for inference (whichever plugin loads the
family, quantization and adapters applied by their plugins), and the loss is the training
objective's (`build_loss`) over the evaluation batches of `plan_batches`, as the training
loop's own evaluation computes it (`measure_objective`). Its unit is the objective's: a target
token for supervised training (then the perplexity is its exp), a pair for DPO-style methods
and reward models (with their metrics, e.g. `rewards/accuracies`, as means per pair), a row for
KTO, a completion for GRPO (whose completions are sampled for the eval prompts, seeded by
`seed`, and scored: `reward`...). A preference run's reference is the one training used: the
base with the adapter disabled, or, for a full fine-tune, the config's own model.

Which model: the rule of `weave inference` (`_model.choose_model`): `--base-model D` a full
model folder (or hub id), `--lora-model-dir D` an adapter over the config's base model (or over
`--base-model`); with neither, what training left in `output_dir` (an adapter or a full model),
else the config's own model (`base_model`, with its `lora_model_dir` when `adapter` is set).
The data is prepared with the chosen model's tokenizer.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer
from axolotl_weave import Measurement, WeaveError, hookimpl, measure_objective

PLUGIN_KIND = "command"
RESULTS = "eval_results.json"

log = logging.getLogger("axolotl_weave")


@dataclass
class EvalResult:
    """What `weave evaluate` measured: the objective's loss per unit (a target token for
    supervised training, a pair for DPO-style methods and reward models, a row for KTO), the
    perplexity where the unit is a token, and the objective's own metrics as means per unit."""

    eval_loss: float
    perplexity: float | None
    unit: str
    units: int
    metrics: dict[str, float]
    rows: int
    split: str
    model: str
    adapter: str | None

    def to_json(self) -> dict[str, Any]:
        """The JSON form (infinite perplexity as null)."""
        data = asdict(self)
        finite = self.perplexity is not None and math.isfinite(self.perplexity)
        data["perplexity"] = self.perplexity if finite else None
        return data


def perplexity(loss: float) -> float:
    """exp(loss), infinite where it overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def model_overrides(
    cfg: Any, base_model: str | None, lora_model_dir: str | None
) -> tuple[list[str], str, str | None]:
    """The config overrides that select the model to evaluate (`choose_model`'s choice: the
    flags' model, else what training saved in output_dir, else the config's), its base model
    and its adapter folder."""
    from axolotl_weave_plugins.inference._model import choose_model, model_settings

    choice = choose_model(cfg, lora_model_dir, base_model, untrained=True)
    overrides: list[str] = []
    for key, value in model_settings(cfg, choice).items():
        if getattr(cfg, key, None) != value:
            overrides += [f"--{key}", "null" if value is None else str(value)]
    adapter = str(choice.adapter_dir) if choice.adapter_dir else None
    return overrides, choice.base_model, adapter


def load_for_eval(session: Any, tokenizer: Any) -> Any:
    """The model `session.cfg` names, loaded as `weave inference` loads it, then patched as
    for training (`patch_attention`)."""
    from axolotl_weave.commands import family_of

    from axolotl_weave_plugins.inference._model import load_chosen_model

    family = family_of(session)
    model = load_chosen_model(session, tokenizer, family)
    session.hooks.patch_attention(model, session.cfg, family)
    return model


def objective_for(session: Any, model: Any, start: Any | None, tokenizer: Any) -> Any:
    """The training objective (`build_loss`) to measure `model` with. An objective whose
    reference is the model training starts from (`built_on_start`: DPO's frozen copy of a
    full fine-tune) is built on that model, `start`'s (the config's own), when `model` is
    another (a trained one): measured against itself, DPO's loss would be log 2 whatever it
    learnt."""
    loss_fn = session.hooks.build_loss(session.cfg, model)
    if start is None or not getattr(loss_fn, "built_on_start", False):
        return loss_fn
    del loss_fn  # its copy of `model`
    log.info("evaluate: the reference is the model training starts from, %s", start.cfg.base_model)
    return session.hooks.build_loss(session.cfg, load_for_eval(start, tokenizer))


def measure(
    session: Any, model: Any, loss_fn: Any, dataset: Any, split: str, pad_token_id: int
) -> Measurement:
    """`loss_fn` over `dataset`'s evaluation batches, as the training loop evaluates: the set as
    the loop's plugins transform it (`transform_train_data`, e.g. precomputed reference
    log-probabilities), then planned (`plan_batches`) and measured (`measure_objective`)."""
    from axolotl_weave.commands import batch_columns

    cfg, hooks = session.cfg, session.hooks
    strategy = hooks.wrap_distributed(cfg)
    model = strategy.prepare_frozen(model)
    columns = batch_columns(session.formats)
    dataset = hooks.transform_train_data(
        cfg, dataset, split == "eval", strategy, columns, pad_token_id
    )
    plan = hooks.plan_batches(cfg, dataset, True, strategy, columns, pad_token_id)
    return measure_objective(loss_fn, model, plan.micro_batches(0), strategy)


def held_out_rows(data: Any) -> tuple[Any, str]:
    """(the rows to evaluate on, "eval" or "train"): the eval split, else every row."""
    if data.streaming:
        raise WeaveError(
            "weave evaluate needs rows it can count: pretraining_dataset is streamed; name the "
            "data under datasets: (with val_set_size for a held-out split)"
        )
    dataset, split = (data.eval, "eval") if data.eval is not None else (data.train, "train")
    if len(dataset) == 0:
        raise WeaveError(f"no {split} rows to evaluate on (every row was filtered out)")
    return dataset, split


def evaluate(
    session: Any, model_name: str, adapter: str | None, start: Any | None = None
) -> EvalResult:
    """Prepare the config's rows, load the model and measure its loss on them. `start`: the
    session of the model training starts from, when the evaluated model is another."""
    from accelerate.utils import set_seed
    from axolotl_weave.commands import preprocess, run_scoped_plugins

    with run_scoped_plugins(session):  # from the tokenizer on, as in training
        data, tokenizer = preprocess(session)
        dataset, split = held_out_rows(data)
        set_seed(session.cfg.seed)  # what samples (GRPO's completions) samples alike each time
        model = load_for_eval(session, tokenizer)
        loss_fn = objective_for(session, model, start, tokenizer)
        measured = measure(session, model, loss_fn, dataset, split, tokenizer.pad_token_id)
    ppl = perplexity(measured.loss) if measured.unit == "token" else None
    return EvalResult(
        measured.loss,
        ppl,
        measured.unit,
        measured.units,
        measured.metrics,
        len(dataset),
        split,
        model_name,
        adapter,
    )


def write_results(result: EvalResult, output_dir: Path) -> Path:
    """`OUTPUT_DIR/eval_results.json`, written atomically."""
    from axolotl_weave import write_atomically

    return write_atomically(output_dir / RESULTS, json.dumps(result.to_json(), indent=2) + "\n")


def evaluate_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    lora_model_dir: str | None = typer.Option(
        None, "--lora-model-dir", help="A saved LoRA adapter to evaluate over the base model."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="A saved full model folder to evaluate instead of base_model."
    ),
) -> None:
    """Eval loss and perplexity of a model or adapter on the config's datasets (the eval split
    when there is one). Extra `--key value` pairs override the config."""
    from axolotl_weave.commands import console, open_session

    session = open_session(config, ctx.args, ctx.obj.pm)
    overrides, model_name, adapter = model_overrides(session.cfg, base_model, lora_model_dir)
    start = None
    if overrides:
        start = session if "--base_model" in overrides else None
        session = open_session(config, [*ctx.args, *overrides], ctx.obj.pm)
    result = evaluate(session, model_name, adapter, start)
    path = write_results(result, Path(session.cfg.output_dir))
    console.print(*result_tables(config, result))
    console.print(f"wrote {path}")


def result_tables(config: str, result: EvalResult) -> list[Any]:
    """The tables `weave evaluate` prints: the model, the set and the loss (with the
    perplexity where the unit is a token); then the objective's metrics (means per unit, means
    over their own rows, or derived from those, as the objective reports them)."""
    from rich.table import Table

    table = Table(title=f"weave evaluate {config}")
    shown = result.model + (f" + adapter {result.adapter}" if result.adapter else "")
    cells = {"model": shown, "split": result.split, "rows": str(result.rows)}
    cells.setdefault(f"{result.unit}s", str(result.units))  # KTO's unit is the row
    cells[f"eval loss (per {result.unit})"] = f"{result.eval_loss:.4f}"
    if result.perplexity is not None:
        cells["perplexity"] = f"{result.perplexity:.3f}"
    for column in cells:
        table.add_column(column, justify="left" if column in ("model", "split") else "right")
    table.add_row(*cells.values())
    if not result.metrics:
        return [table]
    metrics = Table()
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")  # a mean per unit, or over its own rows
    for name, value in result.metrics.items():
        metrics.add_row(name, f"{value:.4f}")
    return [table, metrics]


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave evaluate CONFIG [--lora-model-dir D | --base-model D]`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("evaluate", context_settings=OVERRIDES)(user_errors(evaluate_command))
