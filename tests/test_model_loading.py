"""The generic loader's keys: tokens, class names, config and kwargs overrides, 32x embeddings."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave import ConfigError, set_pad_token
from axolotl_weave._run import family_of, load_tokenizer, open_session
from axolotl_weave_testing import run_weave, write_config


def load(tmp_path: Path, config: dict[str, Any]) -> tuple[Any, Any]:
    """(tokenizer, model) as a run loads them."""
    session = open_session(write_config(tmp_path / "config.yml", config))
    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    return tokenizer, session.hooks.load_model(session.cfg, tokenizer, family)


def test_tokens_are_added_and_the_embeddings_grow(tmp_path: Path, base_config: dict) -> None:
    base_tokenizer, base_model = load(tmp_path, base_config)
    tokenizer, model = load(tmp_path, {**base_config, "tokens": ["<tool>", "</tool>"]})
    assert len(tokenizer) == len(base_tokenizer) + 2
    assert tokenizer.convert_tokens_to_ids("<tool>") == len(base_tokenizer)
    assert tokenizer("a<tool>b")["input_ids"].count(len(base_tokenizer)) == 1
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert base_model.get_input_embeddings().num_embeddings == len(base_tokenizer)


def test_resize_token_embeddings_to_32x(tmp_path: Path, base_config: dict) -> None:
    tokenizer, model = load(
        tmp_path, {**base_config, "tokens": ["<x>"], "resize_token_embeddings_to_32x": True}
    )
    rows = model.get_input_embeddings().num_embeddings
    assert rows % 32 == 0 and len(tokenizer) <= rows < len(tokenizer) + 32


@pytest.mark.parametrize("mean", [None, False, True])
def test_added_token_rows_start_random_or_at_the_mean(
    tmp_path: Path, base_config: dict, mean: bool | None
) -> None:
    """Axolotl's default (`mean_resizing_embeddings: false`): the model's own initialisation
    (normal, std `initializer_range`); `true`: transformers' mean resizing, near the mean."""
    base_tokenizer, base_model = load(tmp_path, base_config)
    config = {**base_config, "tokens": ["<a>", "<b>", "<c>"]}
    if mean is not None:
        config["mean_resizing_embeddings"] = mean
    _, model = load(tmp_path, config)
    old = base_model.get_input_embeddings().weight.detach()
    new = model.get_input_embeddings().weight.detach()[len(base_tokenizer) :]
    assert new.shape[0] == 3
    distance = (new - old.mean(dim=0)).norm(dim=1)
    if mean:
        assert distance.max() < 1e-3, distance
    else:
        assert distance.min() > 0.5 * model.config.initializer_range * new.shape[1] ** 0.5


def test_shrink_embeddings_cuts_rows_the_tokenizer_lacks(tmp_path: Path, base_config: dict):
    tokenizer, model = load(tmp_path, base_config)
    grown = tmp_path / "grown"
    model.resize_token_embeddings(len(tokenizer) + 40)
    model.save_pretrained(grown)
    tokenizer.save_pretrained(grown)
    kept_config = {**base_config, "base_model": str(grown)}
    assert (
        load(tmp_path, kept_config)[1].get_input_embeddings().num_embeddings == len(tokenizer) + 40
    )
    shrunk = load(tmp_path, {**kept_config, "shrink_embeddings": True})[1]
    assert shrunk.get_input_embeddings().num_embeddings == len(tokenizer)
    assert shrunk.get_output_embeddings().weight.shape[0] == len(tokenizer)


def test_cls_model_config_names_the_config_class(tmp_path: Path, base_config: dict) -> None:
    """Axolotl's `cls_model_config`: base_model's config is read with that transformers class
    (a text model's config out of a multimodal checkpoint, say); a name that is no config
    class is refused naming the key."""
    from transformers import MistralConfig

    _, model = load(tmp_path, {**base_config, "cls_model_config": "MistralConfig"})
    assert type(model.config) is MistralConfig  # AutoConfig reads a LlamaConfig here
    assert type(model).__name__ == "MistralForCausalLM"  # llama's weights, same names
    with pytest.raises(ConfigError, match="cls_model_config: 'LlamaModel' is not a transformers"):
        load(tmp_path, {**base_config, "cls_model_config": "LlamaModel"})


def test_overrides_of_model_config_and_kwargs(tmp_path: Path, base_config: dict) -> None:
    config = {
        **base_config,
        "overrides_of_model_config": {"rms_norm_eps": 0.001},
        "overrides_of_model_kwargs": {"attn_implementation": "eager"},
    }
    _, model = load(tmp_path, config)
    assert model.config.rms_norm_eps == 0.001
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("where", ["overrides_of_model_config", "model_config", "top level"])
def test_rope_scaling_keeps_the_models_other_rope_parameters(
    tmp_path: Path, base_config: dict, where: str, weave_log: Any
) -> None:
    """Linear RoPE scaling given as Axolotl gives it (under `model_config`, or at the top level
    as its older versions did): transformers 5 keeps every rope setting in one mapping that
    `rope_scaling` replaces, so `rope_theta` must survive (else building the model fails); the
    positions are then scaled down by the factor, as transformers' linear scaling does."""
    import torch

    scaling = {"type": "linear", "factor": 4.0}
    if where == "top level":
        config = {**base_config, "rope_scaling": scaling}
    else:
        config = {**base_config, where: {"rope_scaling": scaling}}
    _, base = load(tmp_path, base_config)
    _, model = load(tmp_path, config)
    theta = base.config.rope_parameters["rope_theta"]
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert model.config.rope_parameters["rope_theta"] == theta
    assert model.config.rope_parameters["factor"] == 4.0
    positions = torch.tensor([[0, 4, 8]])
    x = torch.zeros(1, 3, model.config.hidden_size)
    cos, _ = model.model.rotary_emb(x, positions)
    base_cos, _ = base.model.rotary_emb(x, positions // 4)
    assert torch.allclose(cos, base_cos, atol=1e-6)
    if where == "top level":
        assert "rope_scaling' is read as overrides_of_model_config" in weave_log.text


def test_axolotls_older_random_init_weights_is_reinit_weights(
    tmp_path: Path, base_config: dict
) -> None:
    cfg = open_session(
        write_config(tmp_path / "c.yml", {**base_config, "random_init_weights": True})
    ).cfg
    assert cfg.reinit_weights is True


def test_an_override_of_an_unknown_config_key_is_refused(tmp_path: Path, base_config: dict) -> None:
    config = {**base_config, "overrides_of_model_config": {"rms_norm_epz": 0.1}}
    with pytest.raises(ConfigError, match="overrides_of_model_config.rms_norm_epz: the llama"):
        load(tmp_path, config)


def test_model_and_tokenizer_classes_by_name(tmp_path: Path, base_config: dict) -> None:
    config = {
        **base_config,
        "model_type": "LlamaForCausalLM",
        "tokenizer_type": "PreTrainedTokenizerFast",
    }
    tokenizer, model = load(tmp_path, config)
    assert type(model).__name__ == "LlamaForCausalLM"
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tokenizer, PreTrainedTokenizerFast)


@pytest.mark.parametrize("key", ["model_type", "tokenizer_type"])
def test_an_unknown_class_name_is_refused(tmp_path: Path, base_config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}: 'NoSuchThing' is not a transformers class"):
        load(tmp_path, {**base_config, key: "NoSuchThing"})


def test_set_pad_token_takes_the_first_candidate_the_tokenizer_has(tiny_tokenizer: Any) -> None:
    def pad_after(*candidates: str, **tokens: Any) -> Any:
        tokenizer = copy.deepcopy(tiny_tokenizer)  # the fixture is shared: never change it
        for name, value in tokens.items():
            setattr(tokenizer, name, value)
        set_pad_token(tokenizer, *candidates)
        return tokenizer.pad_token

    assert tiny_tokenizer.pad_token is None
    assert (tiny_tokenizer.unk_token, tiny_tokenizer.eos_token) == ("<unk>", "</s>")
    # a token string counts only when it is in the vocabulary; the first one that is wins
    assert pad_after("<not-in-vocab>", "<s>", "</s>") == "<s>"
    assert pad_after("<not-in-vocab>") is None
    # the symbolic names stand for the tokenizer's own unk / eos tokens, in the order given
    assert pad_after("unk_token", "eos_token") == "<unk>"
    assert pad_after("eos_token", "unk_token") == "</s>"
    assert pad_after("<not-in-vocab>", "unk_token", "eos_token") == "<unk>"
    # ...and are passed over when the tokenizer has no such token
    assert pad_after("unk_token", "eos_token", unk_token=None) == "</s>"
    # a tokenizer that has a pad token keeps it
    assert pad_after("unk_token", "eos_token", pad_token="<s>") == "<s>"
    assert tiny_tokenizer.pad_token is None


@pytest.mark.skipif(
    importlib.util.find_spec("mistral_common") is not None, reason="mistral-common is installed"
)
def test_tokenizer_use_mistral_common_without_the_package_names_the_extra(
    base_config: dict, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yml", {**base_config, "tokenizer_use_mistral_common": True})
    result = run_weave("preprocess", str(config))
    assert result.returncode == 4, result.stderr
    assert "axolotl-weave[mistral-common]" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def base_with_reserved_tokens(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    """The tiny llama with three reserved special tokens added (and rows for them)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "reserved"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [f"<|reserved_{i}|>" for i in range(3)]}
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_added_tokens_overrides_rename_reserved_tokens(
    base_config: dict, base_with_reserved_tokens: Path, tmp_path: Path
) -> None:
    """A reserved token renamed `<tool_call>` keeps its id: the text encodes to that one id and
    decodes back, the vocabulary and embeddings keep their size, and a run trains and saves
    the renamed tokenizer."""
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(base_with_reserved_tokens)
    reserved = base.convert_tokens_to_ids("<|reserved_1|>")
    config = {
        **base_config,
        "base_model": str(base_with_reserved_tokens),
        "added_tokens_overrides": {reserved: "<tool_call>"},
    }
    tokenizer, model = load(tmp_path, config)
    assert len(tokenizer) == len(base)
    assert model.get_input_embeddings().num_embeddings == len(base)
    assert tokenizer.convert_tokens_to_ids("<tool_call>") == reserved
    ids = tokenizer("call <tool_call> now", add_special_tokens=False)["input_ids"]
    assert ids.count(reserved) == 1
    assert tokenizer.decode([reserved]) == "<tool_call>"
    assert tokenizer.convert_tokens_to_ids("<|reserved_1|>") != reserved  # the old text is gone
    out = Path(config["output_dir"])
    from axolotl_weave_testing import train_with

    train_with({**config, "max_steps": 1}, tmp_path / "t.yml")
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.convert_tokens_to_ids("<tool_call>") == reserved and len(saved) == len(base)


@pytest.mark.parametrize(
    ("which", "message"),
    [("base", "are not tokens the tokenizer added"), ("eos", "EOS token")],
)
def test_added_tokens_overrides_refusals(
    base_config: dict, base_with_reserved_tokens: Path, tmp_path: Path, which: str, message: str
) -> None:
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(base_with_reserved_tokens)
    token_id = base.eos_token_id if which == "eos" else base.convert_tokens_to_ids("a")
    config = {
        **base_config,
        "base_model": str(base_with_reserved_tokens),
        "added_tokens_overrides": {token_id: "<new>"},
    }
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, config)
    taken = {base.convert_tokens_to_ids("<|reserved_0|>"): "<|reserved_2|>"}
    with pytest.raises(ConfigError, match="already name other tokens"):
        load(tmp_path, {**config, "added_tokens_overrides": taken})
