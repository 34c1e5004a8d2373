"""The `weave` command line (typer + rich). Plugins add commands through `add_cli_commands`."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pluggy
import typer

from axolotl_weave._console import console, err_console, setup_logging
from axolotl_weave._errors import WeaveError
from axolotl_weave._hooks import Hooks
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._stopping import Interrupted

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


def train_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    num_processes: int | None = typer.Option(
        None,
        "--num-processes",
        min=1,
        help="Train with N processes on this machine (data parallel: one per GPU, or N on the "
        "CPU); weave starts them. Not needed under torchrun or accelerate launch.",
    ),
) -> None:
    """Fine-tune a model as the config says. Extra `--key value` pairs override the config."""
    from axolotl_weave._run import open_session, train

    launched = launcher_world_size()
    if num_processes and launched is None and num_processes > 1:
        open_session(config, ctx.args, ctx.obj.pm)  # a config error once, before any launch
        argv = [*ctx.obj.global_args, "train", config, *ctx.args]
        raise typer.Exit(launch_processes(num_processes, argv))
    if num_processes and launched is not None and num_processes != launched:
        raise WeaveError(
            f"--num-processes {num_processes}, but the launcher started {launched} processes: "
            "leave out --num-processes under torchrun or accelerate launch"
        )
    if launched is not None and os.environ.get("RANK", "0") != "0":  # info once, from rank 0
        logging.getLogger("axolotl_weave").setLevel(logging.WARNING)
    session = open_session(config, ctx.args, ctx.obj.pm)
    state = train(session)
    if not session.is_main_process:
        return
    savers = [n for n in session.hooks.implementations("post_train") if "(wrapper)" not in n]
    out = session.cfg.output_dir
    saved = (
        f"output in {out} (post_train: {', '.join(savers)})"
        if savers
        else f"NO model saved: no post_train plugin is installed or unblocked ({out} has the "
        "checkpoints only)"
    )
    console.print(f"[bold green]done[/]: {state.global_step} steps; {saved}")


def launcher_world_size() -> int | None:
    """The number of processes a launcher (torchrun, accelerate launch, mpirun) started this one
    among, or None when no launcher did."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name):
            return int(os.environ[name])
    return None


def launch_processes(num_processes: int, argv: list[str]) -> int:
    """Run `weave ARGV` in `num_processes` processes on this machine, as `torchrun --standalone
    --nproc-per-node N` would (torch's elastic launcher, in this process); the exit code of the
    first that failed, else 0."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = max(1, (os.cpu_count() or 1) // num_processes)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # as torchrun: no oversubscription
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port
        max_restarts=0,
        monitor_interval=0.1,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "axolotl_weave", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        err_console.print(
            f"[bold red]error:[/] process {rank} of {num_processes} failed "
            f"(exit code {failure.exitcode}); its message is above"
        )
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def build_app(pm: pluggy.PluginManager) -> typer.Typer:
    """The CLI application: `weave train`, then every plugin's commands (`preprocess`,
    `validate`, `plugin list`, `config-schema` are the built-in `pipeline_commands` plugin's)."""
    app = typer.Typer(
        name="weave",
        help="Fine-tune Hugging Face language models from one YAML file.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.command("train", context_settings=OVERRIDES)(user_errors(train_command))
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
