"""Axolotl compatibility: an Axolotl YAML runs unchanged wherever its features exist here.

Before validation (`adapt_config_data`):

- a top-level key Axolotl knows and no installed plugin validates is dropped with a warning
  (quietly when it is unset: null, false, empty); a key that changes *what* is trained
  (`adapter: lora`, `rl: dpo`, quantization) is kept when set, so that validation refuses it
  with the reason `explain_unknown_key` gives: ignoring it would silently train something else;
- a key of a dataset entry that Axolotl knows and neither the core nor the entry's format
  validates is dropped with a warning;
- Axolotl's alias `train_on_split:` of a dataset entry becomes its `split:`.

Blocked (`weave -p no:axolotl_compat`, or `WEAVE_BLOCK_PLUGINS=axolotl_compat`), an Axolotl-only
key is an unknown key like any other.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import hookimpl

from axolotl_weave_plugins.compat._axolotl_ignored import ignored_reason
from axolotl_weave_plugins.compat._axolotl_keys import (
    AXOLOTL_DATASET_KEYS,
    AXOLOTL_DECISIVE_KEYS,
    AXOLOTL_TOP_LEVEL_KEYS,
)

PLUGIN_KIND = "compat"

IGNORED = (
    "config key '{}' is an Axolotl option that Axolotl Weave does not implement yet: it is IGNORED"
)
"""The warning for a dropped key."""

DECISIVE = (
    "an Axolotl option that no installed plugin implements (not yet in Axolotl Weave, or its "
    "plugin is blocked or not installed: see `weave plugin list`); it changes what is trained, "
    "so the run is refused rather than silently training something else: remove the key"
)
"""Why a set key of `AXOLOTL_DECISIVE_KEYS` that nothing validates is refused."""
PARALLELISM = (
    "an Axolotl option that no installed plugin implements (not yet in Axolotl Weave, or its "
    "plugin is blocked or not installed: see `weave plugin list`): a way of splitting the model "
    "or its sequences over GPUs; without it the run would need each GPU to hold what the config "
    "splits, so it is refused: remove the key (data parallelism, FSDP2 and DeepSpeed are here)"
)
"""Why a parallelism key of `AXOLOTL_DECISIVE_KEYS` is refused: it changes where the run
fits, not what it learns."""
PARALLELISM_KEYS = frozenset(
    {"context_parallel_size", "tensor_parallel_size", "sequence_parallel_degree"}
)

REMOVED_FROM_AXOLOTL = {
    "s2_attention": "shifted-sparse attention, which Axolotl no longer supports either (it "
    "refuses the key): remove it",
    "landmark_attention": "landmark attention, a patch Axolotl removed (its current versions "
    "do not read the key): remove it",
    "xpos_rope": "xPos rotary embeddings, a patch Axolotl removed (its current versions do not "
    "read the key): remove it",
}
"""Decisive keys of old Axolotl versions that it has dropped itself, with what they were."""

SPLIT_ALIASES = {"train_on_split": "split"}
"""Axolotl's aliases of dataset entry keys -> the key here."""

TOP_LEVEL_ALIASES = {
    "model_config": "overrides_of_model_config",
    "model_kwargs": "overrides_of_model_kwargs",
    "evaluation_strategy": "eval_strategy",
    "random_init_weights": "reinit_weights",  # Axolotl's older name
}
"""Axolotl's aliases of top-level keys -> the key here (the key itself wins when both are set)."""

MODEL_CONFIG = "overrides_of_model_config"

ROPE_SCALING_NOTE = (
    "config key 'rope_scaling' is read as overrides_of_model_config: {rope_scaling: ...}, where "
    "Axolotl moved it (Axolotl itself now refuses the top-level key)"
)


@hookimpl
def adapt_config_data(data: dict[str, Any], known_keys: frozenset[str]) -> list[str]:
    """Drop the Axolotl keys nothing here validates (see the module), rename aliases; warn."""
    notes = []
    for alias, key in TOP_LEVEL_ALIASES.items():
        if alias in data and alias not in known_keys and key in known_keys:
            value = data.pop(alias)
            if value and not data.get(key):
                data[key] = value
    if data.get("rope_scaling") and "rope_scaling" not in known_keys and MODEL_CONFIG in known_keys:
        overrides = dict(data.get(MODEL_CONFIG) or {})  # model_config: renamed above
        overrides.setdefault("rope_scaling", data.pop("rope_scaling"))
        data[MODEL_CONFIG] = overrides
        notes.append(ROPE_SCALING_NOTE)
    ignored = drop_top_level_keys(data, known_keys)
    entry_keys: set[str] = set()
    for section, entries in dataset_entries(data, known_keys):
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            known = {k.split(".", 2)[2] for k in known_keys if k.startswith(f"{section}.{index}.")}
            rename_aliases(entry, known)
            for key in [k for k in entry if k not in known and k in AXOLOTL_DATASET_KEYS]:
                del entry[key]
                entry_keys.add(f"datasets[].{key}")
    return notes + [ignored_warning(key) for key in [*ignored, *sorted(entry_keys)]]


def ignored_warning(key: str) -> str:
    """The warning for a dropped key, with why it does not change what is trained."""
    reason = ignored_reason(key.removeprefix("datasets[]."))
    return IGNORED.format(key) + (f" ({reason})" if reason else "")


NOT_AXOLOTL_KEYS = {
    "eta_min": "not an Axolotl key (Axolotl ignores it, four of its examples set it): a "
    "cosine schedule's floor is cosine_min_lr_ratio (eta_min / learning_rate)",
}
"""Keys Axolotl's own configs carry that no Axolotl version reads, with what they meant."""


@hookimpl
def explain_unknown_key(key: str) -> str | None:
    """Axolotl's keys that change what is trained are refused with the reason; keys its
    examples carry that it never read, with the key they meant."""
    if key in NOT_AXOLOTL_KEYS:
        return NOT_AXOLOTL_KEYS[key]
    if key not in AXOLOTL_DECISIVE_KEYS:
        return None
    if key in REMOVED_FROM_AXOLOTL:
        return REMOVED_FROM_AXOLOTL[key]
    return PARALLELISM if key in PARALLELISM_KEYS else DECISIVE


def drop_top_level_keys(data: dict[str, Any], known_keys: frozenset[str]) -> list[str]:
    """Remove the top-level Axolotl keys nothing validates; return those that were set."""
    ignored = []
    for key in [k for k in data if k not in known_keys and k in AXOLOTL_TOP_LEVEL_KEYS]:
        if data[key] in (None, False, "", [], {}):
            del data[key]
        elif key not in AXOLOTL_DECISIVE_KEYS:
            ignored.append(key)
            del data[key]
    return ignored


def dataset_entries(
    data: dict[str, Any], known_keys: frozenset[str]
) -> list[tuple[str, list[Any]]]:
    """(section, entries) of every list of dataset entries (the sections whose entries'
    keys are in `known_keys` as `section.N.key`); one entry given alone counts as a list."""
    sections = {key.split(".", 1)[0] for key in known_keys if "." in key}
    found = []
    for section in sorted(sections & set(data)):
        entries = data[section]
        entries = [entries] if isinstance(entries, dict) else entries
        if isinstance(entries, list):
            found.append((section, entries))
    return found


def rename_aliases(entry: dict[str, Any], known: set[str]) -> None:
    """Axolotl's aliases become the keys they stand for (the key itself wins when both are set)."""
    for alias, key in SPLIT_ALIASES.items():
        if alias in entry and alias not in known:
            value = entry.pop(alias)
            if value and not entry.get(key):
                entry[key] = value
