"""`weave evaluate CONFIG [--lora-model-dir D | --base-model D]`: the loss and perplexity of a
model or adapter on the config's datasets, printed as a table and written to
`OUTPUT_DIR/eval_results.json`.

The rows are the training pipeline's (`preprocess`: the same formats, masking, filters and
cache): the eval split when the config has one (`val_set_size`, `test_datasets`), else every
row. The model loads through the `load_model` hook for inference (whichever plugin loads the
family, quantization and adapters applied by their plugins), and the loss is the training
objective's (`build_loss`) over the evaluation batches of `plan_batches`, token-weighted, as the
training loop's own evaluation computes it.

Which model: the rule of `weave inference` (`_model.choose_model`): `--base-model D` a full
model folder (or hub id), `--lora-model-dir D` an adapter over the config's base model (or over
`--base-model`); with neither, what training left in `output_dir` (an adapter or a full model),
else the config's own model (`base_model`, with its `lora_model_dir` when `adapter` is set).
The data is prepared with the chosen model's tokenizer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer
from axolotl_weave import WeaveError, hookimpl

PLUGIN_KIND = "command"
RESULTS = "eval_results.json"


@dataclass
class EvalResult:
    """What `weave evaluate` measured."""

    eval_loss: float
    perplexity: float
    tokens: int
    rows: int
    split: str
    model: str
    adapter: str | None

    def to_json(self) -> dict[str, Any]:
        """The JSON form (infinite perplexity as null)."""
        data = asdict(self)
        data["perplexity"] = data["perplexity"] if math.isfinite(self.perplexity) else None
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


def measure(session: Any, model: Any, dataset: Any, pad_token_id: int) -> tuple[float, int]:
    """(token-weighted mean loss, target tokens) of `model` over `dataset`'s evaluation
    batches, with the training objective, as the training loop evaluates."""
    import torch
    from axolotl_weave.commands import batch_columns

    cfg, hooks = session.cfg, session.hooks
    loss_fn = hooks.build_loss(cfg, model)
    strategy = hooks.wrap_distributed(cfg)
    model = strategy.prepare_frozen(model)
    plan = hooks.plan_batches(
        cfg, dataset, True, strategy, batch_columns(session.formats), pad_token_id
    )
    total = torch.zeros((), dtype=torch.float64, device=strategy.device)
    units = torch.zeros((), dtype=torch.float64, device=strategy.device)
    with torch.no_grad():
        for batch in plan.micro_batches(0):
            batch = {k: v.to(strategy.device) if hasattr(v, "to") else v for k, v in batch.items()}
            with strategy.autocast():
                total += loss_fn(model, batch).double()
            units += loss_fn.count(batch)
    return float(total / units.clamp(min=1)), int(units)


def evaluate(session: Any, model_name: str, adapter: str | None) -> EvalResult:
    """Prepare the config's rows, load the model and measure its loss on them."""
    from axolotl_weave.commands import preprocess

    data, tokenizer = preprocess(session)
    if data.streaming:
        raise WeaveError(
            "weave evaluate needs rows it can count: pretraining_dataset is streamed; name the "
            "data under datasets: (with val_set_size for a held-out split)"
        )
    dataset, split = (data.eval, "eval") if data.eval is not None else (data.train, "train")
    if len(dataset) == 0:
        raise WeaveError(f"no {split} rows to evaluate on (every row was filtered out)")
    model = load_for_eval(session, tokenizer)
    loss, tokens = measure(session, model, dataset, tokenizer.pad_token_id)
    return EvalResult(loss, perplexity(loss), tokens, len(dataset), split, model_name, adapter)


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
    from rich.table import Table

    session = open_session(config, ctx.args, ctx.obj.pm)
    overrides, model_name, adapter = model_overrides(session.cfg, base_model, lora_model_dir)
    if overrides:
        session = open_session(config, [*ctx.args, *overrides], ctx.obj.pm)
    result = evaluate(session, model_name, adapter)
    path = write_results(result, Path(session.cfg.output_dir))
    table = Table(title=f"weave evaluate {config}")
    for column in ("model", "split", "rows", "tokens", "eval loss", "perplexity"):
        table.add_column(column, justify="left" if column in ("model", "split") else "right")
    shown = model_name + (f" + adapter {adapter}" if adapter else "")
    table.add_row(
        shown,
        result.split,
        str(result.rows),
        str(result.tokens),
        f"{result.eval_loss:.4f}",
        f"{result.perplexity:.3f}",
    )
    console.print(table)
    console.print(f"wrote {path}")


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave evaluate CONFIG [--lora-model-dir D | --base-model D]`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("evaluate", context_settings=OVERRIDES)(user_errors(evaluate_command))
