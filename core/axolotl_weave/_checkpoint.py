"""The checkpoint folders of a run (`output_dir/checkpoint-<step>`, complete once they hold
`trainer_state.json`) and the single-device way of writing training state into one.

Writing and resuming them is the training loop plugin's job (`training/`); commands and the
output-folder check only need to find them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave._errors import WeaveError

if TYPE_CHECKING:
    import torch

STATE_FILE = "trainer_state.json"
"""The training state: in every complete checkpoint, and at the top of a finished run's folder."""
FINISHED_MARKER = STATE_FILE
"""Written at the top of `output_dir` when a run has finished (its last state)."""
WEIGHTS_FILE = "trainable.safetensors"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder was saved at (from its `checkpoint-<step>` name)."""
    match = CHECKPOINT_RE.match(path.name)
    if match:
        return int(match.group(1))
    return int(json.loads((path / STATE_FILE).read_text())["global_step"])


def write_training_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> None:
    """The trainable weights (by parameter name), the optimizer and the schedule, into `folder`."""
    import torch
    from safetensors.torch import save_file

    trainable = {
        name: param.detach().to("cpu").contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
    save_file(trainable, str(folder / WEIGHTS_FILE))
    if optimizer is not None:  # None: `save_only_model`
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")


def read_training_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> None:
    """Restore what `write_training_state` wrote."""
    import torch
    from safetensors.torch import load_file

    if not (folder / "optimizer.pt").is_file():
        raise WeaveError(
            f"resume_from_checkpoint: {folder} holds the weights only (save_only_model: true), "
            "not the optimizer and schedule a resume needs; start a new run from its weights"
        )
    weights = load_file(str(folder / WEIGHTS_FILE))
    params = dict(model.named_parameters())
    unknown = [name for name in weights if name not in params]
    if unknown:
        raise WeaveError(
            f"checkpoint {folder} does not fit this model: {len(unknown)} unknown weight(s), "
            f"e.g. {unknown[0]}; was it made with another config?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
