"""Axolotl's finer LoRA keys, passed to peft's `LoraConfig`: per-module ranks and alphas
(`lora_rank_pattern`, `lora_alpha_pattern`), replicated layers (`peft_layer_replication`), the
adapter's initialisation (`peft_init_lora_weights`, PiSSA and OLoRA saved converted for the
original base) and trainable token rows (`peft_trainable_token_indices`), on the tiny llama with
real peft; what peft cannot do is refused naming the key."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._run import family_of, load_tokenizer, open_session
from axolotl_weave_testing import run_weave_in_process, small_lora, train_with, write_config
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

PROBE = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def lora(base_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The base config with a small LoRA on q_proj and v_proj, 2 steps, plus `extra`."""
    return small_lora(base_config, **{"max_steps": 2, "seed": 7, **extra})


def load(config: dict[str, Any], tmp_path: Path, purpose: str = "train") -> Any:
    """Validate the config and run `load_model` (with its wrappers) for `purpose`."""
    session = open_session(write_config(tmp_path / f"{purpose}.yml", config), [])
    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    return session.hooks.load_model(session.cfg, tokenizer, family, purpose=purpose)


def logits(model: Any, ids: torch.Tensor = PROBE) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def lora_layers(model: Any) -> dict[str, Any]:
    """The LoRA layers by their name in the base model (`model.layers.0.self_attn.q_proj`)."""
    base = model.get_base_model()
    return {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}


def original_base(base_config: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_config["base_model"], dtype=torch.float32)


class LogitsProbe:
    """Records the trained model's logits on `ids` after every other post_train (the save)."""

    def __init__(self, ids: torch.Tensor = PROBE) -> None:
        self.ids = ids
        self.logits: torch.Tensor | None = None

    @hookimpl(trylast=True)
    def post_train(self, model: Any) -> None:
        self.logits = logits(model, self.ids).cpu()


def config_error(tmp_path: Path, config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "bad.yml", config), [])
    return str(info.value)


# --- rank and alpha patterns -------------------------------------------------------------------


def test_rank_and_alpha_patterns_shape_the_saved_adapter(base_config: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ranks = {"layers.1.self_attn.q_proj": 2, "v_proj": 6}
    config = lora(
        base_config, lora_rank_pattern=ranks, lora_alpha_pattern={"v_proj": 3}, output_dir=str(out)
    )
    train_with(config, tmp_path / "c.yml")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == ranks and saved["alpha_pattern"] == {"v_proj": 3}
    weights = load_file(out / "adapter_model.safetensors")
    rank_of = {
        key.removeprefix("base_model.model.model.").removesuffix(".lora_A.weight"): w.shape[0]
        for key, w in weights.items()
        if "lora_A" in key
    }
    assert rank_of == {
        "layers.0.self_attn.q_proj": 4,
        "layers.0.self_attn.v_proj": 6,
        "layers.1.self_attn.q_proj": 2,
        "layers.1.self_attn.v_proj": 6,
    }
    reloaded = load({**config, "lora_model_dir": str(out)}, tmp_path, purpose="inference")
    scaling = {name: m.scaling["default"] for name, m in lora_layers(reloaded).items()}
    assert scaling["model.layers.0.self_attn.q_proj"] == 8 / 4
    assert scaling["model.layers.1.self_attn.q_proj"] == 8 / 2
    assert scaling["model.layers.1.self_attn.v_proj"] == 3 / 6


# --- trainable token rows ------------------------------------------------------------------------


def test_only_the_listed_token_rows_train_and_merge(base_config: dict, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_config["base_model"])
    seen = tokenizer("Reverse the word. Add the numbers.", add_special_tokens=False).input_ids
    listed = sorted(set(seen))[:3]  # tokens of the training prompts: their rows get gradients
    out = tmp_path / "out"
    config = lora(base_config, peft_trainable_token_indices=listed, output_dir=str(out))
    path = write_config(tmp_path / "c.yml", config)
    train_with(config, path)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["trainable_token_indices"] == listed
    deltas = [w for k, w in load_file(out / "adapter_model.safetensors").items() if "token" in k]
    assert len(deltas) == 1 and deltas[0].shape[0] == len(listed)

    result = run_weave_in_process("merge-lora", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
    base = original_base(base_config)
    changed = (merged.get_input_embeddings().weight != base.get_input_embeddings().weight).any(-1)
    assert changed.nonzero().flatten().tolist() == listed
    assert torch.equal(merged.lm_head.weight, base.lm_head.weight)


def test_token_rows_can_carry_the_added_tokens(base_config: dict, tmp_path: Path) -> None:
    """With tokens added, the listed rows (which must include the new ones) replace training
    the whole input embeddings; the untied head trains in full; the adapter alone reproduces
    the trained model on the resized base."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(base_config["base_model"]))
    out = tmp_path / "out"
    config = lora(
        base_config,
        tokens=["<tool>", "<end_tool>"],
        peft_trainable_token_indices=[5, vocab, vocab + 1],
        output_dir=str(out),
    )
    with_new_tokens = torch.tensor([[1, 5, vocab, 40, vocab + 1, 41]])
    probe = LogitsProbe(with_new_tokens)
    train_with(config, tmp_path / "c.yml", probe)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == ["lm_head"]
    weights = load_file(out / "adapter_model.safetensors")
    embed = [k for k in weights if "embed_tokens" in k]
    assert len(embed) == 1 and weights[embed[0]].shape[0] == 3  # the rows, not the matrix

    base = original_base(base_config)
    base.resize_token_embeddings(vocab + 2)
    reloaded = PeftModel.from_pretrained(base, str(out))
    torch.testing.assert_close(
        logits(reloaded, with_new_tokens), probe.logits, rtol=1e-4, atol=1e-4
    )

    missing = {**config, "peft_trainable_token_indices": [5, vocab]}
    with pytest.raises(
        ConfigError, match=rf"peft_trainable_token_indices: .*missing: \[{vocab + 1}\]"
    ):
        load(missing, tmp_path)


# --- layer replication -------------------------------------------------------------------------


def test_replicated_layers_train_load_for_inference_and_refuse_a_merge(
    base_config: dict, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = lora(base_config, peft_layer_replication=[[0, 2], [1, 2]], output_dir=str(out))
    path = write_config(tmp_path / "c.yml", config)
    probe = LogitsProbe()
    state = train_with(config, path, probe)
    assert state.global_step == 2
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["layer_replication"] == [[0, 2], [1, 2]]
    weights = load_file(out / "adapter_model.safetensors")
    layers = {int(k.split(".layers.")[1].split(".")[0]) for k in weights}
    assert layers == {0, 1, 2}  # layer 1 twice: three layers, each with its adapter

    loaded = load({**config, "lora_model_dir": str(out)}, tmp_path, purpose="inference")
    assert len(loaded.get_base_model().model.layers) == 3
    torch.testing.assert_close(logits(loaded), probe.logits, rtol=1e-5, atol=1e-5)

    result = run_weave_in_process("merge-lora", str(path))
    assert result.returncode != 0
    err = " ".join(result.stderr.split())
    assert "peft_layer_replication" in err and "cannot be merged" in err, err
    assert "Traceback" not in result.stderr
    assert not (out / "merged").exists()


# --- initialisation ----------------------------------------------------------------------------


def test_initialisations_that_leave_the_base_alone(base_config: dict, tmp_path: Path) -> None:
    """true (default: A Kaiming-uniform, B zero), gaussian (A normal with std 1/r), false (B
    random too), orthogonal and mica (A zero, B frozen): the base weights untouched."""

    def adapters(init: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = load(lora(base_config, peft_init_lora_weights=init), tmp_path)
        layer = lora_layers(model)["model.layers.0.self_attn.q_proj"]
        return model, layer.lora_A["default"].weight, layer.lora_B["default"].weight

    original = original_base(base_config).model.layers[0].self_attn.q_proj.weight
    default_model, default_a, default_b = adapters(None)
    assert default_model.peft_config["default"].init_lora_weights is True
    assert not default_b.any() and default_a.abs().max() <= 1 / 8  # 1 / sqrt(fan_in 64)
    for init in (True, "gaussian", False, "orthogonal", "mica"):
        model, a, b = adapters(init)
        assert model.peft_config["default"].init_lora_weights == init
        layer = lora_layers(model)["model.layers.0.self_attn.q_proj"]
        assert torch.equal(layer.get_base_layer().weight, original), init
        if init is True:
            assert torch.equal(a, default_a) and not b.any()
        elif init == "gaussian":
            assert not b.any() and not torch.equal(a, default_a)
            assert 0.2 < a.std().item() < 0.3  # std 1 / r = 0.25
        elif init is False:
            assert b.any()
        elif init == "orthogonal":
            assert b.any() and a.any()
        else:
            assert not a.any() and not b.requires_grad and a.requires_grad


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_base_rewriting_initialisations_save_an_adapter_of_the_original_base(
    base_config: dict, tmp_path: Path, init: str
) -> None:
    """PiSSA and OLoRA train on a rewritten base; the saved adapter, converted, applied on the
    original base_model gives the trained model's logits, and merge-lora folds it in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    config = lora(
        base_config,
        peft_init_lora_weights=init,
        lora_rank_pattern={"v_proj": 2},
        output_dir=str(out),
        max_steps=3,
    )
    path = write_config(tmp_path / "c.yml", config)
    probe = LogitsProbe()
    train_with(config, path, probe)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True  # a plain LoRA now
    assert saved["r"] == 8 and saved["rank_pattern"] == {"v_proj": 4}  # B A - B0 A0
    assert not list(out.glob("*initial*"))

    base = original_base(base_config)
    untouched = logits(base)
    reloaded = PeftModel.from_pretrained(base, str(out))
    torch.testing.assert_close(logits(reloaded), probe.logits, rtol=1e-4, atol=1e-4)
    assert (probe.logits - untouched).abs().max() > 1e-3  # training changed the model

    result = run_weave_in_process("merge-lora", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
    torch.testing.assert_close(logits(merged), probe.logits, rtol=1e-4, atol=1e-4)


# --- QLoRA ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (scripts/setup.sh installs it)")
def test_qlora_takes_patterns_replication_token_rows_and_gaussian(
    base_config: dict, tmp_path: Path
) -> None:
    from axolotl_weave_plugins.methods.lora import check_init_on_model, has_quantized_weights

    config = lora(
        base_config,
        adapter="qlora",
        load_in_4bit=True,
        lora_rank_pattern={"v_proj": 2},
        lora_alpha_pattern={"v_proj": 2},
        peft_layer_replication=[[0, 2], [1, 2]],
        peft_trainable_token_indices=[3, 4],
        peft_init_lora_weights="gaussian",
    )
    model = load(config, tmp_path)
    assert has_quantized_weights(model.get_base_model())  # packed, though it says bfloat16
    pissa = SimpleNamespace(peft_init_lora_weights="pissa")  # as another plugin quantized it
    with pytest.raises(ConfigError, match="pissa needs an unquantized base"):
        check_init_on_model(pissa, model.get_base_model())
    layers = lora_layers(model)
    assert len(model.get_base_model().model.layers) == 3 and len(layers) == 6
    assert layers["model.layers.2.self_attn.v_proj"].r["default"] == 2
    assert layers["model.layers.2.self_attn.q_proj"].r["default"] == 4
    model.train()
    model(input_ids=PROBE, labels=PROBE).loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens_delta" in n for n in trainable)
    assert all(p.grad is not None for p in trainable.values())


# --- mistakes, named by their key --------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"adapter": None, "lora_rank_pattern": {"q_proj": 2}}, "lora_rank_pattern needs adapter"),
        ({"lora_alpha_pattern": {"(": 2}}, "lora_alpha_pattern: '(' is not a regular"),
        ({"lora_rank_pattern": {"q_proj": 0}}, "lora_rank_pattern: 'q_proj': 0 is not a positive"),
        ({"peft_layer_replication": [[2, 1]]}, "peft_layer_replication: [2, 1] is not a range"),
        (
            {"peft_layer_replication": [[0, 2]], "relora_steps": 50, "relora": True},
            "peft_layer_replication with relora",
        ),
        ({"peft_trainable_token_indices": {"embed_tokens": []}}, "'embed_tokens' lists no token"),
        (
            {"peft_trainable_token_indices": [3, -1]},
            "the list holds a negative token id",
        ),
        ({"peft_layer_replication": [[-1, 1]]}, "peft_layer_replication: [-1, 1] is not a range"),
        ({"peft_init_lora_weights": "eva"}, "peft_init_lora_weights: eva initialises"),
        ({"peft_init_lora_weights": "corda"}, "peft_init_lora_weights: corda initialises"),
        ({"peft_init_lora_weights": "lora_ga"}, "peft_init_lora_weights: lora_ga initialises"),
        ({"peft_init_lora_weights": "loftq"}, "peft: {loftq_config"),
        ({"peft_init_lora_weights": "pissa_fast"}, "'pissa_fast' is not one of true or false"),
        ({"peft_init_lora_weights": "orthogonal", "lora_r": 5}, "orthogonal needs even ranks"),
        (
            {"peft_init_lora_weights": "pissa", "adapter": "qlora", "load_in_4bit": True},
            "pissa needs an unquantized base (remove load_in_4bit",
        ),
        (
            {"peft_init_lora_weights": "olora", "load_in_8bit": True},
            "olora needs an unquantized base (remove load_in_8bit",
        ),
        (
            {"peft_init_lora_weights": "orthogonal", "adapter": "qlora", "load_in_4bit": True},
            "orthogonal needs an unquantized base",
        ),
        (
            {"peft_init_lora_weights": "mica", "adapter": "qlora", "load_in_4bit": True},
            "mica needs an unquantized base",
        ),
        ({"peft_init_lora_weights": "pissa", "peft_use_dora": True}, "pissa with peft_use_dora"),
        (
            {"peft_init_lora_weights": "olora", "lora_modules_to_save": ["lm_head"]},
            "olora with lora_modules_to_save",
        ),
        (
            {"peft_init_lora_weights": "pissa", "peft_trainable_token_indices": [3]},
            "pissa with peft_trainable_token_indices",
        ),
        (
            {"peft_init_lora_weights": "pissa", "peft_layer_replication": [[0, 2]]},
            "pissa with peft_layer_replication",
        ),
        (
            {
                "peft_init_lora_weights": "pissa",
                "peft_use_rslora": True,
                "lora_rank_pattern": {"v_proj": 2},
            },
            "peft cannot convert",
        ),
        ({"peft_init_lora_weights": "olora", "rl": "dpo"}, "olora with rl: dpo: the reference"),
        (
            {"peft_init_lora_weights": "gaussian", "peft": {"loftq_config": {"loftq_bits": 4}}},
            "gaussian and peft.loftq_config both initialise",
        ),
    ],
)
def test_config_mistakes_name_the_key(
    base_config: dict, tmp_path: Path, extra: dict, expected: str
) -> None:
    config = {**lora(base_config), **extra}
    config = {key: value for key, value in config.items() if value is not None}
    assert expected in config_error(tmp_path, config)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"lora_rank_pattern": {"k_proj": 2}}, "lora_rank_pattern: 'k_proj' matches none"),
        ({"lora_alpha_pattern": {"^q_proj": 2}}, "lora_alpha_pattern: '^q_proj' matches none"),
        ({"peft_layer_replication": [[0, 3]]}, "[0, 3] goes beyond the model's 2 layers"),
        ({"peft_trainable_token_indices": [3, 100000]}, "token(s) [100000] beyond the"),
        ({"peft_trainable_token_indices": {"wte": [3]}}, "no module 'wte'"),
        (
            {"peft_trainable_token_indices": [3], "lora_modules_to_save": ["embed_tokens"]},
            "'embed_tokens' is also in lora_modules_to_save",
        ),
        (
            {"peft_init_lora_weights": "pissa", "tokens": ["<tool>"]},
            "pissa: the adapter is saved converted to a plain LoRA",
        ),
    ],
    ids=[
        "rank-typo",
        "alpha-anchored",
        "replication-range",
        "token-range",
        "token-module",
        "token-and-full",
        "pissa-added-tokens",
    ],  # fmt: skip
)
@pytest.mark.filterwarnings("ignore:The following .*_pattern keys did not match")
def test_mistakes_found_on_the_model_name_the_key(
    base_config: dict, tmp_path: Path, extra: dict, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(lora(base_config, **extra), tmp_path)
    assert expected in str(info.value)
