"""`rl: ebft` with `ebft.mode: strided` (Axolotl's `AxolotlStridedEBFTTrainer`): Energy-Based
Fine-Tuning on whole documents, with no prompt to generate from.

For each row (a document of S tokens, or a prompt and its completion) anchors are placed every
`stride` tokens from `anchor = context_length` (structured rows: from the completion's start
plus `min_completion_prefix`, at least `context_length`); there are `blocks = (S -
generate_max_len - anchor) // stride + 1`. At anchor b the model continues the document from
its first `anchor + b * stride` tokens with `generate_max_len` sampled tokens (`temperature`,
`top_p`), all blocks at once: the generated tokens are appended after the document step by step
(step s of every block, then step s + 1), and an attention mask lets each generated token see
the document before its anchor (at most `S - generate_max_len` tokens), itself and its block's
earlier tokens, with position ids continuing its context. `n_samples_per_prompt` rollouts are
made per document.

A frozen feature network (the base under an adapter, else a frozen copy) reads the document and
the rollouts with the same mask: the hidden states at `feature_layers` are L2-normalised one
layer at a time and concatenated; each block's generated tokens and the document's own tokens
at the same places (the ground truth) are pooled (`last_token`, or `mean_pooling`), whitened
across the samples when `use_whitening`, and each sample's block gets EBFT's reward
`2 alignment_coef cos(gen, truth) - 2 diversity_coef mean dot(gen, other samples' gen)`. The
advantages are per block across the samples (`advantage_estimator`: `rloo`, leave-one-out;
`group_norm`; `reinforce`, the reward itself), and the loss of a micro-batch is

    rl_coef * mean over generated tokens of (-log p(token) * advantage of its block)
    + ce_coef * mean cross-entropy of the document's tokens (structured rows: its completion's)

Differences from Axolotl, on purpose: a generated token gets the advantage of its own block
(Axolotl spreads the blocks' advantages over the tokens in block order while the tokens lie in
step order, so most tokens get another block's); rows are not padded to `sequence_len` (Axolotl's
transforms pad them, so its anchors also run over padding); each row of a micro-batch is rolled
out on its own length. The passes use sdpa (or eager) attention with a dense mask, whatever
`attn_implementation` says (Axolotl uses flex attention on a GPU). Held out (`val_set_size`,
`test_datasets`, `weave evaluate`), each document is rolled out and scored as in a step; the
eval loss is the mean over documents of each one's loss, with the `ebft/*` metrics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from axolotl_weave import IGNORE_INDEX, PluginError, hookimpl

from axolotl_weave_plugins.rl._ebft import layer_indices, layer_states, whiten
from axolotl_weave_plugins.rl._objective import AgainstReference

log = logging.getLogger("axolotl_weave")


ROW_METRICS = (
    "ebft/alignment",
    "ebft/diversity",
    "ebft/cfm_loss",
    "ebft/mean_reward",
    "ebft/num_blocks",
    "ebft/advantages_std",
)
"""The metrics of each rolled-out row (means over the rows of a step), besides the losses."""


def strided_layout(
    total: int,
    length: int,
    anchor: int,
    steps: int,
    gen_len: int,
    stride: int,
    blocks: int,
    device: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(which key each query may attend to, `(total, total)` booleans; the position ids,
    `(total,)`) of a document of `length` tokens followed by `steps` generated tokens of each of
    `blocks` blocks, in step order (Axolotl's `build_strided_dense_mask_and_positions`)."""
    allowed = torch.zeros(total, total, dtype=torch.bool, device=device)
    allowed[:length, :length] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    positions = torch.arange(total, device=device)
    generated = torch.arange(steps * blocks, device=device)
    step, block = generated // blocks, generated % blocks
    rows = length + generated
    positions[rows] = block * stride + anchor + step
    ends = (block * stride + anchor).clamp(max=length - gen_len)
    document = torch.arange(length, device=device)
    allowed[rows.unsqueeze(1), document.unsqueeze(0)] = document.unsqueeze(0) < ends.unsqueeze(1)
    same_block = (block.unsqueeze(1) == block.unsqueeze(0)) & (
        step.unsqueeze(0) < step.unsqueeze(1)
    )
    allowed[rows.unsqueeze(1), rows.unsqueeze(0)] = same_block
    allowed[rows, rows] = True
    return allowed, positions


def additive(allowed: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """The `(rows, 1, T, T)` additive mask of `allowed` (0 where attended, the dtype's min
    elsewhere), as eager and sdpa attention take a 4D mask."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.expand(rows, 1, *allowed.shape)


def mask_dtype(model: Any) -> torch.dtype:
    """The dtype of the additive mask: the model's floating dtype (float32 over quantized
    weights)."""
    dtype = next(model.parameters()).dtype
    return dtype if dtype.is_floating_point else torch.float32


@contextlib.contextmanager
def dense_mask_attention(model: Any) -> Iterator[None]:
    """sdpa attention while inside, unless the model runs eager or sdpa (or a wrapper of them,
    as SSMax's `ssmax_sdpa`): the strided mask is a dense 4D mask, which flash and flex
    attention do not take."""
    config = getattr(model, "config", None)
    saved = getattr(config, "_attn_implementation", None)
    dense = ("eager", "sdpa")
    if config is None or saved in dense or str(saved).endswith(tuple(f"_{d}" for d in dense)):
        yield
        return
    config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        config._attn_implementation = saved


def logits_at(
    model: Any, ids: torch.Tensor, layout: dict[str, torch.Tensor], keep: torch.Tensor
) -> torch.Tensor:
    """The model's logits at the sequence positions `keep` (`logits_to_keep`, so that the head
    runs on those only; the full logits indexed where a model does not take it), `layout`
    giving the attention mask and position ids."""
    inputs = {"input_ids": ids, **layout}
    try:
        return model(**inputs, logits_to_keep=keep, use_cache=False).logits
    except TypeError:
        return model(**inputs, use_cache=False).logits[:, keep]


def sample(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row of `(..., V)` logits: greedy at temperature 0, else sampled at the
    temperature from the smallest set of likeliest tokens holding `top_p` of the mass."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = probs.sort(dim=-1, descending=True)
        beyond = ordered.cumsum(dim=-1) > top_p
        beyond[..., 1:] = beyond[..., :-1].clone()
        beyond[..., 0] = False
        probs = probs.masked_fill(torch.zeros_like(beyond).scatter(-1, order, beyond), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1).reshape(probs.shape[:-1])


def advantages(rewards: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-block advantages of `(samples, blocks)` rewards across the samples."""
    samples = rewards.shape[0]
    if estimator == "rloo" and samples > 1:
        return rewards - (rewards.sum(dim=0, keepdim=True) - rewards) / (samples - 1)
    if estimator == "group_norm" and samples > 1:
        return (rewards - rewards.mean(dim=0, keepdim=True)) / (
            rewards.std(dim=0, keepdim=True) + 1e-8
        )
    return rewards


def strided_rewards(
    features: torch.Tensor,
    length: int,
    anchor: int,
    blocks: int,
    ebft: Any,
    diversity_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`(samples, blocks)` rewards and the `ebft/*` metrics from the feature network's
    `(samples, T, D)` features of the rolled-out sequences (see the module)."""
    gen_len = ebft.generate_max_len
    samples, width = features.shape[0], features.shape[-1]
    truth = features[:, anchor:length].unfold(1, gen_len, ebft.stride).permute(0, 1, 3, 2)
    generated = features[:, length : length + blocks * gen_len]
    generated = generated.reshape(samples, gen_len, blocks, width).transpose(1, 2)
    if ebft.embed_method == "mean_pooling":
        truth, generated = truth.mean(dim=2), generated.mean(dim=2)
    else:
        truth, generated = truth[:, :, -1], generated[:, :, -1]
    if ebft.use_whitening:
        pairs = [whiten(generated[:, b], truth[:, b]) for b in range(blocks)]
        generated = torch.stack([g for g, _ in pairs], dim=1)
        truth = torch.stack([t for _, t in pairs], dim=1)
    alignment = 2 * F.cosine_similarity(generated, truth, dim=-1)
    diversity = torch.zeros_like(alignment)
    if samples > 1:
        by_block = generated.transpose(0, 1)  # (blocks, samples, D)
        similarity = by_block @ by_block.transpose(1, 2)
        similarity = similarity - torch.diag_embed(torch.diagonal(similarity, 0, 1, 2))
        diversity = 2 * (similarity.sum(dim=-1) / (samples - 1)).transpose(0, 1)
    rewards = ebft.alignment_coef * alignment - diversity_coef * diversity
    cfm = ((generated.mean(dim=0) - truth[0]) ** 2).sum(dim=-1).mean()
    metrics = {
        "ebft/alignment": alignment.mean(),
        "ebft/diversity": diversity.mean(),
        "ebft/cfm_loss": cfm,
        "ebft/mean_reward": rewards.mean(),
    }
    return rewards, metrics


def token_blocks(blocks: int, gen_len: int, device: Any = None) -> torch.Tensor:
    """The block of each generated token, as they lie after the document: step by step, every
    block's token of a step before the next step's."""
    return torch.arange(blocks * gen_len, device=device) % blocks


class StridedObjective(AgainstReference):
    """The feature network (the start model: the base under an adapter, else a frozen copy);
    the step (`StridedEBFTRun.training_step`) computes the loss. Held out, its unit is a
    document with at least one block, rolled out and scored as in a step (`measures`)."""

    ROWS = "input_ids"
    unit = "document"

    def __init__(self, cfg: Any, model: Any, run: StridedEBFTRun) -> None:
        super().__init__(model, cfg.adapter, True)
        self.run = run

    def count(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's rows long enough for a block."""
        device = batch["input_ids"].device
        return torch.tensor(float(len(self.run.plans(batch)[1])), device=device)

    def measures(
        self, model: Any, batch: dict[str, Any], strategy: Any
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """A held-out micro-batch: each document's loss (its RL and CE means, weighted as in a
        step) and metrics, summed over the documents rolled out."""
        return self.run.held_out(strategy, model, self, batch)

    def compute(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        raise PluginError(
            "rl: ebft (strided): its loss needs rollouts generated in the step; a plain call "
            "of the objective cannot make them"
        )


class StridedEBFTRun:
    """The per-run plugin of strided EBFT: its objective and its training step."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.ebft = cfg.ebft
        samples = self.ebft.n_samples_per_prompt
        self.diversity_coef = self.ebft.diversity_coef if samples > 1 else 0.0
        self.estimator = self.ebft.advantage_estimator
        if samples == 1 and self.estimator == "rloo":
            self.estimator = "reinforce"
        self.warned_short = False

    @hookimpl
    def build_loss(self, cfg: Any, model: Any) -> StridedObjective:
        """The strided objective (its feature network)."""
        return StridedObjective(cfg, model, self)

    @hookimpl
    def training_step(
        self, strategy: Any, model: Any, objective: Any, window: list, state: Any
    ) -> dict[str, float]:
        """Roll out, score and train on each row of each micro-batch (see the module)."""
        if not isinstance(objective, StridedObjective):
            raise PluginError(
                f"rl: ebft (strided): another plugin replaced its objective "
                f"({type(objective).__name__}); remove the loss/kernel option that wraps it"
            )
        objective.place(strategy)
        device = strategy.device
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            sync = contextlib.nullcontext() if last else strategy.no_sync(model)
            with sync:
                metrics = self.micro_batch(strategy, model, objective, batch, len(window))
            for name, value in metrics.items():
                sums[name] = sums.get(name, torch.zeros((), device=device)) + value
        names = sorted(sums)
        stacked = torch.stack([sums[name] / len(window) for name in names])
        reduced = strategy.reduce(stacked, "sum") / strategy.num_processes
        return {name: float(value) for name, value in zip(names, reduced, strict=True)}

    def rows(self, batch: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each row's tokens and labels without its padding."""
        found = []
        for ids, labels, mask in zip(
            batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
        ):
            length = int(mask.sum())
            found.append((ids[:length], labels[:length]))
        return found

    def anchor_of(self, labels: torch.Tensor) -> int:
        """Where a row's anchors start: after its prompt (the tokens before its first label)
        and `min_completion_prefix`, at least `context_length`."""
        trained = (labels != IGNORE_INDEX).nonzero()
        prompt = int(trained[0]) if len(trained) else len(labels)
        if prompt == 0:
            return self.ebft.context_length
        return max(prompt + self.ebft.min_completion_prefix, self.ebft.context_length)

    def plans(self, batch: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
        """(every row's (tokens, labels, anchor, blocks), those with at least one block)."""
        ebft = self.ebft
        plans = []
        for ids, labels in self.rows(batch):
            anchor = self.anchor_of(labels)
            blocks = (len(ids) - ebft.generate_max_len - anchor) // ebft.stride + 1
            plans.append((ids, labels, anchor, blocks))
        return plans, [plan for plan in plans if plan[3] > 0]

    def micro_batch(
        self, strategy: Any, model: Any, objective: StridedObjective, batch: dict, parts: int
    ) -> dict[str, torch.Tensor]:
        """Backward of one micro-batch's loss (divided by `parts`, the window's micro-batches:
        the window's loss is their mean): the RL term is the mean over its generated tokens,
        the CE term over its document tokens; its metrics, means over its rows."""
        ebft, device = self.ebft, strategy.device
        plans, live = self.plans(batch)
        action_tokens = sum(ebft.n_samples_per_prompt * b * ebft.generate_max_len for *_, b in live)
        ce_tokens = sum(
            ebft.n_samples_per_prompt * int(self.ce_mask(ids, labels).sum())
            for ids, labels, *_ in live
        )
        zero = torch.zeros((), device=device)
        summed = dict.fromkeys(ROW_METRICS, zero)
        rl = ce = zero
        for ids, labels, anchor, blocks in plans:
            if blocks <= 0:
                self.skip(strategy, model, ids, anchor)
                continue
            rl_sum, ce_sum, metrics = self.row_terms(
                strategy, model, objective, ids, labels, anchor, blocks
            )
            row_rl = rl_sum / (max(action_tokens, 1) * parts)
            row_ce = ce_sum / (max(ce_tokens, 1) * parts)
            strategy.backward(ebft.rl_coef * row_rl + ebft.ce_coef * row_ce)
            rl, ce = rl + row_rl.detach(), ce + row_ce.detach()
            summed = {name: summed[name] + metrics[name] for name in ROW_METRICS}
        out = {name: value / max(len(live), 1) for name, value in summed.items()}
        out["ebft/rl_loss"], out["ebft/ce_loss"] = rl * parts, ce * parts
        out["loss"] = ebft.rl_coef * rl * parts + ebft.ce_coef * ce * parts
        out["ebft/skipped_rows"] = torch.tensor(float(len(plans) - len(live)), device=device)
        return out

    @torch.no_grad()
    def held_out(
        self, strategy: Any, model: Any, objective: StridedObjective, batch: dict
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(the loss summed over the batch's documents with a block, each document's own RL
        and CE means weighted as in a step; its metrics summed over them)."""
        objective.place(strategy)
        ebft, device = self.ebft, strategy.device
        _, live = self.plans(batch)
        loss = torch.zeros((), device=device)
        sums: dict[str, torch.Tensor] = {}
        for ids, labels, anchor, blocks in live:
            rl_sum, ce_sum, metrics = self.row_terms(
                strategy, model, objective, ids, labels, anchor, blocks
            )
            samples = ebft.n_samples_per_prompt
            rl = rl_sum / (samples * blocks * ebft.generate_max_len)
            ce = ce_sum / max(samples * int(self.ce_mask(ids, labels).sum()), 1)
            loss = loss + ebft.rl_coef * rl + ebft.ce_coef * ce
            for name, value in {**metrics, "ebft/rl_loss": rl, "ebft/ce_loss": ce}.items():
                sums[name] = sums.get(name, torch.zeros((), device=device)) + value
        return loss, sums

    def layout(
        self, model: Any, sequence: torch.Tensor, length: int, anchor: int, steps: int, blocks: int
    ) -> dict[str, torch.Tensor]:
        """The additive mask and position ids of rolled-out `sequence` rows: a document of
        `length` tokens, then `steps` tokens of each of `blocks` blocks."""
        ebft, rows = self.ebft, sequence.shape[0]
        allowed, positions = strided_layout(
            sequence.shape[1], length, anchor, steps, ebft.generate_max_len, ebft.stride, blocks,
            sequence.device,
        )  # fmt: skip
        return {
            "attention_mask": additive(allowed, rows, mask_dtype(model)),
            "position_ids": positions.expand(rows, -1),
        }

    def ce_mask(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The document positions (predicting tokens 1..S-1) whose cross-entropy counts: the
        labelled ones of a structured row (one whose first token is not labelled), all of an
        unstructured one."""
        trained = labels != IGNORE_INDEX
        if bool(trained.any()) and not bool(trained[0]):
            return trained[1:]
        return torch.ones(len(ids) - 1, dtype=torch.bool, device=ids.device)

    def skip(self, strategy: Any, model: Any, ids: torch.Tensor, anchor: int) -> None:
        """A row too short for one block trains nothing (as in Axolotl), said once."""
        if not self.warned_short:
            log.warning(
                "rl: ebft (strided): a row of %d tokens is too short for one block (anchors "
                "from %d, generate_max_len %d): it trains nothing",
                len(ids),
                anchor,
                self.ebft.generate_max_len,
            )
            self.warned_short = True
        self.connect(strategy, model, ids)

    def connect(self, strategy: Any, model: Any, ids: torch.Tensor) -> None:
        """A zero loss through the model for a row with no block, so that every process
        reduces the same gradients."""
        with strategy.autocast():
            logits = model(input_ids=ids.unsqueeze(0), use_cache=False).logits
        strategy.backward(logits.float().sum() * 0.0)

    @torch.no_grad()
    def roll_out(
        self, strategy: Any, model: Any, ids: torch.Tensor, anchor: int, blocks: int
    ) -> torch.Tensor:
        """`(n_samples, S + blocks * generate_max_len)`: the document repeated, followed by
        the blocks' tokens in step order, sampled block-parallel."""
        ebft = self.ebft
        length = len(ids)
        sequence = ids.unsqueeze(0).repeat(ebft.n_samples_per_prompt, 1)
        unwrapped = strategy.unwrap(model)
        starts = torch.arange(blocks, device=ids.device) * ebft.stride + anchor - 1
        with dense_mask_attention(unwrapped):
            for step in range(ebft.generate_max_len):
                layout = self.layout(unwrapped, sequence, length, anchor, step, blocks)
                where = starts if step == 0 else length + (step - 1) * blocks + torch.arange(
                    blocks, device=ids.device
                )  # fmt: skip
                with strategy.autocast():
                    logits = logits_at(unwrapped, sequence, layout, where)
                tokens = sample(logits, ebft.temperature, ebft.top_p)
                sequence = torch.cat([sequence, tokens.to(sequence.dtype)], dim=1)
        return sequence

    @torch.no_grad()
    def block_rewards(
        self,
        strategy: Any,
        model: Any,
        objective: StridedObjective,
        sequence: torch.Tensor,
        length: int,
        anchor: int,
        blocks: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`(n_samples, blocks)` rewards and the `ebft/*` metrics (see the module)."""
        ebft = self.ebft
        gen_len = ebft.generate_max_len
        network, context = objective.reference_model(model)
        inner = strategy.unwrap(network)
        layers = layer_indices(inner, ebft.feature_layers)
        layout = self.layout(inner, sequence, length, anchor, gen_len, blocks)
        with context, dense_mask_attention(inner), strategy.autocast():
            states = layer_states(network, layers, input_ids=sequence, **layout)
        features = torch.cat([F.normalize(h.float(), dim=-1) for h in states], dim=-1)
        return strided_rewards(features, length, anchor, blocks, ebft, self.diversity_coef)

    def row_terms(
        self,
        strategy: Any,
        model: Any,
        objective: StridedObjective,
        ids: torch.Tensor,
        labels: torch.Tensor,
        anchor: int,
        blocks: int,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One row rolled out and scored: (the RL term summed over its generated tokens, the
        CE term summed over its document tokens (0 without `ce_coef`), its metrics)."""
        ebft = self.ebft
        gen_len, length = ebft.generate_max_len, len(ids)
        sequence = self.roll_out(strategy, model, ids, anchor, blocks)
        rewards, metrics = self.block_rewards(
            strategy, model, objective, sequence, length, anchor, blocks
        )
        block_advantages = advantages(rewards, self.estimator)
        total = sequence.shape[1]
        start = 0 if ebft.ce_coef > 0 else length - 1
        keep = torch.arange(start, total - 1, device=ids.device)
        unwrapped = strategy.unwrap(model)
        layout = self.layout(unwrapped, sequence, length, anchor, gen_len, blocks)
        with dense_mask_attention(unwrapped), strategy.autocast():
            logits = logits_at(model, sequence, layout, keep)
        logps = logits.float().log_softmax(dim=-1).gather(-1, sequence[:, keep + 1].unsqueeze(-1))
        logps = logps.squeeze(-1)
        generated = logps[:, length - 1 - start :]  # tokens at length, length + 1, ...
        token_advantages = block_advantages[:, token_blocks(blocks, gen_len, ids.device)]
        rl = -(generated * token_advantages.detach()).sum()
        ce = torch.zeros((), device=ids.device)
        if ebft.ce_coef > 0:
            document = logps[:, : length - 1]
            mask = self.ce_mask(ids, labels).unsqueeze(0).expand_as(document)
            ce = -(document * mask).sum()
        spread = block_advantages.std() if block_advantages.numel() > 1 else rl.new_zeros(())
        metrics["ebft/num_blocks"] = torch.tensor(float(blocks), device=ids.device)
        metrics["ebft/advantages_std"] = spread.detach()
        return rl, ce, metrics
