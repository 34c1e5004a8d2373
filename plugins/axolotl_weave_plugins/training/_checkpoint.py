"""Checkpoints for resuming: the staged write, the resume checks, the RNG and data position.

A checkpoint is written in full under a temporary name and renamed into place, so a crash
mid-save leaves the previous checkpoint untouched and no half-written one that looks complete.
`trainer_state.json` is written last and marks a checkpoint as complete. The strategy writes
the weights, optimizer and schedule into the staged folder (`Strategy.save_state`).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

from axolotl_weave import (
    STATE_FILE,
    ConfigError,
    TrainState,
    WeaveError,
    checkpoints,
    replace_folder,
    write_atomically,
)

SETTINGS_FILE = "run_settings.json"
"""The settings a checkpoint's data position depends on, checked when it is resumed."""
log = logging.getLogger("axolotl_weave")


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint folder to resume from: a path, or 'auto' for the newest that loads (a
    damaged one is skipped, saying so); None if there is none. An explicit path that is not a
    complete, loadable checkpoint is an error naming the file at fault."""
    if not resume:
        return None
    if resume == "auto":
        for path in reversed(checkpoints(output_dir)):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            log.warning(
                "resume_from_checkpoint: auto skips %s, which is damaged: %s", path, problem
            )
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise WeaveError(
            f"resume_from_checkpoint: '{resume}' is not a complete checkpoint "
            f"(no {STATE_FILE}); complete ones in {output_dir}: "
            f"{', '.join(p.name for p in checkpoints(output_dir)) or 'none'}"
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        raise WeaveError(f"resume_from_checkpoint: '{resume}' is damaged: {problem}")
    return path


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint's files cannot be loaded (truncated or unreadable), checked without
    reading the weights; None when they look whole."""
    import zipfile

    from safetensors import safe_open

    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), "pt"):
                    pass
            elif file.suffix in (".pt", ".bin") and not zipfile.is_zipfile(file):
                return f"{file}: not a complete torch file (truncated?)"
            elif file.suffix == ".json":
                json.loads(file.read_text())
        except Exception as exc:
            return f"{file}: {type(exc).__name__}: {exc}"
    return None


def check_resume_settings(folder: Path, settings: dict[str, Any], allow_changes: bool) -> None:
    """Refuse to resume from `folder` with other batch settings or data than it was saved with
    (its step and epoch would point at other rows), unless `allow_resume_changes`."""
    saved_file = folder / SETTINGS_FILE
    if not saved_file.is_file():
        return
    saved = json.loads(saved_file.read_text())
    changed = [
        f"{key}: {saved[key]} then, {value} now"
        for key, value in settings.items()
        if key in saved and saved[key] != value
    ]
    if not changed:
        return
    if allow_changes:
        log.warning(
            "resuming %s with changes (allow_resume_changes): %s", folder, "; ".join(changed)
        )
        return
    raise ConfigError(
        f"resume_from_checkpoint: {folder} was saved with other settings ({'; '.join(changed)}), "
        "so its data position would be wrong; restore them, or set allow_resume_changes: true "
        "to continue anyway"
    )


def staging_folder(output_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` is written before it is renamed into place."""
    return output_dir / f".checkpoint-{step}.tmp"


def stage_checkpoint(staged: Path) -> None:
    """Make `staged` a fresh, empty folder (main process; a leftover of a crash is removed)."""
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)


def finish_checkpoint(
    output_dir: Path,
    staged: Path,
    state: TrainState,
    save_total_limit: int | None,
    settings: dict[str, Any],
    keep_step: int | None = None,
) -> Path:
    """Add the RNG and train state to a staged checkpoint, rename it into place, then prune
    beyond `save_total_limit` (main process), sparing the checkpoint of step `keep_step` (the
    best evaluation's). `settings` (batch sizes, data) are kept for the resume check.
    `trainer_state.json` marks it complete."""
    import torch

    torch.save(rng_state(), staged / "rng_state.pt")
    _write_json(staged / SETTINGS_FILE, settings)
    _write_json(staged / STATE_FILE, state.to_json())
    final = output_dir / f"checkpoint-{state.global_step}"
    replace_folder(staged, final)  # re-saving a step (after a resume): swapped, never deleted first
    if save_total_limit:
        for stale in checkpoints(output_dir)[:-save_total_limit]:
            if stale.name != f"checkpoint-{keep_step}":
                shutil.rmtree(stale, ignore_errors=True)
    return final


def read_train_state(folder: Path) -> dict[str, Any]:
    """The train state saved in `folder` (step, epoch, data position, log history)."""
    return json.loads((folder / STATE_FILE).read_text())


def restore_rng(folder: Path) -> None:
    """Every random generator as `folder` saved it."""
    import torch

    set_rng_state(torch.load(folder / "rng_state.pt", weights_only=False))


def rng_state() -> dict[str, Any]:
    """Every random generator training draws from (python, numpy, torch CPU and CUDA)."""
    import numpy as np
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_json(path: Path, data: Any) -> None:
    write_atomically(path, json.dumps(data, indent=2))
