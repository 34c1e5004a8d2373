"""`fix_untrained_tokens`: rows a base model never trained (zero in the input embedding and
the output layer) start at the mean of the others, listed ids too, before an adapter wraps the
model, whose saved copies of the embeddings then carry them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError
from axolotl_weave._run import family_of, load_tokenizer, open_session, run_scoped_plugins
from axolotl_weave_testing import train_with, write_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

UNTRAINED = [5, 6]  # zero in both matrices
EMBEDDING_ONLY = 7  # zero in the input embedding only: the output layer trained it


@pytest.fixture(scope="module")
def base_with_untrained_rows(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    """The tiny llama with every row shifted by 0.5 (so that the mean is far from zero) and
    rows 5 and 6 zeroed in both matrices, row 7 in the input embedding only."""
    folder = tmp_path_factory.mktemp("untrained")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.lm_head.weight):
            weight += 0.5
            weight[UNTRAINED] = 0.0
        model.get_input_embeddings().weight[EMBEDDING_ONLY] = 0.0
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    return folder


def loaded(tmp_path: Path, config: dict[str, Any]) -> Any:
    """The model as a training run loads it (its run-scoped plugins registered)."""
    session = open_session(write_config(tmp_path / "c.yml", config))
    family = family_of(session)
    with run_scoped_plugins(session):
        return session.hooks.load_model(session.cfg, load_tokenizer(session, family), family)


def expected_rows(base: Path, fixed: list[int]) -> dict[str, torch.Tensor]:
    """Each matrix with the `fixed` rows set to the mean of its other rows."""
    weights = load_file(str(base / "model.safetensors"))
    out = {}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weight = weights[name].clone()
        keep = torch.ones(weight.shape[0], dtype=torch.bool)
        keep[fixed] = False
        weight[fixed] = weight[keep].mean(dim=0)
        out[name] = weight
    return out


@pytest.mark.parametrize(("value", "fixed"), [(True, UNTRAINED), ([0, 9], [0, *UNTRAINED, 9])])
def test_untrained_rows_and_listed_ids_start_at_the_mean(
    base_config: dict, base_with_untrained_rows: Path, tmp_path: Path, value: Any, fixed: list
) -> None:
    config = {**base_config, "base_model": str(base_with_untrained_rows)}
    model = loaded(tmp_path, {**config, "fix_untrained_tokens": value})
    expected = expected_rows(base_with_untrained_rows, fixed)
    got = {
        "model.embed_tokens.weight": model.get_input_embeddings().weight.detach(),
        "lm_head.weight": model.lm_head.weight.detach(),
    }
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight, rtol=1e-6, atol=1e-6, msg=name)
        assert float(got[name][UNTRAINED].abs().min()) > 0.3  # the mean of rows near 0.5
    assert float(got["model.embed_tokens.weight"][EMBEDDING_ONLY].abs().max()) == 0.0
    plain = loaded(tmp_path, config)
    assert float(plain.get_input_embeddings().weight[UNTRAINED].abs().max()) == 0.0


def test_with_lora_the_saved_adapter_carries_the_fixed_rows(
    base_config: dict, base_with_untrained_rows: Path, tmp_path: Path
) -> None:
    config = {
        **base_config,
        "base_model": str(base_with_untrained_rows),
        "adapter": "lora",
        "lora_target_linear": True,
        "lora_modules_to_save": ["embed_tokens", "lm_head"],
        "fix_untrained_tokens": True,
        "max_steps": 1,
        "learning_rate": 1e-5,
    }
    train_with(config, tmp_path / "c.yml")
    adapter = load_file(str(Path(config["output_dir"]) / "adapter_model.safetensors"))
    embedding = next(v for k, v in adapter.items() if "embed_tokens" in k)
    expected = expected_rows(base_with_untrained_rows, UNTRAINED)["model.embed_tokens.weight"]
    torch.testing.assert_close(embedding[UNTRAINED], expected[UNTRAINED], rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"adapter": "lora", "lora_target_linear": True, "fix_untrained_tokens": True},
            "add embed_tokens and lm_head .* to lora_modules_to_save",
        ),
        ({"fix_untrained_tokens": [-1]}, "token ids are 0 or more"),
    ],
)
def test_untrained_token_configs_refused(
    base_config: dict, tmp_path: Path, keys: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", {**base_config, **keys}), [])


def test_an_id_beyond_the_vocabulary_is_named(base_config: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"token id\(s\) \[99999\] beyond the"):
        loaded(tmp_path, {**base_config, "fix_untrained_tokens": [99999]})
