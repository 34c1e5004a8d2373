"""The `weave` command line (typer + rich). Plugins add commands through `add_cli_commands`."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pluggy
import typer
from rich.table import Table

from axolotl_weave._console import console, err_console, setup_logging
from axolotl_weave._errors import WeaveError
from axolotl_weave._hooks import Hooks
from axolotl_weave._pluginmanager import describe_plugins, make_plugin_manager
from axolotl_weave._stopping import Interrupted

F = TypeVar("F", bound=Callable[..., Any])
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
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


@dataclass
class CliContext:
    """What every command gets through `ctx.obj`: the plugin manager of this invocation."""

    pm: pluggy.PluginManager


def print_error(exc: WeaveError) -> None:
    """The one message of a user-facing error, unwrapped, on stderr."""
    stopped = isinstance(exc, Interrupted)
    err_console.print("[bold yellow]stopped:[/] " if stopped else "[bold red]error:[/] ", end="")
    err_console.print(str(exc), markup=False, highlight=False, soft_wrap=True)


def user_errors(fn: F) -> F:
    """Print a `WeaveError` as one message (no traceback) and exit with its code; Ctrl-C
    outside training (where nothing is saved) exits 130 with one line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WeaveError as exc:
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold yellow]stopped:[/] interrupted (Ctrl-C); nothing was saved")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def train_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
) -> None:
    """Fine-tune a model as the config says. Extra `--key value` pairs override the config."""
    from axolotl_weave._run import open_session, train

    session = open_session(config, ctx.args, ctx.obj.pm)
    state = train(session)
    savers = [n for n in session.hooks.implementations("post_train") if "(wrapper)" not in n]
    out = session.cfg.output_dir
    saved = (
        f"output in {out} (post_train: {', '.join(savers)})"
        if savers
        else f"NO model saved: no post_train plugin is installed or unblocked ({out} has the "
        "checkpoints only)"
    )
    console.print(f"[bold green]done[/]: {state.global_step} steps; {saved}")


def preprocess_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    debug: bool = typer.Option(False, "--debug", help="Show rows token by token with labels."),
    debug_rows: int = typer.Option(3, "--debug-rows", help="How many rows --debug shows."),
) -> None:
    """Tokenize and cache the datasets (no GPU needed). Extra `--key value` pairs override."""
    from axolotl_weave._data import drop_reasons, drop_summary
    from axolotl_weave._inspect import render_rows, summary_table
    from axolotl_weave._run import open_session, preprocess

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
    from axolotl_weave._run import check_before_work, open_session

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
    from axolotl_weave._run import config_schema

    print(json.dumps(config_schema(ctx.obj.pm), indent=2))


def build_app(pm: pluggy.PluginManager) -> typer.Typer:
    """The CLI application: core commands, then every plugin's commands."""
    app = typer.Typer(
        name="weave",
        help="Fine-tune Hugging Face language models from one YAML file.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.command("train", context_settings=OVERRIDES)(user_errors(train_command))
    app.command("preprocess", context_settings=OVERRIDES)(user_errors(preprocess_command))
    app.command("validate", context_settings=OVERRIDES)(user_errors(validate_command))
    app.command("config-schema")(user_errors(config_schema_command))
    plugin_app = typer.Typer(help="Inspect installed plugins.", no_args_is_help=True)
    plugin_app.command("list")(user_errors(plugin_list_command))
    app.add_typer(plugin_app, name="plugin")
    Hooks(pm).add_cli_commands(app)
    return app


def split_global_options(argv: list[str]) -> tuple[list[str], list[str], bool, bool]:
    """Take `-p no:NAME` (block a plugin), `--trace-hooks` and `--verbose` out of argv."""
    rest, block, trace, verbose = [], [], False, False
    args = iter(argv)
    for arg in args:
        if arg == "-p":
            value = next(args, "")
            if not value.startswith("no:"):
                raise WeaveError(f"-p takes no:NAME to block a plugin, got '{value}'")
            block.append(value[3:])
        elif arg.startswith("-pno:") or arg.startswith("-p=no:"):
            block.append(arg.split("no:", 1)[1])
        elif arg == "--trace-hooks":
            trace = True
        elif arg in ("--verbose", "-v"):
            verbose = True
        else:
            rest.append(arg)
    return rest, block, trace, verbose


def main(argv: list[str] | None = None) -> None:
    """Entry point of `weave`: build the plugin manager, then run the typer app."""
    try:
        args, block, trace, verbose = split_global_options(
            list(sys.argv[1:] if argv is None else argv)
        )
        setup_logging(verbose)
        pm = make_plugin_manager(block=block, trace=trace)
    except WeaveError as exc:
        print_error(exc)
        sys.exit(exc.exit_code)
    app = build_app(pm)
    app(args=args, prog_name="weave", obj=CliContext(pm))


if __name__ == "__main__":
    main()
