"""Cut cross-entropy (`cut_cross_entropy: true`): the SFT loss (or any other objective's
cross-entropy) computed by Apple's cut-cross-entropy kernel, which never materialises the logits.

Key: `cut_cross_entropy`, `true` (required: refused before the model loads when it cannot run),
`auto` (used where it can run, otherwise one logged line and the run goes on without it) or
`false` (the default), following the facade's switch policy (`switch_applies`). It wraps, in
`build_loss`, the SFT objective or any other `axolotl_weave.HiddenStatesLoss` (see
`_fused_linear_loss` for how the output layer is tapped, the targets, and the families' logit
soft-capping and scaling); an objective that is not one is left alone (`auto`) or refused
(`true`). It needs
`pip install cut-cross-entropy` (import name `cut_cross_entropy`; Axolotl pins its fork
`cut-cross-entropy[transformers] @ git+https://github.com/axolotl-ai-cloud/ml-cross-entropy`),
an NVIDIA GPU (Ampere or newer) with Triton, and bf16 or fp16 training: its backward takes
half-precision hidden states. The output layer must have no bias.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Generator
from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    ConfigError,
    PluginConfig,
    Switch,
    hookimpl,
    resolve_precision,
    switch_applies,
    switch_value,
)
from pydantic import Field, model_validator

from axolotl_weave_plugins.kernels._fused_linear_loss import (
    FusedLinearCrossEntropy,
    head_problem,
    objective_problem,
)

PLUGIN_KIND = "kernel"
AXOLOTL_ALIASES = ("axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin",)
log = logging.getLogger("axolotl_weave")

KEY = "cut_cross_entropy"
NEEDS = (
    "the package cut-cross-entropy (pip install cut-cross-entropy) and an NVIDIA GPU "
    "(Ampere or newer) with Triton"
)
OTHER_LOSSES = ("liger_cross_entropy", "liger_fused_linear_cross_entropy")


class CutCrossEntropySettings(PluginConfig):
    """The `cut_cross_entropy` key (Axolotl's name)."""

    cut_cross_entropy: Switch = Field(
        False, description="SFT cross-entropy by Apple's cut-cross-entropy: no logits in memory."
    )

    @model_validator(mode="after")
    def _check_cut_cross_entropy(self) -> CutCrossEntropySettings:
        """One loss kernel at a time, and half precision when it is required."""
        if not self.cut_cross_entropy:
            return self
        others = [key for key in OTHER_LOSSES if getattr(self, key, False)]
        if others:
            raise ValueError(
                f"cut_cross_entropy and {others[0]} both replace the SFT loss: choose one"
            )
        if self.cut_cross_entropy is True and not (
            getattr(self, "bf16", "auto") or getattr(self, "fp16", False)
        ):
            raise ValueError(
                "cut_cross_entropy needs bf16 or fp16 training (its backward takes "
                "half-precision hidden states): set bf16: true (or auto), or fp16: true"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The `cut_cross_entropy` key."""
    return CutCrossEntropySettings


def missing_here() -> str | None:
    """What this machine lacks for cut cross-entropy, or None when it can run."""
    import torch

    missing = []
    if importlib.util.find_spec("cut_cross_entropy") is None:
        missing.append("cut-cross-entropy (not installed)")
    if not torch.cuda.is_available():
        missing.append("a GPU (torch sees no CUDA device)")
    return " and ".join(missing) or None


def precision_problem(cfg: Any) -> str | None:
    """Why the run's precision does not suit the kernel (it needs bf16 or fp16), or None."""
    if resolve_precision(cfg).mixed_precision in ("bf16", "fp16"):
        return None
    return "it needs bf16 or fp16 training and this run trains in float32; set bf16: true"


def runs_here(value: Switch, cfg: Any) -> bool:
    """Whether this machine and the run's precision suit the kernel (the switch policy: an
    error naming what is missing for `true`, a logged line for `auto`)."""
    return switch_applies(KEY, value, missing_here(), needs=NEEDS) and switch_applies(
        KEY, value, precision_problem(cfg)
    )


@hookimpl(wrapper=True)
def load_model(cfg: Any) -> Generator[None, Any, Any]:
    """Before the model loads: refuse `cut_cross_entropy: true` when this machine cannot run it
    (missing package, no GPU) or the run is not in half precision. Returns the loaded model
    unchanged."""
    if switch_value(cfg, KEY) is True:
        runs_here(True, cfg)
    return (yield)


def cut_cross_entropy_function() -> Callable[..., Any]:
    """cut-cross-entropy's `linear_cross_entropy` with the `FusedFunction` signature, summed."""
    from cut_cross_entropy import linear_cross_entropy

    def fused(
        hidden: Any, weight: Any, targets: Any, *, bias: Any = None, softcap: Any = None
    ) -> Any:
        if bias is not None:  # refused when the loss is built; kept as a guard
            raise ConfigError(f"{KEY}: the output layer has a bias, which it does not take")
        return linear_cross_entropy(
            hidden, weight, targets, ignore_index=IGNORE_INDEX, softcap=softcap, reduction="sum"
        )

    return fused


def wrap_loss(cfg: Any, model: Any, loss: Any) -> Any:
    """Cut cross-entropy around the objective `loss` (a `HiddenStatesLoss`) when asked, or
    `loss` as it is."""
    value = switch_value(cfg, KEY)
    if not switch_applies(KEY, value, objective_problem(loss)) or not runs_here(value, cfg):
        return loss
    if not switch_applies(KEY, value, head_problem(model, bias_ok=False)):
        return loss
    objective = type(loss).__name__
    log.info(
        "cut_cross_entropy: the %s loss by cut-cross-entropy (no logits materialised)", objective
    )
    return FusedLinearCrossEntropy(
        model, cut_cross_entropy_function(), name=KEY, base=loss, bias_ok=False
    )


@hookimpl(wrapper=True)
def build_loss(cfg: Any, model: Any) -> Generator[None, Any, Any]:
    """Wrap the objective (the SFT cross-entropy, or any `HiddenStatesLoss`) in cut
    cross-entropy when asked."""
    loss = yield
    return wrap_loss(cfg, model, loss)
