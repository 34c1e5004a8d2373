"""LoRA / QLoRA options, bitsandbytes quantization and `weave merge-lora` on the tiny llama.

CPU tests check that each option reaches peft's config, that DoRA and rsLoRA train, that added
tokens make the embeddings train and save, that config mistakes fail clearly, that quantized
loading composes with the LoRA wrapper, and that a merged model equals base + adapter. QLoRA and
8-bit LoRA train and merge for real through bitsandbytes, which runs on the CPU from 0.50 on
(`scripts/setup.sh` installs it); without it, the run says what to install.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._run import family_of, load_tokenizer, open_session
from axolotl_weave_plugins.methods import bnb_quantization
from axolotl_weave_testing import run_weave, train_with, without_package, write_config
from axolotl_weave_testing import small_lora as lora
from safetensors.torch import load_file

PROBE = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def load(config: dict[str, Any], tmp_path: Path, pm: Any = None) -> tuple[Any, Any]:
    """Validate the config and run `load_model` (with its wrappers); return model, tokenizer."""
    session = open_session(write_config(tmp_path / "load.yml", config), [], pm)
    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    return session.hooks.load_model(session.cfg, tokenizer, family), tokenizer


run = train_with  # train in-process with extra plugin objects registered


def config_error(tmp_path: Path, config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "bad.yml", config))
    return str(info.value)


def logits(model: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


class LogitsProbe:
    """A plugin that records the trained model's logits on PROBE in post_train."""

    def __init__(self) -> None:
        self.logits: torch.Tensor | None = None

    @hookimpl(trylast=True)
    def post_train(self, model: Any) -> None:
        self.logits = logits(model).cpu()


# --- every option reaches peft's LoraConfig -----------------------------------------------------


def test_lora_options_reach_peft_config(base_config: dict, tmp_path: Path) -> None:
    config = lora(
        base_config,
        lora_r=6,
        lora_alpha=12,
        lora_dropout=0.1,
        lora_modules_to_save=["lm_head"],
        peft_use_dora=True,
        peft_use_rslora=True,
        peft_layers_to_transform=[1],
        peft_layers_pattern=["layers"],
    )
    model, _ = load(config, tmp_path)
    peft_config = model.peft_config["default"]
    assert peft_config.r == 6
    assert peft_config.lora_alpha == 12
    assert peft_config.lora_dropout == 0.1
    assert set(peft_config.target_modules) == {"q_proj", "v_proj"}
    assert set(peft_config.modules_to_save) == {"lm_head"}
    assert peft_config.use_dora is True
    assert peft_config.use_rslora is True
    assert peft_config.layers_to_transform == [1]
    assert peft_config.layers_pattern == ["layers"]
    assert peft_config.fan_in_fan_out is False
    assert peft_config.task_type == "CAUSAL_LM"


def test_defaults_are_axolotls(base_config: dict, tmp_path: Path) -> None:
    model, _ = load({**base_config, "adapter": "lora", "lora_target_linear": True}, tmp_path)
    peft_config = model.peft_config["default"]
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (8, 16, 0.0)
    assert peft_config.use_dora is False and peft_config.use_rslora is False
    assert peft_config.layers_to_transform is None
    assert peft_config.modules_to_save is None  # no tokens added: the embeddings stay frozen
    adapted = {name.split(".")[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_target_linear_adds_the_listed_modules(base_config: dict, tmp_path: Path) -> None:
    config = lora(base_config, lora_target_linear=True, lora_target_modules=["embed_tokens"])
    model, _ = load(config, tmp_path)
    targets = set(model.peft_config["default"].target_modules)
    assert {"q_proj", "down_proj", "embed_tokens"} <= targets
    assert "lm_head" not in targets  # the output layer is never a linear target


def test_fan_in_fan_out_reaches_peft_on_conv1d(tmp_path: Path, base_config: dict) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(base_config["base_model"])
    gpt2 = tmp_path / "tiny-gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256)
    ).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    config = lora(
        {**base_config, "base_model": str(gpt2)},
        lora_target_modules=["c_attn"],
        lora_fan_in_fan_out=True,
    )
    model, _ = load(config, tmp_path)
    assert model.peft_config["default"].fan_in_fan_out is True
    assert logits(model).isfinite().all()


def test_layers_to_transform_limits_the_adapted_layers(base_config: dict, tmp_path: Path) -> None:
    model, _ = load(lora(base_config, peft_layers_to_transform=[1]), tmp_path)
    adapted = sorted(name for name, m in model.named_modules() if hasattr(m, "lora_A"))
    assert adapted and all(".layers.1." in name for name in adapted), adapted


@pytest.mark.parametrize(("dora", "rslora"), [(True, False), (False, True)], ids=["dora", "rslora"])
def test_dora_and_rslora_train(base_config: dict, tmp_path: Path, dora: bool, rslora: bool) -> None:
    out = tmp_path / "out"
    config = lora(
        base_config, peft_use_dora=dora, peft_use_rslora=rslora, output_dir=str(out), max_steps=3
    )
    probe = LogitsProbe()
    state = run(config, tmp_path / "c.yml", probe)
    assert state.global_step == 3
    loss = [rec["loss"] for rec in state.log_history if "loss" in rec]
    assert loss and all(torch.isfinite(torch.tensor(loss)))
    saved = json.loads((out / "adapter_config.json").read_text())
    assert (saved["use_dora"], saved["use_rslora"]) == (dora, rslora)
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in key for key in weights) is dora


# --- added tokens: the embeddings train and are saved ----------------------------------------


def test_added_tokens_make_the_embeddings_trainable_and_saved(
    base_config: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    config = lora(base_config, tokens=["<tool>", "<end_tool>"], output_dir=str(out))
    with caplog.at_level(logging.INFO, logger="axolotl_weave"):
        model, tokenizer = load(config, tmp_path)
    assert set(model.peft_config["default"].modules_to_save) == {"embed_tokens", "lm_head"}
    assert "embed_tokens, lm_head" in caplog.text and "lora_modules_to_save" in caplog.text
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in n for n in trainable)
    assert any("lm_head.modules_to_save" in n for n in trainable)

    probe = LogitsProbe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(config, tmp_path / "c.yml", probe)
    assert not [w for w in caught if "save_embedding_layers" in str(w.message)]
    weights = load_file(out / "adapter_model.safetensors")
    rows = len(tokenizer)
    embed = [w for k, w in weights.items() if "embed_tokens" in k]
    head = [w for k, w in weights.items() if "lm_head" in k]
    assert len(embed) == len(head) == 1  # once each: not beside the base's resized copies
    assert embed[0].shape[0] == rows and head[0].shape[0] == rows

    saved_tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(base_config["base_model"], dtype=torch.float32)
    base.resize_token_embeddings(len(saved_tokenizer))
    reloaded = PeftModel.from_pretrained(base, str(out))
    torch.testing.assert_close(logits(reloaded), probe.logits, rtol=1e-4, atol=1e-4)


def test_listed_modules_to_save_are_kept_when_tokens_are_added(
    base_config: dict, tmp_path: Path
) -> None:
    config = lora(base_config, tokens=["<tool>"], lora_modules_to_save=["lm_head", "norm"])
    model, _ = load(config, tmp_path)
    assert set(model.peft_config["default"].modules_to_save) == {"lm_head", "norm", "embed_tokens"}


# --- config mistakes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"adapter": "qlora"}, "adapter: qlora needs load_in_4bit: true"),
        ({"adapter": "qlora", "load_in_8bit": True}, "remove load_in_8bit"),
        ({"load_in_4bit": True}, "cannot be fully fine-tuned"),
        ({"adapter": "lora", "load_in_4bit": True, "load_in_8bit": True}, "choose one"),
        (
            {"adapter": "qlora", "load_in_4bit": True, "bnb_config_kwargs": {"bits": 3}},
            "unknown key(s) bits",
        ),
        (
            {
                "adapter": "qlora",
                "load_in_4bit": True,
                "bnb_config_kwargs": {"bnb_4bit_quant_type": "int4"},
            },
            "'int4' is not nf4 or fp4",
        ),
        (
            {
                "adapter": "lora",
                "load_in_8bit": True,
                "bnb_config_kwargs": {"bnb_4bit_quant_type": "nf4"},
            },
            "apply to load_in_4bit",
        ),
        ({"loraplus_lr_ratio": 16}, "loraplus_lr_ratio needs adapter: lora or qlora"),
        ({"adapter": "lora", "gpu_memory_limit": "lots"}, "not a size such as 20GiB"),
    ],
    ids=[
        "qlora-no-4bit",
        "qlora-8bit",
        "4bit-no-adapter",
        "both-bits",
        "bnb-unknown-key",
        "bnb-quant-type",
        "bnb-4bit-key-on-8bit",
        "loraplus",
        "gpu-memory-limit",
    ],
)
def test_config_mistakes_are_clear_errors(
    base_config: dict, tmp_path: Path, extra: dict, expected: str
) -> None:
    assert expected in config_error(tmp_path, {**base_config, **extra})


def test_qlora_config_validates_without_a_gpu(base_config: dict, tmp_path: Path) -> None:
    config = {
        **base_config,
        "adapter": "qlora",
        "load_in_4bit": True,
        "bnb_config_kwargs": {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
        "lora_on_cpu": True,
        "gpu_memory_limit": 20,
    }
    cfg = open_session(write_config(tmp_path / "q.yml", config)).cfg
    assert (cfg.adapter, cfg.load_in_4bit, cfg.gpu_memory_limit) == ("qlora", True, 20)


# --- bitsandbytes quantization ---------------------------------------------------------------


def test_quantization_defaults_are_axolotls(base_config: dict, tmp_path: Path) -> None:
    from transformers import BitsAndBytesConfig

    def kwargs(**extra: Any) -> dict[str, Any]:
        config = {**base_config, "adapter": "qlora", "load_in_4bit": True, **extra}
        cfg = open_session(write_config(tmp_path / "q.yml", config)).cfg
        return bnb_quantization.quantization_kwargs(cfg)

    defaults = kwargs()
    assert defaults["bnb_4bit_quant_type"] == "nf4"
    assert defaults["bnb_4bit_use_double_quant"] is True
    assert defaults["bnb_4bit_compute_dtype"] == "float32"  # bf16: false in base_config
    assert kwargs(bf16=True)["bnb_4bit_compute_dtype"] == "bfloat16"
    fp4 = kwargs(bnb_config_kwargs={"bnb_4bit_quant_type": "fp4"})
    assert fp4["bnb_4bit_quant_type"] == "fp4"
    built = BitsAndBytesConfig(**defaults)
    assert built.load_in_4bit and built.bnb_4bit_compute_dtype == torch.float32

    config = {**base_config, "adapter": "lora", "load_in_8bit": True}
    cfg = open_session(write_config(tmp_path / "e.yml", config)).cfg
    assert bnb_quantization.quantization_kwargs(cfg) == {"load_in_8bit": True}


def test_quantized_loading_places_the_model_on_this_process_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bnb_quantization.device_map() == {"": "cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert bnb_quantization.device_map() == {"": 3}


@pytest.mark.parametrize("bits", ["load_in_4bit", "load_in_8bit"])
def test_quantized_loading_without_bitsandbytes_says_what_to_install(
    base_config: dict, tmp_path: Path, bits: str
) -> None:
    adapter = "qlora" if bits == "load_in_4bit" else "lora"
    out = tmp_path / "out"
    config = lora(base_config, adapter=adapter, output_dir=str(out), **{bits: True})
    path = write_config(tmp_path / "c.yml", config)
    result = run_weave("train", str(path), env=without_package("bitsandbytes", tmp_path))
    assert result.returncode == 4, result.stderr[-2000:]
    err = " ".join(result.stderr.split())
    assert f"{bits}: {bits[8]}-bit quantization needs the package bitsandbytes" in err
    assert "pip install 'bitsandbytes>=0.50'" in err
    assert "Traceback" not in result.stderr
    assert not (out / "adapter_model.safetensors").exists()


def test_an_old_bitsandbytes_without_a_gpu_is_refused_clearly(
    base_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before 0.50, bitsandbytes was not checked to quantize on the CPU: the run says so."""
    from axolotl_weave import MissingDependencyError

    pytest.importorskip("bitsandbytes")
    import bitsandbytes

    monkeypatch.setattr(bitsandbytes, "__version__", "0.45.5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = open_session(write_config(tmp_path / "c.yml", lora(base_config, load_in_8bit=True))).cfg
    with pytest.raises(MissingDependencyError, match="bitsandbytes 0.45.5 was not checked"):
        bnb_quantization.require_bitsandbytes(cfg)


# --- weave merge-lora ------------------------------------------------------------------------


def test_merge_lora_equals_base_plus_adapter(base_config: dict, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    config = lora(base_config, lora_target_linear=True, output_dir=str(out), max_steps=3)
    path = write_config(tmp_path / "c.yml", config)
    run(config, path)
    result = run_weave("merge-lora", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    merged_dir = out / "merged"
    assert "merged" in result.stdout

    base = AutoModelForCausalLM.from_pretrained(base_config["base_model"], dtype=torch.float32)
    expected = logits(PeftModel.from_pretrained(base, str(out)))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    torch.testing.assert_close(logits(merged), expected, rtol=0, atol=1e-5)
    untouched = AutoModelForCausalLM.from_pretrained(base_config["base_model"], dtype=torch.float32)
    assert (logits(merged) - logits(untouched)).abs().max() > 1e-3  # the adapter did something
    weights = load_file(merged_dir / "model.safetensors")
    assert not [key for key in weights if "lora" in key]
    assert (merged_dir / "tokenizer.json").is_file()
    assert not list(out.glob(".merged.*"))  # no staging folder left behind


def test_merge_lora_replaces_a_previous_merge_and_takes_a_dir(
    base_config: dict, tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    config = lora(base_config, output_dir=str(adapter), max_steps=2)
    run(config, tmp_path / "train.yml")
    (adapter / "merged").mkdir()
    (adapter / "merged" / "stale.txt").write_text("old")
    # the config of a QLoRA run: the base loads unquantized, so no bitsandbytes is needed
    other = {
        **config,
        "adapter": "qlora",
        "load_in_4bit": True,
        "lora_on_cpu": True,
        "output_dir": str(tmp_path / "elsewhere"),
    }
    path = write_config(tmp_path / "merge.yml", other)
    result = run_weave("merge-lora", str(path), "--lora-model-dir", str(adapter))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (adapter / "merged" / "model.safetensors").is_file()
    assert not (adapter / "merged" / "stale.txt").exists()
    assert not list(adapter.glob(".merged.*"))


def test_merge_lora_without_an_adapter_is_a_clear_error(base_config: dict, tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yml", lora(base_config))
    missing = tmp_path / "nowhere"
    result = run_weave("merge-lora", str(path), "--lora-model-dir", str(missing))
    assert result.returncode == 1
    err = " ".join(result.stderr.split())
    assert f"--lora-model-dir: '{missing}' does not exist" in err
    assert "not a saved LoRA adapter" in err
    assert "Traceback" not in result.stderr
    assert not missing.exists()


def test_merge_placement_honours_lora_on_cpu_and_gpu_memory_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from axolotl_weave_plugins.methods.lora import placement

    def cfg(**kw: Any) -> Any:
        return SimpleNamespace(**{"lora_on_cpu": False, "gpu_memory_limit": None, **kw})

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement(cfg()) == {}
    assert placement(cfg(lora_on_cpu=True)) == {"device_map": {"": "cpu"}}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert placement(cfg()) == {"device_map": "auto"}
    assert placement(cfg(lora_on_cpu=True, gpu_memory_limit=20)) == {"device_map": {"": "cpu"}}
    limited = {"device_map": "auto", "max_memory": {0: "20GiB", 1: "20GiB", "cpu": "256GiB"}}
    assert placement(cfg(gpu_memory_limit=20)) == limited
    assert placement(cfg(gpu_memory_limit="20 GiB")) == limited


def test_merge_lora_is_listed_in_help(tmp_path: Path) -> None:
    result = run_weave("merge-lora", "--help")
    assert result.returncode == 0, result.stderr
    assert "--lora-model-dir" in result.stdout


# --- QLoRA and 8-bit LoRA through bitsandbytes (CPU from 0.50 on, or a CUDA GPU) ------------


QUANTIZED_RUNS = {
    "qlora-nf4-double-quant": {"adapter": "qlora", "load_in_4bit": True},
    "qlora-fp4": {
        "adapter": "qlora",
        "load_in_4bit": True,
        "bnb_config_kwargs": {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
    },
    "lora-8bit": {"adapter": "lora", "load_in_8bit": True},
}


def quantized_settings(model: Any) -> dict[str, Any]:
    """How many linear layers are bitsandbytes-quantized, of which kind, and the saved settings."""
    import bitsandbytes as bnb

    kinds = {bnb.nn.Linear4bit: "4bit", bnb.nn.Linear8bitLt: "8bit"}
    found = [kinds[type(m)] for m in model.modules() if type(m) in kinds]
    quantization = model.get_base_model().config.quantization_config
    return {"kinds": set(found), "count": len(found), "config": quantization}


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (scripts/setup.sh installs it)")
@pytest.mark.parametrize("name", QUANTIZED_RUNS)
def test_quantized_lora_trains_reloads_and_merges(
    base_config: dict, tmp_path: Path, name: str
) -> None:
    """QLoRA (nf4 with double quantization, fp4) and LoRA on an 8-bit base, for real: every
    linear layer of the tiny llama quantized, the loss falls, the adapter over the same
    quantized base reloads with the trained logits, and merge-lora's model equals base +
    adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = tmp_path / "out"
    config = {
        **base_config,
        **QUANTIZED_RUNS[name],
        "lora_target_linear": True,
        "learning_rate": 1e-2,
        "lr_scheduler": "constant",
        "max_steps": 8,
        "logging_steps": 1,
        "output_dir": str(out),
    }
    path = write_config(tmp_path / "c.yml", config)
    seen: dict[str, Any] = {}

    class Inspect:
        @hookimpl(trylast=True)
        def post_train(self, model: Any) -> None:
            seen.update(quantized_settings(model), logits=logits(model))

    state = run(config, path, Inspect())
    losses = [rec["loss"] for rec in state.log_history if "loss" in rec]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) < 0.95 * sum(losses[:2]), losses
    assert seen["kinds"] == {"8bit" if "8bit" in name else "4bit"}
    assert seen["count"] == 7 * 2  # q, k, v, o, gate, up, down in each of the 2 layers
    quantization = seen["config"]
    if "4bit" in str(seen["kinds"]):
        expected = config.get("bnb_config_kwargs") or {}
        assert quantization.bnb_4bit_quant_type == expected.get("bnb_4bit_quant_type", "nf4")
        assert quantization.bnb_4bit_use_double_quant is expected.get(
            "bnb_4bit_use_double_quant", True
        )
    else:
        assert quantization.load_in_8bit

    # the saved adapter over the same quantized base: the logits the run ended with
    settings = bnb_quantization.quantization_kwargs(open_session(path).cfg)
    reloaded_base = bnb_quantization.keep_cpu_layers_differentiable(
        AutoModelForCausalLM.from_pretrained(
            base_config["base_model"],
            quantization_config=BitsAndBytesConfig(**settings),
            device_map={"": "cpu"},
        )
    )
    reloaded = logits(PeftModel.from_pretrained(reloaded_base, str(out)))
    torch.testing.assert_close(reloaded, seen["logits"], rtol=1e-4, atol=1e-4)

    result = run_weave("merge-lora", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    base = AutoModelForCausalLM.from_pretrained(base_config["base_model"], dtype=torch.float32)
    expected_logits = logits(PeftModel.from_pretrained(base, str(out)))
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
    assert not [n for n, _ in merged.named_parameters() if "lora" in n]
    assert getattr(merged.config, "quantization_config", None) is None
    torch.testing.assert_close(logits(merged), expected_logits, rtol=0, atol=1e-5)
    untouched = AutoModelForCausalLM.from_pretrained(base_config["base_model"], dtype=torch.float32)
    assert (logits(merged) - logits(untouched)).abs().max() > 1e-2  # the adapter did something


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (scripts/setup.sh installs it)")
def test_qlora_gradients_are_the_same_after_an_evaluation(
    base_config: dict, tmp_path: Path
) -> None:
    """An eval-mode, no-grad forward (an evaluation, a logits probe) must not change how the
    4-bit layers train: bitsandbytes' CPU inference repacking would leave them on a kernel
    without a backward, and no LoRA weight would get a gradient (keep_cpu_layers_differentiable
    turns it off)."""
    config = lora(base_config, adapter="qlora", load_in_4bit=True, lora_target_linear=True)

    def lora_gradients(evaluate_first: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model, _ = load(config, tmp_path)
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero; nonzero B lets gradients reach A
                torch.nn.init.normal_(param, std=0.02)
        if evaluate_first:
            logits(model)
        model.train()
        model(input_ids=PROBE, labels=PROBE).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, after_evaluation = lora_gradients(False), lora_gradients(True)
    assert len(plain) == 2 * 7 * 2  # A and B of the 7 linears of both layers
    missing = [name for name, grad in after_evaluation.items() if grad is None]
    assert not missing, f"no gradient after an evaluation: {missing[:3]}"
    for name, grad in plain.items():
        torch.testing.assert_close(after_evaluation[name], grad, rtol=0, atol=0, msg=name)


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (scripts/setup.sh installs it)")
def test_an_8bit_layer_takes_a_4d_input() -> None:
    """deepseek_v3's attention feeds an 8-bit layer 4-D latents, which bitsandbytes' 8-bit
    matmul (eval mode) cannot take: flatten_int8_inputs gives it rows and restores the shape."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    reference = torch.nn.Linear(64, 32, bias=False)
    layer = bnb.nn.Linear8bitLt(64, 32, bias=False, has_fp16_weights=False)
    layer.weight = bnb.nn.Int8Params(
        reference.weight.data.clone(), requires_grad=False, has_fp16_weights=False
    )
    model = bnb_quantization.flatten_int8_inputs(torch.nn.Sequential(layer.to("cpu"))).eval()
    latents = torch.randn(2, 3, 5, 64)
    latents[0, 0, 1, 3] = 10.0  # an outlier column, which the 8-bit matmul treats apart
    with torch.no_grad():
        out = model(latents)
        rows = model(latents.reshape(-1, 64))  # 2-D: the hooks leave it as it is
    assert out.shape == (2, 3, 5, 32)
    torch.testing.assert_close(out, rows.reshape(2, 3, 5, 32), rtol=0, atol=0)
    torch.testing.assert_close(out, reference(latents), rtol=0, atol=5e-2)


def test_loraplus_gives_the_b_matrices_a_higher_rate(weave_hooks, tiny_llama_dir) -> None:
    from types import SimpleNamespace

    from axolotl_weave._optim import build_optimizer
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    cfg = SimpleNamespace(
        lr_groups=[], learning_rate=1e-4, weight_decay=0.0, optimizer="adamw_torch",
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        loraplus_lr_ratio=16, loraplus_lr_embedding=1e-6,
    )  # fmt: skip
    optimizer = build_optimizer(cfg, model, weave_hooks)
    rate_of = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            rate_of[id(param)] = group["lr"]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(rate_of) == len(trainable)
    for name, param in trainable:
        expected = 1.6e-3 if "lora_B" in name else 1e-4
        assert rate_of[id(param)] == pytest.approx(expected), name


def test_gptq_needs_lora(base_config: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gptq: true trains an adapter"):
        open_session(write_config(tmp_path / "c.yml", {**base_config, "gptq": True}))


@pytest.mark.skipif(
    importlib.util.find_spec("gptqmodel") is not None, reason="gptqmodel is installed"
)
def test_gptq_without_its_packages_says_what_to_install(base_config: dict, tmp_path: Path) -> None:
    config = {**base_config, "gptq": True, "adapter": "lora", "lora_target_linear": True}
    result = run_weave("train", str(write_config(tmp_path / "c.yml", config)))
    assert result.returncode == 4, result.stderr
    assert "pip install optimum gptqmodel" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_lora_target_parameters_adapts_fused_moe_experts(
    base_config: dict, tmp_path: Path, tiny_llama_dir: Path, weave_hooks: Any
) -> None:
    """Axolotl's `lora_target_parameters` (peft's target_parameters): LoRA on the experts'
    fused weight tensors of a mixture of experts, which are parameters, not linear modules."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = tmp_path / "tiny-mixtral"
    shutil.copytree(tiny_llama_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    family = weave_hooks.model_families()["mixtral"]
    config = AutoConfig.for_model(
        "mixtral", **{**family.tiny_config(), "vocab_size": len(tokenizer)}
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    run = {
        **base_config,
        "base_model": str(model_dir),
        "adapter": "lora",
        "lora_target_parameters": ["experts.gate_up_proj"],
        "max_steps": 2,
    }
    state = train_with(run, tmp_path / "c.yml")
    assert state.global_step == 2
    saved = json.loads((Path(run["output_dir"]) / "adapter_config.json").read_text())
    assert saved["target_parameters"] == ["experts.gate_up_proj"]
    weights = load_file(str(Path(run["output_dir"]) / "adapter_model.safetensors"))
    assert any("experts.lora_A" in name for name in weights), sorted(weights)[:6]


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (scripts/setup.sh installs it)")
def test_a_4bit_model_counts_the_weights_its_packed_storage_stands_for(
    base_config: dict, tmp_path: Path
) -> None:
    from axolotl_weave._run import parameter_counts

    plain, _ = load(lora(base_config, lora_target_linear=True), tmp_path)
    config = lora(base_config, adapter="qlora", load_in_4bit=True, lora_target_linear=True)
    quantized, _ = load(config, tmp_path)
    assert any(hasattr(p, "quant_state") for p in quantized.parameters())  # really packed
    assert parameter_counts(quantized) == parameter_counts(plain)
