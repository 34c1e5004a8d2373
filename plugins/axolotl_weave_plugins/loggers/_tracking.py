"""What the tracker plugins of this folder (wandb, mlflow, tensorboard) share: the resolved
config as parameters with every secret left out, the tracker's run id kept in each checkpoint
(so that `resume_from_checkpoint` continues the same run), and the check that the tracker's
package is installed, naming the extra to install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from axolotl_weave import redact_text, redacted, require, write_atomically


def config_params(cfg: Any) -> dict[str, Any]:
    """The resolved config, defaults filled in, secrets redacted (nested, as in config.yml)."""
    return redacted(cfg.model_dump(mode="json"))


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"datasets.0.path": "...", "lora_r": "8"}`: nested params flattened, values as text."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{name}."))
        elif isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
            flat.update(flat_params({str(i): v for i, v in enumerate(value)}, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def require_tracker(module: str, extra: str, feature: str) -> Any:
    """Import the tracker's package, or raise `MissingDependencyError` naming the extra."""
    return require(module, feature=feature, install=f"'axolotl-weave[{extra}]'")


def save_run_id(folder: Path, tracker: str, run_id: str) -> None:
    """Keep the tracker's run id in the checkpoint being written (`folder/<tracker>/run.json`)."""
    write_atomically(folder / tracker / "run.json", json.dumps({"run_id": run_id}) + "\n")


def load_run_id(folder: Path, tracker: str) -> str | None:
    """The run id a checkpoint kept, or None (the tracker was off when it was written)."""
    path = folder / tracker / "run.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("run_id")


def end_status(error: BaseException | None) -> str:
    """`finished`, `killed` (Ctrl-C, SIGTERM) or `failed`: how a run ended."""
    if error is None:
        return "finished"
    if isinstance(error, KeyboardInterrupt) or type(error).__name__ == "Interrupted":
        return "killed"
    return "failed"


def error_text(error: BaseException) -> str:
    """One line for the tracker: the error's type and message, secrets redacted, shortened."""
    return redact_text(f"{type(error).__name__}: {error}")[:1000]


def model_files(output_dir: Path) -> list[Path]:
    """The final model's files at the top of `output_dir` (weights, adapter, tokenizer), without
    checkpoints, logs, or `config.yml` (logged redacted instead)."""
    skip = {"config.yml", "metrics.jsonl", "run_status.json", "loss.png"}
    return sorted(p for p in output_dir.iterdir() if p.is_file() and p.name not in skip)
