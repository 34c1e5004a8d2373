"""Grokfast (`grokfast_alpha`, `grokfast_lamb`; the `grokfast` plugin).

The filtered update is checked against Axolotl's `gradfilter_ema` written out step by step,
after the strategy's clipping; `weave train` with it changes the training and resumes exactly
(the moving average is in the checkpoint); Axolotl's plugin listed alone turns it on with its
defaults; DeepSpeed is refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import AccelerateStrategy, ConfigError, checkpoints
from axolotl_weave._run import open_session
from axolotl_weave_plugins.methods.grokfast import GradientFilter, grokfast_on
from axolotl_weave_testing import CrashAt, train_with, write_config
from safetensors.torch import load_file


def sgd_strategy(alpha: float, lamb: float) -> tuple[Any, torch.nn.Linear, Any, GradientFilter]:
    """A one-process strategy whose steps Grokfast filters, over a linear layer and SGD at
    learning rate 1 (a step subtracts the filtered gradient)."""
    from accelerate import Accelerator

    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    strategy = AccelerateStrategy(Accelerator(cpu=True))
    grokfast = GradientFilter(alpha, lamb)
    grokfast.filter_steps_of(strategy)
    return strategy, layer, (optimizer, scheduler), grokfast


def test_each_step_adds_the_gradients_moving_average_after_clipping():
    alpha, lamb = 0.9, 2.0
    strategy, layer, (optimizer, scheduler), _ = sgd_strategy(alpha, lamb)
    torch.manual_seed(0)
    grads = [torch.randn(2, 3) * scale for scale in (1.0, 5.0, 0.1)]
    ema = None
    for max_grad_norm, grad in zip((0.0, 1.0, 0.0), grads, strict=True):
        before = layer.weight.detach().clone()
        layer.weight.grad, layer.bias.grad = grad.clone(), torch.zeros(2)
        strategy.optimizer_step(layer, optimizer, scheduler, max_grad_norm)
        clipped = grad * min(1.0, max_grad_norm / grad.norm()) if max_grad_norm else grad
        ema = clipped if ema is None else ema * alpha + clipped * (1 - alpha)  # gradfilter_ema
        assert torch.allclose(before - layer.weight, clipped + lamb * ema, atol=1e-6)


def test_a_step_with_a_non_finite_gradient_is_not_filtered_into_the_average():
    strategy, layer, (optimizer, scheduler), grokfast = sgd_strategy(0.5, 1.0)
    layer.weight.grad, layer.bias.grad = torch.ones(2, 3), torch.zeros(2)
    strategy.optimizer_step(layer, optimizer, scheduler, 1.0)
    kept = copy.deepcopy(grokfast.ema)
    layer.weight.grad, layer.bias.grad = torch.full((2, 3), float("nan")), torch.zeros(2)
    strategy.optimizer_step(layer, optimizer, scheduler, 1.0)
    assert all(torch.equal(kept[name], grokfast.ema[name]) for name in kept)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_weave_train_filters_and_resumes_exactly(tmp_path: Path, base_config: dict):
    config = {
        **base_config,
        "grokfast_alpha": 0.8,
        "grokfast_lamb": 3.0,
        "max_steps": 5,
        "save_steps": 2,
        "logging_steps": 1,
    }
    plain = train_with(
        {**base_config, "max_steps": 5, "output_dir": str(tmp_path / "plain")},
        tmp_path / "plain.yml",
    )
    full = train_with({**config, "output_dir": str(tmp_path / "full")}, tmp_path / "full.yml")

    def losses(state: Any) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in state.log_history if "loss" in r}

    assert losses(full)[1] == pytest.approx(losses(plain)[1])  # the first forward is the same
    assert losses(full)[3] != pytest.approx(losses(plain)[3], rel=1e-4)  # then it differs

    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train_with({**config, "output_dir": str(crashed)}, tmp_path / "crash.yml", CrashAt(3))
    assert [p.name for p in checkpoints(crashed)] == ["checkpoint-2"]
    assert (crashed / "checkpoint-2" / "grokfast" / "ema-0.pt").is_file()
    resumed = train_with(
        {**config, "output_dir": str(crashed), "resume_from_checkpoint": "auto"},
        tmp_path / "resume.yml",
    )
    for step in (3, 4, 5):
        assert losses(resumed)[step] == pytest.approx(losses(full)[step], rel=1e-6), step
    expected, got = weights(tmp_path / "full"), weights(crashed)
    assert all(torch.allclose(got[name], expected[name], atol=1e-6) for name in expected)


def test_axolotls_plugin_listed_alone_turns_it_on_with_its_defaults(
    tmp_path: Path, base_config: dict
):
    listed = {**base_config, "plugins": ["axolotl.integrations.grokfast.GrokfastPlugin"]}
    cfg = open_session(write_config(tmp_path / "listed.yml", listed)).cfg
    assert grokfast_on(cfg)
    assert not grokfast_on(open_session(write_config(tmp_path / "off.yml", base_config)).cfg)
    assert grokfast_on(SimpleNamespace(grokfast_lamb=1.0))


def test_deepspeed_is_refused(tmp_path: Path, base_config: dict):
    config = {**base_config, "grokfast_alpha": 0.9, "deepspeed": "deepspeed_configs/zero2.json"}
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "ds.yml", config))
    assert "DeepSpeed takes inside its engine" in " ".join(str(info.value).split())
