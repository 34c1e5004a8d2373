"""Spectrum (`spectrum_top_fraction`, `spectrum_model_name`; `unfrozen_parameters` with
`_spectrum`): each module's SNR as Spectrum's `calculate_snr_for_layer` computes it (its steps
written out with numpy), the top fraction of each kind trained with the embeddings and head,
read from Spectrum's results file or scanned from the model, and a run that trains only those.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from axolotl_weave import ConfigError
from axolotl_weave._run import open_session
from axolotl_weave_plugins.methods._spectrum import layer_snr, scan, trained_patterns, weight_type
from axolotl_weave_testing import train_with, write_config
from safetensors.torch import load_file


def spectrum_snr(weights: np.ndarray) -> float:
    """Spectrum's steps: singular values, sigma from their IQR / 1.349, the Marchenko-Pastur
    threshold, signal over noise, over the largest singular value."""
    if weights.ndim < 2:
        weights = weights[None, :]
    values = np.linalg.svd(weights, compute_uv=False)
    sigma = (np.quantile(values, 0.75) - np.quantile(values, 0.25)) / 1.349
    n, m = weights.shape
    beta = n / m if n < m else m / n
    threshold = sigma * np.sqrt((1 + np.sqrt(beta)) ** 2)
    signal = values[values > threshold].sum() if (values > threshold).any() else 0.0
    noise = values[values <= threshold].sum() if (values <= threshold).any() else 1.0
    return (signal / noise if noise != 0 else math.inf) / values[0]


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (24, 24), (32,)])
def test_the_snr_is_spectrums(shape: tuple[int, ...]):
    torch.manual_seed(0)
    weights = torch.randn(*shape)
    if len(shape) == 2:  # a strong low-rank signal over the noise
        weights += 5 * torch.randn(shape[0], 2) @ torch.randn(2, shape[1])
    assert layer_snr(weights) == pytest.approx(spectrum_snr(weights.double().numpy()), rel=1e-4)


def test_the_top_fraction_of_each_kind_trains_with_the_embeddings_and_head():
    results = {}
    for i in range(12):
        results[f"model.layers.{i}.mlp.up_proj"] = {"snr": float(i), "type": "mlp.up_proj"}
        results[f"model.layers.{i}.self_attn.q_proj"] = {"snr": -i, "type": "self_attn.q_proj"}
    patterns = trained_patterns(results, 0.25)
    assert patterns[:2] == ["^lm_head.weight$", "^model.embed_tokens.weight$"]
    import re

    def trains(name: str) -> bool:
        return any(re.search(p, name) for p in patterns)

    assert [i for i in range(12) if trains(f"model.layers.{i}.mlp.up_proj.weight")] == [9, 10, 11]
    assert [i for i in range(12) if trains(f"model.layers.{i}.self_attn.q_proj.weight")] == [
        0,
        1,
        2,
    ]
    assert not trains("model.layers.1.mlp.up_proj_other.weight")
    assert weight_type("model.layers.3.self_attn.o_proj") == "self_attn.o_proj"
    assert weight_type("lm_head") == "lm_head"


def test_a_spectrum_run_trains_only_the_chosen_modules(
    tmp_path: Path, base_config: dict, monkeypatch: pytest.MonkeyPatch
):
    """The first run scans the model (no results file) and writes what it found; a second run
    reads Spectrum's file from ./model_snr_results, as Axolotl does."""
    monkeypatch.chdir(tmp_path)
    base = load_file(Path(base_config["base_model"]) / "model.safetensors")
    config = {**base_config, "spectrum_top_fraction": 0.5, "max_steps": 2, "learning_rate": 1e-2}
    train_with(config, tmp_path / "spectrum.yml")
    out = Path(config["output_dir"])
    slug = base_config["base_model"].replace("/", "-").replace("_", "-")
    written = out / f"snr_results_{slug}.json"
    results = json.loads(written.read_text())
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_config["base_model"])
    scanned = scan(model)
    assert set(results) == set(scanned)
    for name, info in scanned.items():
        assert results[name]["type"] == info["type"]
        assert results[name]["snr"] == pytest.approx(info["snr"], rel=1e-5)
    import re

    patterns = trained_patterns(results, 0.5)
    trained = load_file(out / "model.safetensors")
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    chosen = {name for name in base if any(re.search(p, name) for p in patterns)}
    assert changed == chosen, changed ^ chosen
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= changed
    assert any(".layers." in name for name in changed)

    (tmp_path / "model_snr_results").mkdir()
    flipped = {k: {**v, "snr": -v["snr"]} for k, v in results.items()}  # the other half
    (tmp_path / "model_snr_results" / written.name).write_text(json.dumps(flipped))
    again = {**config, "output_dir": str(tmp_path / "again")}
    train_with(again, tmp_path / "again.yml")
    second = load_file(tmp_path / "again" / "model.safetensors")
    changed_again = {name for name in base if not torch.equal(base[name], second[name])}
    assert changed_again == {
        name for name in base if any(re.search(p, name) for p in trained_patterns(flipped, 0.5))
    }
    assert changed_again != changed


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"spectrum_top_fraction": 0.5, "unfrozen_parameters": ["lm_head"]}, "not both"),
        ({"spectrum_top_fraction": 0.5, "adapter": "lora"}, "a full fine-tune"),
        ({"spectrum_top_fraction": 1.5}, "spectrum_top_fraction"),
    ],
)
def test_bad_spectrum_configs_are_refused(
    tmp_path: Path, base_config: dict, keys: dict, message: str
):
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "bad.yml", {**base_config, **keys}))
    assert message in " ".join(str(info.value).split())
