"""LoftQ (`peft: {loftq_config: ...}`): the quantized base plus the adapter approximates the
full-precision weights better than the quantized base alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError
from axolotl_weave._run import open_session, run_scoped_plugins
from axolotl_weave.commands import family_of, load_tokenizer
from axolotl_weave_plugins.methods.loftq import NF4_CODE, fake_quantize
from axolotl_weave_testing import train_with, write_config
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

PROBE = torch.tensor([[1, 20, 30, 40, 50, 60]])


def lora_config(base_config: dict, **keys: Any) -> dict:
    return {
        **base_config,
        "adapter": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_target_linear": True,
        **keys,
    }


def load_for_training(config: dict, path: Path) -> Any:
    """The training model as every plugin's `load_model` leaves it (the run's plugins on)."""
    session = open_session(write_config(path, config), [])
    with run_scoped_plugins(session):
        family = family_of(session)
        tokenizer = load_tokenizer(session, family)
        return session.hooks.load_model(session.cfg, tokenizer, family, purpose="train")


def lora_layers(model: Any) -> dict[str, Any]:
    prefix = "base_model.model."
    return {
        name.removeprefix(prefix): module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def effective(module: Any) -> torch.Tensor:
    """The layer's weight as the model applies it: base + B @ A * scaling."""
    delta = module.lora_B["default"].weight @ module.lora_A["default"].weight
    return module.get_base_layer().weight + delta * module.scaling["default"]


@pytest.mark.parametrize(("bits", "iterations"), [(4, 1), (4, 3), (8, 1)])
def test_loftq_init_approximates_the_full_precision_weights(
    base_config: dict, tiny_llama_dir: Path, tmp_path: Path, bits: int, iterations: int
) -> None:
    original = load_file(str(tiny_llama_dir / "model.safetensors"))
    loftq = {"loftq_config": {"loftq_bits": bits, "loftq_iter": iterations}}
    model = load_for_training(lora_config(base_config, peft=loftq), tmp_path / "c.yml")
    plain = load_for_training(lora_config(base_config), tmp_path / "p.yml")
    layers, plain_layers = lora_layers(model), lora_layers(plain)
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in 2 layers
    levels = 16 if bits == 4 else 255
    for name, module in layers.items():
        weight = original[f"{name}.weight"]
        base = module.get_base_layer().weight.detach()
        assert not torch.equal(base, weight), name  # the base now holds quantized values
        if iterations == 1:  # Q is the quantization of W itself
            torch.testing.assert_close(base, fake_quantize(weight, bits))
        if bits == 4:  # at most 16 distinct values per block of 64
            blocks = base.flatten().view(-1, 64)
            assert max(len(block.unique()) for block in blocks) <= levels, name
        quantized_error = (weight - base).norm()
        loftq_error = (weight - effective(module).detach()).norm()
        assert loftq_error < 0.9 * quantized_error, name  # the adapter recovers part of W - Q
        # a plain LoRA starts with B = 0 on the untouched base: LoftQ's start differs
        plain_module = plain_layers[name]
        assert torch.count_nonzero(plain_module.lora_B["default"].weight) == 0
        assert torch.count_nonzero(module.lora_B["default"].weight) > 0
        assert torch.equal(plain_module.get_base_layer().weight, weight)
    # the model as a whole: closer to the full-precision model than the quantized base alone
    full = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    model.eval()
    with torch.no_grad():
        reference = full(input_ids=PROBE).logits
        start = model(input_ids=PROBE).logits
        with model.disable_adapter():
            quantized_only = model(input_ids=PROBE).logits
    assert (start - reference).norm() < (quantized_only - reference).norm()


def test_nf4_fake_quantization_uses_bitsandbytes_codes() -> None:
    """Every block of 64 is scaled by its absmax and rounded to the nearest NF4 code."""
    torch.manual_seed(0)
    weight = torch.randn(4, 96)  # 384 values: 6 blocks
    quantized = fake_quantize(weight, 4).flatten().view(-1, 64)
    blocks = weight.flatten().view(-1, 64)
    code = torch.tensor(NF4_CODE)
    for block, values in zip(blocks, quantized, strict=True):
        absmax = block.abs().max()
        nearest = code[(block[:, None] / absmax - code).abs().argmin(dim=1)] * absmax
        torch.testing.assert_close(values, nearest)
    int8 = fake_quantize(weight, 8)
    scale = weight.abs().amax(dim=1, keepdim=True) / 127
    torch.testing.assert_close(int8, torch.round(weight / scale) * scale)


def test_loftq_run_trains_and_saves_the_merged_model(base_config: dict, tmp_path: Path) -> None:
    config = lora_config(base_config, peft={"loftq_config": {"loftq_bits": 4}}, max_steps=3)
    state = train_with(config, tmp_path / "c.yml")
    assert state.global_step == 3
    out = Path(config["output_dir"])
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    saved = load_file(str(out / "model.safetensors"))
    assert not any("lora_" in name for name in saved)
    merged = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.isfinite(merged(input_ids=PROBE).logits).all()


def test_peft_key_alone_is_accepted(base_config: dict, tmp_path: Path) -> None:
    """Axolotl writes `peft:` empty or without loftq_config: nothing to do."""
    session = open_session(write_config(tmp_path / "c.yml", {**base_config, "peft": {}}), [])
    assert session.cfg.peft.loftq_config is None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"peft": {"loftq_config": {"loftq_bits": 4}}}, "peft.loftq_config needs adapter: lora"),
        (
            {"adapter": "qlora", "load_in_4bit": True, "peft": {"loftq_config": {}}},
            "peft.loftq_config needs adapter: lora (got 'qlora')",
        ),
        (
            {"adapter": "lora", "load_in_8bit": True, "peft": {"loftq_config": {}}},
            "peft.loftq_config and load_in_8bit",
        ),
        (
            {"adapter": "lora", "lora_model_dir": "x", "peft": {"loftq_config": {}}},
            "peft.loftq_config and lora_model_dir",
        ),
        (
            {"adapter": "lora", "peft_use_dora": True, "peft": {"loftq_config": {}}},
            "peft.loftq_config with peft_use_dora is not supported",
        ),
        ({"adapter": "lora", "peft": {"loftq_config": {"loftq_bits": 3}}}, "loftq_bits"),
        ({"adapter": "lora", "peft": {"loftq_config": {"loftq_iter": 0}}}, "loftq_iter"),
        ({"adapter": "lora", "peft": {"loftq_config": {"loftq_rank": 4}}}, "loftq_rank"),
        ({"adapter": "lora", "peft": {"lora_config": {}}}, "lora_config"),
    ],
)  # fmt: skip
def test_loftq_config_errors(base_config: dict, tmp_path: Path, keys: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "c.yml", {**base_config, **keys}), [])
    assert message in str(info.value)
    assert "peft" in str(info.value)


def test_a_resumed_loftq_run_goes_on_as_if_never_stopped(base_config: dict, tmp_path: Path) -> None:
    """The resumed run rebuilds the same quantized base, then the core restores the adapter."""
    keys = {"peft": {"loftq_config": {"loftq_bits": 4, "loftq_iter": 2}}, "max_steps": 4}
    straight = lora_config(base_config, **keys, save_steps=2, logging_steps=1)
    straight_out = tmp_path / "straight"
    train_with({**straight, "output_dir": str(straight_out)}, tmp_path / "a.yml")
    out = tmp_path / "stopped"
    shutil.copytree(straight_out / "checkpoint-2", out / "checkpoint-2")
    resumed = {**straight, "output_dir": str(out), "resume_from_checkpoint": "auto"}
    state = train_with(resumed, tmp_path / "b.yml")
    history = (straight_out / "metrics.jsonl").read_text().splitlines()
    expected = [r["loss"] for r in map(json.loads, history) if "loss" in r]
    assert [r["loss"] for r in state.log_history if "loss" in r] == pytest.approx(expected)
    whole = load_file(str(straight_out / "model.safetensors"))
    again = load_file(str(out / "model.safetensors"))
    for name, weight in whole.items():
        torch.testing.assert_close(again[name], weight, msg=name)
