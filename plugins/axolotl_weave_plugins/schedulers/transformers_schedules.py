"""Learning-rate schedules by the names `lr_scheduler:` gives in Axolotl: Hugging Face
transformers' schedules and Axolotl's own, with Axolotl's keys.

transformers' schedules: `cosine` (the default), `linear`, `constant_with_warmup`,
`cosine_with_restarts`, `polynomial`, `inverse_sqrt`, `cosine_with_min_lr`,
`cosine_warmup_with_min_lr` and `warmup_stable_decay`, each with its settings from
`lr_scheduler_kwargs` (`num_cycles`, `lr_end`, `power`, `timescale`, `min_lr` / `min_lr_rate`,
`num_decay_steps`...), as the Trainer passes them. Each factor is the very function transformers'
`LambdaLR` runs, so learning rates match the Trainer step for step. `constant` is transformers'
`constant`, with no warm-up, as in Axolotl and the Trainer (`constant_with_warmup` has one).

Axolotl's schedules, its formulas (`axolotl/utils/schedulers.py`) written out below:

- `cosine` with `cosine_min_lr_ratio`: the cosine decays to that fraction of the rate instead of
  0; with `cosine_constant_lr_ratio` too, it reaches that floor after that fraction of the steps
  and holds it; with `lr_quadratic_warmup`, the warm-up is quadratic (and the decay to 0);
- `rex` (reflected exponential, down to `cosine_min_lr_ratio` of the rate, or 0);
- `one_cycle`: torch's `OneCycleLR` as Axolotl sets it (peak `learning_rate`, rising over the
  warm-up, cosine annealing), `lr_scheduler_kwargs` for its other settings. Axolotl's also
  cycles the optimizer's momentum (beta1 0.85-0.95), which a schedule here cannot do: it is
  refused unless `lr_scheduler_kwargs: {cycle_momentum: false}`.

Refused at validation, with the reason: `reduce_lr_on_plateau` and `greedy` (they follow the
eval loss, while a schedule here is a function of the step), `log_sweep` (Axolotl ran it as plain
`cosine`), and keys a schedule would ignore (`cosine_min_lr_ratio` with `linear`, settings for
a schedule that takes none...), which Axolotl ignores silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

from axolotl_weave import ConfigError, PluginConfig, hookimpl
from pydantic import Field, ValidationInfo, field_validator, model_validator

PLUGIN_KIND = "scheduler"

SCHEDULES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant",
    "constant_with_warmup": "constant_with_warmup",
    "cosine_with_restarts": "cosine_with_restarts",
    "polynomial": "polynomial",
    "inverse_sqrt": "inverse_sqrt",
    "cosine_with_min_lr": "cosine_with_min_lr",
    "cosine_warmup_with_min_lr": "cosine_warmup_with_min_lr",
    "warmup_stable_decay": "warmup_stable_decay",
}
"""`lr_scheduler:` name -> transformers' `SchedulerType` name."""

NEEDS_KWARGS = ("cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")
"""transformers' schedules that cannot run without `lr_scheduler_kwargs`."""

ONE_CYCLE_KWARGS = (
    "pct_start", "anneal_strategy", "div_factor", "final_div_factor", "three_phase",
    "cycle_momentum", "base_momentum", "max_momentum",
)  # fmt: skip
"""The settings of torch's `OneCycleLR` that `lr_scheduler_kwargs` may give `one_cycle`."""

REFUSED = {
    "reduce_lr_on_plateau": "it lowers the rate when the eval loss stops improving, while a "
    "schedule here is a function of the step",
    "greedy": "it follows the loss, while a schedule here is a function of the step",
    "log_sweep": "Axolotl ran it as plain cosine: give lr_scheduler: cosine",
}
"""Schedule names of Axolotl or transformers that nothing here builds -> why."""


class ScheduleSettings(PluginConfig):
    """Axolotl's schedule keys."""

    lr_scheduler_kwargs: dict[str, Any] | None = Field(
        None,
        description="Settings of the schedule: transformers' (num_cycles, lr_end, power, "
        "timescale, min_lr_rate, num_decay_steps...), or torch OneCycleLR's for one_cycle.",
    )
    cosine_min_lr_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="cosine and rex: decay to this fraction of the peak rate, not to 0.",
    )
    cosine_constant_lr_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="cosine with cosine_min_lr_ratio: reach that floor after this fraction of "
        "the steps, then hold it.",
    )
    lr_quadratic_warmup: bool | None = Field(
        None, description="cosine: a quadratic warm-up instead of a linear one."
    )

    @field_validator("lr_scheduler", mode="before", check_fields=False)
    @classmethod
    def _schedule_supported(cls, value: Any, info: ValidationInfo) -> Any:
        registered = (info.context or {}).get("lr_schedulers") or []
        if isinstance(value, str) and value in REFUSED and value not in registered:
            raise ValueError(
                f"'{value}' is not supported: {REFUSED[value]}; valid: {', '.join(registered)}"
            )
        return value

    @model_validator(mode="after")
    def _schedule_keys(self) -> ScheduleSettings:
        problem = schedule_problem(self)
        if problem:
            raise ValueError(problem)
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """Axolotl's schedule keys."""
    return ScheduleSettings


def schedule_problem(cfg: Any) -> str | None:
    """Why the schedule keys of `cfg` do not fit its `lr_scheduler`, or None."""
    name = getattr(cfg, "lr_scheduler", None)
    kwargs = cfg.lr_scheduler_kwargs or {}
    min_ratio, constant_ratio = cfg.cosine_min_lr_ratio, cfg.cosine_constant_lr_ratio
    if cfg.lr_quadratic_warmup and name != "cosine":
        return "lr_quadratic_warmup applies to lr_scheduler: cosine only"
    if cfg.lr_quadratic_warmup and min_ratio is not None:
        return (
            "set lr_quadratic_warmup or cosine_min_lr_ratio, not both (Axolotl would take the "
            "quadratic warm-up and drop the ratio)"
        )
    if min_ratio is not None and name not in ("cosine", "rex"):
        return f"cosine_min_lr_ratio applies to lr_scheduler: cosine or rex, not {name}"
    if constant_ratio is not None and not (name == "cosine" and min_ratio):
        return (
            "cosine_constant_lr_ratio applies to lr_scheduler: cosine with a non-zero "
            "cosine_min_lr_ratio"
        )
    if name == "one_cycle":
        return one_cycle_problem(kwargs)
    if not kwargs and name not in NEEDS_KWARGS:
        return None
    if name in ("rex", "constant", "constant_with_warmup") or axolotl_cosine(cfg):
        return f"lr_scheduler_kwargs: the schedule {describe(cfg)} takes none"
    if name in SCHEDULES:
        try:  # the schedule transformers builds (it is lazy: any length will do)
            builder(SCHEDULES[name])(cfg, 1_000_000, 0)
        except ConfigError as exc:
            return str(exc)
    return None


def one_cycle_problem(kwargs: dict[str, Any]) -> str | None:
    """Why `lr_scheduler_kwargs` do not fit `one_cycle`, or None."""
    unknown = sorted(set(kwargs) - set(ONE_CYCLE_KWARGS))
    if unknown:
        return (
            f"lr_scheduler_kwargs: one_cycle does not take {', '.join(unknown)} (it takes "
            f"{', '.join(ONE_CYCLE_KWARGS)})"
        )
    if kwargs.get("cycle_momentum", True) is not False:
        return (
            "lr_scheduler: one_cycle: Axolotl's OneCycleLR also cycles the optimizer's momentum "
            "(beta1 between 0.85 and 0.95), which a schedule here cannot; set "
            "lr_scheduler_kwargs: {cycle_momentum: false} for the learning rate alone"
        )
    if kwargs.get("anneal_strategy", "cos") not in ("cos", "linear"):
        return "lr_scheduler_kwargs: one_cycle's anneal_strategy is cos or linear"
    pct = kwargs.get("pct_start", 0.0)
    if not isinstance(pct, (int, float)) or not 0 <= pct <= 1:
        return f"lr_scheduler_kwargs: one_cycle's pct_start is a fraction in [0, 1], not {pct!r}"
    return None


def axolotl_cosine(cfg: Any) -> bool:
    """Whether `cosine` runs Axolotl's formula (quadratic warm-up or a floor), as Axolotl
    chooses it: a ratio of 0 is no floor."""
    axolotl_keys = cfg.lr_quadratic_warmup or cfg.cosine_min_lr_ratio
    return cfg.lr_scheduler == "cosine" and bool(axolotl_keys)


def describe(cfg: Any) -> str:
    """The schedule's name, with the key that chose Axolotl's cosine."""
    if not axolotl_cosine(cfg):
        return cfg.lr_scheduler
    key = "lr_quadratic_warmup" if cfg.lr_quadratic_warmup else "cosine_min_lr_ratio"
    return f"cosine with {key}"


# -- transformers' schedules ------------------------------------------------------------------


def builder(hf_name: str) -> Callable[[Any, int, int], Callable[[int], float]]:
    """A schedule builder: transformers' `hf_name` schedule's factor of the step, with the
    config's `lr_scheduler_kwargs`."""

    def build(cfg: Any, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
        import torch
        from transformers import get_scheduler

        # the factor transformers' LambdaLR applies; the optimizer's lr is what `polynomial`
        # decays from and `min_lr` is a fraction of (as in the Trainer, `learning_rate`)
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate)
        kwargs = getattr(cfg, "lr_scheduler_kwargs", None) or {}
        try:
            scheduler = get_scheduler(
                hf_name,
                optimizer=probe,
                num_warmup_steps=warmup_steps,
                num_training_steps=total_steps,
                scheduler_specific_kwargs=dict(kwargs),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"lr_scheduler: {cfg.lr_scheduler}: {exc}") from None
        (factor,) = scheduler.lr_lambdas
        return factor

    return build


def build_cosine(cfg: Any, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """`cosine`: Axolotl's variants when its keys are set, else transformers' cosine."""
    min_ratio = getattr(cfg, "cosine_min_lr_ratio", None)
    constant_ratio = getattr(cfg, "cosine_constant_lr_ratio", None)
    if getattr(cfg, "lr_quadratic_warmup", None):
        return partial(quadratic_warmup_cosine, warmup=warmup_steps, total=total_steps)
    if min_ratio and constant_ratio:
        return partial(
            cosine_decay_constant,
            warmup=warmup_steps,
            total=total_steps,
            min_ratio=min_ratio,
            constant_ratio=constant_ratio,
        )
    if min_ratio:
        return partial(cosine_min_lr, warmup=warmup_steps, total=total_steps, min_ratio=min_ratio)
    return builder("cosine")(cfg, total_steps, warmup_steps)


# -- Axolotl's schedules (axolotl/utils/schedulers.py), as factors of the step -----------------


def quadratic_warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """Axolotl's `get_cosine_schedule_with_quadratic_warmup` (half a cosine wave)."""
    if step < warmup:
        return (float(step) / float(max(1, warmup))) ** 2
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def cosine_min_lr(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Axolotl's `get_cosine_schedule_with_min_lr`: linear warm-up, cosine down to `min_ratio`."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    scaling = 0.5 * (1.0 + math.cos(math.pi * progress))
    return (1 - min_ratio) * scaling + min_ratio


def cosine_decay_constant(
    step: int, *, warmup: int, total: int, min_ratio: float, constant_ratio: float
) -> float:
    """Axolotl's `get_cosine_schedule_with_warmup_decay_constant`: cosine down to `min_ratio`
    at `constant_ratio` of the steps, then constant."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    constant_steps = int(total * constant_ratio)
    step = min(step, constant_steps)
    progress = float(step - warmup) / float(max(1, constant_steps - warmup))
    wave = (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
    return max(0, wave) + min_ratio


def rex(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Axolotl's `RexLR` (reflected exponential), whose rate at a step is its formula at the
    next one (it starts counting at 1)."""
    last = step + 1
    if 1 <= last <= warmup:
        return last / warmup
    after, remaining = last - warmup, total - warmup
    if after >= remaining or after == -1 or remaining <= 0:
        return min_ratio
    z = (remaining - after % remaining) / remaining
    return min_ratio + (1.0 - min_ratio) * (z / (0.1 + 0.9 * z))


def build_rex(cfg: Any, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """`rex` down to `cosine_min_lr_ratio` of the rate (0 when unset)."""
    if warmup_steps > total_steps:
        raise ConfigError(f"lr_scheduler: rex: {warmup_steps} warm-up steps exceed {total_steps}")
    min_ratio = getattr(cfg, "cosine_min_lr_ratio", None) or 0.0
    return partial(rex, warmup=warmup_steps, total=total_steps, min_ratio=min_ratio)


def one_cycle(
    step: int, *, phases: list[tuple[float, float, float]], anneal: Callable[..., float]
) -> float:
    """torch's `OneCycleLR` rate over its peak: `phases` of (end step, start, end factor)."""
    start = 0.0
    for index, (end_step, begin, end) in enumerate(phases):
        if step <= end_step or index == len(phases) - 1:
            return anneal(begin, end, (step - start) / (end_step - start))
        start = end_step
    raise AssertionError("unreachable: the last phase always answers")


def anneal_cos(start: float, end: float, pct: float) -> float:
    """OneCycleLR's cosine annealing from `start` to `end` as `pct` goes from 0 to 1."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def anneal_linear(start: float, end: float, pct: float) -> float:
    """OneCycleLR's linear annealing."""
    return (end - start) * pct + start


def build_one_cycle(cfg: Any, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """`one_cycle` as Axolotl builds `OneCycleLR`: peak `learning_rate`, `pct_start` the
    warm-up's share of the steps, cosine annealing, unless `lr_scheduler_kwargs` says otherwise."""
    kwargs = {
        "pct_start": warmup_steps / total_steps, "anneal_strategy": "cos", "div_factor": 25.0,
        "final_div_factor": 1e4, "three_phase": False, "cycle_momentum": True,
        **(getattr(cfg, "lr_scheduler_kwargs", None) or {}),
    }  # fmt: skip
    problem = one_cycle_problem(kwargs)
    if problem:
        raise ConfigError(problem)
    pct, anneals = float(kwargs["pct_start"]), {"cos": anneal_cos, "linear": anneal_linear}
    initial = 1.0 / kwargs["div_factor"]
    floor = initial / kwargs["final_div_factor"]
    rise = pct * total_steps - 1
    if kwargs["three_phase"]:
        phases = [(rise, initial, 1.0), (2 * pct * total_steps - 2, 1.0, initial)]
        phases.append((total_steps - 1, initial, floor))
    else:
        phases = [(rise, initial, 1.0), (total_steps - 1, 1.0, floor)]
    starts = [0.0, *(end for end, _, _ in phases[:-1])]
    if any(end == start for (end, _, _), start in zip(phases, starts, strict=True)):
        raise ConfigError(
            f"lr_scheduler: one_cycle: a phase of {total_steps} steps with pct_start {pct} is "
            "empty (a warm-up of 1 step, or all steps); give 0 or at least 2 warm-up steps"
        )
    return partial(one_cycle, phases=phases, anneal=anneals[kwargs["anneal_strategy"]])


@hookimpl
def register_lr_schedulers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register transformers' schedules and Axolotl's."""
    for name, hf_name in SCHEDULES.items():
        register(name, build_cosine if name == "cosine" else builder(hf_name))
    register("rex", build_rex)
    register("one_cycle", build_one_cycle)
