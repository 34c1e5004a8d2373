"""Learning-rate schedules are a registry (`register_lr_schedulers`): the built-in plugin gives
transformers' schedules by name, factor for factor; `lr_multiplier` answers scale them; an
unknown `lr_scheduler:` is refused with the registered names."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import hookimpl
from axolotl_weave._errors import ConfigError
from axolotl_weave._hooks import Hooks
from axolotl_weave._optim import build_scheduler
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session
from axolotl_weave_testing import write_config
from transformers import get_scheduler

TOTAL, WARMUP = 20, 3


def sched_cfg(name: str, **keys: Any) -> SimpleNamespace:
    values = {"lr_scheduler": name, "learning_rate": 1e-3, "warmup_steps": WARMUP}
    return SimpleNamespace(**{"warmup_ratio": None, **values, **keys})


def optimizer(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr)


def lrs(scheduler: Any, steps: int = TOTAL) -> list[float]:
    """The learning rate at each step 0..steps, stepping the optimizer and the scheduler."""
    rates = []
    for _ in range(steps + 1):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    ("name", "hf_name"),
    [
        ("cosine", "cosine"),
        ("linear", "linear"),
        ("constant", "constant"),  # no warm-up, as in Axolotl and the Trainer
        ("cosine_with_restarts", "cosine_with_restarts"),
        ("polynomial", "polynomial"),
        ("inverse_sqrt", "inverse_sqrt"),
    ],
)
def test_a_registered_schedule_is_transformers_factor_for_factor(name: str, hf_name: str) -> None:
    schedules = Hooks(make_plugin_manager()).lr_schedulers()
    factor = schedules[name](sched_cfg(name), TOTAL, WARMUP)
    reference = get_scheduler(
        hf_name, optimizer(), num_warmup_steps=WARMUP, num_training_steps=TOTAL
    )
    for step in range(TOTAL + 1):
        assert factor(step) == reference.lr_lambdas[0](step), step
    ours = build_scheduler(sched_cfg(name), optimizer(), TOTAL, Hooks(make_plugin_manager()))
    assert lrs(ours) == lrs(reference)


@pytest.mark.parametrize("given", [0.15, 0.5, 3, 3.0])
def test_warmup_steps_below_one_is_a_fraction_as_transformers_reads_it(
    tmp_path: Path, base_config: dict[str, Any], given: float
) -> None:
    """`warmup_steps: 0.1` (Axolotl's newer examples, transformers' `TrainingArguments`): the
    warm-up is that fraction of the steps, rounded up; a whole number is a step count."""
    from axolotl_weave._optim import warmup_steps
    from axolotl_weave._run import open_session
    from transformers import TrainingArguments

    path = write_config(tmp_path / "c.yml", {**base_config, "warmup_steps": given})
    cfg = open_session(path).cfg
    reference = TrainingArguments(output_dir=str(tmp_path), warmup_steps=given, report_to=[])
    for total in (7, 20, 101):
        assert warmup_steps(cfg, total) == reference.get_warmup_steps(total), total


def test_warmup_steps_of_a_fraction_above_one_is_refused(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    from axolotl_weave import ConfigError
    from axolotl_weave._run import open_session

    path = write_config(tmp_path / "c.yml", {**base_config, "warmup_steps": 2.5})
    with pytest.raises(ConfigError, match="warmup_steps: .*a whole number of steps, or a fraction"):
        open_session(path)


def test_an_lr_multiplier_scales_the_schedule() -> None:
    class Halve:
        @hookimpl
        def lr_multiplier(self, step: int) -> float | None:
            return 0.5 if step >= 5 else None

    pm = make_plugin_manager()
    pm.register(Halve(), "halve")
    cfg = sched_cfg("linear")
    plain = lrs(build_scheduler(cfg, optimizer(), TOTAL, Hooks(make_plugin_manager())))
    halved = lrs(build_scheduler(cfg, optimizer(), TOTAL, Hooks(pm)))
    assert halved[:5] == plain[:5]
    assert halved[5:] == [rate * 0.5 for rate in plain[5:]]


def test_a_plugin_registers_a_schedule(tmp_path: Path, base_config: dict[str, Any]) -> None:
    class Flat:
        @hookimpl
        def register_lr_schedulers(self, register: Any) -> None:
            register("flat_half", lambda cfg, total_steps, warmup_steps: lambda step: 0.5)

    pm = make_plugin_manager()
    pm.register(Flat(), "flat")
    path = write_config(tmp_path / "c.yml", {**base_config, "lr_scheduler": "flat_half"})
    session = open_session(path, [], pm)
    scheduler = build_scheduler(session.cfg, optimizer(), 10, session.hooks)
    assert lrs(scheduler, 3) == [5e-4] * 4


def test_an_unknown_schedule_is_refused_with_suggestions(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    path = write_config(tmp_path / "c.yml", {**base_config, "lr_scheduler": "cosine_restarts"})
    with pytest.raises(ConfigError) as info:
        open_session(path, [], make_plugin_manager())
    message = str(info.value)
    assert "lr_scheduler: unknown lr_scheduler 'cosine_restarts'" in message
    assert "did you mean cosine_with_restarts?" in message
    assert "inverse_sqrt" in message  # the registered names are listed


def test_with_the_schedules_blocked_the_default_is_refused_clearly(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    path = write_config(tmp_path / "c.yml", base_config)
    with pytest.raises(ConfigError) as info:
        open_session(path, [], make_plugin_manager(block=["lr_schedulers"]))
    assert "no installed plugin registers learning-rate schedules" in str(info.value)


def test_a_schedule_registered_twice_names_both_plugins() -> None:
    class Other:
        @hookimpl
        def register_lr_schedulers(self, register: Any) -> None:
            register("cosine", lambda cfg, total_steps, warmup_steps: lambda step: 1.0)

    pm = make_plugin_manager()
    pm.register(Other(), "other_cosine")
    with pytest.raises(Exception, match="'cosine' is registered by both"):
        Hooks(pm).lr_schedulers()


# --- transformers' schedules with their settings ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("linear", {}),
        ("constant_with_warmup", {}),
        ("cosine", {"num_cycles": 1.5}),
        ("cosine_with_restarts", {"num_cycles": 3}),
        ("polynomial", {"lr_end": 1e-5, "power": 2.0}),
        ("inverse_sqrt", {"timescale": 5}),
        ("cosine_with_min_lr", {"min_lr_rate": 0.1}),
        ("cosine_with_min_lr", {"min_lr": 1e-4}),
        ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.05}),
        ("warmup_stable_decay", {"num_decay_steps": 6, "min_lr_ratio": 0.1}),
        ("warmup_stable_decay", {"num_decay_steps": 5, "num_stable_steps": 8}),
    ],
)
def test_lr_scheduler_kwargs_reach_transformers_schedule(name: str, kwargs: dict) -> None:
    cfg = sched_cfg(name, lr_scheduler_kwargs=kwargs)
    reference = get_scheduler(
        name,
        optimizer(),
        num_warmup_steps=WARMUP,
        num_training_steps=TOTAL,
        scheduler_specific_kwargs=kwargs,
    )
    ours = build_scheduler(cfg, optimizer(), TOTAL, Hooks(make_plugin_manager()))
    assert lrs(ours) == lrs(reference)


# --- Axolotl's schedules, its formulas (axolotl/utils/schedulers.py) written out -----------------


def axolotl_cosine_min_lr(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    scaling = 0.5 * (1.0 + math.cos(math.pi * progress))
    return (1 - min_ratio) * scaling + min_ratio


def axolotl_decay_constant(
    step: int, warmup: int, total: int, constant_ratio: float, min_ratio: float
) -> float:
    num_cycles = 0.5
    if step < warmup:
        return float(step) / float(max(1, warmup))
    num_constant_steps = int(total * constant_ratio)
    step = min(step, num_constant_steps)
    progress = float(step - warmup) / float(max(1, num_constant_steps - warmup))
    return (
        max(
            0,
            (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)),
        )
        + min_ratio
    )


def axolotl_quadratic_warmup(step: int, warmup: int, total: int) -> float:
    num_cycles = 0.5
    if step < warmup:
        return (float(step) / float(max(1, warmup))) ** 2
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


class AxolotlRexLR(torch.optim.lr_scheduler.LRScheduler):
    """Axolotl's RexLR, as written there."""

    def __init__(
        self, optimizer: Any, max_lr: float, min_lr: float, total_steps: int, num_warmup_steps: int
    ) -> None:
        self.min_lr, self.max_lr = min_lr, max_lr
        self.total_steps, self.num_warmup_steps = total_steps, num_warmup_steps
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        super().__init__(optimizer, last_epoch=0)

    def get_lr(self) -> list[float]:
        if 1 <= self.last_epoch <= self.num_warmup_steps:
            return [b * self.last_epoch / self.num_warmup_steps for b in self.base_lrs]
        step_after = self.last_epoch - self.num_warmup_steps
        remaining_steps = self.total_steps - self.num_warmup_steps
        if step_after >= remaining_steps or step_after == -1 or remaining_steps <= 0:
            return [self.min_lr for _ in self.base_lrs]
        mod_iter = step_after % remaining_steps
        z = (remaining_steps - mod_iter) / remaining_steps
        rex_factor = self.min_lr / self.max_lr + (1.0 - self.min_lr / self.max_lr) * (
            z / (0.1 + 0.9 * z)
        )
        return [b * rex_factor for b in self.base_lrs]


AXOLOTL_CASES = [
    (
        {"lr_scheduler": "cosine", "cosine_min_lr_ratio": 0.1},
        lambda step: axolotl_cosine_min_lr(step, WARMUP, TOTAL, 0.1),
    ),
    (
        {"lr_scheduler": "cosine", "cosine_min_lr_ratio": 0.2, "cosine_constant_lr_ratio": 0.6},
        lambda step: axolotl_decay_constant(step, WARMUP, TOTAL, 0.6, 0.2),
    ),
    (
        {"lr_scheduler": "cosine", "lr_quadratic_warmup": True},
        lambda step: axolotl_quadratic_warmup(step, WARMUP, TOTAL),
    ),
]


@pytest.mark.parametrize(("keys", "formula"), AXOLOTL_CASES, ids=["min_lr", "constant", "quad"])
def test_axolotls_cosine_variants_follow_its_formulas(
    keys: dict[str, Any], formula: Any, tmp_path: Path, base_config: dict[str, Any]
) -> None:
    """The keys pass validation, and the schedule built from the validated config is Axolotl's
    formula at every step."""
    path = write_config(tmp_path / "c.yml", {**base_config, **keys, "warmup_steps": WARMUP})
    session = open_session(path)
    ours = build_scheduler(session.cfg, optimizer(), TOTAL, session.hooks)
    reference = torch.optim.lr_scheduler.LambdaLR(optimizer(), formula)
    assert lrs(ours) == lrs(reference)


def test_a_zero_cosine_min_lr_ratio_is_transformers_cosine() -> None:
    """Axolotl takes a ratio of 0 as unset: transformers' cosine."""
    cfg = sched_cfg("cosine", cosine_min_lr_ratio=0.0)
    reference = get_scheduler(
        "cosine", optimizer(), num_warmup_steps=WARMUP, num_training_steps=TOTAL
    )
    assert lrs(build_scheduler(cfg, optimizer(), TOTAL, Hooks(make_plugin_manager()))) == lrs(
        reference
    )


@pytest.mark.parametrize(("min_ratio", "warmup"), [(0.1, WARMUP), (None, WARMUP), (0.05, 0)])
def test_rex_is_axolotls_rexlr(min_ratio: float | None, warmup: int) -> None:
    cfg = sched_cfg("rex", cosine_min_lr_ratio=min_ratio, warmup_steps=warmup)
    ours = build_scheduler(cfg, optimizer(), TOTAL, Hooks(make_plugin_manager()))
    min_lr = 1e-3 * (min_ratio or 0.0)
    reference = AxolotlRexLR(optimizer(), 1e-3, min_lr, TOTAL, warmup)
    assert lrs(ours) == pytest.approx(lrs(reference), rel=1e-12, abs=1e-18)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"three_phase": True},
        {"anneal_strategy": "linear", "div_factor": 10.0, "final_div_factor": 100.0},
        {"pct_start": 0.5},
    ],
)
def test_one_cycle_is_torchs_onecycle_as_axolotl_sets_it(kwargs: dict[str, Any]) -> None:
    """Peak `learning_rate`, `pct_start` the warm-up's share, cosine annealing (Axolotl's
    defaults), `lr_scheduler_kwargs` over them; the momentum not cycled."""
    settings = {"cycle_momentum": False, **kwargs}
    cfg = sched_cfg("one_cycle", lr_scheduler_kwargs=settings)
    ours = build_scheduler(cfg, optimizer(), TOTAL, Hooks(make_plugin_manager()))
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer(),
        max_lr=1e-3,
        total_steps=TOTAL,
        **{"pct_start": WARMUP / TOTAL, "anneal_strategy": "cos", **settings},
    )
    # OneCycleLR refuses to step past its length: the rates of the TOTAL steps
    assert lrs(ours, TOTAL - 1) == pytest.approx(lrs(reference, TOTAL - 1), rel=1e-12, abs=1e-18)


def test_one_cycle_with_one_warmup_step_is_refused_when_built() -> None:
    cfg = sched_cfg("one_cycle", lr_scheduler_kwargs={"cycle_momentum": False}, warmup_steps=1)
    with pytest.raises(ConfigError, match="give 0 or at least 2 warm-up steps"):
        build_scheduler(cfg, optimizer(), TOTAL, Hooks(make_plugin_manager()))


# --- refused at validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"lr_scheduler": "reduce_lr_on_plateau"},
            "lr_scheduler: 'reduce_lr_on_plateau' is not supported: it lowers the rate when the "
            "eval loss stops improving",
        ),
        ({"lr_scheduler": "greedy"}, "'greedy' is not supported"),
        ({"lr_scheduler": "log_sweep"}, "Axolotl ran it as plain cosine"),
        ({"lr_scheduler": "one_cycle"}, "set lr_scheduler_kwargs: {cycle_momentum: false}"),
        (
            {"lr_scheduler": "one_cycle", "lr_scheduler_kwargs": {"max_lr": 1.0}},
            "one_cycle does not take max_lr",
        ),
        (
            {"lr_scheduler": "linear", "cosine_min_lr_ratio": 0.1},
            "cosine_min_lr_ratio applies to lr_scheduler: cosine or rex, not linear",
        ),
        (
            {"lr_scheduler": "cosine", "cosine_constant_lr_ratio": 0.8},
            "cosine_constant_lr_ratio applies to lr_scheduler: cosine with a non-zero "
            "cosine_min_lr_ratio",
        ),
        (
            {"lr_scheduler": "cosine", "lr_quadratic_warmup": True, "cosine_min_lr_ratio": 0.1},
            "set lr_quadratic_warmup or cosine_min_lr_ratio, not both",
        ),
        ({"lr_scheduler": "linear", "lr_quadratic_warmup": True}, "cosine only"),
        ({"cosine_min_lr_ratio": 1.5}, "cosine_min_lr_ratio: Input should be less than or equal"),
        (
            {"lr_scheduler": "cosine", "lr_scheduler_kwargs": {"num_cycle": 2}},
            "got an unexpected keyword argument 'num_cycle'",
        ),
        (
            {"lr_scheduler": "cosine_with_min_lr"},
            "One of min_lr or min_lr_rate should be set",
        ),
        (
            {"lr_scheduler": "rex", "lr_scheduler_kwargs": {"num_cycles": 2}},
            "lr_scheduler_kwargs: the schedule rex takes none",
        ),
        (
            {"cosine_min_lr_ratio": 0.1, "lr_scheduler_kwargs": {"num_cycles": 2}},
            "the schedule cosine with cosine_min_lr_ratio takes none",
        ),
    ],
)
def test_a_schedule_or_its_keys_refused_at_validation(
    keys: dict[str, Any], message: str, tmp_path: Path, base_config: dict[str, Any]
) -> None:
    path = write_config(tmp_path / "c.yml", {**base_config, **keys})
    with pytest.raises(ConfigError) as info:
        open_session(path, [], make_plugin_manager())
    text = " ".join(str(info.value).split())
    assert message in text
    if "is not supported" in message:  # the registered names are listed
        assert "valid: " in text and "rex" in text and "cosine_with_min_lr" in text
