"""Cut cross-entropy (`cut_cross_entropy: true`): the SFT loss computed by Apple's
cut-cross-entropy kernel, which never materialises the logits.

Key: `cut_cross_entropy`, `true` (required: refused before the model loads when it cannot run),
`auto` (used where it can run, otherwise one logged line and the run goes on without it) or
`false` (the default). It wraps the SFT objective in `build_loss` (see `_fused_linear_loss`
for how the output layer is tapped, the shift, and the families' logit soft-capping and
scaling); any other objective (an `rl:` method) is left alone. It needs
`pip install cut-cross-entropy` (import name `cut_cross_entropy`; Axolotl pins its fork
`cut-cross-entropy[transformers] @ git+https://github.com/axolotl-ai-cloud/ml-cross-entropy`),
an NVIDIA GPU (Ampere or newer) with Triton, and bf16 or fp16 training: its backward takes
half-precision hidden states. The output layer must have no bias.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Generator
from typing import Any, Literal

from axolotl_weave import (
    IGNORE_INDEX,
    ConfigError,
    MissingDependencyError,
    PluginConfig,
    hookimpl,
    resolve_precision,
)
from pydantic import Field, model_validator

from axolotl_weave_plugins.kernels._fused_linear_loss import FusedLinearCrossEntropy, head_problem
from axolotl_weave_plugins.losses.sft import CrossEntropy

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

    cut_cross_entropy: bool | Literal["auto"] = Field(
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


def usable(value: bool | str, problem: str | None, *, missing: bool = False) -> bool:
    """True without a problem; with one, False and a logged line for `auto`, an error for
    `true` (`MissingDependencyError` when this machine lacks something, else `ConfigError`)."""
    if problem is None:
        return True
    if value == "auto":
        log.info("%s: auto: not used, %s", KEY, problem)
        return False
    if missing:
        raise MissingDependencyError(
            f"{KEY}: needs {NEEDS}; missing here: {problem}. Set {KEY}: auto to use it only "
            "where it can run, or false"
        )
    raise ConfigError(f"{KEY}: {problem}; or set {KEY}: false")


def requested(cfg: Any) -> bool | str:
    """The key's value: True, "auto", or False."""
    value = getattr(cfg, KEY, False)
    return value if value in (True, "auto") else False


@hookimpl(wrapper=True)
def load_model(cfg: Any) -> Generator[None, Any, Any]:
    """Before the model loads: refuse `cut_cross_entropy: true` when this machine cannot run it
    (missing package, no GPU) or the run is not in half precision. Returns the loaded model
    unchanged."""
    if requested(cfg) is True:
        usable(True, missing_here(), missing=True)
        usable(True, precision_problem(cfg))
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
    """Cut cross-entropy around the SFT objective `loss` when asked, or `loss` as it is."""
    value = requested(cfg)
    if not value:
        return loss
    if not isinstance(loss, CrossEntropy):
        objective = type(loss).__name__
        if not usable(value, f"it replaces the SFT cross-entropy; the objective is {objective}"):
            return loss
    if not usable(value, missing_here(), missing=True) or not usable(value, precision_problem(cfg)):
        return loss
    if not usable(value, head_problem(model, bias_ok=False)):
        return loss
    log.info("cut_cross_entropy: the SFT loss by cut-cross-entropy (no logits materialised)")
    return FusedLinearCrossEntropy(
        model, cut_cross_entropy_function(), name=KEY, base=loss, bias_ok=False
    )


@hookimpl(wrapper=True)
def build_loss(cfg: Any, model: Any) -> Generator[None, Any, Any]:
    """Wrap the SFT cross-entropy in cut cross-entropy when asked."""
    loss = yield
    return wrap_loss(cfg, model, loss)
