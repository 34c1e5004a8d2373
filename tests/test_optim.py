"""Optimizers and parameter groups: lr_groups, unfrozen_parameters, plugin optimizers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._optim import apply_unfrozen_parameters, build_optimizer, param_groups
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session, train
from axolotl_weave_testing import run_weave, without_package, write_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


@pytest.fixture
def tiny_model(tiny_llama_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


def opt_cfg(**keys: Any) -> SimpleNamespace:
    defaults = dict(
        lr_groups=[], learning_rate=1e-3, weight_decay=0.1, optimizer="adamw_torch",
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
    )  # fmt: skip
    return SimpleNamespace(**{**defaults, **keys})


def test_lr_groups_give_named_modules_their_own_rate(tiny_model: torch.nn.Module) -> None:
    group = SimpleNamespace(name="embeddings", modules=["embed_tokens", "lm_head"], lr=5e-5)
    optimizer = build_optimizer(opt_cfg(lr_groups=[group]), tiny_model)
    lrs = {(g["group"], g["weight_decay"]): g["lr"] for g in optimizer.param_groups}
    assert lrs == {("embeddings", 0.1): 5e-5, ("default", 0.1): 1e-3, ("default", 0.0): 1e-3}
    embed = tiny_model.get_input_embeddings().weight
    owner = next(g for g in optimizer.param_groups if any(p is embed for p in g["params"]))
    assert owner["lr"] == 5e-5
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(list(tiny_model.parameters()))


def test_an_lr_group_matching_nothing_is_refused(tiny_model: torch.nn.Module) -> None:
    group = SimpleNamespace(name="vision", modules=["vision_tower"], lr=1e-5)
    with pytest.raises(ConfigError, match="lr_groups: vision match"):
        param_groups(opt_cfg(lr_groups=[group]), tiny_model)


def test_unfrozen_parameters_train_only_what_matches(
    base_config: dict, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    config = {**base_config, "unfrozen_parameters": [r"layers\.1\.mlp\.", r"^lm_head"]}
    train(open_session(write_config(tmp_path / "c.yml", config)))
    before = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    after = load_file(str(Path(base_config["output_dir"]) / "model.safetensors"))
    changed = {name for name, value in after.items() if not torch.equal(value, before[name])}
    assert changed and all(
        ("layers.1.mlp." in name) or name.startswith("lm_head") for name in changed
    ), changed
    assert "lm_head.weight" in changed


def test_unfrozen_parameters_that_match_nothing(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ConfigError, match="match no parameter"):
        apply_unfrozen_parameters(tiny_model, [r"^nothing\."])
    with pytest.raises(ConfigError, match="is not a regex"):
        apply_unfrozen_parameters(tiny_model, ["layers.("])


def test_a_plugin_registers_an_optimizer(base_config: dict, tmp_path: Path) -> None:
    built = []

    class PlainSGD:
        @hookimpl
        def register_optimizers(self, register: Any) -> None:
            def build(groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
                built.append(len(groups))
                return torch.optim.SGD(groups, lr=cfg.learning_rate)

            register("plain_sgd", build)

    pm = make_plugin_manager()
    pm.register(PlainSGD())
    config = {**base_config, "optimizer": "plain_sgd", "max_steps": 2}
    state = train(open_session(write_config(tmp_path / "c.yml", config), [], pm))
    assert state.global_step == 2 and built == [2]


def test_unknown_optimizer_suggests_the_registered_ones(base_config: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        open_session(
            write_config(tmp_path / "c.yml", {**base_config, "optimizer": "adamw_bnb_8bt"})
        )
    assert "did you mean adamw_bnb_8bit?" in str(info.value)
    assert "paged_adamw_8bit" in str(info.value)


def test_a_bitsandbytes_optimizer_without_the_package(base_config: dict, tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yml", {**base_config, "optimizer": "paged_adamw_8bit"})
    result = run_weave("train", str(path), env=without_package("bitsandbytes", tmp_path))
    assert result.returncode == 4, result.stderr
    err = " ".join(result.stderr.split())
    assert "optimizer: paged_adamw_8bit needs the package 'bitsandbytes'" in err
    assert "pip install 'bitsandbytes>=0.50'" in err
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason="needs bitsandbytes (scripts/setup.sh installs it)",
)
@pytest.mark.parametrize(
    ("name", "state_dtype"),
    [("adamw_bnb_8bit", torch.uint8), ("paged_adamw_8bit", torch.uint8), ("lion_32bit", None)],
)
def test_a_bitsandbytes_optimizer_trains(
    base_config: dict, tmp_path: Path, name: str, state_dtype: torch.dtype | None
) -> None:
    """bitsandbytes' optimizers by name, for real (its CPU backend here, which runs the paged
    ones unpaged): the loss falls, and the 8-bit ones keep their moments in 8 bits."""
    seen: dict[str, Any] = {}

    class Inspect:
        @hookimpl
        def on_step_end(self, optimizer: Any) -> None:
            seen.setdefault("optimizer", optimizer)

    config = {
        **base_config, "optimizer": name, "learning_rate": 3e-3, "max_steps": 8,
        "lr_scheduler": "constant", "logging_steps": 1,
    }  # fmt: skip
    pm = make_plugin_manager()
    pm.register(Inspect())
    state = train(open_session(write_config(tmp_path / "c.yml", config), [], pm))
    losses = [rec["loss"] for rec in state.log_history if "loss" in rec]
    assert len(losses) == 8 and sum(losses[-2:]) < 0.9 * sum(losses[:2]), losses
    optimizer = seen["optimizer"]
    assert type(optimizer).__module__.startswith("bitsandbytes.optim"), type(optimizer)
    # bitsandbytes keeps tensors under 4,096 values (the norms) in 32 bits
    large = [s["state1"] for p, s in optimizer.state.items() if p.numel() >= 4096]
    assert large
    if state_dtype is not None:
        assert {m.dtype for m in large} == {state_dtype}
