"""`gptq: true` end to end on the CPU: a tiny llama GPTQ-quantized (4 bits) on the spot with
transformers' GPTQ integration, LoRA trained on it with `weave train`, merged with
`weave merge-lora`. Marked `gptq`: run with the GPTQ backend on the path (scripts/test.sh does:
scripts/setup-gptq.sh, then `PYTHONPATH=$PWD/.gptq python -m pytest -m gptq`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave_plugins.methods._gptq_quantize import quantize_gptq
from axolotl_weave_testing import run_weave, write_config

pytestmark = pytest.mark.gptq

LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def gptq_llama(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama, 4-bit GPTQ, calibrated on alpaca-like text."""
    from axolotl_weave_testing import alpaca_rows

    texts = [json.dumps(row) for row in alpaca_rows(32)]
    return quantize_gptq(tiny_llama_dir, tmp_path_factory.mktemp("gptq-llama"), texts)


def gptq_base(path: Path) -> Any:
    """The GPTQ checkpoint on gptqmodel's trainable kernel, as `gptq: true` loads it."""
    from transformers import AutoConfig, AutoModelForCausalLM, GPTQConfig

    written = AutoConfig.from_pretrained(path).quantization_config
    quantization = GPTQConfig.from_dict({**written, "backend": "auto_trainable"})
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization, dtype=torch.float32
    ).eval()


def test_lora_on_a_gptq_checkpoint_trains_and_merges(
    gptq_llama: Path, base_config: dict, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = {
        **base_config,
        "base_model": str(gptq_llama),
        "gptq": True,
        "adapter": "lora",
        "lora_target_linear": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "learning_rate": 1e-2,
        "lr_scheduler": "constant",
        "max_steps": 12,
    }
    path = write_config(tmp_path / "gptq.yml", config)
    trained = run_weave("train", str(path))
    assert trained.returncode == 0, trained.stderr
    out = Path(config["output_dir"])
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-3:]) / 3 < 0.97 * sum(losses[:3]) / 3, losses
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == LLAMA_LINEAR  # GPTQ kernels are not nn.Linear

    merged_run = run_weave("merge-lora", str(path))
    assert merged_run.returncode == 0, merged_run.stderr
    merged_dir = out / "merged"
    merged_config = json.loads((merged_dir / "config.json").read_text())
    assert "quantization_config" not in merged_config

    ids = AutoTokenizer.from_pretrained(merged_dir)(
        "Below is an instruction. Add two and three.", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        base_logits = gptq_base(gptq_llama)(ids).logits
        adapted = PeftModel.from_pretrained(gptq_base(gptq_llama), str(out)).eval()
        adapted_logits = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
        merged_logits = merged(ids).logits
    assert not any("Quant" in type(module).__name__ for module in merged.modules())
    assert (adapted_logits - base_logits).abs().max() > 1e-2  # the adapter learned something
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-4)


def test_gptq_on_a_checkpoint_that_is_not_gptq_is_refused(
    base_config: dict, tmp_path: Path
) -> None:
    config = {**base_config, "gptq": True, "adapter": "lora", "lora_target_linear": True}
    result = run_weave("train", str(write_config(tmp_path / "c.yml", config)))
    assert result.returncode != 0
    assert "is not a GPTQ checkpoint" in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    assert not (Path(config["output_dir"]) / "adapter_model.safetensors").exists()


def test_packed_layers_and_their_block_list_are_read_from_the_checkpoint(
    gptq_llama: Path,
) -> None:
    from axolotl_weave_plugins.methods.gptq import block_list_name, packed_layer_names

    packed = packed_layer_names(str(gptq_llama))
    assert len(packed) == 2 * len(LLAMA_LINEAR)  # two layers, every linear layer packed
    assert block_list_name(packed[0]) == "model.layers"
    assert block_list_name("transformer.blocks.3.attn.Wqkv") == "transformer.blocks"  # MPT
    assert block_list_name("rwkv.blocks.0.attention.key") == "rwkv.blocks"
    assert block_list_name("lm_head") is None
