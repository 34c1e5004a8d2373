"""`weave merge-sharded-fsdp-weights CHECKPOINT_DIR`: one Hugging Face model from an FSDP2
sharded checkpoint.

An FSDP2 run (`fsdp_version: 2`) checkpoints each process's shard of the trainable weights (and of
the optimizer state) with `torch.distributed.checkpoint` into `checkpoint-N/sharded/`. This command
loads the model as training loaded it (the run's `config.yml`: the base, a LoRA adapter wrapped
around it, resized embeddings), reads the sharded trainable weights into it in one process (no
process group: `torch.distributed.checkpoint` reshards to one), and saves it as the end of a run
does (`post_train`: the whole model, or the adapter alone for LoRA, with the tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from axolotl_weave import STATE_FILE, WeaveError, checkpoints, hookimpl

PLUGIN_KIND = "command"

SHARDED_FOLDER = "sharded"
"""Where the FSDP2 plugin writes a checkpoint's shards (its `SHARDED_FOLDER`)."""
"""What marks a complete checkpoint."""
MODEL_PREFIX = "model."
"""The checkpoint's keys of the trainable weights (the optimizer's start with `optimizer.`)."""


def find_checkpoint(folder: Path) -> Path:
    """The sharded checkpoint `folder` names: a `checkpoint-N` folder, or an `output_dir` (its
    newest checkpoint). Anything else is refused, saying what it is."""
    if not folder.is_dir():
        raise WeaveError(
            f"CHECKPOINT_DIR: '{folder}' is not a folder; give a checkpoint-N folder of an "
            "fsdp_version: 2 run (or its output_dir, for the newest checkpoint)"
        )
    found = checkpoints(folder)  # an output_dir: its newest
    if not found and not (folder / STATE_FILE).is_file():
        raise WeaveError(
            f"CHECKPOINT_DIR: '{folder}' is not a checkpoint (no {STATE_FILE}) nor an "
            "output_dir holding checkpoint-N folders"
        )
    checkpoint = found[-1] if found else folder
    if not (checkpoint / SHARDED_FOLDER / ".metadata").is_file():
        whole = (checkpoint / "trainable.safetensors").is_file()
        what = (
            "its weights are whole already (trainable.safetensors: a single-device or DDP "
            "run, or FSDP2 with state_dict_type: FULL_STATE_DICT)"
            if whole
            else f"it has no {SHARDED_FOLDER}/.metadata"
        )
        raise WeaveError(
            f"CHECKPOINT_DIR: '{checkpoint}' is not a sharded FSDP2 checkpoint: {what}; only "
            "sharded checkpoints of fsdp_version: 2 runs are merged"
        )
    return checkpoint


def run_config(checkpoint: Path, config: str | None) -> str:
    """The config the checkpoint was trained with: `--config`, else `config.yml` of its run."""
    if config:
        return config
    saved = checkpoint.parent / "config.yml"
    if not saved.is_file():
        raise WeaveError(
            f"--config: no {saved} (the config a run saves in its output_dir); name the "
            "config the checkpoint was trained with: --config CONFIG"
        )
    return str(saved)


def sharded_model_keys(sharded: Path) -> dict[str, Any]:
    """The trainable weights the checkpoint holds: their names (without `model.`) and metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(sharded)).read_metadata().state_dict_metadata
    return {
        key.removeprefix(MODEL_PREFIX): meta
        for key, meta in metadata.items()
        if key.startswith(MODEL_PREFIX)
    }


def load_sharded_weights(model: Any, checkpoint: Path) -> int:
    """Read the checkpoint's trainable weights into `model` in place, in this one process;
    the number of tensors read. A weight the model does not have, or of another shape, is an
    error naming it."""
    import torch
    import torch.distributed.checkpoint as dcp

    sharded = checkpoint / SHARDED_FOLDER
    saved = sharded_model_keys(sharded)
    own = model.state_dict()
    unknown = sorted(set(saved) - set(own))
    if unknown:
        raise WeaveError(
            f"{checkpoint} does not fit the model of its config: {len(unknown)} unknown "
            f"weight(s), e.g. {unknown[0]}; was it trained with another config (--config)?"
        )
    for name, meta in saved.items():
        if tuple(meta.size) != tuple(own[name].shape):
            raise WeaveError(
                f"{checkpoint}: weight {name} has shape {tuple(meta.size)}, the model's "
                f"{tuple(own[name].shape)}; was it trained with another config (--config)?"
            )
    state = {"model": {name: own[name] for name in saved}}  # read into the model's own tensors
    with torch.no_grad():
        dcp.load(state, checkpoint_id=str(sharded), no_dist=True)
    return len(saved)


def merge_sharded(session: Any, checkpoint: Path, output_dir: Path) -> int:
    """Load the model as `weave train` did, read the checkpoint's shards into it, and run the
    `post_train` savers into `output_dir` on one process; the number of weights read."""
    from accelerate import Accelerator
    from axolotl_weave import AccelerateStrategy
    from axolotl_weave.commands import family_of, load_tokenizer

    cfg = session.cfg
    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    model = session.hooks.load_model(cfg, tokenizer, family, purpose="train")
    count = load_sharded_weights(model, checkpoint)
    output_dir.mkdir(parents=True, exist_ok=True)
    strategy = AccelerateStrategy(Accelerator(cpu=True))
    session.hooks.post_train(cfg, model, tokenizer, strategy, output_dir)
    return count


def merge_sharded_command(
    ctx: typer.Context,
    checkpoint_dir: Path = typer.Argument(
        ...,
        help="checkpoint-N folder of an fsdp_version: 2 run, or its output_dir (newest "
        "checkpoint).",
    ),
    output_dir: Path | None = typer.Option(
        None,
        "--output-dir",
        help="Where the model goes (default: checkpoint-N-merged beside the checkpoint).",
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        help="The config it was trained with (default: config.yml of its output_dir).",
    ),
) -> None:
    """Turn an FSDP2 sharded checkpoint into one Hugging Face model (an adapter for LoRA), as
    the end of the run saves it. Extra `--key value` pairs override the config."""
    from axolotl_weave.commands import console, open_session

    checkpoint = find_checkpoint(checkpoint_dir)
    session = open_session(run_config(checkpoint, config), ctx.args, ctx.obj.pm)
    target = output_dir or checkpoint.with_name(f"{checkpoint.name}-merged")
    count = merge_sharded(session, checkpoint, target)
    console.print(f"[bold green]merged[/]: {count} sharded weights of {checkpoint} into {target}")


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave merge-sharded-fsdp-weights CHECKPOINT_DIR [--output-dir DIR] [--config CONFIG]`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("merge-sharded-fsdp-weights", context_settings=OVERRIDES)(
        user_errors(merge_sharded_command)
    )
