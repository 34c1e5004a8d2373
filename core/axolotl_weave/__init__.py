"""Axolotl Weave: fine-tune Hugging Face language models from one YAML file.

This is the public facade for plugin authors: import from `axolotl_weave` only. Everything in
modules whose names start with an underscore is private and may change.
"""

from __future__ import annotations

import pluggy

from axolotl_weave._atomic import replace_folder, staged_folder, staged_into, write_atomically
from axolotl_weave._batches import (
    Columns,
    batch_tokens,
    collate,
    epoch_order,
    micro_batches_per_epoch,
    model_inputs,
    padded_efficiency,
    process_share,
    read_rows,
    to_device,
)
from axolotl_weave._checkpoint import (
    FINISHED_MARKER,
    STATE_FILE,
    WEIGHTS_FILE,
    checkpoint_step,
    checkpoints,
)
from axolotl_weave._config import CoreConfig, DatasetEntry, PluginConfig
from axolotl_weave._errors import (
    CapabilityError,
    ConfigError,
    DataError,
    Interrupted,
    MissingDependencyError,
    PluginError,
    TrainingFault,
    WeaveError,
    require,
)
from axolotl_weave._head_loss import (
    HeadCrossEntropy,
    HiddenStatesLoss,
    logits_cross_entropy,
    next_token_targets,
)
from axolotl_weave._measure import Measurement, measure_objective
from axolotl_weave._model_config import override_model_config
from axolotl_weave._precision import Precision, resolve_precision
from axolotl_weave._prepared import (
    DROP_COUNTERS,
    DataStats,
    PreparedData,
    drop_reasons,
    drop_summary,
)
from axolotl_weave._rows import (
    LoadedRows,
    RowLocator,
    encode_all,
    flat_int_lists,
    map_rows,
    prefix_chars,
    require_columns,
    rows_table,
    stable_prefix,
    supervised_table,
    text_field,
    tokenize_prompt_response,
    tokenize_prompt_responses,
)
from axolotl_weave._secrets import is_secret, redact_text, redacted
from axolotl_weave._strategy import AccelerateStrategy, Strategy
from axolotl_weave._switch import Switch, switch_applies, switch_value
from axolotl_weave._tokens import chat_text, fit_embeddings, set_pad_token
from axolotl_weave._types import (
    IGNORE_INDEX,
    PAD_TOKEN,
    SFT_COLUMNS,
    BatchPlan,
    DatasetFormat,
    DataSource,
    LossFunction,
    ModelFamily,
    Trainer,
    TrainState,
)
from axolotl_weave.hookspecs import PROJECT_NAME

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: `@hookimpl`, `@hookimpl(trylast=True)`, `(wrapper=True)`."""

__all__ = [
    "DROP_COUNTERS",
    "FINISHED_MARKER",
    "IGNORE_INDEX",
    "PAD_TOKEN",
    "SFT_COLUMNS",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "AccelerateStrategy",
    "BatchPlan",
    "Columns",
    "CapabilityError",
    "ConfigError",
    "CoreConfig",
    "DataError",
    "DataStats",
    "DataSource",
    "DatasetEntry",
    "DatasetFormat",
    "HeadCrossEntropy",
    "HiddenStatesLoss",
    "Interrupted",
    "LossFunction",
    "Measurement",
    "MissingDependencyError",
    "ModelFamily",
    "PluginConfig",
    "Precision",
    "PluginError",
    "PreparedData",
    "Strategy",
    "Switch",
    "Trainer",
    "TrainState",
    "TrainingFault",
    "WeaveError",
    "__version__",
    "batch_tokens",
    "chat_text",
    "checkpoint_step",
    "checkpoints",
    "collate",
    "drop_reasons",
    "drop_summary",
    "epoch_order",
    "hookimpl",
    "is_secret",
    "redact_text",
    "redacted",
    "replace_folder",
    "staged_folder",
    "staged_into",
    "write_atomically",
    "logits_cross_entropy",
    "map_rows",
    "measure_objective",
    "override_model_config",
    "micro_batches_per_epoch",
    "process_share",
    "model_inputs",
    "next_token_targets",
    "padded_efficiency",
    "read_rows",
    "to_device",
    "require",
    "resolve_precision",
    "require_columns",
    "set_pad_token",
    "fit_embeddings",
    "switch_applies",
    "switch_value",
    "text_field",
    "tokenize_prompt_response",
    "tokenize_prompt_responses",
    "supervised_table",
    "flat_int_lists",
    "encode_all",
    "LoadedRows",
    "RowLocator",
    "rows_table",
    "prefix_chars",
    "stable_prefix",
]
