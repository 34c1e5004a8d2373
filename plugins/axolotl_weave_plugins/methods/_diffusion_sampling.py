"""LLaDA sampling for the diffusion plugin: a prompt followed by mask tokens, unmasked over a
number of steps, the most confident predictions first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from axolotl_weave import IGNORE_INDEX


def shift_logits_to_input_positions(logits: Any) -> Any:
    """The logits with position i's prediction for token i: the causal head's logits shifted
    right by one (position 0 keeps its own), as Axolotl shifts them."""
    import torch

    if logits.shape[1] <= 1:
        return logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def prompt_and_answer(
    input_ids: Sequence[int], labels: Sequence[int]
) -> tuple[list[int], list[int]] | None:
    """(the tokens before the first labelled one, the labelled tokens) of a row; None when it
    has no labelled token or nothing before it."""
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not labelled or labelled[0] == 0:
        return None
    first = labelled[0]
    return list(input_ids[:first]), [int(input_ids[i]) for i in labelled]


def diffusion_sample(
    model: Any,
    prompt: Any,
    mask_token_id: int,
    length: int,
    steps: int,
    temperature: float = 0.0,
    generator: Any = None,
    eager_dtype: Any = None,
) -> Any:
    """`prompt` (1D ids) followed by `length` tokens sampled LLaDA style; the 1D ids.

    Each of `steps` steps runs the model on the whole sequence with full (bidirectional)
    attention, predicts every masked position (argmax at temperature 0; else Gumbel-max at
    `temperature`, the noise from `generator` on the CPU), never the mask token, and unmasks
    the most confident predictions: `max(1, int(left / (steps - step)))` of the `left` masked
    ones, all of them at the last step. Runs without gradients; the caller sets eval mode.
    `eager_dtype`: the dtype of an additive mask for eager attention (None: a boolean mask).
    """
    import torch

    device = prompt.device
    masks = torch.full((length,), mask_token_id, dtype=prompt.dtype, device=device)
    sequence = torch.cat([prompt, masks])[None]
    width = sequence.shape[1]
    if eager_dtype is None:
        attention = torch.ones(1, 1, width, width, dtype=torch.bool, device=device)
    else:
        attention = torch.zeros(1, 1, width, width, dtype=eager_dtype, device=device)
    is_mask = torch.zeros(width, dtype=torch.bool, device=device)
    is_mask[prompt.shape[0] :] = True
    with torch.no_grad():
        for step in range(steps):
            left = int(is_mask.sum())
            if left == 0:
                break
            outputs = model(input_ids=sequence, attention_mask=attention, use_cache=False)
            logits = shift_logits_to_input_positions(outputs.logits)[0, is_mask].float()
            logits[:, mask_token_id] = -float("inf")
            if temperature > 0:
                logits = logits / temperature
                uniform = torch.rand(logits.shape, generator=generator).to(device)
                gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0)).clamp_min(1e-20))
                predicted = (logits + gumbel).argmax(dim=-1)
            else:
                predicted = logits.argmax(dim=-1)
            confidence = logits.softmax(dim=-1).gather(1, predicted[:, None])[:, 0]
            take = left if step == steps - 1 else max(1, int(left / (steps - step)))
            chosen = confidence.topk(take).indices
            positions = is_mask.nonzero()[:, 0][chosen]
            sequence[0, positions] = predicted[chosen]
            is_mask[positions] = False
    return sequence[0]
