"""Learning-rate schedules are a registry (`register_lr_schedulers`): the built-in plugin gives
transformers' schedules by name, factor for factor; `lr_multiplier` answers scale them; an
unknown `lr_scheduler:` is refused with the registered names."""

from __future__ import annotations

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
        ("constant", "constant_with_warmup"),
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
