"""`quantize_moe_experts: true`: a MoE model's fused expert weights load quantized by
bitsandbytes (4-bit with QLoRA, 8-bit with 8-bit LoRA), read as bitsandbytes' own dequantized
values, stay frozen while the adapter trains; on a tiny Qwen3-MoE built from its real config."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_testing import train_with, write_config
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason="needs bitsandbytes: pip install 'axolotl-weave[bnb]'",
)

EXPERTS = ("gate_up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3MoeConfig

    folder = tmp_path_factory.mktemp("qwen3-moe")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Loaded:
    """Keeps the training model as loading left it, and the expert values it read then."""

    model: Any = None
    values: dict[str, torch.Tensor] = {}

    @hookimpl(wrapper=True, tryfirst=True)
    def load_model(self, purpose: str) -> Any:
        model = yield
        if purpose == "train":
            self.model = model
            self.values = {name: param.detach().clone() for name, param in experts(model).items()}
        return model


def experts(model: Any) -> dict[str, torch.Tensor]:
    """Layer index.name -> the expert weight as the model reads it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        f"{i}.{name}": getattr(layer.mlp.experts, name)
        for i, layer in enumerate(base.model.layers)
        for name in EXPERTS
    }


def stored_experts(folder: Path) -> dict[str, torch.Tensor]:
    """The expert weights of the checkpoint, loaded unquantized (transformers fuses the stored
    per-expert matrices into the 3-D parameters)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {key: value.detach() for key, value in experts(model).items()}


def bnb_reference(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """What bitsandbytes' own quantize and dequantize give for `weight` (the format the
    experts are stored in)."""
    import bitsandbytes as bnb

    if bits == 4:
        packed, state = bnb.functional.quantize_4bit(
            weight, quant_type="nf4", compress_statistics=True
        )
        return bnb.functional.dequantize_4bit(packed, state).reshape(weight.shape)
    rows = weight.reshape(-1, weight.shape[-1]).to(torch.float16)
    codes, stats, _ = bnb.functional.int8_vectorwise_quant(rows)
    return bnb.functional.int8_vectorwise_dequant(codes, stats).reshape(weight.shape)


def moe_config(tiny_moe: Path, base_config: dict, tmp_path: Path, bits: int) -> dict:
    adapter = {4: {"adapter": "qlora", "load_in_4bit": True}, 8: {"adapter": "lora"}}[bits]
    return {
        **base_config,
        "base_model": str(tiny_moe),
        **adapter,
        **({"load_in_8bit": True} if bits == 8 else {}),
        "quantize_moe_experts": True,
        "lora_r": 4,
        "lora_target_modules": ["q_proj", "v_proj"],
        "max_steps": 2,
        "output_dir": str(tmp_path / "out"),
    }


@pytest.mark.parametrize("bits", [4, 8])
def test_experts_load_quantized_and_stay_frozen(
    tiny_moe: Path, base_config: dict, tmp_path: Path, bits: int, caplog: pytest.LogCaptureFixture
) -> None:
    import torch.nn.utils.parametrize as parametrize
    import transformers.core_model_loading as loading

    original_setter = loading.set_param_for_module
    loaded = Loaded()
    with caplog.at_level("INFO", logger="axolotl_weave"):
        train_with(moe_config(tiny_moe, base_config, tmp_path, bits), tmp_path / "c.yml", loaded)
    assert f"4 expert weights in {bits}-bit (4 as they loaded)" in caplog.text
    assert loading.set_param_for_module is original_setter  # the load's patch is gone

    stored = stored_experts(tiny_moe)
    base = loaded.model.get_base_model()
    for i, layer in enumerate(base.model.layers):
        module = layer.mlp.experts
        for name in EXPERTS:
            assert parametrize.is_parametrized(module, name)
            codes = getattr(module.parametrizations, name).original
            assert codes.dtype == (torch.uint8 if bits == 4 else torch.int8)
            assert codes.numel() * codes.element_size() <= stored[f"{i}.{name}"].numel()
            expected = bnb_reference(stored[f"{i}.{name}"], bits).to(torch.float32)
            assert torch.equal(loaded.values[f"{i}.{name}"].float(), expected), (i, name)
    after = experts(loaded.model)
    for key, value in loaded.values.items():
        assert torch.equal(after[key], value), key  # frozen while the adapter trained
    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert adapter and all("self_attn" in name for name in adapter)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"adapter": "lora", "load_in_4bit": False}, "needs adapter: qlora with load_in_4bit"),
        ({"lora_target_parameters": ["mlp.experts.gate_up_proj"]}, "cannot put an adapter"),
        ({"lora_target_linear": True}, "name the layers in lora_target_modules"),
    ],
)
def test_quantize_moe_experts_needs_a_bitsandbytes_adapter(
    tiny_moe: Path, base_config: dict, tmp_path: Path, keys: dict, message: str
) -> None:
    config = {**moe_config(tiny_moe, base_config, tmp_path, 4), **keys}
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", config))


def test_a_model_without_experts_is_said(
    tiny_llama_dir: Path, base_config: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "llama"
    shutil.copytree(tiny_llama_dir, folder)
    config = {**moe_config(folder, base_config, tmp_path, 4), "max_steps": 1}
    with caplog.at_level("WARNING", logger="axolotl_weave"):
        train_with(config, tmp_path / "c.yml")
    assert "the model has no expert weights (3-D) to quantize" in caplog.text


@pytest.mark.gpu
def test_on_a_gpu_the_experts_never_load_unquantized(tmp_path: Path) -> None:
    """The point of the feature: the peak GPU memory of a 4-bit load with the experts
    quantized as they arrive stays well below that of the same load leaving them in bf16."""
    from axolotl_weave_plugins.methods.moe_expert_quantization import (
        quantize_expert,
        quantizing_experts_as_they_load,
    )
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Qwen3MoeConfig

    config = Qwen3MoeConfig(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        moe_intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        num_experts=32,
        num_experts_per_tok=2,
    )
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(tmp_path)
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)

    def peak(quantize_experts: bool) -> int:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        kwargs = {"quantization_config": four_bit, "device_map": "cuda", "dtype": torch.bfloat16}
        if quantize_experts:
            with quantizing_experts_as_they_load(
                lambda module, name: quantize_expert(module, name, 4, "nf4", True)
            ):
                model = AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)
        used = torch.cuda.max_memory_allocated()
        del model
        return used

    plain, quantized = peak(False), peak(True)
    assert quantized < 0.6 * plain, (quantized, plain)
