"""FSDP2's `fsdp_config` options (offload_params, cpu_ram_efficient_loading,
activation_checkpointing, mixed_precision_policy), FSDP1's spelling mapped to FSDP2 with a note,
and what is refused before any model loads; QLoRA under FSDP2 (the packed 4-bit weights stored in
the dtype FSDP2 gathers in, sharded, the adapter trained as on one process).

The options are checked on one process in this one (a gloo process group of one: what each
changes in the sharded model), then once end to end: `weave train --num-processes 2` with
FSDP1's spelling of all three loss-neutral options trains what one plain process does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError
from axolotl_weave_plugins.distributed.fsdp2 import Fsdp2Strategy, FsdpConfig, FsdpSettings
from axolotl_weave_testing import (
    run_weave,
    train_with,
    two_process_config,
    write_config,
)
from safetensors.torch import load_file


def settings(data: dict[str, Any]) -> dict[str, Any]:
    """The validated FSDP settings of `data`, as plain data."""
    return FsdpSettings.model_validate(data).model_dump()


@pytest.mark.parametrize(
    ("fsdp1", "fsdp2"),
    [
        (
            {
                "fsdp": ["full_shard", "auto_wrap"],
                "fsdp_config": {
                    "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                    "fsdp_offload_params": True,
                    "fsdp_state_dict_type": "FULL_STATE_DICT",
                },
            },
            {
                "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                "offload_params": True,
                "state_dict_type": "FULL_STATE_DICT",
            },
        ),
        (
            {"fsdp": "shard_grad_op offload"},
            {"reshard_after_forward": False, "offload_params": True},
        ),
        (
            {
                "fsdp_version": 1,
                "fsdp_config": {
                    "fsdp_sharding_strategy": "SHARD_GRAD_OP",
                    "fsdp_sync_module_states": True,
                    "fsdp_use_orig_params": True,
                    "fsdp_backward_prefetch": "BACKWARD_PRE",
                    "fsdp_activation_checkpointing": True,
                    "fsdp_cpu_ram_efficient_loading": True,
                },
            },
            {
                "reshard_after_forward": False,
                "activation_checkpointing": True,
                "cpu_ram_efficient_loading": True,
            },
        ),
    ],
)
def test_fsdp1_spelling_maps_to_the_same_settings_as_fsdp2(
    fsdp1: dict[str, Any], fsdp2: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        mapped = settings(fsdp1)
    assert mapped == settings({"fsdp_version": 2, "fsdp_config": fsdp2})
    notes = [r.getMessage() for r in caplog.records if "mapped to FSDP2" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "FSDP1's spelling" in notes[0]


AXOLOTL_FSDP2 = {
    "offload_params": False,
    "cpu_ram_efficient_loading": True,
    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "transformer_layer_cls_to_wrap": "Qwen3DecoderLayer",
    "state_dict_type": "FULL_STATE_DICT",
    "reshard_after_forward": True,
}
"""The FSDP2 `fsdp_config` of Axolotl's migration guide (docs/multi-gpu.qmd)."""


@pytest.mark.parametrize(
    "extra",
    [
        {"fsdp_config": {**AXOLOTL_FSDP2, "sharding_strategy": "FULL_SHARD"}},
        {"fsdp": ["full_shard", "auto_wrap"]},
        {
            "fsdp": ["auto_wrap", "full_shard"],
            "fsdp_config": {f"fsdp_{k}": v for k, v in AXOLOTL_FSDP2.items()},
        },
    ],
)
def test_axolotl_fsdp2_examples_with_fsdp1_words_read_as_fsdp2(
    extra: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Axolotl's own FSDP2 examples keep FSDP1's `sharding_strategy` or `fsdp:` list beside
    `reshard_after_forward`: read as the FSDP2 setting they agree with, with one note."""
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        read = settings({"fsdp_version": 2, "fsdp_config": AXOLOTL_FSDP2, **extra})
    assert read == settings({"fsdp_version": 2, "fsdp_config": AXOLOTL_FSDP2})
    assert read["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    notes = [r.getMessage() for r in caplog.records if "mapped to FSDP2" in r.getMessage()]
    assert len(notes) == 1 and "reshard_after_forward: true" in notes[0], notes


def test_fsdp1_use_orig_params_is_dropped_with_a_note(caplog: pytest.LogCaptureFixture) -> None:
    """`use_orig_params: false` (Axolotl's FSDP1 QLoRA examples) only chose FSDP1's flat
    parameters: FSDP2 trains the same with the original ones, and says so."""
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        read = settings({"fsdp": ["full_shard"], "fsdp_config": {"fsdp_use_orig_params": False}})
    assert read == settings({"fsdp_version": 2, "fsdp_config": {}})
    assert "use_orig_params: False dropped" in caplog.text


def test_fsdp2_keys_prefixed_or_not_and_a_dtype_name_policy() -> None:
    prefixed = settings(
        {
            "fsdp_version": 2,
            "fsdp_config": {"fsdp_offload_params": True, "fsdp_mixed_precision_policy": "bf16"},
        }
    )
    policy = {"param_dtype": "bfloat16", "reduce_dtype": "bfloat16", "output_dtype": None}
    assert prefixed["fsdp_config"]["offload_params"] is True
    assert prefixed["fsdp_config"]["mixed_precision_policy"] == {
        **policy,
        "cast_forward_inputs": True,
    }
    inner_version = settings({"fsdp_config": {"fsdp_version": 2, "reshard_after_forward": False}})
    assert inner_version["fsdp_version"] == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fsdp": ["hybrid_shard", "auto_wrap"]}, "fsdp: hybrid_shard has no FSDP2 equivalent"),
        ({"fsdp": ["no_shard"]}, "no_shard has no FSDP2 equivalent"),
        ({"fsdp": ["full_shard", "shard_grad_op"]}, "contradict"),
        ({"fsdp": ["full_shard", "zero3"]}, "unknown option"),
        ({"fsdp_config": {"sync_module_states": False}}, "sync_module_states: False"),
        (
            {
                "fsdp_version": 2,
                "fsdp": ["shard_grad_op"],
                "fsdp_config": {"reshard_after_forward": True},
            },
            "fsdp: shard_grad_op and fsdp_config.reshard_after_forward: true contradict",
        ),
        (
            {
                "fsdp_version": 2,
                "fsdp_config": {
                    "sharding_strategy": "SHARD_GRAD_OP",
                    "reshard_after_forward": True,
                },
            },
            "sharding_strategy: SHARD_GRAD_OP and fsdp_config.reshard_after_forward: true",
        ),
        (
            {"fsdp_version": 2, "fsdp_config": {"fsdp_sharding_strategy": "HYBRID_SHARD"}},
            "sharding_strategy: HYBRID_SHARD has no FSDP2 equivalent",
        ),
        (
            {"fsdp_version": 2, "fsdp_config": {"state_dict_type": "LOCAL_STATE_DICT"}},
            "state_dict_type",
        ),
        *[
            ({"fsdp_version": 2, "fsdp_config": {key: value}}, f"FSDP1-only key.*{key}")
            for key, value in [
                ("sync_module_states", True),
                ("use_orig_params", True),
                ("forward_prefetch", False),
                ("fsdp_backward_prefetch", "BACKWARD_PRE"),
            ]
        ],
        (
            {"fsdp_version": 2, "fsdp_config": {"mixed_precision_policy": {"param_dtype": "bf17"}}},
            "mixed_precision_policy.param_dtype: unknown dtype 'bf17'",
        ),
        (
            {"fsdp_version": 2, "fsdp_config": {"mixed_precision_policy": "fp16"}},
            "mixed_precision_policy.param_dtype: fp16 is not implemented",
        ),
        (
            {
                "fsdp_version": 2,
                "fsdp_config": {"mixed_precision_policy": {"buffer_dtype": "bf16"}},
            },
            "unknown key.*buffer_dtype",
        ),
    ],
)
def test_what_fsdp2_cannot_do_is_refused_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FsdpSettings.model_validate(data)


QLORA = {
    "adapter": "qlora",
    "load_in_4bit": True,
    "lora_target_linear": True,
    "lora_r": 4,
    "lora_alpha": 8,
}
"""A QLoRA run's keys (every linear layer of the base in 4 bits, LoRA on each)."""


@pytest.fixture(scope="module")
def common(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 2-process config: 16 alpaca rows, 2 rows x 2 micro-batches x 2 processes a step."""
    folder = tmp_path_factory.mktemp("fsdp2-options")
    return two_process_config(
        tiny_llama_dir, folder, rows=16, max_steps=2, output_dir=str(folder / "out")
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"fsdp_config": {"activation_checkpointing": True}, "gradient_checkpointing": True},
            "activation_checkpointing and gradient_checkpointing",
        ),
        (
            {"fsdp_config": {"offload_params": True, "cpu_offload_pin_memory": True}},
            "cpu_offload_pin_memory: true needs an accelerator",
        ),
        (
            {
                **QLORA,
                "fsdp_config": {"mixed_precision_policy": "bf16"},
                "bnb_config_kwargs": {"bnb_4bit_quant_storage": "float32"},
            },
            "bnb_4bit_quant_storage: float32 with .*param_dtype: bfloat16: FSDP2 would cast",
        ),
        (
            {
                "fsdp_version": None,
                "fsdp": ["full_shard"],
                "deepspeed": "deepspeed_configs/zero2.json",
            },
            "deepspeed and fsdp_version, fsdp_config are both set",
        ),
    ],
)
def test_combinations_are_refused_before_loading(
    common: dict[str, Any], tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    from axolotl_weave._run import open_session, run_scoped_plugins

    if "cpu_offload_pin_memory" in str(extra) and torch.cuda.is_available():
        pytest.skip("pinned memory is refused without an accelerator only")
    config = {**common, "fsdp_version": 2, **extra}
    session = open_session(write_config(tmp_path / "refused.yml", config))
    with pytest.raises(ConfigError, match=message), run_scoped_plugins(session):
        pass


def test_fp16_is_refused_with_the_way_out() -> None:
    """(On a CPU `fp16: true` is refused before this, for want of a GPU.)"""
    from axolotl_weave_plugins.distributed.fsdp2 import refuse_fp16

    refuse_fp16("bf16")
    with pytest.raises(ConfigError, match="fsdp_version: 2 with fp16 is not implemented.*bf16"):
        refuse_fp16("fp16")


def one_process_run(model_dir: Path, options: dict[str, Any], device: str = "cpu") -> dict:
    """Two optimizer steps of the tiny llama under `Fsdp2Strategy` with `options` (one process):
    the losses, what the sharded model looked like, and the model gathered back."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    strategy = Fsdp2Strategy(Accelerator(cpu=device == "cpu"), FsdpConfig.model_validate(options))
    model, optimizer, scheduler = strategy.prepare(model, optimizer, scheduler)
    layer = model.model.layers[0]
    inner = getattr(layer, "_checkpoint_wrapped_module", layer)
    dtypes: list[torch.dtype] = []
    inner.self_attn.q_proj.register_forward_pre_hook(lambda m, _: dtypes.append(m.weight.dtype))
    ids = (torch.arange(32).view(2, 16) % 50).to(strategy.device)
    losses = []
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        strategy.backward(loss)
        strategy.optimizer_step(model, optimizer, scheduler, 1.0)
        losses.append(loss.item())
    shard = model.model.layers[0].mlp.up_proj.weight
    state = layer._get_fsdp_state()._fsdp_param_group
    seen = {
        "losses": losses,
        "layer": type(layer).__name__,
        "dtype": dtypes[0],
        "shard_device": shard.to_local().device.type,
        "offload": type(state.offload_policy).__name__,
        "optimizer_on_shards": all(
            p is q
            for p, q in zip(optimizer.param_groups[0]["params"], model.parameters(), strict=True)
        ),
    }
    strategy.gather(model)
    seen["gathered_layer"] = type(model.model.layers[0]).__name__
    seen["weights"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return seen


@pytest.fixture(scope="module")
def sharded_runs(tiny_llama_dir: Path) -> dict[str, dict]:
    """The same two steps plain, with the three loss-neutral options, and with bf16 weights."""
    import torch.distributed as dist

    ours = not dist.is_initialized()
    try:
        return {
            "plain": one_process_run(tiny_llama_dir, {}),
            "options": one_process_run(
                tiny_llama_dir,
                {
                    "activation_checkpointing": True,
                    "cpu_ram_efficient_loading": True,
                    "offload_params": True,
                },
            ),
            "bf16": one_process_run(
                tiny_llama_dir,
                {"mixed_precision_policy": {"param_dtype": "bf16", "reduce_dtype": "fp32"}},
            ),
        }
    finally:
        if ours and dist.is_initialized():
            dist.destroy_process_group()


def test_options_change_the_sharded_model_not_the_training(sharded_runs: dict[str, dict]) -> None:
    plain, options = sharded_runs["plain"], sharded_runs["options"]
    assert plain["layer"] == "FSDPLlamaDecoderLayer"
    assert options["layer"] == "FSDPCheckpointWrapper"  # activation_checkpointing
    assert (plain["offload"], options["offload"]) == ("OffloadPolicy", "CPUOffloadPolicy")
    assert options["shard_device"] == "cpu"
    assert options["optimizer_on_shards"] and plain["optimizer_on_shards"]
    assert options["losses"] == pytest.approx(plain["losses"], rel=1e-6)
    assert options["gathered_layer"] == "LlamaDecoderLayer"  # saved without the wrappers
    assert options["weights"].keys() == plain["weights"].keys()
    for key, value in plain["weights"].items():
        torch.testing.assert_close(options["weights"][key], value, msg=key)


def test_mixed_precision_policy_computes_in_its_dtype(sharded_runs: dict[str, dict]) -> None:
    plain, bf16 = sharded_runs["plain"], sharded_runs["bf16"]
    assert (plain["dtype"], bf16["dtype"]) == (torch.float32, torch.bfloat16)
    assert bf16["weights"]["model.norm.weight"].dtype == torch.float32  # the shards stay fp32
    assert bf16["losses"] != plain["losses"]
    assert bf16["losses"] == pytest.approx(plain["losses"], rel=2e-2)


@pytest.mark.gpu
def test_offload_params_keeps_the_shards_in_cpu_memory_on_a_gpu(tiny_llama_dir: Path) -> None:
    import torch.distributed as dist

    ours = not dist.is_initialized()
    try:
        seen = one_process_run(tiny_llama_dir, {"offload_params": True}, device="cuda")
    finally:
        if ours and dist.is_initialized():
            dist.destroy_process_group()
    assert seen["shard_device"] == "cpu"
    assert seen["offload"] == "CPUOffloadPolicy"
    assert all(torch.isfinite(torch.tensor(seen["losses"])))


def step_losses(output_dir: Path) -> dict[int, float]:
    """The per-step training losses of a finished run (its `trainer_state.json`)."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {rec["step"]: rec["loss"] for rec in state["log_history"] if "loss" in rec}


@pytest.mark.slow
def test_fsdp1_spelled_options_on_two_processes_train_what_one_process_does(
    common: dict[str, Any], tmp_path: Path
) -> None:
    """`fsdp: [full_shard, auto_wrap]` with FSDP1's prefixed offload, activation checkpointing
    and rank-0-only loading runs as FSDP2 on 2 processes (rank 1 builds the model on the meta
    device) and trains what one plain process does with the same global batch."""
    one = tmp_path / "one"
    train_with(
        {**common, "gradient_accumulation_steps": 4, "output_dir": str(one)}, tmp_path / "1.yml"
    )
    two = tmp_path / "two"
    config = {
        **common,
        "output_dir": str(two),
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {
            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
            "fsdp_offload_params": True,
            "fsdp_activation_checkpointing": True,
            "fsdp_cpu_ram_efficient_loading": True,
        },
    }
    result = run_weave(
        "train", str(write_config(tmp_path / "2.yml", config)), "--num-processes", "2"
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    assert "mapped to FSDP2" in result.stderr
    assert "1 of 2 processes built the model on the meta device" in result.stderr
    losses_one, losses_two = step_losses(one), step_losses(two)
    assert list(losses_one) == list(losses_two) == [1, 2]
    for step, loss in losses_one.items():
        assert losses_two[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize(
    ("extra", "storage"),
    [
        ({}, "float32"),  # the weights' dtype (fp32 run)
        ({"fsdp_config": {"mixed_precision_policy": "bf16"}}, "bfloat16"),
        ({"bnb_config_kwargs": {"bnb_4bit_quant_storage": "uint8"}}, "uint8"),  # as given
    ],
)
def test_qlora_quant_storage_is_the_dtype_fsdp2_gathers_in(
    common: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    extra: dict[str, Any],
    storage: str,
) -> None:
    """The quantization plugin's `BitsAndBytesConfig`, then FSDP2's storage dtype, by the real
    hooks in their order."""
    from axolotl_weave._run import open_session

    session = open_session(
        write_config(tmp_path / "q.yml", {**common, **QLORA, "fsdp_version": 2, **extra})
    )
    kwargs: dict[str, Any] = {}
    with caplog.at_level(logging.INFO, logger="axolotl_weave"):
        session.hooks.pm.hook.model_load_kwargs(cfg=session.cfg, purpose="train", kwargs=kwargs)
    assert kwargs["quantization_config"].bnb_4bit_quant_storage == getattr(torch, storage)
    noted = [
        r.getMessage() for r in caplog.records if "bnb_4bit_quant_storage set" in r.getMessage()
    ]
    assert len(noted) == (0 if extra.get("bnb_config_kwargs") else 1), noted


@pytest.mark.slow
def test_qlora_on_two_processes_shards_the_4bit_weights_and_trains_what_one_does(
    common: dict[str, Any], tmp_path: Path
) -> None:
    """QLoRA with `fsdp_version: 2` on 2 CPU processes (gloo, bitsandbytes' CPU backend): the
    packed 4-bit weights stay packed and are split between the processes, and the adapter trains
    (losses, weights) and is saved as one plain QLoRA process does with the same global batch."""
    import re

    one = tmp_path / "one"
    train_with(
        {**common, **QLORA, "gradient_accumulation_steps": 4, "output_dir": str(one)},
        tmp_path / "1.yml",
    )
    two = tmp_path / "two"
    config = {**common, **QLORA, "output_dir": str(two), "fsdp_version": 2}
    result = run_weave(
        "train", str(write_config(tmp_path / "2.yml", config)), "--num-processes", "2"
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    assert "bnb_4bit_quant_storage set to float32" in result.stderr
    found = re.search(
        r"fsdp2: 14 4-bit weights \(([\d,]+) parameters, packed in ([\d,]+) bytes of float32 "
        r"storage\) sharded: the processes hold ([\d,]+) \+ ([\d,]+) bytes",
        result.stderr,
    )
    assert found, result.stderr[-5000:]
    params, packed, held0, held1 = (int(g.replace(",", "")) for g in found.groups())
    assert params == 2 * packed  # 4 bits a weight: packed, not dequantized
    assert held0 + held1 == packed and 0 < held0 < packed  # each process holds a part
    losses_one, losses_two = step_losses(one), step_losses(two)
    assert list(losses_one) == list(losses_two) == [1, 2]
    for step, loss in losses_one.items():
        assert losses_two[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    saved = {p.name for p in one.iterdir()}
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    assert {p.name for p in two.iterdir()} == saved  # saved as the plain QLoRA run saves
    a = load_file(str(one / "adapter_model.safetensors"))
    b = load_file(str(two / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 28  # lora_A and lora_B of the 14 layers
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_qlora_model_gathered_after_sharding_is_4bit_again_and_merges(
    tiny_llama_dir: Path, device: str
) -> None:
    """One process: the packed weights are sharded as DTensors, and gathered back into
    bitsandbytes' `Params4bit` with their quantization state (what a merge reads); the model
    computes what it did before sharding."""
    import torch.distributed as dist

    bnb = pytest.importorskip("bitsandbytes")
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype="float32", bnb_4bit_quant_storage="float32"
    )
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir,
        quantization_config=quantization,
        device_map={"": 0 if device == "cuda" else "cpu"},
    )
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    ids = (torch.arange(32).view(2, 16) % 50).to(model.device)
    before = model(input_ids=ids).logits.detach()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    strategy = Fsdp2Strategy(Accelerator(cpu=device == "cpu"), FsdpConfig())
    ours = not dist.is_initialized()
    try:
        model, optimizer, scheduler = strategy.prepare(model, optimizer, scheduler)
        base = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        assert isinstance(base.weight, DTensor) and base.weight.dtype == torch.float32
        strategy.gather(model)
    finally:
        if ours and dist.is_initialized():
            dist.destroy_process_group()
    assert isinstance(base.weight, bnb.nn.Params4bit)
    assert base.weight.quant_state is base.quant_state
    torch.testing.assert_close(model(input_ids=ids).logits, before)
    merged = model.merge_and_unload()  # dequantizes through `weight.quant_state`
    assert isinstance(merged.model.layers[0].self_attn.q_proj, torch.nn.Linear)


def test_a_4bit_weight_in_bitsandbytes_cpu_layout_is_sharded_in_its_storage(
    tiny_llama_dir: Path,
) -> None:
    """On a CPU with AVX512-BF16, a 4-bit layer run in evaluation mode repacks its weight into
    a CPU kernel's layout (uint8). Before sharding, the weight goes back to the usual packed
    storage exactly, and the repacking stays off until the final gather gives it back. (The
    layout is made here by bitsandbytes' own function, so that any CPU runs the test.)"""
    bnb = pytest.importorskip("bitsandbytes")
    from axolotl_weave_plugins.distributed._fsdp_qlora import keep_storage_layout, restore_packed
    from bitsandbytes.functional import _convert_weight_packed_for_cpu
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype="float32", bnb_4bit_quant_storage="float32"
    )
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=quantization, device_map={"": "cpu"}
    )
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    stored = layer.weight.data.clone()
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state
    )
    layer.support_avx512bf16_for_cpu = True  # as on such a CPU
    assert layer.weight.dtype == torch.uint8
    keep_storage_layout(model)
    assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight.data, stored)
    assert not layer.weight.quant_state.packing_format_for_cpu
    assert layer.support_avx512bf16_for_cpu is False  # no repacking of what FSDP2 shards
    restore_packed(model)
    assert layer.support_avx512bf16_for_cpu is True
