"""`model_quantization_config: Mxfp4Config` with `dequantize: true` (Axolotl's gpt-oss examples):
a tiny gpt-oss stored as openai stores its experts (MXFP4 blocks and scales) trains dequantized;
`FineGrainedFP8Config` and the refusals."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from axolotl_weave import CapabilityError, ConfigError, MissingDependencyError, hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_plugins.methods.model_quantization_config import CONFIG_KEYS, check_loadable
from axolotl_weave_testing import train_with, write_config, write_jsonl
from safetensors.torch import load_file, save_file

FP4_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
FP4_VALUES += [-v for v in FP4_VALUES]
"""The 16 FP4 (e2m1) values, indexed by their 4-bit code (the sign is the high bit)."""

MXFP4 = {"model_quantization_config": "Mxfp4Config"}
DEQUANTIZE = {**MXFP4, "model_quantization_config_kwargs": {"dequantize": True}}


def pack_mxfp4(weight: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random MXFP4 `*_blocks` and `*_scales` for an expert weight of shape (experts, in, out),
    laid out as openai's checkpoints store them: blocks (experts, out, in/32, 16) uint8, each
    byte two FP4 codes (the even element in the low nibble), scales (experts, out, in/32) uint8
    exponents biased by 127; and the weight they decode to, in the parameter's shape."""
    experts, inputs, outputs = weight.shape
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (experts, outputs, inputs // 32, 32), generator=generator)
    scales = torch.randint(124, 130, (experts, outputs, inputs // 32), generator=generator)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    values = torch.tensor(FP4_VALUES)[codes] * torch.exp2(scales.float() - 127)[..., None]
    decoded = values.reshape(experts, outputs, inputs).transpose(1, 2).contiguous()
    return blocks, scales.to(torch.uint8), decoded


def build_tiny_gpt_oss(folder: Path, tokenizer_dir: Path, *, mxfp4: bool) -> dict[str, Any]:
    """A tiny random gpt-oss with the tiny llama's tokenizer, saved to `folder`; with `mxfp4`,
    its experts stored in MXFP4 (`quantization_config: {quant_method: mxfp4}`). The expert
    weights the checkpoint decodes to, by parameter name."""
    from transformers import AutoTokenizer, GptOssConfig, GptOssForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = GptOssConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GptOssForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    experts = [n for n in weights if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(experts) == 4
    if not mxfp4:
        return {name: weights[name] for name in experts}
    expected = {}
    for seed, name in enumerate(experts):
        blocks, scales, expected[name] = pack_mxfp4(weights.pop(name), seed)
        weights[f"{name}_blocks"], weights[f"{name}_scales"] = blocks, scales
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config_file = folder / "config.json"
    written = json.loads(config_file.read_text())
    written["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    }
    config_file.write_text(json.dumps(written))
    return expected


@pytest.fixture(scope="module")
def mxfp4_gpt_oss(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, torch.Tensor]]:
    """The tiny gpt-oss stored in MXFP4, and the expert weights it decodes to."""
    folder = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    return folder, build_tiny_gpt_oss(folder, tiny_llama_dir, mxfp4=True)


class LoadedModel:
    """Records the training model as loading left it (before any step): its expert weights,
    its quantizer and its trainable parameter names; and the `from_pretrained` keywords the
    plugins contributed."""

    experts: dict[str, torch.Tensor] | None = None
    quantizer: Any = "unset"
    trainable: list[str] = []
    load_kwargs: dict[str, Any] = {}

    @hookimpl(wrapper=True, tryfirst=True)
    def load_model(self, purpose: str, load_kwargs: dict[str, Any]) -> Any:
        self.load_kwargs = dict(load_kwargs)
        model = yield
        if purpose == "train":
            self.experts = {
                name.split("model.", 2)[-1]: param.detach().clone()
                for name, param in model.named_parameters()
                if name.endswith(("experts.gate_up_proj", "experts.down_proj"))
            }
            self.quantizer = getattr(model, "hf_quantizer", None)
            self.trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        return model


def gpt_oss_config(base_config: dict, base_model: Path, **keys: Any) -> dict[str, Any]:
    """The base config on `base_model`: LoRA, 2 steps, eager attention (gpt-oss's sinks)."""
    return {
        **base_config,
        "base_model": str(base_model),
        "adapter": "lora",
        "lora_r": 4,
        "max_steps": 2,
        "attn_implementation": "eager",
        **keys,
    }


def test_mxfp4_checkpoint_trains_dequantized(
    base_config: dict, mxfp4_gpt_oss: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    """The experts load as exactly the floats the MXFP4 blocks and scales encode, with no
    quantizer left on the model, and a LoRA trains 2 steps on it."""
    folder, expected = mxfp4_gpt_oss
    recorder = LoadedModel()
    state = train_with(
        gpt_oss_config(base_config, folder, **DEQUANTIZE), tmp_path / "c.yml", recorder
    )
    assert state.global_step == 2
    given = recorder.load_kwargs["quantization_config"]
    assert type(given).__name__ == "Mxfp4Config" and given.dequantize is True
    assert recorder.experts is not None and sorted(recorder.experts) == sorted(expected)
    for name, weight in expected.items():
        loaded = recorder.experts[name]
        assert loaded.dtype == torch.float32, name
        assert torch.equal(loaded, weight), name
    assert recorder.quantizer is None
    assert recorder.trainable and all("lora_" in name for name in recorder.trainable)
    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert any(torch.count_nonzero(v) for k, v in adapter.items() if "lora_B" in k)


def test_merge_lora_writes_a_dequantized_model(
    base_config: dict, mxfp4_gpt_oss: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    """`weave merge-lora` on the MXFP4 base: the merged model holds the decoded experts as
    floats and its config claims no quantization, so it loads as a plain model."""
    from axolotl_weave_plugins.methods.lora import merge_lora
    from transformers import AutoModelForCausalLM

    folder, expected = mxfp4_gpt_oss
    config = gpt_oss_config(base_config, folder, **DEQUANTIZE, max_steps=1)
    train_with(config, tmp_path / "c.yml")
    session = open_session(write_config(tmp_path / "c.yml", config))
    merged = merge_lora(session.cfg, session, tmp_path / "out", "output_dir")
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    weights = load_file(str(merged / "model.safetensors"))
    for name, weight in expected.items():
        assert torch.equal(weights[name], weight), name
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert getattr(model, "hf_quantizer", None) is None


def test_mxfp4_without_dequantize_is_refused_for_training(
    base_config: dict, mxfp4_gpt_oss: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    folder, _ = mxfp4_gpt_oss
    with pytest.raises(CapabilityError, match="Mxfp4Config without dequantize .* cannot train"):
        train_with(gpt_oss_config(base_config, folder, **MXFP4), tmp_path / "c.yml")


def test_dequantize_on_an_unquantized_checkpoint_loads_it_as_stored(
    base_config: dict, tiny_llama_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing to decode: the weights load as saved and no (empty) quantizer stays on the model
    (transformers would keep one, and write its config into a merged model)."""
    saved = build_tiny_gpt_oss(tmp_path / "plain", tiny_llama_dir, mxfp4=False)
    recorder = LoadedModel()
    config = gpt_oss_config(base_config, tmp_path / "plain", **DEQUANTIZE, max_steps=1)
    with caplog.at_level("INFO", logger="axolotl_weave"):
        train_with(config, tmp_path / "c.yml", recorder)
    assert "is not stored in MXFP4: nothing to dequantize" in caplog.text
    assert "quantization_config" not in recorder.load_kwargs
    assert recorder.experts is not None
    for name, weight in saved.items():
        assert torch.equal(recorder.experts[name], weight), name
    assert recorder.quantizer is None


def test_a_checkpoint_of_the_other_format_is_refused(
    base_config: dict, mxfp4_gpt_oss: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    folder, _ = mxfp4_gpt_oss
    config = gpt_oss_config(
        base_config,
        folder,
        model_quantization_config="FineGrainedFP8Config",
        model_quantization_config_kwargs={"dequantize": True},
    )
    with pytest.raises(ConfigError, match="stored quantized with quant_method 'mxfp4', not 'fp8'"):
        train_with(config, tmp_path / "c.yml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")
def test_fp8_without_a_gpu_names_what_is_missing(base_config: dict, tmp_path: Path) -> None:
    config = {
        **base_config,
        "adapter": "lora",
        "model_quantization_config": "FineGrainedFP8Config",
    }
    with pytest.raises(MissingDependencyError) as raised:
        train_with(config, tmp_path / "c.yml")
    message = str(raised.value)
    assert message.startswith("model_quantization_config: FineGrainedFP8Config quantizes to FP8")
    assert "CUDA GPU of compute capability 8.9 or later" in message
    assert "model_quantization_config_kwargs: {dequantize: true}" in message


def build_fp8_llama(folder: Path, tiny_llama_dir: Path) -> dict[str, torch.Tensor]:
    """The tiny llama with its decoder projections stored as transformers' fine-grained FP8
    checkpoints store them (`weight` float8_e4m3fn, `weight_scale_inv` one float32 scale per
    32x32 block, `quantization_config: {quant_method: fp8}`); the weights they decode to."""
    shutil.copytree(tiny_llama_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    expected = {}
    for name in [n for n in weights if n.startswith("model.layers") and n.endswith("proj.weight")]:
        rows, cols = weights[name].shape
        stored = (torch.randn(rows, cols, generator=generator) * 4).to(torch.float8_e4m3fn)
        exponents = torch.randint(-8, -2, (rows // 32, cols // 32), generator=generator)
        scales = torch.exp2(exponents.float())
        weights[name], weights[name.replace(".weight", ".weight_scale_inv")] = stored, scales
        grid = scales.repeat_interleave(32, 0).repeat_interleave(32, 1)
        expected[name.removesuffix(".weight")] = stored.float() * grid
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config_file = folder / "config.json"
    written = json.loads(config_file.read_text())
    written["quantization_config"] = {
        "quant_method": "fp8",
        "weight_block_size": [32, 32],
        "activation_scheme": "dynamic",
    }
    config_file.write_text(json.dumps(written))
    return expected


class BaseWeights:
    """Records the frozen base weights of the LoRA-wrapped training model, by layer name."""

    weights: dict[str, torch.Tensor] | None = None

    @hookimpl(wrapper=True, tryfirst=True)
    def load_model(self, purpose: str) -> Any:
        model = yield
        if purpose == "train":
            self.weights = {
                name.split("model.", 2)[-1].replace(".base_layer", ""): module.weight.clone()
                for name, module in model.named_modules()
                if name.endswith("proj.base_layer")
            }
        return model


def test_fp8_checkpoint_trains_dequantized(
    base_config: dict, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """An FP8 checkpoint with `FineGrainedFP8Config` and `dequantize: true` loads on the CPU as
    exactly the floats its FP8 weights and block scales encode, and a LoRA trains on it."""
    expected = build_fp8_llama(tmp_path / "fp8", tiny_llama_dir)
    recorder = BaseWeights()
    config = {
        **base_config,
        "base_model": str(tmp_path / "fp8"),
        "adapter": "lora",
        "lora_target_linear": True,
        "max_steps": 2,
        "model_quantization_config": "FineGrainedFP8Config",
        "model_quantization_config_kwargs": {"dequantize": True},
    }
    assert train_with(config, tmp_path / "c.yml", recorder).global_step == 2
    assert recorder.weights is not None and sorted(recorder.weights) == sorted(expected)
    for name, weight in expected.items():
        assert recorder.weights[name].dtype == torch.float32, name
        assert torch.equal(recorder.weights[name], weight), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")
def test_mxfp4_quantization_on_the_fly_names_what_is_missing() -> None:
    """For inference, Mxfp4Config without dequantize on a checkpoint not stored in MXFP4 would
    quantize as it loads, which needs a GPU and triton's kernels (transformers' CPU path loads
    the weights unquantized instead)."""
    cfg = SimpleNamespace(
        model_quantization_config="Mxfp4Config",
        model_quantization_config_kwargs=None,
        base_model="tiny",
    )
    with pytest.raises(MissingDependencyError) as raised:
        check_loadable(cfg, "infer", None)
    message = str(raised.value)
    assert message.startswith("model_quantization_config: Mxfp4Config: quantizing base_model")
    assert "missing here: a CUDA GPU of compute capability 7.5 or later" in message


def test_fp8_dequantize_on_an_unquantized_checkpoint_trains(
    base_config: dict, tmp_path: Path
) -> None:
    config = {
        **base_config,
        "max_steps": 1,
        "model_quantization_config": "FineGrainedFP8Config",
        "model_quantization_config_kwargs": {"dequantize": True},
    }
    assert train_with(config, tmp_path / "c.yml").global_step == 1


AXOLOTL_EXAMPLE = """
base_model: openai/gpt-oss-20b
use_kernels: true
model_quantization_config: Mxfp4Config
model_quantization_config_kwargs:
  dequantize: true
plugins:
  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin
experimental_skip_move_to_device: true
datasets:
  - path: HuggingFaceH4/Multilingual-Thinking
    type: chat_template
    field_thinking: thinking
    template_thinking_key: thinking
dataset_prepared_path: last_run_prepared
val_set_size: 0
output_dir: ./outputs/gpt-oss-out/
sequence_len: 4096
sample_packing: true
adapter: lora
lora_r: 8
lora_alpha: 16
lora_dropout: 0.0
lora_target_linear: true
wandb_project:
wandb_entity:
wandb_watch:
wandb_name:
wandb_log_model:
trackio_project_name:
trackio_run_name:
trackio_space_id:
gradient_accumulation_steps: 8
micro_batch_size: 1
num_epochs: 1
optimizer: adamw_torch_8bit
lr_scheduler: constant_with_warmup
learning_rate: 2e-4
bf16: true
tf32: true
attn_implementation: kernels-community/vllm-flash-attn3
gradient_checkpointing: true
activation_offloading: true
logging_steps: 1
saves_per_epoch: 1
warmup_ratio: 0.1
special_tokens:
eot_tokens:
  - "<|end|>"
"""
"""Axolotl's examples/gpt-oss/gpt-oss-20b-sft-lora-singlegpu.yaml without its comments."""


def test_the_axolotl_example_validates(
    mxfp4_gpt_oss: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    """Axolotl's gpt-oss LoRA example, its base model and dataset local (the tiny gpt-oss and
    a chat file), validates with its quantization keys."""
    folder, _ = mxfp4_gpt_oss
    config = yaml.safe_load(AXOLOTL_EXAMPLE)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat, "thinking": ""}])
    config["base_model"] = str(folder)
    config["datasets"][0]["path"] = str(data)
    config["output_dir"] = str(tmp_path / "out")
    config["dataset_prepared_path"] = str(tmp_path / "prepared")
    cfg = open_session(write_config(tmp_path / "c.yml", config)).cfg
    assert cfg.model_quantization_config == "Mxfp4Config"
    assert cfg.model_quantization_config_kwargs == {"dequantize": True}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"model_quantization_config_kwargs": {"dequantize": True}},
            "model_quantization_config_kwargs is set without model_quantization_config",
        ),
        (
            {**DEQUANTIZE, "load_in_4bit": True, "adapter": "qlora"},
            "model_quantization_config and load_in_4bit cannot be used together",
        ),
        (
            {**DEQUANTIZE, "load_in_8bit": True, "adapter": "lora"},
            "model_quantization_config and load_in_8bit cannot be used together",
        ),
        (
            {**MXFP4, "model_quantization_config_kwargs": {"dequantise": True}},
            "unknown key\\(s\\) for Mxfp4Config: dequantise; valid: dequantize, "
            "modules_to_not_convert",
        ),
        (
            {**MXFP4, "model_quantization_config_kwargs": {"dequantize": "yes please"}},
            "model_quantization_config_kwargs.dequantize: 'yes please' is not true or false",
        ),
        (
            {"model_quantization_config": "Mxfp4"},
            "model_quantization_config",
        ),
        (
            {"model_quantization_config": "FineGrainedFP8Config"},
            "a base quantized to FP8 cannot be fully fine-tuned: set adapter: lora",
        ),
        (
            {
                **DEQUANTIZE,
                "fsdp_version": 2,
                "fsdp_config": {"cpu_ram_efficient_loading": True},
            },
            "Mxfp4Config with fsdp_config.cpu_ram_efficient_loading: true is not supported",
        ),
    ],
)
def test_config_errors_name_the_key(
    base_config: dict, tmp_path: Path, keys: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        open_session(write_config(tmp_path / "c.yml", {**base_config, **keys}))
    assert "model_quantization_config" in str(raised.value)


def test_fp8_kwargs_values_are_checked_by_transformers(base_config: dict, tmp_path: Path) -> None:
    config = {
        **base_config,
        "adapter": "lora",
        "model_quantization_config": "FineGrainedFP8Config",
        "model_quantization_config_kwargs": {"dequantize": True, "activation_scheme": "sometimes"},
    }
    with pytest.raises(ConfigError, match="model_quantization_config_kwargs: FineGrainedFP8Config"):
        train_with(config, tmp_path / "c.yml")


@pytest.mark.parametrize("name", sorted(CONFIG_KEYS))
def test_the_known_kwargs_are_the_transformers_arguments(name: str) -> None:
    import transformers

    parameters = inspect.signature(getattr(transformers, name).__init__).parameters
    assert CONFIG_KEYS[name] == {p for p in parameters if p not in ("self", "kwargs")}


def test_the_tiny_checkpoint_is_what_transformers_dequantizes(
    mxfp4_gpt_oss: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    """The packing helper agrees with transformers' own MXFP4 decoder."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    folder, expected = mxfp4_gpt_oss
    stored = load_file(str(folder / "model.safetensors"))
    for name, weight in expected.items():
        decoded = convert_moe_packed_tensors(
            stored[f"{name}_blocks"], stored[f"{name}_scales"], dtype=torch.float32
        )
        assert torch.equal(decoded, weight), name
