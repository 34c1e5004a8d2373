"""Fused linear cross-entropy: an objective's cross-entropy from the last hidden states and the
output layer's weight, without materialising the logits. Shared by the `liger` and
`cut_cross_entropy` plugins (a helper module: no entry point, no hooks).

It wraps any objective that is a `HiddenStatesLoss` (the SFT cross-entropy, and any other
objective exposing `hidden_states_loss`; see `axolotl_weave.HiddenStatesLoss`): the objective
decides the targets and combines the result, this module gives it a `HeadCrossEntropy` that
computes the cross-entropy with a fused function. `objective_problem` says why an objective
cannot be wrapped.

How it works: the model's own forward runs unchanged, so data-parallel wrappers, FSDP, peft,
`torch.compile` and gradient checkpointing see an ordinary forward, but the output layer is
*tapped*. While a loss call is in flight, the tap takes the hidden states the output layer was
about to multiply by its weight (after the final norm and anything a family does before the
head), computes the fused loss against the objective's targets, and returns an empty
``(batch, sequence, 0)`` tensor in place of the logits. Outside a loss call (generation,
saving, another objective) the output layer behaves as before.

- Targets: the objective gives one per position (for SFT the hidden state at position t
  predicts ``labels[t + 1]``: `next_token_targets`); positions whose target is
  ``IGNORE_INDEX`` (prompt, padding, a packed row's first token, the last position) are dropped
  before the fused function sees them.
- What a family does to its logits after the output layer is applied here instead:
  ``final_logit_softcapping`` (gemma2, gemma3...: passed to the kernel as ``softcap``), cohere's
  ``logit_scale``, granite's ``logits_scaling``, falcon-h1's ``lm_head_multiplier`` (a scale is
  folded into the hidden states: ``(s h) W^T = s (h W^T)``).
- peft: a head in ``modules_to_save`` is tapped on each of its copies (the active one runs); a
  head carrying a LoRA adapter has no plain weight and is refused (`head_problem`).

A fused function has the signature of `reference_linear_cross_entropy`:
``fused(hidden (N, H), weight (V, H), targets (N,), *, bias, softcap) -> loss summed over N``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from axolotl_weave import IGNORE_INDEX, ConfigError, HiddenStatesLoss, model_inputs

if TYPE_CHECKING:
    import torch

FusedFunction = Callable[..., "torch.Tensor"]
"""``fused(hidden, weight, targets, *, bias=None, softcap=None)``: the cross-entropy of
``hidden @ weight.T + bias`` (soft-capped) against ``targets``, summed."""

TAP_ATTRIBUTE = "_weave_fused_tap"
"""Where an output layer keeps its tap (so that building the loss twice does not stack taps)."""

SOFTCAP_ATTRIBUTES = ("final_logit_softcapping", "logits_soft_cap")
"""Config attributes holding a final-logit soft-cap c: logits = c * tanh(logits / c)."""

LOGIT_SCALES: dict[str, tuple[str, bool]] = {
    "cohere": ("logit_scale", False),
    "cohere2": ("logit_scale", False),
    "cohere2_moe": ("logit_scale", False),
    "granite": ("logits_scaling", True),
    "granitemoe": ("logits_scaling", True),
    "granitemoeshared": ("logits_scaling", True),
    "granitemoehybrid": ("logits_scaling", True),
    "falcon_h1": ("lm_head_multiplier", False),
    "hyperclovax": ("logits_scaling", False),
}
"""model_type: (config attribute, divide?) of a scale the model applies to its logits after the
output layer (granite divides by `logits_scaling`; hyperclovax multiplies by an attribute of the
same name, hence a table by model type rather than by attribute)."""


def reference_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """The fused functions' contract in plain torch (it does materialise the logits): the
    float32 cross-entropy of ``hidden @ weight.T + bias``, soft-capped, summed over the targets.
    For tests, and to check a kernel against."""
    import torch
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


@dataclass(frozen=True)
class LogitTransform:
    """What the model does to its logits after the output layer: multiply by `scale`, then
    soft-cap at `softcap` (None: no cap)."""

    scale: float = 1.0
    softcap: float | None = None


def logit_transform(config: Any) -> LogitTransform:
    """The post-head logit transform of a model with this config (its text config's, for a
    multimodal model)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = None
    for name in SOFTCAP_ATTRIBUTES:
        value = getattr(text, name, None) or getattr(config, name, None)
        if value:
            softcap = float(value)
            break
    scale = 1.0
    model_type = getattr(text, "model_type", None) or getattr(config, "model_type", None)
    if model_type in LOGIT_SCALES:
        name, divide = LOGIT_SCALES[model_type]
        value = getattr(text, name, None)
        if value is not None:
            scale = 1.0 / float(value) if divide else float(value)
    return LogitTransform(scale, softcap)


def unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def output_linears(model: Any) -> tuple[list[Any], str | None]:
    """The plain linear layers the output layer computes with, or why there are none.

    A plain head gives itself; a peft ``modules_to_save`` head gives its original and each
    trained copy (the wrapper calls the active one). A head with a LoRA (or other peft)
    adapter, a quantized or fake-quantized head (a linear subclass with its own forward) or a
    custom module has no single plain weight: ([], reason).
    """
    import torch

    base = unwrap(model)
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return [], "the model has no output layer (get_output_embeddings() is None)"
    if hasattr(head, "modules_to_save") and hasattr(head, "original_module"):
        candidates = [head.original_module, *head.modules_to_save.values()]
    elif hasattr(head, "base_layer"):
        return [], (
            "the output layer carries a LoRA (peft) adapter, so it has no plain weight to fuse; "
            "leave the output layer (lm_head) out of lora_target_modules (to train it, list it "
            "in lora_modules_to_save instead)"
        )
    else:
        candidates = [head]
    for linear in candidates:
        weight = getattr(linear, "weight", None)
        if not isinstance(linear, torch.nn.Linear) or not isinstance(weight, torch.Tensor):
            return [], f"the output layer is a {type(linear).__name__}, not a torch.nn.Linear"
        if type(linear).forward is not torch.nn.Linear.forward:
            return [], (
                f"the output layer is a {type(linear).__name__}, whose forward is not a plain "
                "linear one (fake-quantized, say): the fused loss would skip what it does"
            )
        if weight.dim() != 2 or not weight.is_floating_point():
            return [], (
                f"the output layer's weight is {weight.dtype} (quantized?); the fused loss needs "
                "a floating-point weight"
            )
    return candidates, None


def head_problem(model: Any, *, bias_ok: bool = True) -> str | None:
    """Why the fused loss cannot run on this model's output layer, or None when it can."""
    linears, problem = output_linears(model)
    if problem is not None:
        return problem
    if not bias_ok and any(linear.bias is not None for linear in linears):
        return "the output layer has a bias, which this kernel does not take"
    return None


def objective_problem(loss: Any) -> str | None:
    """Why a cross-entropy kernel cannot wrap the objective `loss` (it is no
    `HiddenStatesLoss`), or None when it can."""
    if isinstance(loss, HiddenStatesLoss):
        return None
    return (
        "it replaces the SFT cross-entropy, or that of an objective computed from the hidden "
        f"states (one with a hidden_states_loss method); the objective is {type(loss).__name__}, "
        "which has none"
    )


def compute_dtypes(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Cast as the output layer would have computed: to the autocast dtype under autocast
    (mixed precision), else the hidden states to the weight's dtype."""
    import torch

    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = weight.dtype
    cast_bias = bias.to(dtype) if bias is not None else None
    return hidden.to(dtype), weight.to(dtype), cast_bias


class HeadTap:
    """Installed as one linear output layer's ``forward``: the fused loss while a loss call is
    in flight, the layer's own forward otherwise."""

    def __init__(self, module: Any, original: Callable[..., Any]) -> None:
        self.module = module
        self.original = original
        self.loss: FusedLinearCrossEntropy | None = None

    def __call__(self, hidden: Any, *args: Any, **kwargs: Any) -> Any:
        """The fused loss of `hidden` (returning empty logits), or the original forward."""
        if self.loss is None or self.loss.targets is None:
            return self.original(hidden, *args, **kwargs)
        return self.loss.head_forward(self.module, hidden)


def install_tap(linear: Any, loss: FusedLinearCrossEntropy) -> None:
    """Route `linear`'s forward through a tap feeding `loss` (re-pointing an existing tap)."""
    tap = linear.__dict__.get(TAP_ATTRIBUTE)
    if tap is None:
        tap = HeadTap(linear, linear.forward)
        linear.__dict__[TAP_ATTRIBUTE] = tap
        linear.forward = tap
    tap.loss = loss


class FusedLinearCrossEntropy:
    """An objective's loss with its cross-entropy computed by a fused linear cross-entropy
    function.

    A :class:`~axolotl_weave.LossFunction`: `count` is the wrapped objective's, `__call__` is
    the objective's `hidden_states_loss` with `head_cross_entropy` as its `HeadCrossEntropy`
    (for SFT: the loss summed over the target tokens, plus the router's auxiliary loss of a
    mixture-of-experts model).

    :param model: the loaded (possibly peft-wrapped) model; its output layer gets a tap.
    :param fused: the fused function (see `FusedFunction`).
    :param name: the config key that asked for it, for messages.
    :param base: the objective it wraps, a `HiddenStatesLoss` (e.g. the SFT cross-entropy).
    :param bias_ok: whether `fused` takes the output layer's bias.
    """

    def __init__(
        self,
        model: Any,
        fused: FusedFunction,
        *,
        name: str,
        base: HiddenStatesLoss,
        bias_ok: bool = True,
    ) -> None:
        problem = head_problem(model, bias_ok=bias_ok)
        if problem is not None:
            raise ConfigError(f"{name}: {problem}; or set {name}: false")
        self.fused = fused
        self.name = name
        self.base: HiddenStatesLoss = base
        self.unit = getattr(base, "unit", "token")  # what the wrapped objective counts
        self.transform = logit_transform(unwrap(model).config)
        self.targets: Any = None
        self.result: Any = None
        for linear in output_linears(model)[0]:
            install_tap(linear, self)

    def count(self, batch: dict[str, Any]) -> Any:
        """The wrapped objective's count (target tokens for SFT)."""
        return self.base.count(batch)

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        """The wrapped objective's loss, its cross-entropy computed by the fused function."""
        return self.base.hidden_states_loss(model, batch, self.head_cross_entropy)

    def head_cross_entropy(self, model: Any, batch: dict[str, Any], targets: Any) -> Any:
        """The `HeadCrossEntropy` given to the objective: the model's forward with the output
        layer tapped, returning (the fused cross-entropy against `targets`, summed; the model's
        outputs, with empty logits)."""
        self.targets, self.result = targets, None
        try:
            outputs = model(**model_inputs(batch), use_cache=False)
        finally:
            self.targets = None
        loss, self.result = self.result, None
        if loss is None:
            raise ConfigError(
                f"{self.name}: the model's forward never called its output layer, so the fused "
                f"loss cannot be computed for this model; set {self.name}: false"
            )
        return loss, outputs

    def head_forward(self, module: Any, hidden: Any) -> Any:
        """The tap's work: the fused loss of `hidden` against the pending targets (kept in
        `self.result`); returns empty logits of shape (batch, sequence, 0)."""
        targets, self.targets = self.targets, None  # one output-layer call per forward
        if tuple(hidden.shape[:-1]) != tuple(targets.shape):
            raise ConfigError(
                f"{self.name}: the output layer got hidden states of shape "
                f"{tuple(hidden.shape)} for targets of shape {tuple(targets.shape)}; this model "
                f"cannot use the fused loss; set {self.name}: false"
            )
        flat = targets.reshape(-1).to(hidden.device)
        keep = (flat != IGNORE_INDEX).nonzero().squeeze(1)
        states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
        if self.transform.scale != 1.0:
            states = states * self.transform.scale
        states, weight, bias = compute_dtypes(states, module.weight, module.bias)
        if keep.numel() == 0:  # nothing to learn here; keep every parameter in the graph
            self.result = states.sum() * 0.0 + weight.sum() * 0.0
        else:
            self.result = self.fused(
                states,
                weight,
                flat.index_select(0, keep),
                bias=bias,
                softcap=self.transform.softcap,
            )
        return hidden.new_zeros((*hidden.shape[:-1], 0))
