"""ReLoRA: merges at the configured steps keep the function; cycles shape the learning rate."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, WeaveError, hookimpl
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session, train
from axolotl_weave_plugins.methods.relora import (
    cycle_factor,
    merge_and_restart,
    prune_optimizer_state,
)
from axolotl_weave_testing import write_config
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

PROBE = torch.tensor([[1, 20, 30, 40, 50, 60]])
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture
def lora_model(tiny_llama_dir: Path) -> Any:
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    with torch.no_grad():  # a trained-looking adapter: B is not zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def test_merge_and_restart_keeps_the_function(lora_model: Any) -> None:
    lora_model.eval()
    before = lora_model(input_ids=PROBE).logits
    base = lora_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    fresh = merge_and_restart(lora_model)
    after = lora_model(input_ids=PROBE).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    q_proj = lora_model.base_model.model.model.layers[0].self_attn.q_proj
    assert not torch.equal(q_proj.base_layer.weight, base)  # the delta moved into the base
    assert torch.count_nonzero(q_proj.lora_B["default"].weight) == 0
    assert len(fresh) == 2 * 3 * 2  # A and B of 3 modules in 2 layers
    assert not q_proj.merged  # the adapter trains on


def test_prune_zeroes_the_smallest_state() -> None:
    param = torch.nn.Parameter(torch.zeros(10))
    optimizer = torch.optim.Adam([param])
    optimizer.state[param] = {"exp_avg": torch.arange(1.0, 11.0), "step": torch.tensor(3.0)}
    prune_optimizer_state(optimizer, [param], 0.9)
    assert optimizer.state[param]["exp_avg"].tolist() == [0.0] * 9 + [10.0]
    assert optimizer.state[param]["step"].item() == 3.0


def test_prune_drops_a_first_moment_whose_second_moment_it_pruned() -> None:
    """Adam divides the first moment by the root of the second: one kept without the other
    would move that weight by ~1/eps."""
    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.Adam([param])
    optimizer.state[param] = {
        "step": torch.tensor(5.0),
        "exp_avg": torch.tensor([4.0, 3.0, 2.0, 1.0]),
        "exp_avg_sq": torch.tensor([1.0, 2.0, 3.0, 4.0]),
    }
    prune_optimizer_state(optimizer, [param], 0.5)
    state = optimizer.state[param]
    assert state["exp_avg_sq"].tolist() == [0.0, 0.0, 3.0, 4.0]
    assert state["exp_avg"].tolist() == [0.0, 0.0, 0.0, 0.0]  # 4 and 3 lost their pair


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (scripts/setup.sh installs it)")
def test_prune_resets_a_quantized_8bit_state_whole() -> None:
    """bitsandbytes' 8-bit state holds codes into a quantization map: pruning them by magnitude
    would corrupt it (the map itself included), so the whole state starts afresh."""
    import bitsandbytes as bnb

    param = torch.nn.Parameter(torch.randn(128, 64))
    optimizer = bnb.optim.AdamW8bit([param], lr=1e-3)
    param.grad = torch.randn_like(param)
    optimizer.step()
    assert optimizer.state[param]["state1"].dtype == torch.uint8
    prune_optimizer_state(optimizer, [param], 0.9)
    assert not optimizer.state[param]
    optimizer.step()  # and the optimizer re-creates it
    assert optimizer.state[param]["step"] == 1


@pytest.mark.parametrize(
    ("adapter", "optimizer"),
    [("lora", "adamw_torch"), ("lora", "adamw_bnb_8bit"), ("qlora", "adamw_torch")],
)
def test_restarts_keep_the_adapter_weights_in_scale(
    base_config: dict, tmp_path: Path, adapter: str, optimizer: str
) -> None:
    """After each restart the adapter trains on from its fresh start: its weights stay of the
    size plain LoRA gives them (pruned moments once moved A to ~300, and bitsandbytes' 8-bit
    state, pruned code by code, moved B to ~5,000)."""
    if (adapter == "qlora" or "bnb" in optimizer) and not HAS_BNB:
        pytest.skip("needs bitsandbytes (scripts/setup.sh installs it)")
    config = {
        **base_config,
        "adapter": adapter,
        "load_in_4bit": adapter == "qlora",
        "optimizer": optimizer,
        "lora_r": 4,
        "lora_target_linear": True,
        "learning_rate": 1e-2,
        "max_steps": 6,
        "relora_steps": 2,
        "relora_warmup_steps": 1,
        "logging_steps": 1,
    }
    largest: list[float] = []

    class Watch:
        @hookimpl(trylast=True)
        def on_step_end(self, model: Any) -> None:
            lora = [p for n, p in model.named_parameters() if "lora_" in n]
            largest.append(max(p.detach().abs().max().item() for p in lora))

    pm = make_plugin_manager()
    pm.register(Watch())
    state = train(open_session(write_config(tmp_path / "c.yml", config), [], pm))
    losses = [rec["loss"] for rec in state.log_history if "loss" in rec]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert max(largest) < 1.0, largest  # kaiming-initialised A is ~0.1; B starts at 0


def test_cycle_factor() -> None:
    every, warmup, anneal = 10, 2, 3
    factors = [cycle_factor(step, every, warmup, anneal) for step in range(20)]
    assert factors[:7] == [1.0] * 7  # first cycle: the run's own warm-up only
    assert factors[7:10] == [3 / 4, 2 / 4, 1 / 4]  # anneal before the restart
    assert factors[10:12] == [1 / 3, 2 / 3]  # warm-up after it
    assert factors[12:17] == [1.0] * 5


class Recording:
    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.logits: torch.Tensor | None = None

    @hookimpl(trylast=True)
    def on_step_end(self, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    @hookimpl(trylast=True)
    def post_train(self, model: Any) -> None:
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=PROBE).logits.float()


def test_relora_run_restarts_on_schedule_and_saves_the_merged_model(
    base_config: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = {
        **base_config,
        "adapter": "lora",
        "lora_r": 4,
        "lora_target_linear": True,
        "max_steps": 7,
        "relora_steps": 3,
        "relora_warmup_steps": 1,
        "lr_scheduler": "constant",
    }
    recording = Recording()
    pm = make_plugin_manager()
    pm.register(recording)
    with caplog.at_level(logging.INFO, logger="axolotl_weave"):
        train(open_session(write_config(tmp_path / "c.yml", config), [], pm))
    restarts = [r.getMessage() for r in caplog.records if "restarted at step" in r.getMessage()]
    assert restarts == [
        "relora: merged the adapter into the base and restarted at step 3",
        "relora: merged the adapter into the base and restarted at step 6",
    ]
    lr = base_config["learning_rate"]
    assert recording.lrs == pytest.approx([lr, lr, lr / 2, lr, lr, lr / 2, lr])
    out = Path(base_config["output_dir"])
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    saved = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = saved(input_ids=PROBE).logits.float()
    torch.testing.assert_close(logits, recording.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"relora_steps": 3}, "relora_steps needs adapter: lora or qlora"),
        (
            {"relora_steps": 3, "adapter": "qlora", "load_in_4bit": True,
             "lora_target_linear": True, "resume_from_checkpoint": "auto"},
            "resume_from_checkpoint with ReLoRA needs an unquantized base",
        ),
        (
            {"relora_steps": 3, "adapter": "lora", "lora_target_linear": True,
             "relora_warmup_steps": 2, "relora_anneal_steps": 2},
            "exceed relora_steps (3)",
        ),
        (
            {"relora_steps": 3, "adapter": "lora", "lora_target_linear": True,
             "val_set_size": 4, "eval_steps": 1, "early_stopping_patience": 2},
            "load_best_model_at_end (or early_stopping_patience) with ReLoRA",
        ),
    ],
)  # fmt: skip
def test_relora_config_errors(base_config: dict, tmp_path: Path, keys: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "c.yml", {**base_config, **keys}))
    assert message in str(info.value)


def relora_resume_config(base_config: dict, out: Path, **extra: Any) -> dict:
    return {
        **base_config,
        "adapter": "lora",
        "lora_r": 4,
        "lora_target_linear": True,
        "learning_rate": 1e-2,
        "max_steps": 8,
        "relora_steps": 3,
        "relora_warmup_steps": 1,
        "save_steps": 2,
        "logging_steps": 1,
        "output_dir": str(out),
        **extra,
    }


@pytest.mark.parametrize("resume_at", [2, 4, 6])
def test_a_resumed_relora_run_goes_on_as_if_never_stopped(
    base_config: dict, tmp_path: Path, resume_at: int
) -> None:
    """Restarts at 3 and 6, checkpoints at 2, 4, 6, 8: resuming from one before any restart,
    one between, or one at a restart ends with the uninterrupted run's losses and model."""
    whole, resumed = Recording(), Recording()
    straight = relora_resume_config(base_config, tmp_path / "straight")
    pm = make_plugin_manager()
    pm.register(whole)
    train(open_session(write_config(tmp_path / "straight.yml", straight), [], pm))
    held = sorted(
        p.parent.parent.name
        for p in (tmp_path / "straight").glob("checkpoint-*/relora/base_weights.safetensors")
    )
    assert held == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]

    out = tmp_path / "stopped"  # the same run, stopped after step `resume_at`'s checkpoint
    shutil.copytree(tmp_path / "straight", out)
    for later in out.glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > resume_at:
            shutil.rmtree(later)
    second = relora_resume_config(
        base_config, out, resume_from_checkpoint=str(out / f"checkpoint-{resume_at}")
    )
    pm = make_plugin_manager()
    pm.register(resumed)
    state = train(open_session(write_config(tmp_path / "second.yml", second), [], pm))
    losses = [r["loss"] for r in state.log_history if "loss" in r]
    expected = [r["loss"] for r in whole_history(tmp_path / "straight") if "loss" in r]
    assert losses == pytest.approx(expected, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(resumed.logits, whole.logits, rtol=1e-5, atol=1e-5)


def whole_history(out: Path) -> list[dict]:
    """The logged metrics of a finished run (metrics.jsonl)."""
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resuming_past_a_restart_without_its_weights_is_refused(
    base_config: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    train(
        open_session(write_config(tmp_path / "a.yml", relora_resume_config(base_config, out)), [])
    )
    (out / "checkpoint-4" / "relora" / "base_weights.safetensors").unlink()
    for later in ("checkpoint-6", "checkpoint-8"):
        shutil.rmtree(out / later)
    again = relora_resume_config(base_config, out, resume_from_checkpoint="auto")
    with pytest.raises(WeaveError, match=r"restart at step 3, whose merged weights .* missing"):
        train(open_session(write_config(tmp_path / "b.yml", again), []))


def test_the_logged_learning_rate_shows_the_restart_cycle(
    base_config: dict, tmp_path: Path
) -> None:
    """The cycle's factor is part of the schedule: the logged rate (the next step's) is the
    plain LoRA run's times the anneal before each restart and the warm-up after it."""
    lora = {**base_config, "adapter": "lora", "lora_r": 4, "lora_target_linear": True}
    lora |= {"max_steps": 9, "logging_steps": 1, "lr_scheduler": "cosine", "warmup_steps": 2}
    relora = {**lora, "relora_steps": 4, "relora_warmup_steps": 1, "relora_anneal_steps": 1}
    rates = []
    for name, config in (("lora", lora), ("relora", relora)):
        config = {**config, "output_dir": str(tmp_path / name)}
        state = train(open_session(write_config(tmp_path / f"{name}.yml", config), []))
        rates.append([r["learning_rate"] for r in state.log_history if "learning_rate" in r])
    plain, cycled = rates
    # after step 3 the anneal before the restart at 4; after 4 the warm-up after it; ...
    factors = [1, 1, 1 / 2, 1 / 2, 1, 1, 1 / 2, 1 / 2, 1]
    assert cycled == pytest.approx(
        [rate * f for rate, f in zip(plain, factors, strict=True)], rel=1e-12
    )
    assert plain[3] > 0 and cycled[3] == pytest.approx(plain[3] / 2)  # right after the restart


def test_checkpoints_hold_the_merged_base_weights_once_restarted(
    base_config: dict, tmp_path: Path
) -> None:
    """Restarts at 3 and 6: checkpoint-2 holds no base weights (the base is the one loaded),
    the later ones hold those of the last restart (and no store of ReLoRA's own beside them);
    resuming past a restart without them is refused."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    first = relora_resume_config(base_config, out)
    train(open_session(write_config(tmp_path / "a.yml", first), []))
    assert not (out / "checkpoint-2" / "relora").exists()
    assert not (out / "relora").exists()
    saved = {
        step: load_file(out / f"checkpoint-{step}" / "relora" / "base_weights.safetensors")
        for step in (4, 6, 8)
    }
    q_proj = next(key for key in saved[4] if "layers.0.self_attn.q_proj" in key)
    assert not torch.equal(saved[4][q_proj], saved[6][q_proj])  # the restart at 6 merged
    assert torch.equal(saved[6][q_proj], saved[8][q_proj])  # none at the last step

    (out / "checkpoint-4" / "relora" / "base_weights.safetensors").unlink()
    for later in ("checkpoint-6", "checkpoint-8"):
        shutil.rmtree(out / later)
    again = relora_resume_config(base_config, out, resume_from_checkpoint="auto")
    with pytest.raises(WeaveError, match=r"restart at step 3, whose merged weights .* missing"):
        train(open_session(write_config(tmp_path / "b.yml", again), []))


def test_axolotls_current_relora_names_give_the_same_settings(
    base_config: dict, tmp_path: Path
) -> None:
    base = {**base_config, "adapter": "lora", "max_steps": 40}
    old = {**base, "relora_steps": 20, "relora_warmup_steps": 3, "relora_anneal_steps": 2}
    new = {
        **base,
        "relora": True,
        "jagged_restart_steps": 20,
        "jagged_restart_warmup_steps": 3,
        "jagged_restart_anneal_steps": 2,
    }
    keys = ("relora_steps", "relora_warmup_steps", "relora_anneal_steps")

    def settings(config: dict, name: str) -> tuple:
        cfg = open_session(write_config(tmp_path / name, config)).cfg
        return tuple(getattr(cfg, key) for key in keys)

    assert settings(new, "new.yml") == settings(old, "old.yml") == (20, 3, 2)
    defaults = {**base, "relora": True, "jagged_restart_steps": 20}
    assert settings(defaults, "defaults.yml") == (20, 10, 1)  # Axolotl's defaults
    off = {**old, "relora": False}
    assert settings(off, "off.yml")[0] is None
    with pytest.raises(ConfigError, match="jagged_restart_steps without relora: true"):
        settings({**base, "jagged_restart_steps": 20}, "alone.yml")
    with pytest.raises(ConfigError, match="relora: true needs jagged_restart_steps"):
        settings({**base, "relora": True}, "bare.yml")
