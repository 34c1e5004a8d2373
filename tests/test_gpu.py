"""GPU paths (run on a CUDA machine; skipped elsewhere): bf16 training, full and LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session, train
from axolotl_weave_testing import write_config
from safetensors import safe_open

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("adapter", [None, "lora"])
def test_bf16_training_on_gpu(base_config: dict, tmp_path: Path, adapter: str | None) -> None:
    config = {**base_config, "bf16": "auto", "max_steps": 30, "learning_rate": 3e-3}
    if adapter:
        config.update(adapter="lora", lora_target_linear=True, learning_rate=1e-2)
    state = train(open_session(write_config(tmp_path / "c.yml", config), [], make_plugin_manager()))
    losses = [rec["loss"] for rec in state.log_history if "loss" in rec]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # a random-weight model: full fine-tuning learns fast, a small LoRA slowly
    assert last < first * (0.95 if adapter else 0.8), (first, last)
    out = Path(config["output_dir"])
    weights = out / ("adapter_model.safetensors" if adapter else "model.safetensors")
    with safe_open(str(weights), "pt") as handle:
        dtype = handle.get_tensor(next(iter(handle.keys()))).dtype
    # full fine-tune: bf16 weights; peft keeps LoRA adapter weights in float32
    assert dtype == (torch.float32 if adapter else torch.bfloat16)
    assert torch.cuda.max_memory_allocated() > 0
