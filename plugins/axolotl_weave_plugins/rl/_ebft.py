"""`rl: ebft`: Energy-Based Fine-Tuning in Axolotl's structured mode ("Matching Features, Not
Tokens", Jelassi et al., 2026): GRPO whose one reward is feature matching.

Each completion is scored by a frozen feature network, the model training started from (under
`adapter:` the base with the adapter disabled, no copy; else a frozen copy). Prompt +
completion and prompt + the row's `ground_truth` are each rendered as text (the completion
decoded without special tokens, as the reward functions see it), tokenized without special
tokens, and run through the network's decoder; the hidden states after the layers at
`ebft.feature_layers` (fractions of the depth: `int(fraction * num_hidden_layers)`, 0 being the
embeddings) are concatenated and pooled per sequence (`embed_method`). The embeddings are
L2-normalised (or, with `use_whitening`, whitened by the SVD of each group's generated
embeddings), and completion j of a group of n gets

    reward_j = 2 * alignment_coef * cos(gen_j, gt)
               - 2 * diversity_coef * mean over j' != j of (gen_j . gen_j')

as Axolotl's `EBFTMixin._feature_matching_reward` computes it (the paper's equation 7). The
rewards then go through GRPO's advantages and loss (`trl:` keys). It logs `ebft/alignment`,
`ebft/diversity`, `ebft/reward` (means of the scaled terms) and `ebft/cfm_loss` (the squared
distance between a group's mean embedding and its ground truth's, the paper's equation 2).

With `ebft_chat_multiturn.transform` (the first assistant turn as the target, the later turns
kept) each completion is rolled out through the row's later turns, every assistant turn sampled
from the model being trained, and the whole conversation is compared with the row's (Axolotl
rolls out through vLLM; the loss stays on the first answer's tokens, as there).

`ebft.mode: strided` (rollouts at anchors inside documents) is `_ebft_strided`. Not here:
vLLM generation (refused). `adaptive_max_tokens` applies to vLLM generation in Axolotl, so it
changes nothing here, as in Axolotl without vLLM.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from axolotl_weave import DataError

from axolotl_weave_plugins.rl._ebft_config import EBFTArgs
from axolotl_weave_plugins.rl._grpo import GRPORun
from axolotl_weave_plugins.rl._grpo_formats import chat_template_kwargs, is_conversation

# --- features and rewards ------------------------------------------------------------------------


def layer_indices(model: Any, fractions: list[float]) -> list[int]:
    """`int(fraction * num_hidden_layers)` of each fraction (the text model's layers of a
    vision-language model), as indices into the decoder's hidden states."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    return [int(fraction * config.num_hidden_layers) for fraction in fractions]


def layer_states(model: Any, layers: list[int], **inputs: Any) -> list[torch.Tensor]:
    """The hidden states at `layers` of the model's decoder on `inputs` (its language-model
    head is not run), computed in eval mode, the model's mode put back after."""
    inner = getattr(model, "module", model)  # a DDP wrapper
    body = inner.get_decoder() if hasattr(inner, "get_decoder") else inner
    was_training = inner.training
    inner.eval()
    try:
        out = body(**inputs, output_hidden_states=True, return_dict=True)
    finally:
        inner.train(was_training)
    return [out.hidden_states[index] for index in layers]


def layer_features(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, layers: list[int]
) -> torch.Tensor:
    """`(B, S, len(layers) * H)`: the hidden states at `layers` concatenated (`layer_states`)."""
    return torch.cat(layer_states(model, layers, input_ids=ids, attention_mask=mask), dim=-1)


def pool(
    hidden: torch.Tensor, method: str, mask: torch.Tensor, prompt_lengths: torch.Tensor
) -> torch.Tensor:
    """One embedding per right-padded sequence: the last real token's features, the mean over
    real tokens, the mean over the completion's (after `prompt_lengths`), or the features at a
    quarter, half and three quarters of its length concatenated."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    lengths = mask.sum(dim=1).long()
    if method == "last_token":
        return hidden[rows, lengths - 1]
    if method in ("mean_pooling", "completion_mean"):
        keep = mask.bool()
        if method == "completion_mean":
            positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
            keep = keep & (positions >= prompt_lengths.unsqueeze(1))
        weights = keep.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    last = hidden.shape[1] - 1
    quarters = [(lengths * k // 4).clamp(0, last) for k in (1, 2, 3)]
    return torch.cat([hidden[rows, at] for at in quarters], dim=-1)


def whiten(
    generated: torch.Tensor, truth: torch.Tensor, tolerance: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both multiplied by `W = U diag(1/S) U^T` of the SVD of `generated^T` (one group's
    embeddings, `(n, D)`), singular values below `tolerance` times the largest left out."""
    phi = generated.float()
    try:
        u, s, _ = torch.linalg.svd(phi.T, full_matrices=False)
    except torch.linalg.LinAlgError:  # retry with a little noise, as Axolotl does
        noisy = phi.T + 1e-6 * phi.abs().mean() * torch.randn_like(phi.T)
        try:
            u, s, _ = torch.linalg.svd(noisy, full_matrices=False)
        except torch.linalg.LinAlgError:
            return generated, truth
    inverse = torch.where(s > tolerance * s.max(), 1.0 / (s + 1e-12), torch.zeros_like(s))
    w = (u * inverse.unsqueeze(0)) @ u.T
    return (phi @ w).to(generated.dtype), (truth.float() @ w).to(truth.dtype)


def feature_rewards(
    generated: torch.Tensor, truth: torch.Tensor, group: int, ebft: EBFTArgs
) -> tuple[torch.Tensor, dict[str, float]]:
    """(each completion's reward, the `ebft/*` metrics) of the generated embeddings `(n * G,
    D)`, `group` per prompt in a row, and each prompt's ground-truth embedding `(n, D)`."""
    if ebft.use_whitening and generated.shape[0] > 1:
        pairs = [
            whiten(generated[i * group : (i + 1) * group], truth[i : i + 1])
            for i in range(truth.shape[0])
        ]
        generated = torch.cat([g for g, _ in pairs])
        truth = torch.cat([t for _, t in pairs])
    else:
        generated, truth = F.normalize(generated, dim=-1), F.normalize(truth, dim=-1)
    alignment = 2 * F.cosine_similarity(generated, truth.repeat_interleave(group, 0), dim=-1)
    grouped = generated.view(-1, group, generated.shape[-1])
    if group > 1:
        similarity = grouped @ grouped.transpose(1, 2)
        similarity = similarity - torch.diag_embed(torch.diagonal(similarity, dim1=1, dim2=2))
        diversity = 2 * similarity.sum(-1).reshape(-1) / (group - 1)
    else:
        diversity = torch.zeros_like(alignment)
    rewards = ebft.alignment_coef * alignment - ebft.diversity_coef * diversity
    cfm = ((grouped.mean(dim=1) - truth) ** 2).sum(-1).mean()
    metrics = {
        "ebft/alignment": alignment.mean().item(),
        "ebft/diversity": diversity.mean().item(),
        "ebft/cfm_loss": cfm.item(),
        "ebft/reward": rewards.mean().item(),
    }
    return rewards, metrics


class EBFTRun(GRPORun):
    """The per-run plugin of `rl: ebft`: GRPO's, with feature matching as its reward."""

    needs_frozen_model = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.ebft: EBFTArgs = cfg.ebft or EBFTArgs()
        self.max_length = cfg.sequence_len + self.trl.max_completion_length
        self.functions = [self.feature_matching]
        self.names = ["feature_matching"]
        self.weights = torch.ones(1)
        self.strategy: Any = None
        self.model: Any = None

    def sample(self, strategy: Any, model: Any, window: list[dict[str, Any]]) -> tuple:
        """GRPO's sampling; the policy kept for the feature network (the base under it)."""
        self.strategy, self.model = strategy, model
        return super().sample(strategy, model, window)

    def flush_logged(self) -> dict[str, float]:
        """The `ebft/*` means of this step, over every process (the same names on each)."""
        means = super().flush_logged()
        strategy = self.strategy
        if not means or strategy is None or strategy.num_processes == 1:
            return means
        names = sorted(means)
        values = torch.tensor([means[name] for name in names], device=strategy.device)
        reduced = strategy.reduce(values, "sum") / strategy.num_processes
        return dict(zip(names, reduced.tolist(), strict=True))

    def prompt_text(self, prompt: Any) -> str:
        """The prompt as the model saw it: a conversation rendered with the chat template and
        its generation prompt, a string as it is."""
        if not is_conversation(prompt):
            return prompt
        kwargs = chat_template_kwargs(self.cfg)
        return self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True, **kwargs
        )

    @torch.no_grad()
    def embed(self, texts: list[str], prompt_texts: list[str]) -> torch.Tensor:
        """The pooled features `(len(texts), D)` of each text under the feature network."""
        tokenizer, device = self.tokenizer, self.strategy.device
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        encoded = [list(ids[: self.max_length]) or [tokenizer.eos_token_id] for ids in encoded]
        width = max(len(ids) for ids in encoded)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        network, context = self.objective.reference_model(self.model)
        layers = layer_indices(self.strategy.unwrap(network), self.ebft.feature_layers)
        with context, self.strategy.autocast():
            hidden = layer_features(network, ids.to(device), mask.to(device), layers)
        lengths = torch.zeros(len(texts), dtype=torch.long, device=device)
        if self.ebft.embed_method == "completion_mean":  # the only pooling that reads them
            prompts = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
            lengths = torch.tensor([len(p) for p in prompts], device=device)
        return pool(hidden.float(), self.ebft.embed_method, mask.to(device), lengths)

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        """A conversation through the chat template (with the run's template arguments)."""
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=generation_prompt,
            **chat_template_kwargs(self.cfg),
        )

    def roll_out(self, prompts: list[Any], firsts: list[str], turns: list[list]) -> list[str]:
        """Each completion's whole conversation, rendered: its prompt, its first answer, then
        each later turn of its row in order, a user turn as written and every assistant turn
        sampled from the model (as the first was, one per completion, the completions needing
        the same turn generated together)."""
        conversations = [
            [*prompt, {"role": "assistant", "content": first}]
            for prompt, first in zip(prompts, firsts, strict=True)
        ]
        for step in range(max((len(t) for t in turns), default=0)):
            asking = []
            for index, later in enumerate(turns):
                if step < len(later):
                    turn = later[step]
                    if turn["role"] == "assistant":
                        asking.append(index)
                    else:
                        conversations[index].append(dict(turn))
            if not asking:
                continue
            ids = [
                torch.tensor(
                    self.tokenizer(self.render(conversations[i], True), add_special_tokens=False)[
                        "input_ids"
                    ]
                )
                for i in asking
            ]
            _, _, sampled, mask = self.generate(self.strategy, self.model, ids)
            answers = self.tokenizer.batch_decode(
                [row[m.bool()].tolist() for row, m in zip(sampled, mask, strict=True)],
                skip_special_tokens=True,
            )
            for index, answer in zip(asking, answers, strict=True):
                conversations[index].append({"role": "assistant", "content": answer})
        return [self.render(conversation, False) for conversation in conversations]

    def feature_matching(
        self,
        prompts: list[Any],
        completions: list[Any],
        ground_truth: list[Any] | None = None,
        remaining_turns: list[Any] | None = None,
        **_: Any,
    ) -> list[float]:
        """The EBFT reward of each completion (a reward function as GRPO calls one). With a
        row's `remaining_turns` (a conversation's turns after the first answer), the
        completion is rolled out through them and compared, whole, with the row's
        conversation (`ground_truth` as its first answer)."""
        if ground_truth is None or not all(isinstance(t, str) for t in ground_truth):
            raise DataError(
                "rl: ebft: every row needs a ground_truth text (the reference completion): "
                "give a ground_truth column or a transform that returns one"
            )
        group = self.trl.num_generations
        prompt_texts = [self.prompt_text(p) for p in prompts]
        answers = [c[0].get("content", "") if isinstance(c, list) else c for c in completions]
        firsts = range(0, len(prompts), group)
        truth_prompts = [prompt_texts[i] for i in firsts]
        if remaining_turns is not None and any(remaining_turns):
            turns = [list(t or []) for t in remaining_turns]
            texts = self.roll_out(prompts, answers, turns)
            truths = [
                self.render(
                    [*prompts[i], {"role": "assistant", "content": ground_truth[i]}, *turns[i]],
                    False,
                )
                for i in firsts
            ]
        else:
            texts = [text + answer for text, answer in zip(prompt_texts, answers, strict=True)]
            truths = [prompt_texts[i] + ground_truth[i] for i in firsts]
        generated = self.embed(texts, prompt_texts)
        truth = self.embed(truths, truth_prompts)
        rewards, metrics = feature_rewards(generated, truth, group, self.ebft)
        for name, value in metrics.items():
            self.log_metric(name, value)
        return rewards.cpu().tolist()
