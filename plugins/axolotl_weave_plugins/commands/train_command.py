"""`weave train CONFIG [--num-processes N]`: run the whole pipeline, as the config says.

Under torchrun or `accelerate launch` each process runs the command; with `--num-processes N`
(and no launcher) the command starts the N processes itself with torch's elastic launcher (the
`launch_training` hook, `trylast`: a plugin such as `ray_train` may run the training elsewhere).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import typer
from axolotl_weave import WeaveError, hookimpl

PLUGIN_KIND = "command"


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
    from axolotl_weave.commands import console, open_session, train

    launched = launcher_world_size()
    if num_processes and launched is not None and num_processes != launched:
        raise WeaveError(
            f"--num-processes {num_processes}, but the launcher started {launched} processes: "
            "leave out --num-processes under torchrun or accelerate launch"
        )
    if launched is not None and os.environ.get("RANK", "0") != "0":  # info once, from rank 0
        logging.getLogger("axolotl_weave").setLevel(logging.WARNING)
    session = open_session(config, ctx.args, ctx.obj.pm)  # a config error once, before a launch
    code = session.hooks.launch_training(
        session, config, list(ctx.args), ctx.obj.global_args, num_processes, launched
    )
    if code is not None:
        raise typer.Exit(code)
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

    from axolotl_weave.commands import err_console
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


@hookimpl(trylast=True)
def launch_training(
    session: Any,
    config: str,
    overrides: list[str],
    global_args: list[str],
    num_processes: int | None,
    launched: int | None,
) -> int | None:
    """`--num-processes N` (N > 1, no launcher): run `weave train` in N processes here."""
    if launched is not None or not num_processes or num_processes < 2:
        return None
    return launch_processes(num_processes, [*global_args, "train", config, *overrides])


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave train`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("train", context_settings=OVERRIDES)(user_errors(train_command))
