"""What the preference methods (`rl: dpo | ipo | orpo | simpo | kto`) share: their data and beta.

- Axolotl's preference `type:`s (`chatml.*`, `llama3.*`, `chat_template.*`, `zephyr.nectar`,
  `user_defined.default`): rows of chosen and rejected columns. The KTO `type:`s
  share their names with them (`chatml.argilla`, `chatml.intel`, `chatml.ultra`, `llama3.*`,
  `user_defined.default` with `field_label`...): under `rl: kto` they build KTO's unpaired rows
  (a prompt, a completion, a boolean `label`); `configure` sets which columns they declare for
  the run, `on_train_end` sets the pairs' back.
- `rl_beta` (`dpo_beta`, deprecated, as an alias): the temperature of DPO, IPO, SimPO and KTO.
- A preference `type:` without `rl:` is refused. `sample_packing: true` packs the pairs (whole,
  each pair's chosen and rejected sequences in one row, see `batching.packed`) for the methods
  that read packed pairs (`PACKED_METHODS`: dpo, ipo, orpo, simpo); it is refused, with the
  reason, for KTO and for another distribution's method on these types.

Each method is its own plugin beside this one (`rl.dpo`, `rl.orpo`, `rl.simpo`, `rl.kto`); a
method of another distribution may train on these types under its own `rl:` name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field, model_validator

from axolotl_weave_plugins.rl._formats import preference_formats
from axolotl_weave_plugins.rl._kto_formats import use_kto_columns

PLUGIN_KIND = "format"

log = logging.getLogger("axolotl_weave")

METHODS = ("dpo", "ipo", "orpo", "simpo", "kto")
"""The built-in `rl:` methods that train on these types (each its own plugin)."""

PACKED_METHODS = ("dpo", "ipo", "orpo", "simpo")
"""The methods whose objective reads packed pairs (`sample_packing: true`)."""

PREFERENCE_TYPES = frozenset(fmt.name for fmt in preference_formats())
"""The preference `type:` names (they need `rl:`)."""


class PreferenceDataSettings(PluginConfig):
    """The preference methods' shared keys (Axolotl's names)."""

    rl_beta: float = Field(
        0.1, gt=0, description="DPO/IPO/SimPO/KTO temperature beta (strength of the preference)."
    )
    dpo_beta: float | None = Field(None, gt=0, description="Deprecated: use rl_beta.")

    @model_validator(mode="after")
    def _preference_data_keys(self) -> PreferenceDataSettings:
        if self.dpo_beta is not None:
            log.warning("config key 'dpo_beta' is deprecated: use rl_beta")
            if "rl_beta" not in self.model_fields_set:
                self.rl_beta = self.dpo_beta
        rl = getattr(self, "rl", None)
        kinds = [getattr(entry, "type", None) for entry in getattr(self, "datasets", None) or []]
        preference = [kind for kind in kinds if isinstance(kind, str) and kind in PREFERENCE_TYPES]
        if rl is None:
            if preference:
                raise ValueError(
                    f"datasets: type: {preference[0]} holds preference pairs: set rl: (one of "
                    f"{', '.join(METHODS)}) to train on them"
                )
            return self
        packing = getattr(self, "sample_packing", False) or getattr(
            self, "eval_sample_packing", False
        )
        if packing and rl == "kto":
            raise ValueError(
                "sample_packing: true cannot be used with rl: kto: its KL estimate pairs each "
                "prompt with another row's completion of the micro-batch, which packed rows do "
                "not keep apart; set sample_packing: false"
            )
        if packing and preference and rl not in PACKED_METHODS:
            raise ValueError(
                f"sample_packing: true cannot be used with rl: {rl}: only "
                f"{', '.join(PACKED_METHODS)} train on packed preference pairs; "
                "set sample_packing: false"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`rl_beta` (and its deprecated alias `dpo_beta`)."""
    return PreferenceDataSettings


@hookimpl
def register_dataset_formats(register: Callable[[Any], None]) -> None:
    """Axolotl's preference (and KTO) `type:`s."""
    for fmt in preference_formats():
        register(fmt)


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """The type names KTO shares with the pairs declare KTO's columns under `rl: kto` (the
    pairs' otherwise), before the data is built or read from its cache."""
    use_kto_columns(getattr(cfg, "rl", None) == "kto")


@hookimpl
def on_train_end(cfg: Any, state: Any, error: BaseException | None) -> None:
    """The shared type names declare the pairs' columns again once a run is over."""
    use_kto_columns(False)
