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
    """The `ebft:` block (Axolotl's `EBFTConfig` names and defaults)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["structured", "strided"] = Field(
        "structured",
        description="structured: prompts and ground truths (GRPO); strided: rollouts at "
        "anchors inside documents.",
    )
    feature_layers: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        min_length=1,
        description="Depths whose hidden states are the features, as fractions of the layers.",
    )
    embed_method: Literal["last_token", "mean_pooling", "completion_mean", "concat"] = Field(
        "last_token",
        description="How a sequence's token features are pooled (strided: last_token or "
        "mean_pooling).",
    )
    use_whitening: bool = Field(False, description="Whiten each group's embeddings (SVD).")
    alignment_coef: float = Field(1.0, description="Weight of the similarity to the truth.")
    diversity_coef: float = Field(1.0, description="Weight of the similarity to the others.")
    ce_coef: float = Field(
        0.0, ge=0, description="Strided: weight of the documents' cross-entropy."
    )
    adaptive_max_tokens: bool = Field(
        True, description="vLLM's per-batch completion length (unused with generate)."
    )
    gt_length_multiplier: float = Field(1.5, ge=0.1, description="For adaptive_max_tokens.")
    stride: int = Field(8, ge=1, description="Strided: tokens between anchors.")
    context_length: int = Field(8, ge=1, description="Strided: where the first anchor is.")
    generate_max_len: int = Field(8, ge=1, description="Strided: tokens sampled per block.")
    n_samples_per_prompt: int = Field(4, ge=1, description="Strided: rollouts per document.")
    temperature: float = Field(0.6, ge=0, description="Strided: sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Strided: nucleus sampling mass.")
    rl_coef: float = Field(1.0, ge=0, description="Strided: weight of the policy gradient.")
    advantage_estimator: Literal["rloo", "group_norm", "reinforce"] = Field(
        "rloo", description="Strided: advantages across a document's samples."
    )
    min_completion_prefix: int = Field(
        0, ge=0, description="Strided: completion tokens before the first anchor."
    )
    mask_thinking_ce: bool = Field(
        False,
        description="Strided: ebft_reasoning.transform_strided leaves <think>...</think> "
        "unlabelled.",
    )

    @model_validator(mode="before")
    @classmethod
    def _mode_keys(cls, data: Any) -> Any:
        """In structured mode the strided keys (and `ce_coef`) do nothing, as in Axolotl: a
        warning names each one set."""
        if not isinstance(data, dict) or data.get("mode", "structured") != "structured":
            return data
        for key in sorted(STRIDED_KEYS & set(data)):
            log.warning("config key 'ebft.%s' is for strided mode: it is IGNORED", key)
        if data.get("ce_coef"):
            log.warning(
                "config key 'ebft.ce_coef' adds a cross-entropy term in strided mode only (as "
                "in Axolotl): it is IGNORED"
            )
        return data

    @model_validator(mode="after")
    def _checks(self) -> EBFTArgs:
        bad = [f for f in self.feature_layers if not 0 <= f <= 1]
        if bad:
            raise ValueError(
                f"ebft.feature_layers: {bad} are not fractions of the depth between 0 and 1 "
                "(0.5: the middle layer)"
            )
        if self.mode == "strided" and self.embed_method not in ("last_token", "mean_pooling"):
            raise ValueError(
                f"ebft.embed_method: {self.embed_method} pools a completion; strided mode "
                "pools each block: last_token or mean_pooling"
            )
        if self.mode == "strided" and self.n_samples_per_prompt == 1:
            if self.diversity_coef:
                log.warning(
                    "ebft.n_samples_per_prompt 1: no other sample to be diverse from; "
                    "diversity_coef is taken as 0 (as in Axolotl)"
                )
            if self.advantage_estimator == "rloo":
                log.warning(
                    "ebft.n_samples_per_prompt 1: rloo needs two samples; the advantage is "
                    "the reward (reinforce), as in Axolotl"
                )
        return self


STRIDED_TYPE = "ebft_strided"
"""The dataset type of strided mode's rows (a transform's tokens)."""


def check_strided(cfg: Any, ebft: EBFTArgs) -> None:
    """What strided mode refuses (ValueError, a config error)."""
    needed = ebft.context_length + ebft.generate_max_len
    if cfg.sequence_len < needed:
        raise ValueError(
            f"sequence_len: {cfg.sequence_len} leaves no block: strided EBFT needs at least "
            f"context_length + generate_max_len = {needed} tokens"
        )
    for key in ("sample_packing", "pretraining_dataset"):
        if getattr(cfg, key, None):
            raise ValueError(
                f"{key}: not with ebft.mode: strided (its rows, read from datasets:, are "
                "rolled out one by one)"
            )
    for entry in getattr(cfg, "test_datasets", None) or []:
        if getattr(entry, "type", None) != STRIDED_TYPE:
            raise ValueError(
                f"test_datasets: type: {entry.type} is not a strided EBFT dataset: give one of "
                "Axolotl's strided transforms or your own module.function transform"
            )
    for entry in getattr(cfg, "datasets", None) or []:
        if getattr(entry, "type", None) != STRIDED_TYPE:
            raise ValueError(
                f"datasets: type: {entry.type} is not a strided EBFT dataset: give one of "
                "Axolotl's strided transforms (ebft_strided_structured.transform, "
                "ebft_strided_chat.transform, ebft_reasoning.transform_strided) or your own "
                "module.function transform"
            )


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
