"""`reward_model: true` / `process_reward_model: true`: reward models (Axolotl's keys).

- `reward_model: true`: a Bradley-Terry reward model, as TRL's `RewardTrainer`: the base model
  loads as `AutoModelForSequenceClassification` (`num_labels: 1`, the pad token id in its
  config), trained on pairs (`type: bradley_terry.chat_template`) with the loss
  `-logsigmoid(r_chosen - r_rejected)` (plus `center_rewards_coefficient` times the squared sum
  of the two rewards); logs TRL's `accuracy`, `margin`, `min_reward`, `mean_reward`,
  `max_reward`.
- `process_reward_model: true`: a process reward model, as TRL's `PRMTrainer`: the base model
  loads as `AutoModelForTokenClassification` (`num_labels: 2`), trained with cross-entropy on
  the last token of every step (`type: stepwise_supervised`).

The model is saved as that class (`save_hf`); with `adapter: lora` the adapter is saved, its
classifier head trained in full with it. Neither trains on packed rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from axolotl_weave import ModelFamily, PluginConfig, PluginError, hookimpl
from pydantic import Field, model_validator

from axolotl_weave_plugins.rewards._formats import reward_formats

PLUGIN_KIND = "method"


CLASS_SUFFIX = {
    "reward_model": "ForSequenceClassification",
    "process_reward_model": "ForTokenClassification",
}
"""The transformers class a `model_type:` may name for each kind (Axolotl's examples set it)."""

FORMAT_OF = {
    "reward_model": "bradley_terry.chat_template",
    "process_reward_model": "stepwise_supervised",
}
"""The dataset `type:` each kind trains on."""

KEY_OF = {kind: key for key, kind in FORMAT_OF.items()}


class RewardSettings(PluginConfig):
    """The reward models' keys (Axolotl's names)."""

    reward_model: bool | None = Field(
        None, description="Train a Bradley-Terry reward model (a sequence classifier) on pairs."
    )
    process_reward_model: bool | None = Field(
        None, description="Train a process reward model (a token classifier) on labelled steps."
    )
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="reward_model: weight of the mean squared (chosen+rejected) reward."
    )
    num_labels: int | None = Field(
        None, gt=0, description="Labels of the classification head (default 1 reward, 2 PRM)."
    )

    @model_validator(mode="after")
    def _reward_keys(self) -> RewardSettings:
        on = [key for key in ("reward_model", "process_reward_model") if getattr(self, key)]
        if len(on) == 2:
            raise ValueError("reward_model and process_reward_model: set one of them, not both")
        wanted = FORMAT_OF[on[0]] if on else None
        for section in ("datasets", "test_datasets"):
            for entry in getattr(self, section, None) or []:
                kind = getattr(entry, "type", None)
                if kind in KEY_OF and kind != wanted:
                    raise ValueError(
                        f"{section}: type: {kind} trains a reward model: set {KEY_OF[kind]}: true"
                    )
                if wanted is not None and kind != wanted:
                    raise ValueError(
                        f"{section}: type: {kind}: {on[0]}: true trains on type: {wanted} rows only"
                    )
        if not on:
            for key in ("center_rewards_coefficient", "num_labels"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key} applies to reward_model / process_reward_model, which are off"
                    )
            return self
        key = on[0]
        if getattr(self, "sample_packing", False):
            raise ValueError(
                f"sample_packing: true cannot be used with {key}: true: reward-model rows are "
                "never packed; set sample_packing: false"
            )
        if getattr(self, "rl", None):
            raise ValueError(f"{key}: true cannot be combined with rl: {self.rl}")
        if key == "process_reward_model" and self.center_rewards_coefficient is not None:
            raise ValueError("center_rewards_coefficient applies to reward_model, not to PRMs")
        if key == "reward_model" and self.num_labels not in (None, 1):
            raise ValueError("num_labels: a Bradley-Terry reward model has one label (a reward)")
        model_type = getattr(self, "model_type", None)
        suffix = CLASS_SUFFIX[key]
        if model_type and not model_type.endswith(suffix):
            raise ValueError(
                f"model_type: {model_type} cannot load a {key.replace('_', ' ')}: name a "
                f"*{suffix} class (AutoModel{suffix}) or leave it unset"
            )
        return self


def kind_of(cfg: Any) -> str | None:
    """'Sequence' (reward_model), 'Token' (process_reward_model) or None (off)."""
    if getattr(cfg, "reward_model", None):
        return "Sequence"
    if getattr(cfg, "process_reward_model", None):
        return "Token"
    return None


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The reward-model keys."""
    return RewardSettings


@hookimpl
def register_dataset_formats(register: Callable[[Any], None]) -> None:
    """`bradley_terry.chat_template` and `stepwise_supervised`."""
    for fmt in reward_formats():
        register(fmt)


@hookimpl(tryfirst=True)
def load_model(
    cfg: Any,
    tokenizer: Any,
    family: ModelFamily | None,
    purpose: str,
    load_kwargs: dict[str, Any],
) -> Any:
    """The base model as a sequence (or token) classifier when a reward model is trained."""
    kind = kind_of(cfg)
    if kind is None:
        return None
    from axolotl_weave_plugins.rewards._objective import load_classifier

    return load_classifier(cfg, tokenizer, family, purpose, load_kwargs, kind)


@hookimpl
def build_loss(cfg: Any, model: Any) -> Any:
    """Bradley-Terry (unit: a pair) or token cross-entropy (unit: a labelled token)."""
    kind = kind_of(cfg)
    if kind is None:
        return None
    from axolotl_weave_plugins.rewards._objective import BradleyTerry, TokenClassification

    if kind == "Token":
        return TokenClassification()
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return BradleyTerry(cfg.center_rewards_coefficient, 0 if pad is None else pad)


@hookimpl
def training_step(
    cfg: Any, strategy: Any, model: Any, objective: Any, window: list[dict[str, Any]]
) -> dict[str, float] | None:
    """The reward model's step: pair-normalised loss and TRL's reward metrics."""
    if not getattr(cfg, "reward_model", None):
        return None
    from axolotl_weave_plugins.rewards._objective import BradleyTerry, bradley_terry_step

    if not isinstance(objective, BradleyTerry):
        raise PluginError(
            "reward_model: another plugin replaced the Bradley-Terry objective "
            f"({type(objective).__name__}); remove the loss/kernel option that wraps it"
        )
    return bradley_terry_step(strategy, model, objective, window)
