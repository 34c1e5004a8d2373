"""`rl: grpo`: Group Relative Policy Optimization, as TRL's `GRPOTrainer` (Axolotl's `trl:` keys).

Each step samples `trl.num_generations` completions per prompt with the model being trained
(`model.generate`, `temperature`, `top_p`, at most `max_completion_length` tokens, cut after the
first EOS), scores each with the `trl.reward_funcs` (importable `module.function` paths, called
as ``f(prompts=..., completions=..., completion_ids=..., **columns)``, the row's other columns as
keyword arguments; or reward models, a folder or a hub id `owner/name` of a sequence classifier
that scores prompt + completion as TRL's does, `_reward_models`; weighted by `reward_weights`),
and turns the rewards into advantages
normalised within each prompt's group (`scale_rewards`). The loss is TRL's clipped surrogate
(`epsilon`, `epsilon_high`; token or sequence importance ratios, `importance_sampling_level`)
plus `beta` times the per-token KL (k3 estimator) to a reference, normalised as `loss_type`
says (grpo, dr_grpo, dapo, bnpo). With `beta: 0` (TRL's default) no reference is kept; else the
reference is the base with the adapter disabled under `adapter:`, or a frozen copy.

Batches follow TRL: the `micro_batch_size * gradient_accumulation_steps` rows of a step are
completions, `num_generations` per prompt, so a step takes that many rows divided by
`num_generations` prompts, and `num_generations` must divide it. `num_iterations` reuses a
generation for that many optimizer steps (TRL's mu), with the generating policy's log-probs as
the old ones; the generation is saved in checkpoints, so a run resumes exactly.

The dataset `type: grpo` holds prompts: a conversation (a list of messages, rendered with the
chat template and its generation prompt) or a string, in `prompt` (`field_prompt`); the row's
other columns go to the reward functions. Axolotl's GRPO dataset transforms (its
`type: rewards.oai_gsm8k_transform`) are given as `type: grpo` with
`transform: rewards.oai_gsm8k_transform`. It logs TRL's metrics: `reward`, `reward_std`,
`rewards/<function>/mean` and `/std`, `frac_reward_zero_std`, `completions/mean_length` (and
min, max, `clipped_ratio`, `mean_terminated_length`), `kl` (when `beta` > 0), `entropy`,
`clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean`; with
`log_completions: true` every generation is appended to `output_dir/completions.jsonl`.

Held out (`val_set_size`, `test_datasets`, and `weave evaluate`), each eval prompt gets
`num_generations` completions sampled as in a step (micro-batches of whole groups:
`eval_batch_size`, else `micro_batch_size`, divided by `num_generations`), scored by the same
functions; it logs `eval_reward`, `eval_rewards/<function>/mean`, `eval_completions/mean_length`,
`eval_completions/clipped_ratio` (and `eval_kl`) as means per completion, `eval_reward_std`
over every completion, and `eval_loss`, the step's loss on them with the sampling policy as the
old one, as TRL's evaluation does.

Not supported (each refused with a message): vLLM generation (`use_vllm`), sample packing,
streamed datasets, TRL's other loss types. Unlike TRL, a prompt group never spans processes
(each process needs whole groups), and the completions of a step are not shuffled between its
micro-batches.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any, Literal

from axolotl_weave import PluginConfig, hookimpl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from axolotl_weave_plugins.rl._ebft_config import METHOD as EBFT
from axolotl_weave_plugins.rl._ebft_config import (
    STRIDED_TYPE,
    EBFTArgs,
    check_ebft,
    check_strided,
)
from axolotl_weave_plugins.rl._ebft_strided_format import strided_format
from axolotl_weave_plugins.rl._ebft_transforms import (
    AXOLOTL_TYPES,
    REFUSED_TYPES,
    STRIDED_TYPES,
    path_of,
)
from axolotl_weave_plugins.rl._grpo_formats import grpo_format

PLUGIN_KIND = "method"

log = logging.getLogger("axolotl_weave")

UNUSED_KEYS = frozenset(
    {"num_completions_to_print", "use_liger_loss", "reward_num_workers", "replay_recompute_logps"}
    | {"reroll_max_groups", "skip_zero_advantage_batches", "prefetch_depth"}
    | {"streaming_min_groups"}
)
"""`trl:` keys of Axolotl that change nothing trained here, whatever their value (besides
`vllm_*` without vLLM): how fast a loss or the rewards are computed, or options of features
that are off."""

UNSUPPORTED_UNLESS = {
    "generation_batch_size": (
        None,
        "completions are generated once per optimizer step, "
        "micro_batch_size x gradient_accumulation_steps of them",
    ),
    "rollout_func": (None, "generation is the model's own generate"),
    "use_data_producer": (False, "Axolotl's asynchronous data producer needs vLLM"),
    "async_prefetch": (False, "rollouts are generated on-policy, in the step"),
    "streaming_partial_batch": (None, "a step's rewards are scored at once"),
    "off_policy_mask_threshold": (None, "off-policy sequence masking is not implemented"),
    "use_bias_correction_kl": (None, "the KL has no importance-sampling correction here"),
    "replay_buffer_size": (0, "no replay buffer is kept"),
    "reroll_start_fraction": (1.0, "zero-signal prompts are not re-rolled"),
}
"""Axolotl `trl:` keys for features not implemented here: (the value that leaves the feature
off, what happens instead). At that value (or None) the key is dropped with a warning; any
other value is refused."""

BUILT_IN_TRANSFORMS = {**AXOLOTL_TYPES, **STRIDED_TYPES}
"""Axolotl's EBFT `type:` names (both modes) -> the function of `_ebft_transforms` for each."""

METHOD = "grpo"
"""The `rl:` value this plugin trains, and the `type:` of its prompt datasets."""

METHODS = (METHOD, "gdpo", EBFT)
"""The `rl:` values it trains: `gdpo` (Axolotl's name) is GRPO whose reward functions combine
by `normalize_then_sum` unless `trl.multi_objective_aggregation` says otherwise; `ebft` is GRPO
whose one reward is feature matching (`_ebft`, its `ebft:` block)."""


class GRPOArgs(BaseModel):
    """The `trl:` block of `rl: grpo` (TRL's `GRPOConfig` names and defaults)."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.0, ge=0, description="KL coefficient; 0: no reference model.")
    num_generations: int = Field(8, description="Completions per prompt (at least 2).")
    max_completion_length: int = Field(512, gt=0, description="Most tokens a completion has.")
    epsilon: float = Field(0.2, ge=0, description="Lower clipping range of the ratio.")
    epsilon_high: float | None = Field(
        None, ge=0, description="Upper clipping range (default: epsilon; DAPO: 0.28)."
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "dapo", description="How token losses are normalised (TRL's names)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group's std, the batch's, or none."
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling probability mass.")
    top_k: int = Field(0, ge=0, description="Sample from the k likeliest tokens (0: all).")
    repetition_penalty: float = Field(1.0, gt=0, description="Generation repetition penalty.")
    min_p: float | None = Field(
        None, ge=0, le=1, description="Least probability, relative to the likeliest token's."
    )
    generation_kwargs: dict[str, Any] | None = Field(
        None, description="More transformers GenerationConfig settings for the sampling."
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None,
        description="Chat template arguments for the prompts (e.g. enable_thinking: false), "
        "over the top-level chat_template_kwargs.",
    )
    sync_ref_model: bool = Field(
        False,
        description="Move the reference toward the policy every ref_model_sync_steps steps "
        "(TR-DPO's mixup; a full fine-tune with beta > 0).",
    )
    ref_model_mixup_alpha: float = Field(
        0.9, ge=0, le=1, description="The policy's share in each reference sync."
    )
    ref_model_sync_steps: int = Field(64, ge=1, description="Steps between reference syncs.")
    reward_funcs: list[str] = Field(
        default_factory=list,
        description="Reward functions: importable module.function paths, or reward models (a "
        "folder or a hub id owner/name: a sequence classifier scoring prompt + completion).",
    )
    reward_weights: list[float] | None = Field(
        None, description="Weight of each reward function (default 1 each)."
    )
    multi_objective_aggregation: Literal["sum_then_normalize", "normalize_then_sum"] = Field(
        "sum_then_normalize",
        description="How several reward functions combine: weighted sum then group "
        "normalisation, or each normalised in its groups then summed (GDPO).",
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="Importance ratios per token, or per sequence (GSPO)."
    )
    num_iterations: int = Field(
        1, ge=1, description="Optimizer steps per generation (TRL's mu), with old log-probs."
    )
    mask_truncated_completions: bool = Field(
        False, description="Leave completions cut at max_completion_length out of the loss."
    )
    log_completions: bool = Field(
        False, description="Append every completion to output_dir/completions.jsonl."
    )
    use_vllm: bool = Field(False, description="Generate with vLLM (not supported yet).")

    @model_validator(mode="before")
    @classmethod
    def _unused_keys(cls, data: Any) -> Any:
        """Axolotl's vLLM server keys (`vllm_*`), `UNUSED_KEYS` and the `UNSUPPORTED_UNLESS`
        keys left off change nothing trained when vLLM is off: dropped with a warning, so an
        Axolotl config still runs; an `UNSUPPORTED_UNLESS` feature turned on is refused."""
        if not isinstance(data, dict):
            return data
        if data.get("use_vllm"):  # before its vllm_* keys could be called unknown
            raise ValueError(vllm_refusal())
        for key, (off, instead) in UNSUPPORTED_UNLESS.items():
            if data.get(key) not in (None, off):
                raise ValueError(
                    f"trl.{key}: {data[key]!r} is not supported by rl: grpo here ({instead}); "
                    f"remove it or set it to {off}"
                )
        unused = sorted(
            k for k in data if k.startswith("vllm_") or k in UNUSED_KEYS or k in UNSUPPORTED_UNLESS
        )
        for key in unused:
            log.warning("config key 'trl.%s' does nothing here: it is IGNORED", key)
        return {k: v for k, v in data.items() if k not in unused}

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _boolean_scale(cls, value: Any) -> Any:
        """TRL's booleans: true is `group`, false is `none`."""
        return (
            {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value
        )


class GRPOSettings(PluginConfig):
    """The `trl:` key (Axolotl's block of TRL options), read by `rl: grpo`."""

    trl: GRPOArgs | None = Field(
        None,
        description="rl: grpo options (TRL's GRPOConfig names): beta, num_generations, "
        "max_completion_length, epsilon, epsilon_high, loss_type, scale_rewards, temperature, "
        "top_p, top_k, min_p, repetition_penalty, generation_kwargs, chat_template_kwargs, "
        "reward_funcs, reward_weights, multi_objective_aggregation, sync_ref_model, "
        "ref_model_mixup_alpha, ref_model_sync_steps, "
        "importance_sampling_level, num_iterations, mask_truncated_completions, "
        "log_completions, use_vllm.",
        json_schema_extra={"affects_data": True},  # chat_template_kwargs renders the prompts
    )
    ebft: EBFTArgs | None = Field(
        None,
        description="rl: ebft options (Axolotl's names, structured mode): feature_layers, "
        "embed_method (last_token, mean_pooling, completion_mean, concat), use_whitening, "
        "alignment_coef, diversity_coef.",
    )

    @model_validator(mode="after")
    def _grpo_keys(self) -> GRPOSettings:
        rl = getattr(self, "rl", None)
        if rl != EBFT and self.ebft is not None and self.ebft.model_fields_set:
            raise ValueError(f"ebft: holds rl: ebft options; it does not apply to rl: {rl}")
        if rl not in METHODS:
            if self.trl is not None and self.trl.model_fields_set:
                raise ValueError(f"trl: holds rl: grpo options; it does not apply to rl: {rl}")
            for entry in getattr(self, "datasets", None) or []:
                if getattr(entry, "type", None) == METHOD:
                    raise ValueError(
                        "datasets: type: grpo holds prompts to generate from: set rl: grpo"
                    )
                if getattr(entry, "type", None) == STRIDED_TYPE:
                    raise ValueError(
                        f"datasets: type: {STRIDED_TYPE} holds strided EBFT rows: set rl: ebft "
                        "with ebft: {mode: strided}"
                    )
            return self
        if self.trl is None:
            self.trl = GRPOArgs()
        if rl == "gdpo" and "multi_objective_aggregation" not in self.trl.model_fields_set:
            self.trl.multi_objective_aggregation = "normalize_then_sum"
        if rl == EBFT:
            self.ebft = self.ebft or EBFTArgs()
            self._ebft_datasets()
            if self.ebft.mode == "strided":
                if self.trl.model_fields_set:
                    log.warning("config key 'trl' is read by ebft's structured mode: IGNORED")
                check_strided(self, self.ebft)
                from axolotl_weave_plugins.rl._grpo_rewards import import_object

                for entry in getattr(self, "datasets", None) or []:
                    import_object(entry.option("transform"), "datasets: transform")
                return self
            check_ebft(self, self.trl)
        check_grpo(self, self.trl, needs_reward_funcs=rl != EBFT)
        return self

    def _ebft_datasets(self) -> None:
        """Axolotl's EBFT transforms refused here, or given for the other mode."""
        strided = self.ebft is not None and self.ebft.mode == "strided"
        for entry in getattr(self, "datasets", None) or []:
            transform = entry.option("transform")
            why = REFUSED_TYPES.get(transform)
            if why:
                raise ValueError(f"datasets: type: {transform}: {why}")
            if transform in STRIDED_TYPES and not strided:
                raise ValueError(
                    f"datasets: type: {transform} makes strided EBFT rows: set ebft: "
                    "{mode: strided}"
                )
            if transform in AXOLOTL_TYPES and strided:
                raise ValueError(
                    f"datasets: type: {transform} makes prompts for ebft's structured mode; "
                    "strided mode takes ebft_strided_structured.transform, "
                    "ebft_strided_chat.transform or your own transform"
                )


def vllm_refusal() -> str:
    """Why `trl.use_vllm: true` is refused."""
    if importlib.util.find_spec("vllm") is None:
        return (
            "trl.use_vllm: true needs vLLM, which is not installed; and vLLM generation is "
            "not supported by rl: grpo here yet: set use_vllm: false (generation uses the "
            "model's own generate)"
        )
    return (
        "trl.use_vllm: vLLM generation is not supported by rl: grpo here yet: set "
        "use_vllm: false (generation uses the model's own generate)"
    )


def check_grpo(cfg: Any, trl: GRPOArgs, needs_reward_funcs: bool = True) -> None:
    """Every refusal of `rl: grpo`, before anything loads (ValueError, shown as a config error);
    `trl.use_vllm` is refused by the `trl:` block's own validation, before its `vllm_*` keys."""
    if trl.sync_ref_model and trl.beta == 0:
        raise ValueError(
            "trl.sync_ref_model: with beta 0 no reference is kept, so there is nothing to sync; "
            "set beta above 0 or sync_ref_model: false"
        )
    if trl.sync_ref_model and getattr(cfg, "adapter", None):
        raise ValueError(
            "trl.sync_ref_model: with an adapter the reference is the base with the adapter "
            "disabled, not a copy to sync (as in TRL); use a full fine-tune or sync_ref_model: "
            "false"
        )
    if trl.num_generations < 2:
        raise ValueError(
            f"trl.num_generations: GRPO needs at least 2 completions per prompt to compare "
            f"them (got {trl.num_generations})"
        )
    mbs = getattr(cfg, "micro_batch_size", 1) or 1
    gas = getattr(cfg, "gradient_accumulation_steps", 1) or 1
    if (mbs * gas) % trl.num_generations:
        raise ValueError(
            f"trl.num_generations: {trl.num_generations} must divide the completions of a step, "
            f"micro_batch_size x gradient_accumulation_steps = {mbs} x {gas} = {mbs * gas} "
            "(each process takes whole groups of completions of one prompt); change one of them"
        )
    if needs_reward_funcs and not trl.reward_funcs:
        raise ValueError(
            "trl.reward_funcs: rl: grpo needs at least one reward function (a module.function "
            "path, e.g. rewards.correctness, or a reward model's folder or hub id)"
        )
    if trl.reward_weights is not None and len(trl.reward_weights) != len(trl.reward_funcs):
        raise ValueError(
            f"trl.reward_weights: {len(trl.reward_weights)} weight(s) for "
            f"{len(trl.reward_funcs)} reward function(s): give one weight per function"
        )
    if getattr(cfg, "sample_packing", False):
        raise ValueError(
            "sample_packing: true cannot be used with rl: grpo: its rows are prompts to "
            "generate from, never packed; set sample_packing: false"
        )
    for entry in getattr(cfg, "datasets", None) or []:
        kind = getattr(entry, "type", None)
        if kind != METHOD:
            raise ValueError(
                f"datasets: type: {kind} is not a prompt dataset: rl: grpo trains on "
                "type: grpo (a prompt column: chat messages or a string)"
            )
    from axolotl_weave_plugins.rl._grpo_rewards import import_object, load_reward_function

    for path in trl.reward_funcs:
        load_reward_function(path)
    for entry in getattr(cfg, "datasets", None) or []:
        if entry.option("transform"):
            import_object(entry.option("transform"), "datasets: transform")


@hookimpl
def register_rl_methods(register: Callable[[str], None]) -> None:
    """`rl: grpo`, `rl: gdpo` and `rl: ebft`."""
    for name in METHODS:
        register(name)


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `trl:` block."""
    return GRPOSettings


@hookimpl
def adapt_config_data(data: dict[str, Any], known_keys: frozenset[str]) -> list[str] | None:
    """Axolotl names a GRPO dataset's transform as its type (`type: rewards.prompt_transform`):
    under `rl: grpo`, an entry whose type is a `module.function` path whose module imports from
    the working directory becomes `type: grpo` with that `transform:`."""
    if data.get("rl") not in METHODS:
        return None
    from axolotl_weave_plugins.rl._grpo_rewards import is_importable_path

    for key in ("datasets", "test_datasets"):
        for entry in data.get(key) or []:
            kind = entry.get("type") if isinstance(entry, dict) else None
            if not isinstance(kind, str) or "transform" in entry:
                continue
            strided = data["rl"] == EBFT and (data.get("ebft") or {}).get("mode") == "strided"
            into = STRIDED_TYPE if strided else METHOD
            if data["rl"] == EBFT and kind in BUILT_IN_TRANSFORMS:
                if (kind in STRIDED_TYPES) == strided:
                    entry["type"], entry["transform"] = into, path_of(BUILT_IN_TRANSFORMS[kind])
                else:  # given for the other mode: named as written, refused with the reason
                    entry["type"], entry["transform"] = into, kind
            elif (data["rl"] == EBFT and kind in REFUSED_TYPES) or is_importable_path(kind):
                entry["type"], entry["transform"] = into, kind
    return None


@hookimpl
def register_dataset_formats(register: Callable[[Any], None]) -> None:
    """`type: grpo`: prompts; `type: ebft_strided`: strided EBFT's rows."""
    register(grpo_format())
    register(strided_format())


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """Under `rl: grpo` (or `gdpo`, `ebft`), the run's GRPO plugin: objective, batches, step,
    checkpoint state."""
    rl = getattr(cfg, "rl", None)
    if rl not in METHODS:
        return
    if rl == EBFT and cfg.ebft.mode == "strided":
        from axolotl_weave_plugins.rl._ebft_strided import StridedEBFTRun

        register(StridedEBFTRun(cfg), "ebft-strided-run")
        return
    from axolotl_weave_plugins.rl._ebft import EBFTRun
    from axolotl_weave_plugins.rl._grpo import GRPORun

    register((EBFTRun if rl == EBFT else GRPORun)(cfg), "grpo-run")
