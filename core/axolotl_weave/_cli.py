"""The `weave` command line (typer + rich). Plugins add commands through `add_cli_commands`."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pluggy
import typer

from axolotl_weave._console import err_console, setup_logging
from axolotl_weave._errors import Interrupted, WeaveError
from axolotl_weave._hooks import Hooks
from axolotl_weave._pluginmanager import make_plugin_manager

F = TypeVar("F", bound=Callable[..., Any])
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


@dataclass
class CliContext:
    """What every command gets through `ctx.obj`: the plugin manager of this invocation, and
    the global options it was built with (for the processes `train --num-processes` starts)."""

    pm: pluggy.PluginManager
    global_args: list[str] = field(default_factory=list)


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


def build_app(pm: pluggy.PluginManager) -> typer.Typer:
    """The CLI application: every command is a plugin's (`add_cli_commands`): `train` is the
    built-in `train_command` plugin's; `preprocess`, `validate`, `plugin list` and
    `config-schema` the `pipeline_commands` plugin's."""
    app = typer.Typer(
        name="weave",
        help="Fine-tune Hugging Face language models from one YAML file.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
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
    global_args = [arg for name in block for arg in ("-p", f"no:{name}")]
    global_args += ["--trace-hooks"] * trace + ["--verbose"] * verbose
    app(args=args, prog_name="weave", obj=CliContext(pm, global_args))


if __name__ == "__main__":
    main()
