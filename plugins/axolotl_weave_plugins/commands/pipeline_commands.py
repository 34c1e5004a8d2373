"""`weave preprocess`, `weave validate`, `weave plugin list` and `weave config-schema`: the
commands that run the pipeline's first part or look at the installed plugins, without training.
"""

from __future__ import annotations

import json

import typer
from axolotl_weave import hookimpl
from rich.table import Table

from axolotl_weave_plugins.commands._plugin_table import describe_plugins

PLUGIN_KIND = "command"

PIPELINE_HOOKS = (
    "configure",
    "load_tokenizer",
    "model_load_kwargs",
    "load_model",
    "patch_attention",
    "build_loss",
    "wrap_distributed",
    "plan_batches",
    "training_step",
    "on_log",
    "on_train_end",
    "post_train",
)


def preprocess_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    debug: bool = typer.Option(False, "--debug", help="Show rows token by token with labels."),
    debug_rows: int = typer.Option(3, "--debug-rows", help="How many rows --debug shows."),
) -> None:
    """Tokenize and cache the datasets (no GPU needed). Extra `--key value` pairs override."""
    from axolotl_weave.commands import console, drop_reasons, drop_summary, open_session, preprocess

    from axolotl_weave_plugins.commands._data_report import render_rows, summary_table

    session = open_session(config, ctx.args, ctx.obj.pm)
    data, tokenizer = preprocess(session)
    if data.streaming:
        console.print("pretraining_dataset is streamed: tokenized while training, not cached")
    else:
        where = "loaded from cache" if data.from_cache else "written to cache"
        console.print(f"datasets {where}: {data.cache_dir}")
    if debug:
        console.print(
            "[bold]first rows[/] (token(label, id); [dim red]masked[/], [bold green]trained[/]):"
        )
        for i, text in enumerate(render_rows(tokenizer, data.train, debug_rows)):
            console.print(f"[bold]row {i}[/]")
            console.print(text)
        if not data.streaming:
            console.print(
                summary_table(data.stats, list(data.train["length"]), session.cfg.sequence_len)
            )
    elif not data.streaming:
        s = data.stats
        dropped = drop_summary(s, session.cfg.sequence_len) if drop_reasons(s, 1) else "none"
        console.print(
            f"{s.train_rows} train / {s.eval_rows} eval rows, {s.tokens} tokens "
            f"({s.target_tokens} trained); dropped or changed: {dropped}"
        )


def validate_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
) -> None:
    """Check a config and show which plugin answers each hook for it."""
    from axolotl_weave.commands import check_before_work, console, open_session

    session = open_session(config, ctx.args, ctx.obj.pm)
    check_before_work(session)
    console.print(f"[bold green]valid[/]: {config}")
    table = Table(title="Hooks for this config (call order)")
    table.add_column("hook")
    table.add_column("plugins")
    owners = session.hooks.dataset_format_owners()
    cfg = session.cfg
    for key in ("datasets", "test_datasets", "pretraining_dataset"):
        for index, entry in enumerate(getattr(cfg, key)):
            owner = owners.get(entry.type or "", "(pre-tokenized rows)")
            table.add_row(f"build_dataset {key}[{index}] type: {entry.type}", owner)
    for hook in PIPELINE_HOOKS:
        table.add_row(hook, " → ".join(session.hooks.implementations(hook)) or "(none)")
    console.print(table)


def plugin_list_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List installed plugins: name, kind, distribution and version, hooks implemented."""
    from axolotl_weave.commands import console

    rows = describe_plugins(ctx.obj.pm)
    if as_json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
        return
    table = Table(title="Axolotl Weave plugins")
    for column in ("name", "kind", "distribution", "built-in", "hooks"):
        table.add_column(column, no_wrap=column == "name")
    for row in rows:
        hooks = "BLOCKED" if row.blocked else ", ".join(row.hooks)
        table.add_row(row.name, row.kind, row.distribution, "yes" if row.builtin else "no", hooks)
    console.print(table)


def config_schema_command(ctx: typer.Context) -> None:
    """Print the config's JSON schema, including every installed plugin's fields."""
    from axolotl_weave.commands import config_schema

    print(json.dumps(config_schema(ctx.obj.pm), indent=2))


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave preprocess`, `weave validate`, `weave config-schema` and `weave plugin list`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("preprocess", context_settings=OVERRIDES)(user_errors(preprocess_command))
    app.command("validate", context_settings=OVERRIDES)(user_errors(validate_command))
    app.command("config-schema")(user_errors(config_schema_command))
    plugin_app = typer.Typer(help="Inspect installed plugins.", no_args_is_help=True)
    plugin_app.command("list")(user_errors(plugin_list_command))
    app.add_typer(plugin_app, name="plugin")
