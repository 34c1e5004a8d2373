"""GRPO's run: prompt groups, generation, rewards, advantages and the clipped surrogate loss.

Everything follows TRL 1.16's `GRPOTrainer` (`_generate_single_turn`, `_calculate_rewards`,
`_generate_and_score_completions`, `_compute_loss`):

- a step's window holds `micro_batch_size * gradient_accumulation_steps` rows, each prompt
  repeated `num_generations` times in a row (TRL's `RepeatSampler`), and the window repeated
  `num_iterations` times; the completions of the whole window are generated at once with
  `model.generate` (sampling, cut after the first EOS) and scored together;
- rewards: each function's output weighted by `reward_weights` and summed (None: not scored),
  centred on its group's mean and divided by the group's (or the batch's) std + 1e-4 as
  `scale_rewards` says;
- the loss: the clipped surrogate on token (or sequence) importance ratios against the
  generating policy, plus `beta` times the k3 estimate of the KL to the reference, normalised
  per `loss_type` (grpo: each sequence's mean, then the mean over sequences; bnpo: the micro-
  batch's tokens; dr_grpo: rows x max_completion_length; dapo: the window's tokens); log-probs
  are of the logits divided by `temperature`.

With `num_iterations` > 1 the generation (with its log-probs under the generating policy, the
"old" ones) is kept for that many optimizer steps and saved in checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from axolotl_weave import (
    DataError,
    PluginError,
    collate,
    epoch_order,
    hookimpl,
    process_share,
    read_rows,
)

from axolotl_weave_plugins.rl._grpo_formats import PROMPT_COLUMNS, is_conversation
from axolotl_weave_plugins.rl._grpo_rewards import load_reward_function, reward_name, scored
from axolotl_weave_plugins.rl._objective import AgainstReference
from axolotl_weave_plugins.rl._reward_models import RewardModelScorer

log = logging.getLogger("axolotl_weave")

STATE_FOLDER = "grpo"
"""Where a checkpoint keeps the buffered generation (`num_iterations` > 1)."""


# --- advantages --------------------------------------------------------------------------------


def nanstd(tensor: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The standard deviation ignoring NaNs, Bessel-corrected (TRL's `nanstd`)."""
    mean = torch.nanmean(tensor, dim=dim, keepdim=True)
    variance = torch.nanmean((tensor - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(tensor), dim=dim, keepdim=True)
    correction = count / (count - 1)
    correction = torch.where(count > 1, correction, torch.full_like(correction, float("nan")))
    std = torch.sqrt(variance * correction)
    return std.squeeze() if dim is None else std.squeeze(dim)


@dataclass
class Scored:
    """The advantages of a batch of completions and TRL's reward metrics."""

    advantages: torch.Tensor  # (B,)
    metrics: dict[str, float]


def score(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    names: list[str],
    num_generations: int,
    scale_rewards: str,
    aggregation: str = "sum_then_normalize",
) -> Scored:
    """Group-normalised advantages of rewards `(B, functions)` (NaN: not scored), the rows in
    groups of `num_generations` consecutive completions of one prompt, as TRL aggregates
    several functions: `sum_then_normalize` (weighted sum, then each group's mean taken away
    and divided by the std `scale_rewards` names), or `normalize_then_sum` (GDPO: each
    function normalised within its groups, their weighted sum normalised over the batch)."""
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    if aggregation == "normalize_then_sum":
        functions = rewards_per_func.shape[1]
        grouped = rewards_per_func.view(-1, num_generations, functions)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1).unsqueeze(1)
        normalised = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, functions)
        combined = (normalised * weights.unsqueeze(0)).nansum(dim=1)
        combined[unscorable] = torch.nan
        std = nanstd(combined).expand_as(combined) if combined.numel() > 1 else combined * 0
        advantages = (combined - torch.nanmean(combined)) / (std + 1e-4)
    else:
        grouped = rewards.view(-1, num_generations)
        mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations, dim=0)
        if scale_rewards == "batch":
            std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else rewards * 0
        else:
            std = nanstd(grouped, dim=1).repeat_interleave(num_generations, dim=0)
        advantages = rewards - mean
        if scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
    is_std_zero = torch.isclose(std, torch.zeros_like(std))
    advantages = torch.nan_to_num(advantages, nan=0.0)
    metrics: dict[str, float] = {}
    for i, name in enumerate(names):
        metrics[f"rewards/{name}/mean"] = torch.nanmean(rewards_per_func[:, i]).item()
        metrics[f"rewards/{name}/std"] = nanstd(rewards_per_func[:, i]).item()
    metrics["reward"] = torch.nanmean(rewards).item()
    metrics["reward_std"] = nanstd(rewards).item()
    metrics["frac_reward_zero_std"] = is_std_zero.float().mean().item()
    return Scored(advantages, metrics)


# --- the loss ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSettings:
    """The `trl:` keys the loss reads."""

    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    loss_type: str = "dapo"
    importance_sampling_level: str = "token"
    max_completion_length: int = 512
    temperature: float = 1.0


def completion_logps(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-token log-probabilities of the completion tokens, their entropies) under `model`,
    of the logits divided by `temperature` (TRL's `_get_per_token_logps_and_entropies`)."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    keep = completion_ids.shape[1]
    logits = model(
        input_ids=input_ids, attention_mask=mask, use_cache=False, logits_to_keep=keep + 1
    ).logits
    logits = logits[:, -keep - 1 : -1].float() / temperature
    logps = logits.log_softmax(-1)
    token_logps = logps.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    if not entropy:
        return token_logps, None
    with torch.no_grad():
        entropies = -(logps.exp() * logps).sum(-1)
    return token_logps, entropies


def surrogate_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    settings: LossSettings,
    accumulation: int,
    window_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's loss as TRL's `_compute_loss` returns it (already divided for the
    `accumulation` micro-batches of the step; dapo divides by `window_tokens`, the completion
    tokens of the window over every process divided by the processes) and its metrics."""
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    log_ratio = logps - old
    if settings.importance_sampling_level == "sequence":
        weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        weights = weights.unsqueeze(-1)
    else:
        weights = log_ratio
    coef_1 = torch.exp(weights)
    coef_2 = torch.clamp(coef_1, 1 - settings.epsilon_low, 1 + settings.epsilon_high)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    per_token_kl = None
    if settings.beta != 0.0:
        assert ref_logps is not None
        diff = ref_logps - logps
        per_token_kl = torch.exp(diff) - diff - 1
        per_token = per_token + settings.beta * per_token_kl
    kind = settings.loss_type
    if kind == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
    elif kind == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0) / accumulation
    elif kind == "dr_grpo":
        size = per_token.size(0) * settings.max_completion_length
        loss = (per_token * mask).sum() / size / accumulation
    elif kind == "dapo":
        tokens = mask.sum() if window_tokens is None else window_tokens
        loss = (per_token * mask).sum() / tokens.clamp(min=1.0)
    else:
        raise ValueError(f"unknown loss_type {kind}")

    def masked_mean(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # one value per sequence
            return x.sum() / x.shape[0]
        return (x * mask).sum() / mask.sum().clamp(min=1.0)

    low = (coef_1 < 1 - settings.epsilon_low) & (adv < 0)
    high = (coef_1 > 1 + settings.epsilon_high) & (adv > 0)
    metrics = {
        "clip_ratio/low_mean": masked_mean(low.float()),
        "clip_ratio/high_mean": masked_mean(high.float()),
        "clip_ratio/region_mean": masked_mean((low | high).float()),
    }
    if per_token_kl is not None:
        metrics["kl"] = masked_mean(per_token_kl.detach())
    return loss, metrics


# --- the reference -------------------------------------------------------------------------------


@torch.no_grad()
def sync_reference(model: Any, reference: Any, alpha: float) -> None:
    """Move the reference toward the policy: each weight becomes `alpha` times the policy's
    plus `1 - alpha` times its own (TR-DPO's mixup, TRL's `SyncRefModelCallback`). Under
    DeepSpeed ZeRO-3 the partitioned weights are gathered first, as TRL does."""
    pairs = list(zip(reference.parameters(), model.parameters(), strict=True))
    if any(hasattr(p, "ds_id") for pair in pairs for p in pair):
        import deepspeed

        every = [p for pair in pairs for p in pair]
        with deepspeed.zero.GatheredParameters(every, modifier_rank=0):
            if deepspeed.comm.get_rank() == 0:
                for target, source in pairs:
                    target.mul_(1.0 - alpha).add_(source, alpha=alpha)
        return
    for target, source in pairs:
        target.mul_(1.0 - alpha).add_(source.to(target.dtype), alpha=alpha)


# --- generation ----------------------------------------------------------------------------------


def left_pad(rows: list[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of rows left-padded to the longest."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), value, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, longest - len(row) :] = row
        mask[i, longest - len(row) :] = 1
    return ids, mask


def cut_at_eos(completion_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """The mask of each completion up to and including its first EOS (TRL's)."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))
    eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long)
    eos_idx = eos_idx.to(completion_ids.device)
    found = is_eos.any(dim=1)
    eos_idx[found] = is_eos.int().argmax(dim=1)[found]
    positions = torch.arange(is_eos.size(1), device=completion_ids.device)
    return (positions.expand(is_eos.size(0), -1) <= eos_idx.unsqueeze(1)).long()


def gather_rows(strategy: Any, tensor: torch.Tensor) -> torch.Tensor:
    """Every process's rows of `tensor` (the same shape on each), in process order."""
    if strategy.num_processes == 1:
        return tensor
    rows = tensor.shape[0]
    full = tensor.new_zeros((rows * strategy.num_processes, *tensor.shape[1:]))
    start = strategy.process_index * rows
    full[start : start + rows] = tensor
    return strategy.reduce(full, "sum")


# --- batches -------------------------------------------------------------------------------------


@dataclass
class PromptGroups:
    """A `BatchPlan` of GRPO rows: each step takes `prompts_per_step` prompts of a seeded
    order, each repeated `num_generations` times in a row, the whole window `num_iterations`
    times, cut into micro-batches of `micro_batch_size` rows (TRL's `RepeatSampler`). Prompts
    that cannot fill a last step are left out of the epoch, as TRL leaves them."""

    dataset: Any
    micro_batch_size: int
    accumulation: int
    num_generations: int
    num_iterations: int
    pad_token_id: int
    columns: dict[str, Any]
    seed: int
    rank: int
    world_size: int
    shuffle: bool = True  # False with curriculum_sampling: the prompts in their order

    @property
    def prompts_per_step(self) -> int:
        return self.micro_batch_size * self.accumulation // self.num_generations

    @property
    def steps_per_epoch(self) -> int:
        return (len(self.dataset) // self.world_size) // self.prompts_per_step

    @property
    def micro_batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accumulation * self.num_iterations

    def micro_batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, Any]]:
        order = epoch_order(len(self.dataset), self.seed, epoch, self.rank, self.world_size)
        if not self.shuffle:  # curriculum_sampling: this process's share, in order
            order = sorted(epoch_order(len(self.dataset), 0, 0, self.rank, self.world_size))
        per_step = self.prompts_per_step
        number = 0
        for step in range(self.steps_per_epoch):
            prompts = order[step * per_step : (step + 1) * per_step]
            rows = [index for index in prompts for _ in range(self.num_generations)]
            for _ in range(self.num_iterations):
                for first in range(0, len(rows), self.micro_batch_size):
                    if number >= start:
                        chunk = rows[first : first + self.micro_batch_size]
                        batch = read_rows(self.dataset, chunk, self.columns)
                        yield collate(batch, self.pad_token_id, columns=self.columns)
                    number += 1


@dataclass
class HeldOutGroups:
    """A `BatchPlan` of GRPO's eval rows: this process's share of the prompts in order, each
    repeated `num_generations` times in a row, in micro-batches of `prompts_per_batch` whole
    groups (a group's advantages are its own), the same number on every process."""

    dataset: Any
    prompts_per_batch: int
    num_generations: int
    pad_token_id: int
    columns: dict[str, Any]
    rank: int
    world_size: int

    def prompts(self) -> list[int]:
        """This process's prompts (every process gets as many; the remainder is left out)."""
        everyone = list(range(len(self.dataset)))
        return process_share(everyone, self.prompts_per_batch, self.rank, self.world_size)

    @property
    def micro_batches_per_epoch(self) -> int:
        return -(-len(self.prompts()) // self.prompts_per_batch)

    def micro_batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, Any]]:
        prompts = self.prompts()
        for number, first in enumerate(range(0, len(prompts), self.prompts_per_batch)):
            if number >= start:
                chosen = prompts[first : first + self.prompts_per_batch]
                rows = [index for index in chosen for _ in range(self.num_generations)]
                batch = read_rows(self.dataset, rows, self.columns)
                yield collate(batch, self.pad_token_id, columns=self.columns)


@dataclass
class Sampled:
    """The completions generated for a batch of prompts: left-padded prompt ids and mask, the
    completions right-padded (mask: up to the first EOS, and none for a truncated completion
    under `mask_truncated_completions`), their ids as lists, as the reward functions get them
    (text, or an assistant message for conversational prompts), and which were truncated."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    id_lists: list[list[int]]
    completions: list[Any]
    truncated: torch.Tensor
    lengths: torch.Tensor


# --- the run -------------------------------------------------------------------------------------


class GRPOObjective(AgainstReference):
    """The reference (when `beta` > 0, or the run needs it) and the loss settings; the step
    does the work. Its unit is a completion; held out, it is measured on completions generated
    for the eval prompts (`measures`, by `run`)."""

    ROWS = "prompt_input_ids"
    unit = "completion"

    def __init__(self, cfg: Any, model: Any, run: GRPORun | None = None) -> None:
        self.run = run
        trl = cfg.trl
        high = trl.epsilon_high if trl.epsilon_high is not None else trl.epsilon
        self.settings = LossSettings(
            beta=trl.beta,
            epsilon_low=trl.epsilon,
            epsilon_high=high,
            loss_type=trl.loss_type,
            importance_sampling_level=trl.importance_sampling_level,
            max_completion_length=trl.max_completion_length,
            temperature=trl.temperature,
        )
        frozen = trl.beta > 0 or (run is not None and run.needs_frozen_model)
        super().__init__(model, cfg.adapter, frozen)
        if run is not None:
            run.objective = self

    def compute(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        raise PluginError(
            "rl: grpo: its loss needs completions generated for the batch: the training step "
            "and measures() generate them; a plain call of the objective cannot"
        )

    def measures(
        self, model: Any, batch: dict[str, Any], strategy: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A held-out micro-batch of whole prompt groups: completions generated and scored as
        in a step (`GRPORun.held_out`)."""
        if self.run is None:
            raise PluginError("rl: grpo: the objective was built without its run")
        return self.run.held_out(strategy, model, self, batch)

    @staticmethod
    def summarize(metrics: dict[str, float], units: int) -> dict[str, float]:
        """TRL's `reward_std` over every held-out completion (Bessel-corrected), from the
        means of the reward and of its square."""
        metrics = dict(metrics)
        squared = metrics.pop("reward_squared", None)
        if squared is not None and "reward" in metrics and units > 1:
            variance = max(squared - metrics["reward"] ** 2, 0.0) * units / (units - 1)
            metrics["reward_std"] = variance**0.5
        return metrics


class GRPORun:
    """The per-run plugin of `rl: grpo` (registered by `configure`): it keeps the tokenizer (to
    decode completions), the reward functions, and the buffered generation."""

    needs_frozen_model = False
    """Whether the objective keeps the model training starts from even with `beta` 0 (a
    frozen copy, or the base under an adapter): EBFT's feature network."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.objective: GRPOObjective | None = None  # set when the objective is built
        self.trl = cfg.trl
        self.tokenizer: Any = None
        self.functions: list[Callable[..., Any]] = [
            load_reward_function(path, cfg) for path in self.trl.reward_funcs
        ]
        self.names = [reward_name(f) for f in self.functions]
        weights = self.trl.reward_weights or [1.0] * len(self.functions)
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.buffer: list[dict[str, Any]] | None = None
        self.buffer_metrics: dict[str, float] = {}
        self.state: Any = None  # the training state, given to reward functions as TRL gives it
        self.logged: dict[str, list[float]] = {}  # log_metric's values since the last flush
        self.extra: dict[str, list[Any]] = {}  # log_extra's columns of the current generation

    # -- hooks ------------------------------------------------------------------------------------
    @hookimpl(wrapper=True)
    def load_tokenizer(self, cfg: Any) -> Any:
        """Keep the tokenizer, to decode completions for the reward functions."""
        tokenizer = yield
        self.tokenizer = tokenizer
        return tokenizer

    @hookimpl
    def build_loss(self, cfg: Any, model: Any) -> Any:
        """GRPO's objective (the reference, when `beta` > 0)."""
        return GRPOObjective(cfg, model, run=self)

    @hookimpl(tryfirst=True)
    def plan_batches(
        self,
        cfg: Any,
        dataset: Any,
        evaluation: bool,
        strategy: Any,
        columns: dict[str, Any],
        pad_token_id: int,
    ) -> PromptGroups | None:
        """Prompt groups (see `PromptGroups`) for the training set; whole groups of the eval
        prompts, in order (`HeldOutGroups`), for the eval set."""
        if evaluation:
            wanted = {name: pad for name, pad in columns.items() if name in PROMPT_COLUMNS}
            size = cfg.eval_batch_size or cfg.micro_batch_size
            return HeldOutGroups(
                dataset,
                max(1, size // self.trl.num_generations),
                self.trl.num_generations,
                pad_token_id,
                wanted,
                strategy.process_index,
                strategy.num_processes,
            )
        if not hasattr(dataset, "__len__"):
            raise DataError("rl: grpo cannot read a streamed dataset: give datasets: files")
        wanted = {name: pad for name, pad in columns.items() if name in PROMPT_COLUMNS}
        plan = PromptGroups(
            dataset,
            cfg.micro_batch_size,
            cfg.gradient_accumulation_steps,
            self.trl.num_generations,
            self.trl.num_iterations,
            pad_token_id,
            wanted,
            cfg.seed,
            strategy.process_index,
            strategy.num_processes,
            shuffle=not getattr(cfg, "curriculum_sampling", False),
        )
        if plan.steps_per_epoch == 0:
            raise DataError(
                f"rl: grpo: {len(dataset)} prompt(s) for {strategy.num_processes} process(es) "
                f"cannot fill one step of {plan.prompts_per_step} prompt(s) (micro_batch_size x "
                "gradient_accumulation_steps / trl.num_generations); add prompts or lower them"
            )
        return plan

    @hookimpl
    def training_step(
        self, cfg: Any, strategy: Any, model: Any, objective: Any, window: list, state: Any
    ) -> dict[str, float]:
        """Generate and score (every `num_iterations` steps), then the loss over the window."""
        if not isinstance(objective, GRPOObjective):
            raise PluginError(
                f"rl: grpo: another plugin replaced the GRPO objective "
                f"({type(objective).__name__}); remove the loss/kernel option that wraps it"
            )
        objective.place(strategy)
        self.state = state
        steps = self.trl.ref_model_sync_steps
        if self.trl.sync_ref_model and state.global_step and state.global_step % steps == 0:
            sync_reference(
                strategy.unwrap(model), objective.reference, self.trl.ref_model_mixup_alpha
            )
        if self.buffer is None or state.global_step % self.trl.num_iterations == 0:
            self.buffer, self.buffer_metrics = self.generate_and_score(
                strategy, model, objective, window, state
            )
        return self.optimize(strategy, model, objective, self.buffer)

    @hookimpl
    def save_checkpoint_state(self, state: Any, folder: Path, strategy: Any) -> None:
        """The buffered generation, when later steps reuse it (`num_iterations` > 1)."""
        if self.trl.num_iterations == 1 or self.buffer is None:
            return
        target = folder / STATE_FOLDER
        target.mkdir(parents=True, exist_ok=True)
        payload = {"buffer": self.buffer, "metrics": self.buffer_metrics}
        torch.save(payload, target / f"buffer-{strategy.process_index}.pt")

    @hookimpl
    def load_checkpoint_state(self, state: Any, folder: Path, strategy: Any) -> None:
        """Put back the buffered generation a resumed step reuses."""
        path = folder / STATE_FOLDER / f"buffer-{strategy.process_index}.pt"
        if self.trl.num_iterations == 1 or not path.is_file():
            return
        payload = torch.load(path, map_location=strategy.device, weights_only=False)
        self.buffer, self.buffer_metrics = payload["buffer"], payload["metrics"]

    # -- generation and rewards -------------------------------------------------------------------
    def eos_ids(self, model: Any) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if configured is not None:
            ids |= set(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    @torch.no_grad()
    def generate(self, strategy: Any, model: Any, prompts: list[torch.Tensor]) -> tuple:
        """(prompt ids, prompt mask, completion ids, completion mask): left-padded prompts and
        the sampled completions, right-padded, each cut after its first EOS."""
        from transformers import GenerationConfig

        trl, tokenizer = self.trl, self.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        unwrapped = strategy.unwrap(model)
        eos = self.eos_ids(unwrapped)
        settings = {
            "max_new_tokens": trl.max_completion_length,
            "do_sample": True,
            "pad_token_id": pad,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": eos,
            "temperature": trl.temperature,
            "top_p": trl.top_p,
            "top_k": trl.top_k or None,
            "min_p": trl.min_p,
            "repetition_penalty": trl.repetition_penalty,
        }
        config = GenerationConfig(**{**settings, **(trl.generation_kwargs or {})})
        ids, mask = left_pad(prompts, pad)
        ids, mask = ids.to(strategy.device), mask.to(strategy.device)
        with strategy.autocast():
            out = unwrapped.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        completions = out[:, ids.shape[1] :]
        if completions.shape[1] == 0:  # nothing generated: one padding token, masked
            completions = completions.new_full((ids.shape[0], 1), pad)
            return ids, mask, completions, torch.zeros_like(completions)
        completion_mask = cut_at_eos(completions, eos)
        completions = completions.masked_fill(completion_mask == 0, pad)
        return ids, mask, completions, completion_mask

    def rewards(
        self,
        strategy: Any,
        prompts: list[Any],
        completions: list[Any],
        ids: list[list[int]],
        columns: list,
    ) -> torch.Tensor:
        """`(B, functions)` rewards; None becomes NaN (not scored). A reward model is placed by
        the strategy the first time. Besides the row's columns, the functions get what TRL
        gives them: `trainer_state` (`global_step`, `max_steps`, `epoch`; None outside training,
        in `weave evaluate`), `log_metric(name, value)` (a scalar logged with the step's
        metrics, averaged over the calls) and `log_extra(column, values)` (a column of
        `completions.jsonl`, one value per completion)."""
        keys = sorted({key for row in columns for key in row})
        kwargs = {key: [row.get(key) for row in columns] for key in keys}
        kwargs = {k: v for k, v in kwargs.items() if k not in ("prompts", "completions")}
        kwargs["trainer_state"] = self.state
        kwargs["log_metric"] = self.log_metric
        kwargs["log_extra"] = self.log_extra
        out = torch.zeros(len(prompts), len(self.functions), dtype=torch.float32)
        for i, (function, name) in enumerate(zip(self.functions, self.names, strict=True)):
            if isinstance(function, RewardModelScorer):
                function.place(strategy)
            values = scored(
                function,
                name,
                len(prompts),
                prompts=prompts,
                completions=completions,
                completion_ids=ids,
                **kwargs,
            )
            out[:, i] = torch.tensor(values, dtype=torch.float32)
        return out

    def log_metric(self, name: str, value: float) -> None:
        """TRL's `log_metric` for reward functions: a scalar for this step's metrics."""
        self.logged.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list[Any]) -> None:
        """TRL's `log_extra` for reward functions: a column of the completions table."""
        self.extra.setdefault(column, []).extend(values)

    def flush_logged(self) -> dict[str, float]:
        """The means of what the reward functions logged since the last flush (this
        process's calls)."""
        means = {name: sum(values) / len(values) for name, values in self.logged.items()}
        self.logged = {}
        return means

    def sample(self, strategy: Any, model: Any, window: list[dict[str, Any]]) -> tuple:
        """(the window's completions (`Sampled`), its prompts as written, their other columns,
        the rows of each micro-batch)."""
        prompts_ids: list[torch.Tensor] = []
        prompts: list[Any] = []
        columns: list[dict[str, Any]] = []
        sizes = []
        for batch in window:
            ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
            sizes.append(ids.shape[0])
            prompts_ids += [row[m.bool()].cpu() for row, m in zip(ids, mask, strict=True)]
            prompts += [json.loads(text) for text in batch["grpo_prompt"]]
            columns += [json.loads(text) for text in batch["grpo_columns"]]
        prompt_ids, prompt_mask, completion_ids, completion_mask = self.generate(
            strategy, model, prompts_ids
        )
        lengths = completion_mask.sum(-1)
        id_lists = [
            row[m.bool()].tolist() for row, m in zip(completion_ids, completion_mask, strict=True)
        ]
        texts = self.tokenizer.batch_decode(id_lists, skip_special_tokens=True)
        if is_conversation(prompts[0]):
            completions: list[Any] = [[{"role": "assistant", "content": t}] for t in texts]
        else:
            completions = list(texts)
        eos = self.eos_ids(strategy.unwrap(model))
        truncated = torch.tensor([not ids or ids[-1] not in eos for ids in id_lists])
        if self.trl.mask_truncated_completions:
            completion_mask = completion_mask * (~truncated).long().unsqueeze(1).to(
                completion_mask.device
            )
        sampled = Sampled(
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            id_lists,
            completions,
            truncated,
            lengths,
        )
        return sampled, prompts, columns, sizes

    @torch.no_grad()
    def held_out(
        self, strategy: Any, model: Any, objective: GRPOObjective, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One held-out micro-batch (whole prompt groups): completions sampled as in a step,
        scored, and the step's loss on them with the generating policy as the old one (ratio
        1), summed over the completions (the mean loss times their count), with TRL's metrics
        summed over the completions: `reward` (and its square, for `reward_std`),
        `rewards/<function>/mean`, `completions/mean_length`, `completions/clipped_ratio`,
        `frac_reward_zero_std` (and `kl` when `beta` > 0). A reward no function gave (None)
        counts as 0 in the sums."""
        trl, device = self.trl, strategy.device
        sampled, prompts, columns, _ = self.sample(strategy, model, [batch])
        rewards = self.rewards(strategy, prompts, sampled.completions, sampled.id_lists, columns)
        rewards = rewards.to(device)
        weights = self.weights.to(device)
        scored = score(
            rewards,
            weights,
            self.names,
            trl.num_generations,
            trl.scale_rewards,
            trl.multi_objective_aggregation,
        )
        args = (sampled.prompt_ids, sampled.prompt_mask, sampled.completion_ids)
        mask = sampled.completion_mask
        with strategy.autocast():
            logps, _ = completion_logps(model, *args, mask, trl.temperature)
            ref_logps = None
            if trl.beta != 0.0:
                reference, context = objective.reference_model(model)
                with context:
                    ref_logps, _ = completion_logps(reference, *args, mask, trl.temperature)
        loss, step_metrics = surrogate_loss(
            logps, None, ref_logps, scored.advantages, mask, objective.settings, 1
        )
        n = len(prompts)
        combined = (rewards * weights).nansum(dim=1)
        sums = {
            "reward": combined.sum(),
            "reward_squared": (combined**2).sum(),  # for summarize's reward_std
            "completions/mean_length": sampled.lengths.float().sum(),
            "completions/clipped_ratio": sampled.truncated.float().sum(),
            "frac_reward_zero_std": torch.tensor(scored.metrics["frac_reward_zero_std"] * n),
        }
        for i, name in enumerate(self.names):
            sums[f"rewards/{name}/mean"] = rewards[:, i].nansum()
        if "kl" in step_metrics:
            sums["kl"] = step_metrics["kl"] * n
        metrics: dict[str, Any] = {name: value.to(device) for name, value in sums.items()}
        for name, values in self.logged.items():  # a mean over the calls, not the completions
            metrics[name] = (torch.tensor(sum(values)), torch.tensor(len(values)))
        self.logged, self.extra = {}, {}
        return loss * n, metrics

    def generate_and_score(
        self, strategy: Any, model: Any, objective: GRPOObjective, window: list, state: Any
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The window's completions with their advantages (and the old and reference
        log-probabilities when needed), split into its micro-batches; the metrics."""
        trl = self.trl
        sampled, prompts, columns, sizes = self.sample(strategy, model, window)
        prompt_ids, prompt_mask = sampled.prompt_ids, sampled.prompt_mask
        completion_ids, completion_mask = sampled.completion_ids, sampled.completion_mask
        completions, id_lists = sampled.completions, sampled.id_lists
        lengths, truncated = sampled.lengths, sampled.truncated

        old_logps = ref_logps = None
        with torch.no_grad():
            if trl.num_iterations > 1:
                old_logps = self.logps_in_chunks(
                    model, prompt_ids, prompt_mask, completion_ids, completion_mask, sizes
                )
            if trl.beta != 0.0:
                reference, context = objective.reference_model(model)
                with context:
                    ref_logps = self.logps_in_chunks(
                        reference, prompt_ids, prompt_mask, completion_ids, completion_mask, sizes
                    )

        local = self.rewards(strategy, prompts, completions, id_lists, columns)
        local = local.to(strategy.device)
        everyone = gather_rows(strategy, local)
        scored = score(
            everyone,
            self.weights.to(strategy.device),
            self.names,
            trl.num_generations,
            trl.scale_rewards,
            trl.multi_objective_aggregation,
        )
        start = strategy.process_index * len(prompts)
        advantages = scored.advantages[start : start + len(prompts)]

        all_lengths = gather_rows(strategy, lengths.float())
        all_truncated = gather_rows(strategy, truncated.float().to(strategy.device))
        terminated = all_lengths[all_truncated == 0]
        if terminated.numel() == 0:
            terminated = torch.zeros(1, device=all_lengths.device)
        metrics = {
            **scored.metrics,
            **self.flush_logged(),
            "completions/mean_length": all_lengths.mean().item(),
            "completions/min_length": all_lengths.min().item(),
            "completions/max_length": all_lengths.max().item(),
            "completions/clipped_ratio": all_truncated.mean().item(),
            "completions/mean_terminated_length": terminated.mean().item(),
        }
        window_tokens = gather_rows(strategy, completion_mask.sum().reshape(1).float()).sum()
        if trl.log_completions and strategy.is_main_process:
            self.log_completions(state, prompts, completions, local, advantages)
        self.extra = {}

        micro_batches = []
        first = 0
        for size in sizes:
            part = slice(first, first + size)
            first += size
            micro_batches.append(
                {
                    "prompt_ids": prompt_ids[part],
                    "prompt_mask": prompt_mask[part],
                    "completion_ids": completion_ids[part],
                    "completion_mask": completion_mask[part],
                    "advantages": advantages[part],
                    "old_logps": None if old_logps is None else old_logps[part],
                    "ref_logps": None if ref_logps is None else ref_logps[part],
                    "window_tokens": window_tokens / strategy.num_processes,
                }
            )
        return micro_batches, metrics

    def logps_in_chunks(
        self,
        model: Any,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        sizes: list[int],
    ) -> torch.Tensor:
        """Per-token log-probabilities, one micro-batch of rows at a time."""
        parts, first = [], 0
        for size in sizes:
            part = slice(first, first + size)
            first += size
            logps, _ = completion_logps(
                model,
                prompt_ids[part],
                prompt_mask[part],
                completion_ids[part],
                completion_mask[part],
                self.trl.temperature,
            )
            parts.append(logps)
        return torch.cat(parts)

    def log_completions(
        self,
        state: Any,
        prompts: list[Any],
        completions: list[Any],
        rewards: torch.Tensor,
        advantages: torch.Tensor,
    ) -> None:
        """Append this generation's prompts, completions, rewards and advantages to
        `output_dir/completions.jsonl` (TRL's completions table)."""
        path = Path(self.cfg.output_dir) / "completions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
                record = {
                    "step": state.global_step + 1,
                    "prompt": prompt,
                    "completion": completion,
                    "rewards": {
                        name: None if torch.isnan(rewards[i, k]) else float(rewards[i, k])
                        for k, name in enumerate(self.names)
                    },
                    "advantage": float(advantages[i]),
                }
                extra = {k: v[i] for k, v in self.extra.items() if i < len(v)}
                if extra:  # the reward functions' log_extra columns
                    record["extra"] = extra
                out.write(json.dumps(record, default=str) + "\n")

    # -- the optimisation ------------------------------------------------------------------------
    def optimize(
        self, strategy: Any, model: Any, objective: GRPOObjective, buffer: list[dict[str, Any]]
    ) -> dict[str, float]:
        """Forward and backward over the buffered micro-batches; TRL's metrics, averaged over
        the micro-batches (and processes)."""
        device = strategy.device
        settings = objective.settings
        summed = torch.zeros((), device=device)
        sums: dict[str, torch.Tensor] = {}
        for i, part in enumerate(buffer):
            last = i == len(buffer) - 1
            sync = contextlib.nullcontext() if last else strategy.no_sync(model)
            with sync:
                with strategy.autocast():
                    logps, entropies = completion_logps(
                        model,
                        part["prompt_ids"],
                        part["prompt_mask"],
                        part["completion_ids"],
                        part["completion_mask"],
                        settings.temperature,
                        entropy=True,
                    )
                    loss, metrics = surrogate_loss(
                        logps,
                        part["old_logps"],
                        part["ref_logps"],
                        part["advantages"],
                        part["completion_mask"],
                        settings,
                        len(buffer),
                        part["window_tokens"],
                    )
                strategy.backward(loss)
            summed += loss.detach().float()
            mask = part["completion_mask"].float()
            assert entropies is not None
            metrics["entropy"] = (entropies * mask).sum() / mask.sum().clamp(min=1.0)
            for name, value in metrics.items():
                sums[name] = sums.get(name, torch.zeros((), device=device)) + value.float()
        names = sorted(sums)
        stacked = torch.stack([summed, *(sums[name] / len(buffer) for name in names)])
        reduced = strategy.reduce(stacked, "sum") / strategy.num_processes
        out = {"loss": float(reduced[0])}
        out.update({name: float(v) for name, v in zip(names, reduced[1:], strict=True)})
        out.update(self.buffer_metrics)
        return out
