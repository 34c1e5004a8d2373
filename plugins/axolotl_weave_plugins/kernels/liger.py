"""Liger kernels (the `liger-kernel` package's Triton kernels), switched on key by key.

Keys (Axolotl's names), each `true` (required: refused before the model loads when it cannot
run), `auto` (used where it can run, otherwise one logged line and the run goes on without it)
or `false` (the default):

- `liger_rope`, `liger_rms_norm`, `liger_glu_activation` (SwiGLU or GeGLU, whichever the model
  has; `liger_swiglu` is Axolotl's older name), `liger_layer_norm`: modules of the loaded model
  swapped for Liger's in `patch_attention`, through liger-kernel's apply function for the
  model's `model_type` (`MODEL_TYPE_TO_APPLY_LIGER_FN`). Only families that list "liger" in
  their `kernels` (or unregistered model types liger-kernel knows) are patched. Liger's RoPE
  replaces the modeling module's `apply_rotary_pos_emb`, so it holds for the whole process.
- `liger_cross_entropy`: the objective's cross-entropy computed by Liger's cross-entropy kernel
  on the logits. `liger_fused_linear_cross_entropy`: Liger's fused linear cross-entropy, which
  never materialises the logits (see `_fused_linear_loss`). Both wrap, in `build_loss`, the
  SFT objective or any other objective that is an `axolotl_weave.HiddenStatesLoss` (exposes
  `hidden_states_loss`); an objective that is not is left alone (`auto`) or refused (`true`).

`true | auto | false` follows the facade's switch policy (`switch_applies`).

Liger needs `pip install liger-kernel` and an NVIDIA (CUDA) or AMD (ROCm) GPU with Triton.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Callable, Generator
from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    ConfigError,
    HiddenStatesLoss,
    ModelFamily,
    PluginConfig,
    Switch,
    hookimpl,
    logits_cross_entropy,
    switch_applies,
    switch_value,
)
from pydantic import Field, model_validator

from axolotl_weave_plugins.kernels._fused_linear_loss import (
    FusedLinearCrossEntropy,
    head_problem,
    objective_problem,
    unwrap,
)

PLUGIN_KIND = "kernel"
AXOLOTL_ALIASES = ("axolotl.integrations.liger.LigerPlugin",)
log = logging.getLogger("axolotl_weave")

MODULE_KERNELS: dict[str, tuple[str, ...]] = {
    "liger_rope": ("rope",),
    "liger_rms_norm": ("rms_norm",),
    "liger_glu_activation": ("swiglu", "geglu"),
    "liger_layer_norm": ("layer_norm",),
}
"""Module kernels: config key -> the switch(es) of liger-kernel's apply functions it sets."""

LOSS_KERNELS = ("liger_cross_entropy", "liger_fused_linear_cross_entropy")
SWITCHES = ("rope", "rms_norm", "swiglu", "geglu", "layer_norm")
"""Every module switch an apply function may take; those not asked for are passed False (the
apply functions default them to True)."""

NEEDS = (
    "the package liger-kernel (pip install liger-kernel) and an NVIDIA or AMD ROCm GPU with Triton"
)


class LigerSettings(PluginConfig):
    """Liger's keys, with Axolotl's names; each true, auto or false."""

    liger_rope: Switch = Field(False, description="Liger's rotary embedding kernel.")
    liger_rms_norm: Switch = Field(False, description="Liger's RMSNorm kernel.")
    liger_glu_activation: Switch | None = Field(
        None, description="Liger's SwiGLU / GeGLU MLP kernel (default false)."
    )
    liger_swiglu: Switch | None = Field(
        None, description="Axolotl's older name of liger_glu_activation."
    )
    liger_layer_norm: Switch = Field(False, description="Liger's LayerNorm kernel.")
    liger_cross_entropy: Switch = Field(
        False, description="SFT cross-entropy by Liger's kernel (on the logits)."
    )
    liger_fused_linear_cross_entropy: Switch = Field(
        False, description="SFT cross-entropy fused with the output layer: no logits in memory."
    )

    @model_validator(mode="after")
    def _check_liger_keys(self) -> LigerSettings:
        """`liger_swiglu` is the older name of `liger_glu_activation` (not both); one liger loss."""
        if self.liger_swiglu is not None:
            if self.liger_glu_activation is not None:
                raise ValueError(
                    "liger_swiglu is the older name of liger_glu_activation: set only one"
                )
            self.liger_glu_activation = self.liger_swiglu
        if self.liger_cross_entropy and self.liger_fused_linear_cross_entropy:
            raise ValueError(
                "liger_cross_entropy and liger_fused_linear_cross_entropy both replace the SFT "
                "loss: choose one (the fused one also saves the logits' memory)"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """Liger's config keys."""
    return LigerSettings


# --- deciding what runs -----------------------------------------------------------------------


def missing_here() -> str | None:
    """What this machine lacks for Liger's kernels, or None when they can run."""
    import torch

    missing = []
    if importlib.util.find_spec("liger_kernel") is None:
        missing.append("liger-kernel (not installed)")
    if not torch.cuda.is_available():
        missing.append("a GPU (torch sees no CUDA or ROCm device)")
    return " and ".join(missing) or None


def family_problem(family: ModelFamily | None) -> str | None:
    """Why the module kernels cannot patch this family, or None."""
    if family is not None and "liger" not in family.kernels:
        listed = ", ".join(family.kernels) or "none"
        return f"the '{family.name}' model family does not list liger among its kernels ({listed})"
    return None


def runs_here(key: str, value: Switch) -> bool:
    """Whether this machine can run Liger's kernels for `key` (the switch policy for what it
    lacks: an error naming what to install for `true`, a logged line for `auto`)."""
    return switch_applies(key, value, missing_here(), needs=NEEDS)


def check_before_loading(cfg: Any, family: ModelFamily | None) -> None:
    """Refuse a key set to `true` that cannot run: the family, then this machine."""
    for key in (*MODULE_KERNELS, *LOSS_KERNELS):
        if switch_value(cfg, key) is not True:
            continue
        if key in MODULE_KERNELS:
            switch_applies(key, True, family_problem(family))
        runs_here(key, True)


@hookimpl(wrapper=True)
def load_model(cfg: Any, family: ModelFamily | None) -> Generator[None, Any, Any]:
    """Before the model loads: refuse a liger key set to `true` that cannot run here (missing
    package, no GPU, a family without liger support), so the error comes before the wait.
    Returns the loaded model unchanged."""
    check_before_loading(cfg, family)
    return (yield)


# --- module kernels (patch_attention) ---------------------------------------------------------


def liger_apply_functions() -> dict[str, Callable[..., None]]:
    """liger-kernel's apply function per `model_type`."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return dict(MODEL_TYPE_TO_APPLY_LIGER_FN)


def switches_of(apply_fn: Callable[..., None]) -> tuple[set[str], bool]:
    """The module switches an apply function names, and whether it forwards **kwargs."""
    parameters = inspect.signature(apply_fn).parameters.values()
    names = {p.name for p in parameters if p.name in SWITCHES}
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    return names, forwards


def plan_module_kernels(
    cfg: Any, model_type: str | None, apply_fns: dict[str, Callable[..., None]]
) -> tuple[Callable[..., None] | None, dict[str, bool], list[str]]:
    """The apply function, its switches and the keys it will apply for this `model_type`.

    Keys the model type has no kernel for raise (`true`) or are logged and skipped (`auto`).
    """
    apply_fn = apply_fns.get(model_type or "")
    named, forwards = switches_of(apply_fn) if apply_fn else (set(), False)
    switches = dict.fromkeys(SWITCHES if forwards else named, False)
    applied = []
    for key, options in MODULE_KERNELS.items():
        value = switch_value(cfg, key)
        if not value:
            continue
        found: list[str] = []
        if apply_fn is None:
            known = ", ".join(sorted(apply_fns))
            problem = f"liger-kernel has no kernels for model_type '{model_type}' (it has: {known})"
        else:
            found = [name for name in options if name in named] or (
                list(options) if forwards else []
            )
            offered = ", ".join(sorted(named)) or "none"
            problem = (
                None
                if found
                else f"liger-kernel has no {'/'.join(options)} kernel for model_type "
                f"'{model_type}' (it has: {offered})"
            )
        if switch_applies(key, value, problem):
            switches.update(dict.fromkeys(found, True))
            applied.append(key)
    return (apply_fn if applied else None), switches, applied


def check_activation(config: Any, switches: dict[str, bool]) -> None:
    """Liger's SwiGLU computes SiLU: refuse it on a model whose MLP activation is another."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    act = getattr(text, "hidden_act", None) or getattr(text, "hidden_activation", None)
    if switches.get("swiglu") and act not in (None, "silu", "swish"):
        raise ConfigError(
            f"liger_glu_activation: Liger's SwiGLU computes SiLU, but this model's activation is "
            f"'{act}'; set liger_glu_activation: false"
        )


@hookimpl
def patch_attention(model: Any, cfg: Any, family: ModelFamily | None) -> None:
    """Swap the model's RoPE, RMSNorm, GLU MLP and LayerNorm for Liger's, as the keys ask, with
    liger-kernel's apply function for the model's `model_type` (on the base of a peft model)."""
    wanted = [
        key
        for key in MODULE_KERNELS
        if switch_applies(key, switch_value(cfg, key), family_problem(family))
        and runs_here(key, switch_value(cfg, key))
    ]
    if not wanted:
        return
    base = unwrap(model)
    model_type = getattr(base.config, "model_type", None)
    apply_fn, switches, applied = plan_module_kernels(cfg, model_type, liger_apply_functions())
    if apply_fn is None:
        return
    check_activation(base.config, switches)
    apply_fn(model=base, cross_entropy=False, fused_linear_cross_entropy=False, **switches)
    log.info("liger: %s on model_type %s", ", ".join(applied), model_type)


# --- losses (build_loss) ----------------------------------------------------------------------


def liger_cross_entropy_function() -> Callable[..., Any]:
    """Liger's cross-entropy kernel (torch.nn.functional.cross_entropy's signature)."""
    from liger_kernel.transformers.functional import liger_cross_entropy

    return liger_cross_entropy


def liger_fused_function() -> Callable[..., Any]:
    """Liger's fused linear cross-entropy with the `FusedFunction` signature, summed."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    def fused(
        hidden: Any, weight: Any, targets: Any, *, bias: Any = None, softcap: Any = None
    ) -> Any:
        return liger_fused_linear_cross_entropy(
            hidden,
            weight,
            targets,
            bias=bias,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            softcap=softcap,
        )

    return fused


class LigerCrossEntropy:
    """An objective (a `HiddenStatesLoss`: the SFT cross-entropy...) with its cross-entropy on
    the logits computed by another cross-entropy function (Liger's kernel); its count and the
    rest of its loss (a router's auxiliary loss...) are the objective's."""

    def __init__(self, cross_entropy: Callable[..., Any], base: HiddenStatesLoss) -> None:
        self.cross_entropy = cross_entropy
        self.base = base
        self.unit = getattr(base, "unit", "token")  # what the wrapped objective counts

    def count(self, batch: dict[str, Any]) -> Any:
        """The wrapped objective's count (target tokens for SFT)."""
        return self.base.count(batch)

    def __call__(self, model: Any, batch: dict[str, Any]) -> Any:
        """The wrapped objective's loss, its cross-entropy by `cross_entropy` (float32 logits)."""
        return self.base.hidden_states_loss(model, batch, self.head_cross_entropy)

    def head_cross_entropy(self, model: Any, batch: dict[str, Any], targets: Any) -> Any:
        """The `HeadCrossEntropy` given to the objective: the logits' cross-entropy against
        `targets` by `cross_entropy`, and the model's outputs."""
        return logits_cross_entropy(model, batch, targets, cross_entropy=self.cross_entropy)


def wrap_loss(cfg: Any, model: Any, loss: Any) -> Any:
    """The liger loss the config asks for around the objective `loss` (a `HiddenStatesLoss`),
    or `loss` as it is."""
    key = next((k for k in LOSS_KERNELS if switch_value(cfg, k)), None)
    if key is None:
        return loss
    value = switch_value(cfg, key)
    if not switch_applies(key, value, objective_problem(loss)) or not runs_here(key, value):
        return loss
    if key == "liger_cross_entropy":
        log.info("liger: liger_cross_entropy on %s (Liger's kernel)", type(loss).__name__)
        return LigerCrossEntropy(liger_cross_entropy_function(), base=loss)
    if not switch_applies(key, value, head_problem(model)):
        return loss
    objective = type(loss).__name__
    log.info("liger: liger_fused_linear_cross_entropy on %s (no logits materialised)", objective)
    return FusedLinearCrossEntropy(model, liger_fused_function(), name=key, base=loss)


@hookimpl(wrapper=True)
def build_loss(cfg: Any, model: Any) -> Generator[None, Any, Any]:
    """Wrap the objective (the SFT cross-entropy, or any `HiddenStatesLoss`) in Liger's (fused
    linear) cross-entropy when asked."""
    loss = yield
    return wrap_loss(cfg, model, loss)
