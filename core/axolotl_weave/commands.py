"""The public facade for command plugins (`add_cli_commands`): what `weave preprocess`,
`weave validate`, `weave merge-lora` and `weave bench` need from the core to run part of the
pipeline themselves.

Import from here, not from the core's private modules. Importing this module loads the CLI and
run machinery (typer, rich, pydantic, yaml), so import it inside the command's function, not at
the top of a plugin module (plugins must import without heavy packages).
"""

from __future__ import annotations

from axolotl_weave._cli import OVERRIDES, user_errors
from axolotl_weave._config import did_you_mean, load_config_data
from axolotl_weave._console import console, err_console
from axolotl_weave._optim import build_optimizer, build_scheduler, warmup_steps
from axolotl_weave._prepared import drop_reasons, drop_summary
from axolotl_weave._run import (
    Session,
    batch_columns,
    build_trainer,
    check_before_work,
    config_schema,
    family_of,
    load_tokenizer,
    open_session,
    preprocess,
    run_scoped_plugins,
    train,
)

__all__ = [
    "OVERRIDES",
    "Session",
    "batch_columns",
    "build_optimizer",
    "build_scheduler",
    "build_trainer",
    "check_before_work",
    "config_schema",
    "console",
    "err_console",
    "did_you_mean",
    "drop_reasons",
    "drop_summary",
    "family_of",
    "load_config_data",
    "load_tokenizer",
    "open_session",
    "preprocess",
    "run_scoped_plugins",
    "train",
    "user_errors",
    "warmup_steps",
]
