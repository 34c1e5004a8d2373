"""The `ebft:` block of `rl: ebft` and its checks, read when the config is validated (no torch;
the run is `_ebft`)."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("axolotl_weave")

METHOD = "ebft"

STRIDED_KEYS = frozenset(
    {"stride", "context_length", "generate_max_len", "n_samples_per_prompt", "temperature"}
    | {"top_p", "rl_coef", "advantage_estimator", "min_completion_prefix", "mask_thinking_ce"}
)
"""`ebft:` keys of Axolotl's strided mode, which its structured mode ignores."""


class EBFTArgs(BaseModel):
    """The `ebft:` block (Axolotl's `EBFTConfig` names and defaults), structured mode."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["structured", "strided"] = Field(
        "structured", description="structured: prompts and ground truths (strided: not here)."
    )
    feature_layers: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        min_length=1,
        description="Depths whose hidden states are the features, as fractions of the layers.",
    )
    embed_method: Literal["last_token", "mean_pooling", "completion_mean", "concat"] = Field(
        "last_token", description="How a sequence's token features are pooled."
    )
    use_whitening: bool = Field(False, description="Whiten each group's embeddings (SVD).")
    alignment_coef: float = Field(1.0, description="Weight of the similarity to the truth.")
    diversity_coef: float = Field(1.0, description="Weight of the similarity to the others.")
    ce_coef: float = Field(0.0, description="Strided mode's cross-entropy weight (unused).")
    adaptive_max_tokens: bool = Field(
        True, description="vLLM's per-batch completion length (unused with generate)."
    )
    gt_length_multiplier: float = Field(1.5, ge=0.1, description="For adaptive_max_tokens.")

    @model_validator(mode="before")
    @classmethod
    def _structured_only(cls, data: Any) -> Any:
        """Strided mode is refused; its keys are dropped with a warning in structured mode,
        where Axolotl ignores them too."""
        if not isinstance(data, dict):
            return data
        if data.get("mode") == "strided":
            raise ValueError(
                "ebft.mode: strided (block-parallel rollouts at anchors in unstructured "
                "documents) is not implemented here; use mode: structured with prompts and "
                "ground truths (e.g. type: ebft_opencode.transform)"
            )
        for key in sorted(STRIDED_KEYS & set(data)):
            log.warning("config key 'ebft.%s' is for strided mode: it is IGNORED", key)
        if data.get("ce_coef"):
            log.warning(
                "config key 'ebft.ce_coef' adds a cross-entropy term in strided mode only (as "
                "in Axolotl): it is IGNORED"
            )
        return {key: value for key, value in data.items() if key not in STRIDED_KEYS}

    @model_validator(mode="after")
    def _fractions(self) -> EBFTArgs:
        bad = [f for f in self.feature_layers if not 0 <= f <= 1]
        if bad:
            raise ValueError(
                f"ebft.feature_layers: {bad} are not fractions of the depth between 0 and 1 "
                "(0.5: the middle layer)"
            )
        return self


def check_ebft(cfg: Any, trl: Any) -> None:
    """What `rl: ebft` refuses beside GRPO's own checks (ValueError, a config error)."""
    if trl.reward_funcs or trl.reward_weights:
        raise ValueError(
            "trl.reward_funcs: rl: ebft scores completions by feature matching only (as "
            "Axolotl's EBFT does); remove reward_funcs and reward_weights, or use rl: grpo"
        )
    if trl.sync_ref_model:
        raise ValueError(
            "trl.sync_ref_model: rl: ebft's feature network is the model training started "
            "from and stays frozen; set sync_ref_model: false"
        )
