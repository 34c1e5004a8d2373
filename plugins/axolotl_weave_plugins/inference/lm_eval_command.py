"""`weave lm-eval CONFIG [--tasks a,b] [--lora-model-dir D | --base-model D] ...`: EleutherAI's
lm-evaluation-harness on the trained model, a results table printed and the harness's JSON
written to `OUTPUT_DIR/lm_eval.json` (or `--output`).

The model is chosen and loaded as `weave inference` loads it (`_model.choose_model`,
`load_for_inference`: the `load_model` hook with purpose "infer", the adapter applied by the
adapter plugin), then handed to the harness as an object (`HFLM(pretrained=model,
tokenizer=tokenizer)`), so the harness loads nothing from a hub itself; the task's data is the
task's own (a local `data_files` is read offline).

Axolotl's `lm_eval_*` keys are this plugin's (and Axolotl's `LMEvalPlugin` under `plugins:` maps
onto it): `lm_eval_tasks` (`name` or `name:N`, N few-shot examples for that task),
`lm_eval_batch_size` and `lm_eval_model` (the model to evaluate instead of what training left in
`output_dir`), which the flags override; and `lm_eval_post_train` (on by default, as Axolotl's):
with `lm_eval_tasks` set, `weave train` scores the model it trained when training ends (a
run-scoped plugin: `configure` checks the package and the task names before training,
`post_train` runs last, after the model is saved). Needs the `lm-eval` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field, field_validator

PLUGIN_KIND = "command"
AXOLOTL_ALIASES = ("axolotl.integrations.lm_eval.LMEvalPlugin",)
RESULTS = "lm_eval.json"
POST_TRAIN = "lm_eval_tasks (run after training unless lm_eval_post_train: false)"


class LmEvalSettings(PluginConfig):
    """Axolotl's `lm_eval_*` keys, read by `weave lm-eval`."""

    lm_eval_tasks: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness tasks for `weave lm-eval` (`name`, or `name:N` for "
        "N few-shot examples); --tasks overrides.",
    )
    lm_eval_batch_size: int | str | None = Field(
        8,
        description="Batch size of `weave lm-eval` (null: 8): a number, auto (the largest that "
        "fits) or auto:N; --batch-size overrides.",
    )
    lm_eval_post_train: bool = Field(
        True,
        description="With lm_eval_tasks set, `weave train` also runs them on the trained "
        "model when training ends (OUTPUT_DIR/lm_eval.json); false leaves it to `weave "
        "lm-eval`.",
    )
    lm_eval_model: str | None = Field(
        None,
        description="The model `weave lm-eval` evaluates (a saved model folder or hub id) "
        "instead of what training left in output_dir; --base-model overrides.",
    )

    @field_validator("lm_eval_batch_size")
    @classmethod
    def _batch_size(cls, value: int | str | None) -> int | str | None:
        """A number of 1 or more, auto or auto:N (what the harness takes)."""
        from axolotl_weave_plugins.inference._lm_eval import batch_size_of

        return None if value is None else batch_size_of(value, "lm_eval_batch_size")


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `lm_eval_*` keys."""
    return LmEvalSettings


class PostTrainEval:
    """`lm_eval_post_train` (with `lm_eval_tasks`): the harness on the model training just
    finished, in memory, after it is saved."""

    def __init__(self, scoring: Scoring) -> None:
        self.scoring = scoring

    @hookimpl(trylast=True)
    def post_train(
        self, cfg: Any, model: Any, tokenizer: Any, strategy: Any, output_dir: Path
    ) -> None:
        """Score the trained model on `lm_eval_tasks` into `OUTPUT_DIR/lm_eval.json`, on one
        process only (a model split across processes is left to `weave lm-eval CONFIG`)."""
        from axolotl_weave.commands import err_console

        if strategy.num_processes > 1:
            if strategy.is_main_process:
                err_console.print(
                    "[yellow]lm_eval_post_train:[/] skipped: the model is split across "
                    f"{strategy.num_processes} processes; run weave lm-eval CONFIG on the saved "
                    "model"
                )
            return
        model.eval()
        adapter = hasattr(model, "peft_config")  # saved as an adapter over base_model
        about = {
            "model": cfg.base_model if adapter else str(output_dir),
            "adapter": str(output_dir) if adapter else None,
            "tasks": [name for names in self.scoring.by_shots.values() for name in names],
        }
        title = f"lm_eval_post_train: {output_dir}"
        score(self.scoring, model, tokenizer, about, output_dir / RESULTS, title)


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """On with `lm_eval_tasks` and `lm_eval_post_train` (Axolotl's default): lm_eval must be
    installed and every task known, checked now, before training."""
    from axolotl_weave_plugins.inference import _lm_eval as harness

    if not (cfg.lm_eval_tasks and cfg.lm_eval_post_train):
        return
    harness.require_lm_eval(POST_TRAIN)
    requests = harness.parse_tasks(cfg.lm_eval_tasks, "lm_eval_tasks")
    manager = harness.task_manager(requests, None)
    harness.check_tasks(manager, requests, "lm_eval_tasks")
    by_shots = harness.expand(manager, requests, "lm_eval_tasks")
    batch = cfg.lm_eval_batch_size or 8
    register(PostTrainEval(Scoring(manager, by_shots, None, batch, None)), "lm-eval-post-train")


def lm_eval_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    tasks: str | None = typer.Option(
        None,
        "--tasks",
        help="Comma-separated harness tasks (name or name:N for N few-shot examples; globs "
        "as mmlu_*); default: lm_eval_tasks.",
    ),
    lora_model_dir: str | None = typer.Option(
        None, "--lora-model-dir", help="A saved LoRA adapter to evaluate over the base model."
    ),
    base_model: str | None = typer.Option(
        None,
        "--base-model",
        help="A saved full model folder (or hub id) to evaluate; default: lm_eval_model, else "
        "what training left in output_dir.",
    ),
    num_fewshot: int | None = typer.Option(
        None, "--num-fewshot", min=0, help="Few-shot examples per task (default: the task's)."
    ),
    limit: float | None = typer.Option(
        None,
        "--limit",
        min=0,
        help="At most N examples per task (below 1: that fraction); for quick checks only.",
    ),
    batch_size: str | None = typer.Option(
        None,
        "--batch-size",
        help="A number, auto (the largest that fits) or auto:N (default: lm_eval_batch_size, 8).",
    ),
    include_path: str | None = typer.Option(
        None, "--include-path", help="A folder of task YAML files of your own."
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Where the results JSON goes (default: OUTPUT_DIR/lm_eval.json)."
    ),
) -> None:
    """Score a model or adapter on lm-evaluation-harness tasks (needs the lm-eval extra).
    Extra `--key value` pairs override the config."""
    from axolotl_weave.commands import open_session

    from axolotl_weave_plugins.inference import _lm_eval as harness
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference

    harness.require_lm_eval()
    session = open_session(config, ctx.args, ctx.obj.pm)
    cfg = session.cfg
    batch = harness.batch_size_of(batch_size, "--batch-size") if batch_size is not None else None
    where = "--tasks" if tasks is not None else "lm_eval_tasks"
    requests = harness.parse_tasks([tasks] if tasks is not None else cfg.lm_eval_tasks, where)
    folder = harness.check_include_path(include_path)
    choice = choose_model(cfg, lora_model_dir, base_model or cfg.lm_eval_model)
    manager = harness.task_manager(requests, folder)
    harness.check_tasks(manager, requests, where)
    by_shots = harness.expand(manager, requests, where)
    loaded = load_for_inference(session, choice)
    about = {
        "model": choice.base_model,
        "adapter": str(choice.adapter_dir) if choice.adapter_dir else None,
        "tasks": [name for names in by_shots.values() for name in names],
    }
    score(
        Scoring(manager, by_shots, num_fewshot, batch or cfg.lm_eval_batch_size or 8, limit),
        loaded.model,
        loaded.tokenizer,
        about,
        output or Path(cfg.output_dir) / RESULTS,
        f"weave lm-eval {config}: {choice.described}",
    )


@dataclass(frozen=True)
class Scoring:
    """What the harness runs: the task manager, the task names by few-shot count, the default
    few-shot count, the batch size and the per-task limit."""

    manager: Any
    by_shots: dict[int | None, list[str]]
    num_fewshot: int | None
    batch_size: int | str
    limit: float | None


def score(
    scoring: Scoring, model: Any, tokenizer: Any, about: dict[str, Any], path: Path, title: str
) -> dict[str, Any]:
    """Run the harness on `model`, write its results (with `about`) to `path` atomically,
    print the table; the results."""
    from axolotl_weave import write_atomically
    from axolotl_weave.commands import console

    from axolotl_weave_plugins.inference import _lm_eval as harness

    results = harness.run_harness(
        model,
        tokenizer,
        scoring.manager,
        scoring.by_shots,
        scoring.num_fewshot,
        scoring.batch_size,
        scoring.limit,
    )
    written = write_atomically(path, harness.results_json(results, about))
    console.print(results_table(results, title))
    console.print(f"wrote {written}")
    return results


def results_table(results: dict[str, Any], title: str) -> Any:
    """The rich table of every task's metrics: task, metric, n-shot, value, stderr."""
    from rich.table import Table

    from axolotl_weave_plugins.inference._lm_eval import metric_rows, shown

    shots = results.get("n-shot") or {}
    samples = results.get("n-samples") or {}
    table = Table(title=title)
    for column in ("task", "metric", "n-shot", "samples", "value", "stderr"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for row in metric_rows(results):
        count = (samples.get(row.task) or {}).get("effective", "")
        table.add_row(
            row.label,
            row.metric,
            str(shots.get(row.task, "")),
            str(count),
            shown(row.value),
            shown(row.stderr),
        )
    return table


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave lm-eval CONFIG [--tasks a,b] [--lora-model-dir D | --base-model D] ...`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("lm-eval", context_settings=OVERRIDES)(user_errors(lm_eval_command))
