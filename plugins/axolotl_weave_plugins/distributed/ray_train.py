"""`use_ray: true`: `weave train` runs the training on a Ray cluster, through Ray Train's
`TorchTrainer` (the `ray` extra).

Ray starts `ray_num_workers` workers, each with `resources_per_worker`, joined in one torch process
group (NCCL when the workers have GPUs, gloo on CPUs); each worker runs the normal training of the
config in its process, as a process of `torchrun` does: DDP by default, or whichever strategy
the config asks for (`fsdp_version: 2`...). The first worker writes the checkpoints and the model
into `output_dir`, so the result is what a DDP run of as many processes leaves. Ray's address is
Ray's: `RAY_ADDRESS` (a running cluster), else a local cluster started for the run.

The hand-off is the `launch_training` hook: with `use_ray` on, `weave train`'s process validates
the config, then drives Ray and trains nothing itself; with it off, the plugin answers None.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from axolotl_weave import (
    FINISHED_MARKER,
    ConfigError,
    PluginConfig,
    WeaveError,
    hookimpl,
    require,
)
from pydantic import Field, model_validator

PLUGIN_KIND = "distributed"
log = logging.getLogger("axolotl_weave")
INSTALL = "'axolotl-weave[ray]'"
BLOCK_ENV = "WEAVE_BLOCK_PLUGINS"
"""The plugins a worker blocks, as the command line's `-p no:NAME` blocked them here."""


class RaySettings(PluginConfig):
    """Axolotl's Ray keys."""

    use_ray: bool = Field(
        False,
        description="Train on a Ray cluster with Ray Train's TorchTrainer: ray_num_workers "
        "processes in one process group, each running this config (RAY_ADDRESS, else a local "
        "cluster). Needs the `ray` extra.",
    )
    ray_num_workers: int = Field(
        1, ge=1, description="use_ray: how many training processes (workers) Ray starts."
    )
    resources_per_worker: dict[str, float] | None = Field(
        None,
        description="use_ray: what each worker reserves, e.g. {GPU: 1} or {CPU: 4}; default "
        "{GPU: 1} when this machine has a GPU, else {CPU: 1}. Workers with a GPU use NCCL, "
        "others gloo.",
    )
    ray_run_name: str | None = Field(
        None, description="use_ray: the name of the Ray Train run (Ray's default otherwise)."
    )

    @model_validator(mode="after")
    def resources_are_positive(self) -> RaySettings:
        """Every reserved amount is positive."""
        bad = {k: v for k, v in (self.resources_per_worker or {}).items() if v <= 0}
        if bad:
            raise ValueError(f"resources_per_worker: amounts must be positive, got {bad}")
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`use_ray`, `ray_num_workers`, `resources_per_worker`, `ray_run_name`."""
    return RaySettings


@hookimpl
def launch_training(
    session: Any,
    config: str,
    overrides: list[str],
    global_args: list[str],
    num_processes: int | None,
    launched: int | None,
) -> int | None:
    """With `use_ray: true`, train on Ray instead of in this process; exit code 0 when done."""
    cfg = session.cfg
    if not getattr(cfg, "use_ray", False):
        return None
    if (num_processes or 1) > 1 or launched:
        how = f"--num-processes {num_processes}" if not launched else "a launcher (torchrun...)"
        raise ConfigError(
            f"use_ray: true starts ray_num_workers ({cfg.ray_num_workers}) training processes "
            f"itself, but this run has {how}: leave it out, or set use_ray: false"
        )
    from axolotl_weave.commands import check_before_work, console, load_config_data

    check_before_work(session)
    blocked = [name for name, plugin in session.hooks.pm.list_name_plugin() if plugin is None]
    job = {
        "data": load_config_data(config, overrides),  # overrides applied
        "name": Path(config).name if "://" not in config else "config.yml",
        "cwd": os.getcwd(),  # relative paths of the config
        "blocked": blocked,
    }
    steps = fit(cfg, job)
    where = "" if steps is not None else " (on the machine of the first worker)"
    console.print(
        f"[bold green]done[/]: {steps if steps is not None else 'all'} steps on Ray "
        f"({cfg.ray_num_workers} workers); output in {cfg.output_dir}{where}"
    )
    return 0


def worker_resources(cfg: Any) -> dict[str, float]:
    """`resources_per_worker`, or one GPU when this machine has one, else one CPU."""
    if cfg.resources_per_worker:
        return dict(cfg.resources_per_worker)
    import torch

    return {"GPU": 1} if torch.cuda.is_available() else {"CPU": 1}


def fit(cfg: Any, job: dict[str, Any]) -> int | None:
    """Run `train_worker` on `ray_num_workers` Ray workers; the number of steps trained (None
    when the output is on another machine). A worker's `WeaveError` is raised here."""
    require("ray.train", feature="use_ray", install=INSTALL)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = worker_resources(cfg)
    start_local_cluster(cfg.ray_num_workers, resources)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=dict(job),
        torch_config=TorchConfig(timeout_s=getattr(cfg, "ddp_timeout", 1800)),
        scaling_config=ScalingConfig(
            num_workers=cfg.ray_num_workers,
            use_gpu=resources.get("GPU", 0) > 0,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(name=cfg.ray_run_name),
    )
    log.info("use_ray: %d workers, each %s", cfg.ray_num_workers, resources)
    try:
        trainer.fit()
    except Exception as exc:
        raise worker_error(exc) from None
    return finished_steps(Path(job["cwd"]) / cfg.output_dir)


def start_local_cluster(workers: int, resources: dict[str, float]) -> None:
    """Start a Ray cluster on this machine, unless one is running or `RAY_ADDRESS` names one:
    with CPUs enough for the workers (Ray counts them, it does not pin them), and refusing GPUs
    this machine does not have (Ray would wait for them forever)."""
    import math

    import ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        return
    gpus = resources.get("GPU", 0) * workers
    if gpus:
        import torch

        have = torch.cuda.device_count()
        if gpus > have:
            raise ConfigError(
                f"use_ray: ray_num_workers {workers} x resources_per_worker {resources} needs "
                f"{gpus:g} GPUs, and this machine has {have}: lower them, or set RAY_ADDRESS to "
                "a Ray cluster that has them"
            )
    cpus = math.ceil(resources.get("CPU", 0 if gpus else 1) * workers)
    ray.init(num_cpus=max(os.cpu_count() or 1, cpus))


def worker_error(exc: BaseException) -> WeaveError:
    """The user-facing error of a failed Ray run: a worker's own `WeaveError` when one failed
    with it (a config or data problem), else Ray's message."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        cause = failures[rank]
        while cause is not None and not isinstance(cause, WeaveError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if cause is not None:
            return cause
    return WeaveError(f"use_ray: the Ray training failed: {exc}")


def finished_steps(output_dir: Path) -> int | None:
    """The steps of the finished run in `output_dir`, or None when this machine cannot see it
    (the first worker ran on another node, without a shared folder)."""
    import json

    marker = output_dir / FINISHED_MARKER
    if not marker.is_file():
        return None
    return int(json.loads(marker.read_text())["global_step"])


def train_worker(job: dict[str, Any]) -> None:
    """One Ray worker: the normal training of the config, in the process group Ray set up
    (RANK, WORLD_SIZE, MASTER_ADDR... set as torchrun sets them)."""
    import yaml
    from axolotl_weave.commands import open_session, train

    if Path(job["cwd"]).is_dir():  # the same machine, or a shared folder: relative paths hold
        os.chdir(job["cwd"])
    if job["blocked"]:
        os.environ[BLOCK_ENV] = ",".join(job["blocked"])
    if os.environ.get("RANK", "0") != "0":
        logging.getLogger("axolotl_weave").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="weave-ray-") as folder:
        path = Path(folder) / job["name"]
        path.write_text(yaml.safe_dump(job["data"], sort_keys=False))
        try:
            train(open_session(path))
        except WeaveError as exc:  # its message, not the core's frames, in Ray's log
            raise exc.with_traceback(None) from None
