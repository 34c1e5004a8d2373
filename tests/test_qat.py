"""Quantization-aware training (`qat:`) and `weave quantize`: training fakes the numerics of the
scheme `weave quantize` then applies, exactly, with torchao as the reference."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_testing import (
    run_weave,
    run_weave_in_process,
    train_with,
    two_process_config,
    write_config,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None,
    reason="needs torchao: pip install 'axolotl-weave[torchao]'",
)

PROBE = torch.tensor([[1, 20, 30, 40, 50, 60, 70, 80]])
INT8_INT4 = {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32}


def qat_config(base_config: dict, out: Path, **qat: Any) -> dict:
    return {
        **base_config,
        "max_steps": 3,
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "output_dir": str(out),
        "qat": {**INT8_INT4, **qat},
    }


def step_losses(state: Any) -> list[float]:
    return [record["loss"] for record in state.log_history if "loss" in record]


def fake_quantized(folder: Path, scheme: dict[str, Any]) -> Any:
    """The saved model with torchao's fake-quantizers of `scheme` put in, as training ran it."""
    from axolotl_weave_plugins.methods._torchao_schemes import (
        embedding_config,
        fake_quantize,
        ptq_config,
    )

    model = AutoModelForCausalLM.from_pretrained(folder)
    weight, group_size = scheme["weight_dtype"], scheme["group_size"]
    base = ptq_config(weight, scheme["activation_dtype"], group_size)
    ends = embedding_config(weight, group_size) if scheme.get("quantize_embedding") else None
    fake_quantize(model, base, ends)
    return model.eval()


@pytest.mark.parametrize("ends", [False, True], ids=["linear", "with-embeddings"])
def test_quantize_writes_a_model_that_computes_what_qat_trained(
    base_config: dict, tmp_path: Path, ends: bool
) -> None:
    """Training saves a plain model; `weave quantize` writes torchao int4 weights that
    `from_pretrained` loads, whose logits equal the fake-quantized model's bit for bit; the
    embedding and output layer are quantized with `quantize_embedding` only."""
    scheme = {**INT8_INT4, "quantize_embedding": ends}
    config = qat_config(base_config, tmp_path / "out", quantize_embedding=ends)
    train_with(config, tmp_path / "qat.yml")
    out = tmp_path / "out"
    saved = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in saved  # the fake-quantizers were swapped back out
    assert "weight_fake_quantizer" not in " ".join(
        AutoModelForCausalLM.from_pretrained(out).state_dict()
    )

    result = run_weave_in_process("quantize", str(tmp_path / "qat.yml"))
    assert result.returncode == 0, result.stderr
    target = out / "quantized"
    assert f"saved to {target}" in result.stdout
    written = json.loads((target / "config.json").read_text())["quantization_config"]
    assert written["quant_method"] == "torchao"
    assert (target / "tokenizer.json").is_file()

    quantized = AutoModelForCausalLM.from_pretrained(target).eval()
    weight = quantized.model.layers[0].mlp.up_proj.weight
    assert type(weight).__name__ == "IntxUnpackedToInt8Tensor"
    ends_kind = {type(quantized.lm_head.weight), type(quantized.model.embed_tokens.weight)}
    assert (ends_kind == {torch.nn.Parameter}) is not ends
    with torch.no_grad():
        expected = fake_quantized(out, scheme)(PROBE).logits
        assert torch.equal(quantized(PROBE).logits, expected)
        plain = AutoModelForCausalLM.from_pretrained(out).eval()(PROBE).logits
    assert not torch.equal(plain, expected)  # the rounding is real


def test_fake_quantization_starts_after_n_steps(base_config: dict, tmp_path: Path) -> None:
    """Step 1's loss: the plain run's with `fake_quant_after_n_steps: 1`, another with fake
    quantization from the start; step 2 of the delayed run is fake-quantized."""
    plain = {**qat_config(base_config, tmp_path / "plain")}
    del plain["qat"]
    losses = {
        "plain": step_losses(train_with(plain, tmp_path / "plain.yml")),
        "qat": step_losses(
            train_with(qat_config(base_config, tmp_path / "qat"), tmp_path / "qat.yml")
        ),
        "delayed": step_losses(
            train_with(
                qat_config(base_config, tmp_path / "delayed", fake_quant_after_n_steps=1),
                tmp_path / "delayed.yml",
            )
        ),
    }
    assert losses["delayed"][0] == pytest.approx(losses["plain"][0], rel=1e-6)
    assert losses["qat"][0] != pytest.approx(losses["plain"][0], rel=1e-6)
    assert losses["delayed"][1] != pytest.approx(losses["plain"][1], rel=1e-6)


class Logits:
    """Records the trained model's logits on `PROBE` (before the fake-quantizers come out)."""

    logits: Any = None

    @hookimpl(wrapper=True, tryfirst=True)
    def post_train(self, model: Any) -> Any:
        with torch.no_grad():
            self.logits = model(PROBE.to(model.device)).logits
        return (yield)


def test_a_resumed_qat_run_goes_on_as_if_never_stopped(base_config: dict, tmp_path: Path) -> None:
    """Resumed at step 2, past `fake_quant_after_n_steps: 1`, fake quantization is on from the
    first resumed step: the losses and the model are the uninterrupted run's."""
    whole, resumed = Logits(), Logits()
    straight = qat_config(base_config, tmp_path / "straight", fake_quant_after_n_steps=1)
    straight = {**straight, "max_steps": 4, "save_steps": 2}
    expected = step_losses(train_with(straight, tmp_path / "straight.yml", whole))

    out = tmp_path / "stopped"
    shutil.copytree(tmp_path / "straight", out)
    shutil.rmtree(out / "checkpoint-4")
    second = {
        **straight,
        "output_dir": str(out),
        "resume_from_checkpoint": str(out / "checkpoint-2"),
    }
    state = train_with(second, tmp_path / "second.yml", resumed)
    assert step_losses(state) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(resumed.logits, whole.logits, rtol=1e-5, atol=1e-5)


def test_qat_on_fsdp2_trains_what_one_process_trains(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Axolotl's QAT examples run FSDP2: on 2 processes the fake-quantized model trains step for
    step as on one and saves one plain model. Compared where the two add the same gradients in
    the same order (one micro-batch per process against two accumulated, no clipping): a sum in
    another order moves a weight by a rounding error, which can flip its int4 value."""
    common = two_process_config(
        tiny_llama_dir,
        tmp_path,
        max_steps=3,
        gradient_accumulation_steps=1,
        max_grad_norm=0,
        qat=INT8_INT4,
    )
    one = {**common, "gradient_accumulation_steps": 2, "output_dir": str(tmp_path / "one")}
    fsdp = {
        **common,
        "fsdp_version": 2,
        "fsdp_config": {"reshard_after_forward": True},
        "output_dir": str(tmp_path / "fsdp"),
    }
    whole = train_with(one, tmp_path / "one.yml")
    result = run_weave(
        "train", str(write_config(tmp_path / "fsdp.yml", fsdp)), "--num-processes", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "fsdp" / "trainer_state.json").read_text())["log_history"]
    assert [r["loss"] for r in two if "loss" in r] == pytest.approx(step_losses(whole), rel=1e-6)
    expected = load_file(str(tmp_path / "one" / "model.safetensors"))
    got = load_file(str(tmp_path / "fsdp" / "model.safetensors"))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert "quantization_config" not in (tmp_path / "fsdp" / "config.json").read_text()


def test_fused_losses_leave_a_fake_quantized_output_layer_alone(tiny_llama_dir: Path) -> None:
    """Liger's and cut cross-entropy's fused losses multiply by the output layer's weight
    themselves: they apply to QAT's plain output layer, and leave a fake-quantized one (with
    `quantize_embedding`) alone, whose rounding they would skip."""
    from axolotl_weave_plugins.kernels._fused_linear_loss import head_problem

    model = fake_quantized(tiny_llama_dir, INT8_INT4)
    assert head_problem(model) is None  # the output layer stays plain by default
    model = fake_quantized(tiny_llama_dir, {**INT8_INT4, "quantize_embedding": True})
    assert "FakeQuantizedLinear, whose forward is not a plain linear one" in head_problem(model)


@pytest.mark.parametrize(
    ("qat", "message"),
    [
        (
            {"weight_dtype": "int3"},
            "qat.weight_dtype: 'int3' is not a dtype here; valid: int4, int8",
        ),
        (
            {"weight_dtype": "int4", "activation_dtype": "int4"},
            "weight_dtype int4 with activation_dtype int4 has no torchao scheme; valid:",
        ),
        (
            {"weight_dtype": "nvfp4", "activation_dtype": "nvfp4", "group_size": 32},
            "nvfp4 quantizes in blocks of 16: set group_size: 16",
        ),
        (
            {"weight_dtype": "float8", "activation_dtype": "fp8", "quantize_embedding": True},
            "quantize_embedding needs weight_dtype int4 or int8, not float8_e4m3fn",
        ),
        ({**INT8_INT4, "fake_quant_after": 3}, "qat.fake_quant_after:"),
    ],
)
def test_bad_schemes_are_refused_at_validation(
    base_config: dict, tmp_path: Path, qat: dict, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        open_session(write_config(tmp_path / "c.yml", {**base_config, "qat": qat}))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"adapter": "lora"}, "qat trains the whole model; with adapter: lora"),
        ({"load_in_8bit": True}, "qat and load_in_8bit cannot be used together"),
    ],
)
def test_qat_is_a_full_fine_tune(
    base_config: dict, tmp_path: Path, keys: dict, message: str
) -> None:
    config = {**base_config, "qat": INT8_INT4, **keys}
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", config))


def test_axolotls_spellings_and_defaults(base_config: dict, tmp_path: Path) -> None:
    config = {**base_config, "qat": {"weight_dtype": "fp8", "activation_dtype": "float8"}}
    cfg = open_session(write_config(tmp_path / "c.yml", config)).cfg
    assert (cfg.qat.weight_dtype, cfg.qat.activation_dtype) == ("float8_e4m3fn", "float8_e4m3fn")
    nvfp4 = {"weight_dtype": "nvfp4", "activation_dtype": "nvfp4", "group_size": 16}
    cfg = open_session(write_config(tmp_path / "d.yml", {**base_config, "quantization": nvfp4})).cfg
    assert cfg.quantization.group_size is None and cfg.qat is None  # the format's own blocks


def test_quantize_refuses_what_it_cannot_quantize(base_config: dict, tmp_path: Path) -> None:
    """No scheme, both schemes, nothing trained, an adapter: one message each, nothing written."""
    cases = [
        ({}, "weave quantize needs qat: or quantization: in the config"),
        (
            {"qat": INT8_INT4, "quantization": INT8_INT4},
            "qat and quantization: give one of them, not both",
        ),
        ({"quantization": INT8_INT4}, "has no config.json: it is not a saved model"),
    ]
    out = Path(base_config["output_dir"])
    out.mkdir(parents=True)
    for keys, message in cases:
        path = write_config(tmp_path / "c.yml", {**base_config, **keys})
        result = run_weave_in_process("quantize", str(path))
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    (out / "adapter_config.json").write_text("{}")
    path = write_config(tmp_path / "c.yml", {**base_config, "quantization": INT8_INT4})
    result = run_weave_in_process("quantize", str(path))
    assert "holds a LoRA adapter, not a whole model: merge it first" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json"]


def test_a_config_with_qat_without_torchao_is_refused(
    base_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a)
    )
    with pytest.raises(ConfigError) as caught:
        open_session(write_config(tmp_path / "c.yml", {**base_config, "qat": INT8_INT4}))
    assert "pip install 'axolotl-weave[torchao]'" in str(caught.value)


GPU_SCHEMES = [
    {"weight_dtype": "int4", "activation_dtype": None, "group_size": 128},
    {"weight_dtype": "float8_e4m3fn", "activation_dtype": "float8_e4m3fn", "group_size": None},
    {"weight_dtype": "nvfp4", "activation_dtype": "nvfp4", "group_size": None},
    {"weight_dtype": "mxfp4", "activation_dtype": "mxfp4", "group_size": None},
]


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", GPU_SCHEMES, ids=lambda s: s["weight_dtype"])
def test_gpu_schemes_quantize_as_they_fake_quantize(tiny_llama_dir: Path, scheme: dict) -> None:
    """On a GPU: each scheme's quantized model stays close to its fake-quantized one."""
    from axolotl_weave_plugins.methods._torchao_schemes import ptq_config, quantize

    base = ptq_config(scheme["weight_dtype"], scheme["activation_dtype"], scheme["group_size"])
    fake = fake_quantized(tiny_llama_dir, scheme).to("cuda", torch.bfloat16)
    real = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).cuda()
    quantize(real, base, None)
    with torch.no_grad():
        torch.testing.assert_close(
            real(PROBE.cuda()).logits, fake(PROBE.cuda()).logits, rtol=0.05, atol=0.05
        )
