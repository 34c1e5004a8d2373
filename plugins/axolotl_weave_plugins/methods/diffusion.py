"""Diffusion language-model training, LLaDA style (Axolotl's `diffusion:` block).

With a `diffusion:` block the model is trained as a masked diffusion model instead of a
next-token predictor. For each sequence of a micro-batch a time `t ~ U(0, 1)` is drawn and
`p = (1 - eps) * t + eps`; each labelled (`labels != -100`), non-padding token that is not the
tokenizer's BOS, EOS or pad token is replaced by the mask token with probability `p`. The model
then sees the noised batch with a bidirectional attention mask (every token attends to every
token of its own sequence, never to padding nor to another packed sequence), its logits are
shifted so that position i predicts token i (as Axolotl's `shift_logits_to_input_positions`:
the causal head's prediction for i sits at i - 1), and the cross-entropy of the masked
positions, divided by `p` with `importance_weighting`, is summed per sequence and divided by
the sequence's labelled tokens. The objective's unit is one sequence (with labelled tokens):
a step's loss is the mean of these per-sequence losses, as Axolotl averages them over rows.
Evaluation (`val_set_size`) measures the same objective, with its own random masks.

The keys (Axolotl's names and defaults, nested under `diffusion:`; an unknown one is refused):

- `eps` (1e-3): the smallest masking probability.
- `importance_weighting` (true): divide each masked token's loss by `p`.
- `mask_token_id`: the mask token's id (below the tokenizer's length, else refused). Unset:
  `mask_token_str`, or else `<|diffusion_mask|>`, when the tokenizer has it as a special token;
  otherwise that token is added to the tokenizer as a special token (the model's embeddings grow
  to the tokenizer's length when it loads, and the tokenizer is saved with it).
- `mask_token_str`: the mask token's text, when `mask_token_id` is unset.
- `generate_samples` (true), `generation_interval` (100), `num_generation_samples` (3),
  `generation_steps` (128), `generation_temperature` (0.0), `generation_max_length` (100):
  every `generation_interval` optimizer steps, on the main process, `num_generation_samples`
  prompts (the part before the first labelled token of rows of the eval set, or else of the
  training set) are each followed by `generation_max_length` mask tokens and completed by LLaDA
  sampling in `generation_steps` steps: each step predicts every masked position (argmax at
  temperature 0, else Gumbel-max sampling at that temperature) and unmasks the most confident
  ones, an equal share of those left per remaining step. The completions are logged.
- `noise_schedule`, `min_mask_ratio`, `max_mask_ratio`, `num_diffusion_steps`: accepted and
  validated as Axolotl does (`min_mask_ratio <= max_mask_ratio`), and, as in Axolotl's training,
  unused: the masking probability is always the linear `(1 - eps) * t + eps`, and generation
  takes `generation_steps`.

Differences from Axolotl: with `sample_packing`, each packed sequence draws its own `t` and
is normalised by its own labelled tokens (Axolotl treats a packed row as one sequence), so a
packed micro-batch trains as the same sequences unpacked; a sequence without labelled tokens
does not count towards the mean (Axolotl counts it as 0); an invalid `mask_token_id` is refused
(Axolotl falls back to adding a token); attention must be `eager` or `sdpa`, which take the
bidirectional mask (flash, flex and the varlen kernels are refused when the model loads).

For inference (`weave inference`, `weave serve`, the web page) the model's `generate` samples
the same way (`DiffusionGenerate`), with the mask token of `mask_token_id` or of the tokenizer
the run saved, `generation_steps` steps (at most one per new token), greedy unless sampling is
asked for, the answer cut after the first EOS.

The masks are drawn from torch's default generator on the batch's device (seeded by `seed`;
checkpoints restore it, so a resumed run draws the same masks). Generation draws from its own
generator, seeded by `seed` and the step, so that it leaves the training's draws unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from axolotl_weave import IGNORE_INDEX, ConfigError, PluginConfig, hookimpl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from axolotl_weave_plugins.methods._diffusion_sampling import (
    diffusion_sample,
    prompt_and_answer,
    shift_logits_to_input_positions,
)

PLUGIN_KIND = "method"
AXOLOTL_ALIASES = ("axolotl.integrations.diffusion.DiffusionPlugin",)
log = logging.getLogger("axolotl_weave")

DEFAULT_MASK_TOKEN = "<|diffusion_mask|>"
"""The mask token added when neither `mask_token_id` nor `mask_token_str` names one."""

OTHER_OBJECTIVES = ("rl", "reward_model", "process_reward_model", "use_eaft")
"""Keys whose objective would replace (or reweigh) the diffusion objective."""

ATTENTION_WITH_MASKS = ("eager", "sdpa")
"""Attention implementations that take the bidirectional 4D mask."""


class DiffusionSettings(BaseModel):
    """The `diffusion:` block (Axolotl's `DiffusionConfig`, its names and defaults)."""

    model_config = ConfigDict(extra="forbid")

    noise_schedule: str = Field(
        "linear", description="Accepted as in Axolotl (linear or cosine); unused, as there."
    )
    min_mask_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="Accepted as in Axolotl; unused, as there."
    )
    max_mask_ratio: float = Field(
        0.9, ge=0.0, le=1.0, description="Accepted as in Axolotl; unused, as there."
    )
    num_diffusion_steps: int = Field(
        128, ge=1, description="Accepted as in Axolotl; unused (generation_steps is used)."
    )
    eps: float = Field(1e-3, ge=0.0, le=1.0, description="The smallest masking probability.")
    importance_weighting: bool = Field(
        True, description="Divide each masked token's loss by its masking probability."
    )
    mask_token_id: int | None = Field(
        None, ge=0, description="The mask token's id (a token of the tokenizer)."
    )
    mask_token_str: str | None = Field(
        None,
        description="The mask token's text when mask_token_id is unset; added as a special "
        "token when the tokenizer lacks it (default <|diffusion_mask|>).",
    )
    generate_samples: bool = Field(True, description="Log sampled completions while training.")
    generation_interval: int = Field(100, ge=1, description="Generate every N steps.")
    num_generation_samples: int = Field(3, ge=1, description="Completions generated each time.")
    generation_steps: int = Field(128, ge=1, description="Denoising steps of a completion.")
    generation_temperature: float = Field(
        0.0, ge=0.0, description="Sampling temperature (0: the most likely token)."
    )
    generation_max_length: int = Field(100, ge=1, description="Mask tokens after each prompt.")

    @model_validator(mode="after")
    def _check_ratios(self) -> DiffusionSettings:
        if self.noise_schedule not in ("linear", "cosine"):
            raise ValueError(
                f"diffusion.noise_schedule: {self.noise_schedule!r} is not linear or cosine"
            )
        if self.min_mask_ratio > self.max_mask_ratio:
            raise ValueError(
                f"diffusion.min_mask_ratio ({self.min_mask_ratio}) must be <= "
                f"diffusion.max_mask_ratio ({self.max_mask_ratio})"
            )
        return self


class DiffusionFields(PluginConfig):
    """The `diffusion:` key."""

    diffusion: DiffusionSettings | None = Field(
        None, description="Diffusion language-model training (LLaDA style); see its keys."
    )

    @model_validator(mode="after")
    def _diffusion_owns_the_objective(self) -> DiffusionFields:
        if self.diffusion is None:
            return self
        for key in OTHER_OBJECTIVES:
            value = getattr(self, key, None)
            if value:
                raise ValueError(
                    f"diffusion with {key}: {value}: the diffusion block replaces the training "
                    f"objective, which {key} sets too; remove one of them"
                )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`diffusion:` (a nested block)."""
    return DiffusionFields


# -- the objective -----------------------------------------------------------------------------


def segment_ids(batch: dict[str, Any]) -> Any:
    """(rows, length) ids of the sequence each token belongs to, 1, 2... within each row, 0 for
    padding: from `position_ids` when the batch has them (a packed row: a sequence starts
    where the position is 0), times the padding mask when it has one."""
    import torch

    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if "position_ids" in batch:
        segments = torch.cumsum((batch["position_ids"] == 0).long(), dim=1)
    else:
        segments = torch.ones_like(ids)
    if mask is not None:
        segments = segments * (mask != 0).long()
    return segments


def bidirectional_mask(segments: Any) -> Any:
    """(rows, 1, length, length) booleans: query i may attend to key j when both are in the
    same sequence (`segments`, 0 for padding); a padding query attends only to itself (a row
    with nothing to attend to would make NaNs)."""
    import torch

    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] > 0)
    eye = torch.eye(segments.shape[1], dtype=torch.bool, device=segments.device)
    return (same | eye)[:, None]


def attention_mask_for(allowed: Any, eager_dtype: Any = None) -> Any:
    """`allowed` as the attention implementation takes a custom 4D mask: booleans for sdpa
    (`eager_dtype` None), an additive mask of `eager_dtype` (0 or its minimum) for eager."""
    import torch

    if eager_dtype is None:
        return allowed
    dtype = eager_dtype
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def noise_batch(
    input_ids: Any,
    labels: Any,
    segments: Any,
    mask_token_id: int,
    special_ids: list[int],
    eps: float,
    generator: Any = None,
) -> tuple[Any, Any, Any]:
    """The forward process: (noised ids, which positions were masked, each position's masking
    probability). Each sequence (`segments`) draws `t ~ U(0, 1)`, `p = (1 - eps) t + eps`, from
    `torch.rand(rows, sequences_per_row)` (one sequence a row: `torch.rand(rows)`), then each
    position `torch.rand(rows, length) < p`; only labelled, non-padding tokens other than
    `special_ids` can be masked."""
    import torch

    rows, length = input_ids.shape
    device = input_ids.device
    per_row = max(int(segments.max()) if segments.numel() else 0, 1)
    t = torch.rand(rows, per_row, device=device, generator=generator)
    p_sequence = (1 - eps) * t + eps
    p = p_sequence.gather(1, (segments - 1).clamp(min=0))
    draws = torch.rand(rows, length, device=device, generator=generator)
    eligible = (labels != IGNORE_INDEX) & (segments > 0)
    if special_ids:
        special = torch.tensor(special_ids, device=device, dtype=input_ids.dtype)
        eligible &= ~torch.isin(input_ids, special)
    masked = (draws < p) & eligible
    noised = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return noised, masked, p


def sequence_answer_lengths(labels: Any, segments: Any) -> Any:
    """(rows, sequences_per_row + 1) labelled tokens of each sequence (column 0: padding)."""
    import torch

    width = int(segments.max()) + 1 if segments.numel() else 1
    counts = torch.zeros(labels.shape[0], width, device=labels.device)
    return counts.scatter_add_(1, segments, (labels != IGNORE_INDEX).float())


class DiffusionLoss:
    """The masked-diffusion objective; its unit is one sequence with labelled tokens.

    `__call__` returns the sum over the batch's sequences of (the sequence's masked tokens'
    cross-entropy, each divided by `p` with importance weighting) / (its labelled tokens)."""

    unit = "sequence"

    def __init__(
        self,
        mask_token_id: int,
        special_ids: list[int],
        eps: float = 1e-3,
        importance_weighting: bool = True,
        eager_dtype: Any = None,
    ) -> None:
        self.mask_token_id = mask_token_id
        self.eager_dtype = eager_dtype
        self.special_ids = special_ids
        self.eps = eps
        self.importance_weighting = importance_weighting

    def count(self, batch: dict[str, Any]) -> Any:
        """Sequences in the batch with at least one labelled token."""
        lengths = sequence_answer_lengths(batch["labels"], segment_ids(batch))
        return (lengths[:, 1:] > 0).sum()

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        """The summed per-sequence diffusion losses of the batch (masks from torch's default
        generator), in float32."""
        return self.measures(model, batch)[0]

    def measures(
        self, model: Any, batch: dict[str, Any], strategy: Any = None
    ) -> tuple[Any, dict[str, Any]]:
        """(the summed loss, metrics): `masked_accuracy`, the share of masked tokens predicted
        right, and `mask_ratio`, masked over labelled tokens, each as (sum, count)."""
        import torch
        import torch.nn.functional as F

        ids, labels = batch["input_ids"], batch["labels"]
        segments = segment_ids(batch)
        noised, masked, p = noise_batch(
            ids, labels, segments, self.mask_token_id, self.special_ids, self.eps
        )
        inputs = {"input_ids": noised}
        inputs["attention_mask"] = attention_mask_for(
            bidirectional_mask(segments), self.eager_dtype
        )
        if "position_ids" in batch:
            inputs["position_ids"] = batch["position_ids"]
        logits = shift_logits_to_input_positions(model(**inputs, use_cache=False).logits)
        picked = logits[masked].float()
        token_loss = F.cross_entropy(picked, ids[masked], reduction="none")
        if self.importance_weighting:
            token_loss = token_loss / p[masked].float()
        per_position = torch.zeros(ids.shape, dtype=torch.float32, device=token_loss.device)
        per_position = per_position.index_put((masked,), token_loss)
        lengths = sequence_answer_lengths(labels, segments)
        sums = torch.zeros_like(lengths).scatter_add(1, segments, per_position)
        loss = (sums[:, 1:] / lengths[:, 1:].clamp(min=1)).sum()
        with torch.no_grad():
            correct = (picked.argmax(dim=-1) == ids[masked]).sum().float()
            metrics = {
                "masked_accuracy": (correct, masked.sum()),
                "mask_ratio": (masked.sum().float(), (labels != IGNORE_INDEX).sum()),
            }
        return loss, metrics


# -- the mask token ----------------------------------------------------------------------------


def special_token_id(tokenizer: Any, token: str | None) -> int | None:
    """The id of `token` when the tokenizer has it as a special token, else None."""
    if not token:
        return None
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id < 0 or token_id >= len(tokenizer):
        return None
    if token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
        return None
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(token_id)
    special = token in (tokenizer.all_special_tokens or []) or bool(
        added is not None and added.special and added.content == token
    )
    return token_id if special else None


def resolve_mask_token(tokenizer: Any, settings: DiffusionSettings) -> int:
    """The mask token's id: `mask_token_id` (refused beyond the vocabulary), else
    `mask_token_str` or `<|diffusion_mask|>` when special in the tokenizer, else that token
    added to the tokenizer as a special token."""
    from tokenizers import AddedToken

    if settings.mask_token_id is not None:
        if settings.mask_token_id >= len(tokenizer):
            raise ConfigError(
                f"diffusion.mask_token_id: {settings.mask_token_id} is beyond the tokenizer's "
                f"vocabulary of {len(tokenizer)} tokens; name one of its tokens, or leave it "
                "unset to add a mask token"
            )
        return settings.mask_token_id
    for candidate in (settings.mask_token_str, DEFAULT_MASK_TOKEN):
        found = special_token_id(tokenizer, candidate)
        if found is not None:
            return found
    token = settings.mask_token_str or DEFAULT_MASK_TOKEN
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(token)
    log.info("diffusion: added the mask token %s (id %d) to the tokenizer", token, token_id)
    return int(token_id)


def special_ids_of(tokenizer: Any) -> list[int]:
    """The BOS, EOS and pad ids the tokenizer has: tokens never masked."""
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return sorted({int(i) for i in ids if i is not None})


# -- the run -----------------------------------------------------------------------------------


class DiffusionRun:
    """One diffusion run: the mask token, the objective and the sample generation."""

    def __init__(self, cfg: Any) -> None:
        self.settings: DiffusionSettings = cfg.diffusion
        self.seed: int = cfg.seed if cfg.seed is not None else 0
        self.tokenizer: Any = None
        self.mask_token_id: int | None = None
        self.rows: dict[bool, Any] = {}
        self.is_main_process = True
        self.samples: list[dict[str, Any]] = []
        self.eager_dtype: Any = None
        self.sharded = any(getattr(cfg, key, None) for key in ("fsdp", "fsdp_config", "deepspeed"))
        self.num_processes = 1
        self.warned = False

    @hookimpl(wrapper=True)
    def load_tokenizer(self) -> Generator[None, Any, Any]:
        """Find (or add) the mask token in the tokenizer loaded."""
        tokenizer = yield
        self.tokenizer = tokenizer
        self.mask_token_id = resolve_mask_token(tokenizer, self.settings)
        return tokenizer

    @hookimpl
    def build_loss(self, model: Any) -> DiffusionLoss:
        """The diffusion objective (refused with an attention that takes no 4D mask)."""
        self.eager_dtype = None
        if model is not None:
            attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
            if attention is not None and attention not in ATTENTION_WITH_MASKS:
                raise ConfigError(
                    f"diffusion with attn_implementation {attention}: the bidirectional mask "
                    "needs eager or sdpa attention; set attn_implementation: sdpa"
                )
            if attention == "eager":
                self.eager_dtype = next(model.parameters()).dtype
        special = special_ids_of(self.tokenizer) if self.tokenizer is not None else []
        mask_id = self.mask_token_id if self.mask_token_id is not None else -1
        if self.tokenizer is not None:
            log.info("diffusion: mask token id %d, never masking %s", mask_id, special)
        return DiffusionLoss(
            mask_id,
            special,
            self.settings.eps,
            self.settings.importance_weighting,
            self.eager_dtype,
        )

    @hookimpl
    def transform_train_data(self, dataset: Any, evaluation: bool, strategy: Any) -> None:
        """Keep the rows (and whether this is the main process) for the sample prompts."""
        self.rows[evaluation] = dataset
        self.is_main_process = bool(getattr(strategy, "is_main_process", True))
        self.num_processes = int(getattr(strategy, "num_processes", 1))

    @hookimpl
    def on_step_end(self, state: Any, model: Any) -> None:
        """Every `generation_interval` steps, on the main process: sample and log completions."""
        settings = self.settings
        if not settings.generate_samples or state.global_step % settings.generation_interval:
            return
        if self.sharded and self.num_processes > 1:
            self.warn_once(
                "diffusion: generate_samples is skipped with FSDP or DeepSpeed on several "
                "processes (a forward pass on one process alone would wait for the others)"
            )
            return
        if not self.is_main_process or self.tokenizer is None or self.mask_token_id is None:
            return
        self.samples = self.generate(model, state.global_step)
        if not self.samples:
            self.warn_once(
                "diffusion: no sample generated: no row has a prompt (tokens before its first "
                "labelled one) to complete"
            )
        for i, sample in enumerate(self.samples):
            log.info(
                "diffusion sample %d at step %d: %r -> %r (expected %r)",
                i + 1,
                state.global_step,
                sample["prompt"],
                sample["completion"],
                sample["expected"],
            )

    def warn_once(self, message: str) -> None:
        """Log `message` as a warning, the first time only."""
        if not self.warned:
            log.warning(message)
            self.warned = True

    def generate(self, model: Any, step: int) -> list[dict[str, Any]]:
        """`num_generation_samples` completions of prompts of the eval rows (else the
        training rows), drawn with a generator seeded by the seed and `step`; in eval mode,
        without gradients; the model's training mode is restored."""
        import torch

        rows = self.rows.get(True) or self.rows.get(False)
        if rows is None or not hasattr(rows, "__len__") or len(rows) == 0:
            return []
        settings = self.settings
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        order = torch.randperm(len(rows), generator=generator).tolist()
        samples: list[dict[str, Any]] = []
        was_training = model.training
        model.eval()
        try:
            for index in order:
                if len(samples) == settings.num_generation_samples:
                    break
                split = prompt_and_answer(rows[index]["input_ids"], rows[index]["labels"])
                if split is None:
                    continue
                prompt, answer = split
                ids = diffusion_sample(
                    model,
                    torch.tensor(prompt, device=device),
                    self.mask_token_id,
                    settings.generation_max_length,
                    settings.generation_steps,
                    settings.generation_temperature,
                    generator=generator,
                    eager_dtype=self.eager_dtype,
                )
                completion = ids[len(prompt) :].tolist()
                samples.append(
                    {
                        "prompt": self.tokenizer.decode(prompt, skip_special_tokens=True),
                        "completion": self.tokenizer.decode(completion, skip_special_tokens=True),
                        "expected": self.tokenizer.decode(answer, skip_special_tokens=True),
                        "completion_ids": completion,
                    }
                )
        finally:
            model.train(was_training)
        return samples


class DiffusionGenerate:
    """A diffusion model's `generate` for inference: each prompt row continued by LLaDA
    sampling (`diffusion_sample`) instead of left to right, with the keywords transformers'
    `generate` takes from `weave inference`, `weave serve` and the web page: the new tokens'
    count and sampling from `generation_config` (or `max_new_tokens`, `do_sample`,
    `temperature`), the answer cut after the first EOS, and a `streamer` given it at once."""

    def __init__(self, model: Any, mask_token_id: int, settings: DiffusionSettings) -> None:
        self.model, self.mask_token_id, self.settings = model, mask_token_id, settings

    def __call__(
        self,
        input_ids: Any,
        generation_config: Any = None,
        streamer: Any = None,
        **kwargs: Any,
    ) -> Any:
        """The prompt rows with their answers (padded with EOS to one length)."""
        import torch

        def option(name: str, default: Any) -> Any:
            value = kwargs.get(name, getattr(generation_config, name, None))
            return default if value is None else value

        length = int(option("max_new_tokens", self.settings.generation_max_length))
        sampling = bool(option("do_sample", False))
        temperature = float(option("temperature", 1.0)) if sampling else 0.0
        eos = option("eos_token_id", [])
        eos = {int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos])}
        attention = getattr(self.model.config, "_attn_implementation", None)
        eager_dtype = next(self.model.parameters()).dtype if attention == "eager" else None
        steps = max(1, min(self.settings.generation_steps, length))
        answers = []
        for row in input_ids:
            sampled = diffusion_sample(
                self.model, row, self.mask_token_id, length, steps, temperature, None, eager_dtype
            )[row.shape[0] :]
            ends = [i for i, token in enumerate(sampled.tolist()) if token in eos]
            answers.append(sampled[: ends[0] + 1] if ends else sampled)
        if streamer is not None:
            streamer.put(input_ids[0].cpu())  # the prompt (a streamer skips it)
            streamer.put(answers[0].cpu())
            streamer.end()
        width = max(len(a) for a in answers)
        fill = min(eos) if eos else self.mask_token_id
        padded = [torch.cat([a, a.new_full((width - len(a),), fill)]) for a in answers]
        return torch.cat([input_ids, torch.stack(padded)], dim=1)


def inference_mask_token(tokenizer: Any, settings: DiffusionSettings) -> int:
    """The trained model's mask token: `mask_token_id`, else `mask_token_str` or the default
    one, which training added and saved with the tokenizer."""
    if settings.mask_token_id is not None:
        return settings.mask_token_id
    token = settings.mask_token_str or DEFAULT_MASK_TOKEN
    found = special_token_id(tokenizer, token)
    if found is None:
        raise ConfigError(
            f"diffusion: the tokenizer has no mask token {token}: load the tokenizer the "
            "diffusion run saved (its output_dir), or set diffusion.mask_token_id"
        )
    return found


@hookimpl(wrapper=True)
def load_model(cfg: Any, tokenizer: Any, purpose: str) -> Generator[None, Any, Any]:
    """For inference (`weave inference`, `serve`, the web page), a diffusion model's
    `generate` samples as it was trained to (`DiffusionGenerate`), not left to right."""
    model = yield
    settings = getattr(cfg, "diffusion", None)
    if purpose != "infer" or settings is None:
        return model
    model.generate = DiffusionGenerate(model, inference_mask_token(tokenizer, settings), settings)
    log.info("diffusion: generation samples LLaDA style (%d steps)", settings.generation_steps)
    return model


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With a `diffusion:` block, register the `DiffusionRun` for this run."""
    if getattr(cfg, "diffusion", None) is not None:
        register(DiffusionRun(cfg), "diffusion-run")
