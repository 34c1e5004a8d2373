"""Objectives computed from the final hidden states and the output layer (`HiddenStatesLoss`).

A `LossFunction` usually runs the model, takes its logits and computes a cross-entropy
against some targets. A kernel plugin can compute that step faster or in less memory: a fused
linear cross-entropy multiplies the final hidden states by the output layer's weight chunk by
chunk and never materialises the ``(batch, sequence, vocabulary)`` logits; a cross-entropy
kernel computes it on the logits. For such a plugin to wrap an objective, the objective
exposes that step as a `HiddenStatesLoss`:

- it computes its loss through a `HeadCrossEntropy`, a function
  ``head(model, batch, targets) -> (loss, outputs)`` that runs the model's forward on the batch
  and returns the cross-entropy of each position's prediction against ``targets``, summed, with
  the model's outputs (for an auxiliary loss, say);
- `__call__(model, batch)` is ``hidden_states_loss(model, batch, logits_cross_entropy)`` (the
  plain step on the logits), and ``hidden_states_loss(model, batch, head)`` gives the same loss
  with the step computed by ``head``.

A kernel plugin's `build_loss` wrapper checks ``isinstance(loss, HiddenStatesLoss)``, and
returns an objective whose `__call__` is ``loss.hidden_states_loss(model, batch, its_head)``
and whose `count` is ``loss.count``; an objective without the method is left as it is (with
one logged line under `auto`). The objective decides the targets (the next token for
supervised fine-tuning) and may call ``head`` more than once (one forward per sequence of a
pair, say), the kernel decides how the cross-entropy is computed; neither knows the other.
``head`` returns a sum over all the targets of its call: an objective needing a sum per
sequence (a preference method's log-probabilities) needs a ``head`` argument for it, to be
added here first (kernels then accept it; objectives that do not pass it are unaffected).

The outputs a kernel's ``head`` returns may carry no logits (an empty
``(batch, sequence, 0)`` tensor for a fused linear cross-entropy): an objective implementing
the contract reads its loss from ``head`` only, never from ``outputs.logits``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from axolotl_weave._batches import model_inputs
from axolotl_weave._types import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


class HeadCrossEntropy(Protocol):
    """The step of an objective that a kernel can replace (see `HiddenStatesLoss`)."""

    def __call__(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        """Run ``model`` on ``batch`` (its `model_inputs`, ``use_cache=False``) and return the
        float32 cross-entropy of the prediction at each position against ``targets`` (the shape
        of ``batch["input_ids"]``; the target of position t is the token the model should
        predict from the hidden state at t), summed over the positions whose target is not
        `IGNORE_INDEX`, and the model's outputs (whose logits may be empty)."""
        ...


@runtime_checkable
class HiddenStatesLoss(Protocol):
    """A `LossFunction` whose cross-entropy steps a kernel plugin may compute (its contract is
    in this module's docstring).

    `count(batch)` and `__call__(model, batch)` are the `LossFunction`'s;
    `hidden_states_loss(model, batch, head)` is the same loss with every model forward and
    cross-entropy on the logits done by ``head`` (a `HeadCrossEntropy`), called once or more.
    """

    def count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def hidden_states_loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], head: HeadCrossEntropy
    ) -> torch.Tensor: ...


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """The targets of next-token prediction: position t targets ``labels[t + 1]``; the last
    position targets nothing (`IGNORE_INDEX`)."""
    import torch

    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


def logits_cross_entropy(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    targets: torch.Tensor,
    *,
    cross_entropy: Callable[..., torch.Tensor] | None = None,
) -> tuple[torch.Tensor, Any]:
    """The plain `HeadCrossEntropy`: the model's logits (in float32) against ``targets``.

    :param cross_entropy: the function computing it, with `torch.nn.functional.cross_entropy`'s
        signature (its default); a kernel plugin passes its own cross-entropy kernel.
    """
    import torch.nn.functional as F

    outputs = model(**model_inputs(batch), use_cache=False)
    logits = outputs.logits
    loss = (cross_entropy or F.cross_entropy)(
        logits.float().reshape(-1, logits.shape[-1]).contiguous(),
        targets.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, outputs
