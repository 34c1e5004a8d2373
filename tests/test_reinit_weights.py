"""`reinit_weights: true`: the model trains from fresh random weights, as `from_config` gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_testing import train_with, write_config
from safetensors.torch import load_file


class LoadedWeights:
    """Keeps a copy of the training model's weights as loading left them (before any step)."""

    weights: dict[str, torch.Tensor] | None = None

    @hookimpl(wrapper=True, tryfirst=True)
    def load_model(self, purpose: str) -> Any:
        model = yield
        if purpose == "train":
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model


def loaded(config: dict, path: Path) -> dict[str, torch.Tensor]:
    recorder = LoadedWeights()
    train_with({**config, "max_steps": 1}, path, recorder)
    assert recorder.weights is not None
    return recorder.weights


def test_reinit_weights_starts_from_fresh_random_weights(
    base_config: dict, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    pretrained = load_file(str(tiny_llama_dir / "model.safetensors"))
    config = {**base_config, "reinit_weights": True, "seed": 7}
    first = loaded({**config, "output_dir": str(tmp_path / "a")}, tmp_path / "a.yml")
    again = loaded({**config, "output_dir": str(tmp_path / "b")}, tmp_path / "b.yml")
    other = loaded({**config, "seed": 8, "output_dir": str(tmp_path / "c")}, tmp_path / "c.yml")
    for name, weight in pretrained.items():
        assert torch.equal(first[name], again[name]), name  # seeded: reproducible
        if name.endswith("norm.weight"):
            assert torch.equal(first[name], torch.ones_like(weight)), name
        else:
            assert not torch.equal(first[name], weight), name  # not the pretrained weights
            assert not torch.equal(first[name], other[name]), name  # another seed, others
            assert first[name].std().item() == pytest.approx(0.02, rel=0.1), name


def test_reinit_weights_comes_before_the_adapter(base_config: dict, tmp_path: Path) -> None:
    """An adapter goes on the re-initialised model: its B matrices start at zero."""
    config = {**base_config, "reinit_weights": True, "adapter": "lora", "lora_r": 4}
    weights = loaded({**config, "lora_target_linear": True}, tmp_path / "c.yml")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(v) == 0 for v in lora_b)
    base = [v for k, v in weights.items() if k.endswith("q_proj.base_layer.weight")]
    assert base and all(v.std().item() == pytest.approx(0.02, rel=0.1) for v in base)


def test_reinit_weights_with_a_quantized_base_is_refused(base_config: dict, tmp_path: Path) -> None:
    config = {**base_config, "reinit_weights": True, "adapter": "lora", "load_in_8bit": True}
    with pytest.raises(ConfigError, match="reinit_weights and load_in_8bit"):
        open_session(write_config(tmp_path / "c.yml", config))
