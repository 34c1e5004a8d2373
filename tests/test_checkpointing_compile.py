"""Gradient checkpointing (with CPU offload) and torch.compile on the tiny llama.

CPU: checkpointing, reentrant or not, full fine-tune or LoRA, and its offload give the loss and
gradients of a run without it (and do recompute the layers); config mistakes fail with one clear
message naming the key and what is valid, on the command line too; torch.compile with the
`aot_eager` backend (a real dynamo trace) gives the eager loss and gradients on padded and packed
micro-batches and trains end to end through `weave train`; `auto` on the CPU logs that it skips.
GPU (`gpu`): checkpointing lowers peak memory, offload lowers it further, inductor trains.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, MissingDependencyError
from axolotl_weave._batches import collate
from axolotl_weave._run import family_of, load_tokenizer, open_session
from axolotl_weave_plugins.batching._multipack import collate_packed
from axolotl_weave_plugins.kernels import gradient_checkpointing, torch_compile
from axolotl_weave_testing import (
    build_tiny_llama,
    run_weave,
    run_weave_in_process,
    write_config,
)

WIDE = {"COLUMNS": "200"}
COMPILED_ATOL = 2e-6
"""Gradient tolerance against eager for a compiled model (float32 rounding of decomposed ops)."""
LORA = {
    "adapter": "lora",
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_target_modules": ["q_proj", "v_proj", "down_proj"],
}


def flat(text: str) -> str:
    """Whitespace collapsed, so that rich's line wrapping does not split a phrase."""
    return " ".join(text.split())


def load(config: dict[str, Any], tmp_path: Path) -> tuple[Any, Any, Any]:
    """Run the pipeline's model half in-process: load_model (LoRA wrapper included),
    patch_attention and build_loss. LoRA B matrices get seeded random values, so that every
    adapter weight has a gradient. Returns model, loss function and config."""
    session = open_session(write_config(tmp_path / "run.yml", config), [])
    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    torch.manual_seed(0)
    model = session.hooks.load_model(session.cfg, tokenizer, family)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    session.hooks.patch_attention(model, session.cfg, family)
    return model, session.hooks.build_loss(session.cfg, model), session.cfg


def micro_batches(vocab_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """A padded micro-batch (rows of 11 and 17 tokens, attention mask) and a packed one (two
    bins of two rows, position_ids restarting, no mask), with some labels masked."""
    generator = torch.Generator().manual_seed(2)
    rows = []
    for length in (11, 17, 23, 8):
        ids = torch.randint(3, vocab_size, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return {
        "padded": collate(rows[:2], pad_token_id=0),
        "packed": collate_packed([rows[:2], rows[2:]], pad_token_id=0),
    }


def loss_and_grads(
    model: Any, loss_fn: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward in training mode: the summed loss and each trainable
    parameter's gradient."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    return loss.detach(), grads


def decoder_layers(model: Any) -> list[Any]:
    return [m for m in model.modules() if type(m).__name__ == "LlamaDecoderLayer"]


def attention_calls(model: Any) -> list[int]:
    """A counter of the first layer's attention forward calls (a recompute calls it again)."""
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    decoder_layers(model)[0].self_attn.register_forward_pre_hook(count)
    return calls


def assert_same(
    result: tuple[torch.Tensor, dict[str, torch.Tensor]],
    expected: tuple[torch.Tensor, dict[str, torch.Tensor]],
    atol: float = 1e-7,
) -> None:
    """Loss and every gradient equal, within float32 rounding (`atol` on the gradients: a
    compiled graph's decomposed ops round differently from eager ones)."""
    loss, grads = result
    torch.testing.assert_close(loss, expected[0], rtol=1e-6, atol=1e-6)
    assert grads.keys() == expected[1].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(
            grad, expected[1][name], rtol=1e-5, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )


def reference(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Loss and gradients of each micro-batch without checkpointing or compiling."""
    model, loss_fn, _ = load(config, tmp_path)
    batches = micro_batches(model.config.vocab_size)
    return {name: loss_and_grads(model, loss_fn, batch) for name, batch in batches.items()}


# --- gradient checkpointing ----------------------------------------------------------------


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_checkpointing_gives_the_same_loss_and_gradients(
    base_config: dict[str, Any], tmp_path: Path, adapter: str, use_reentrant: bool
) -> None:
    config = {**base_config, **(LORA if adapter == "lora" else {})}
    expected = reference(config, tmp_path)
    config |= {
        "gradient_checkpointing": True,
        "gradient_checkpointing_kwargs": {"use_reentrant": use_reentrant},
    }
    model, loss_fn, _ = load(config, tmp_path)
    assert model.config.use_cache is False
    assert all(layer.gradient_checkpointing for layer in decoder_layers(model))
    calls = attention_calls(model)
    for name, batch in micro_batches(model.config.vocab_size).items():
        before = calls[0]
        assert_same(loss_and_grads(model, loss_fn, batch), expected[name])
        assert calls[0] - before == 2, "the layer was not recomputed in the backward pass"


def test_use_reentrant_defaults_to_false(base_config: dict[str, Any], tmp_path: Path) -> None:
    cfg = open_session(write_config(tmp_path / "c.yml", {**base_config, **LORA})).cfg
    cfg.gradient_checkpointing = True
    assert gradient_checkpointing.checkpoint_kwargs(cfg) == {"use_reentrant": False}
    cfg.gradient_checkpointing_kwargs = {"use_reentrant": True, "preserve_rng_state": False}
    assert gradient_checkpointing.checkpoint_kwargs(cfg) == {
        "use_reentrant": True,
        "preserve_rng_state": False,
    }


@pytest.mark.parametrize(
    "keys",
    [
        {"gradient_checkpointing": "offload"},
        {"gradient_checkpointing": True, "activation_offloading": True},
    ],
    ids=["offload", "activation_offloading"],
)
def test_offload_without_accelerator_checkpoints_and_says_so(
    base_config: dict[str, Any], tmp_path: Path, weave_log: Any, keys: dict[str, Any]
) -> None:
    if torch.accelerator.is_available():
        pytest.skip("an accelerator is present: offload is real here (see the gpu test)")
    config = {**base_config, **LORA}
    expected = reference(config, tmp_path)
    model, loss_fn, _ = load({**config, **keys}, tmp_path)
    assert "no accelerator here" in weave_log.text
    for name, batch in micro_batches(model.config.vocab_size).items():
        assert_same(loss_and_grads(model, loss_fn, batch), expected[name])


@pytest.fixture
def offload_on_cpu(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Run the offload path itself on the CPU: the plugin is told an accelerator is there, and
    transformers' `save_on_cpu` runs unpinned (pinning needs an accelerator). Returns a counter
    of the tensors the offload hooks packed."""
    from transformers import modeling_utils

    if not hasattr(modeling_utils, "save_on_cpu"):
        pytest.skip("this transformers release has no offload in activation_checkpointing_enable")
    packed = [0]

    class Unpinned(torch.autograd.graph.save_on_cpu):
        def __init__(self, pin_memory: bool = False, device_type: str = "cuda") -> None:
            super().__init__(pin_memory=False, device_type=device_type)
            pack = self.pack_hook

            def counting(tensor: torch.Tensor) -> Any:
                packed[0] += 1
                return pack(tensor)

            self.pack_hook = counting

    monkeypatch.setattr(gradient_checkpointing, "accelerator_present", lambda: True)
    monkeypatch.setattr(modeling_utils, "save_on_cpu", Unpinned)
    return packed


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_offload_path_keeps_loss_and_gradients(
    base_config: dict[str, Any], tmp_path: Path, offload_on_cpu: list[int], use_reentrant: bool
) -> None:
    """Every checkpoint saves its inputs through the offload hooks, and nothing changes."""
    config = {**base_config, **LORA}
    expected = reference(config, tmp_path)
    config |= {
        "gradient_checkpointing": "offload",
        "gradient_checkpointing_kwargs": {"use_reentrant": use_reentrant},
    }
    model, loss_fn, _ = load(config, tmp_path)
    for name, batch in micro_batches(model.config.vocab_size).items():
        before = offload_on_cpu[0]
        assert_same(loss_and_grads(model, loss_fn, batch), expected[name])
        assert offload_on_cpu[0] - before >= len(decoder_layers(model))


# --- config mistakes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"gradient_checkpointing": "sometimes"},
            ["'sometimes' is not valid", "true, false or offload"],
        ),
        ({"gradient_checkpointing": "offload_disk"}, ["offload_disk is not supported", "offload"]),
        (
            {"activation_offloading": True},
            ["activation_offloading", "needs gradient_checkpointing"],
        ),
        (
            {"gradient_checkpointing": True, "activation_offloading": "disk"},
            ["activation_offloading: disk is not supported"],
        ),
        (
            {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrnt": 0}},
            ["gradient_checkpointing_kwargs", "use_reentrnt", "valid: use_reentrant"],
        ),
        (
            {
                "gradient_checkpointing": True,
                "gradient_checkpointing_kwargs": {"use_reentrant": "x"},
            },
            ["gradient_checkpointing_kwargs", "use_reentrant: 'x' is not valid: use true or false"],
        ),
        (
            {
                "gradient_checkpointing": True,
                "gradient_checkpointing_kwargs": {"use_reentrant": True, "debug": True},
            },
            ["debug apply to use_reentrant: false only"],
        ),
        ({"torch_compile": "sometimes"}, ["torch_compile", "true, false or auto"]),
        (
            {"torch_compile": True, "torch_compile_backend": "nope"},
            ["torch_compile_backend: 'nope'", "aot_eager", "inductor"],
        ),
        (
            {
                "torch_compile": True,
                "torch_compile_backend": "aot_eager",
                "torch_compile_mode": "default",
            },
            ["torch_compile_mode applies to the inductor backend only"],
        ),
        ({"torch_compile_mode": "fast"}, ["torch_compile_mode", "max-autotune", "got 'fast'"]),
    ],
)
def test_bad_values_give_one_clear_config_error(
    base_config: dict[str, Any], tmp_path: Path, keys: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "bad.yml", {**base_config, **keys}))
    message = str(info.value)
    assert "1 problem(s)" in message
    for fragment in expected:
        assert fragment in message


def test_bad_value_on_the_command_line_is_one_message_without_traceback(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "bad.yml", {**base_config, "gradient_checkpointing": "maybe"})
    result = run_weave_in_process("train", str(path), cwd=tmp_path, env=WIDE)
    output = flat(result.stdout + result.stderr)
    assert result.returncode == 2, output
    assert "gradient_checkpointing: 'maybe' is not valid: use true, false or offload" in output
    assert "Traceback" not in output
    assert not Path(base_config["output_dir"]).exists()


# --- torch.compile -------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Dynamo's caches emptied before and after (compiled code is shared process-wide)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_layers_give_the_eager_loss_and_gradients(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {**base_config, **LORA}
    expected = reference(config, tmp_path)
    config |= {"torch_compile": True, "torch_compile_backend": "aot_eager"}
    model, loss_fn, _ = load(config, tmp_path)
    layers = decoder_layers(model)
    assert layers and all(layer._compiled_call_impl is not None for layer in layers)
    frames = torch._dynamo.utils.counters["frames"]
    for name, batch in micro_batches(model.config.vocab_size).items():
        assert_same(loss_and_grads(model, loss_fn, batch), expected[name], atol=COMPILED_ATOL)
    assert frames["ok"] > 0, "nothing was compiled"
    assert not torch._dynamo.utils.counters["graph_break"]
    # the state dict keeps its names: checkpoints and adapters save as without compiling
    assert not [k for k in model.state_dict() if "_orig_mod" in k]


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_with_offload_compiles_the_blocks_inside_the_layers(
    base_config: dict[str, Any], tmp_path: Path, offload_on_cpu: list[int]
) -> None:
    """The offload hooks cannot be traced: the attention, MLP and norms of each layer are
    compiled instead, and the result is still the eager one."""
    expected = reference(base_config, tmp_path)
    config = {
        **base_config,
        "gradient_checkpointing": "offload",
        "torch_compile": True,
        "torch_compile_backend": "aot_eager",
    }
    model, loss_fn, _ = load(config, tmp_path)
    for layer in decoder_layers(model):
        assert layer._compiled_call_impl is None
        assert layer.self_attn._compiled_call_impl is not None
        assert layer.mlp._compiled_call_impl is not None
    batch = micro_batches(model.config.vocab_size)["packed"]
    assert_same(loss_and_grads(model, loss_fn, batch), expected["packed"], atol=COMPILED_ATOL)
    assert offload_on_cpu[0] > 0
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0
    assert not torch._dynamo.utils.counters["graph_break"]


def test_compile_regions_and_shapes(base_config: dict[str, Any], tmp_path: Path) -> None:
    cfg = open_session(write_config(tmp_path / "c.yml", {**base_config, "torch_compile": True})).cfg
    assert torch_compile.compile_options(cfg) == {"backend": "inductor", "dynamic": True}
    cfg.pad_to_sequence_len = True
    cfg.torch_compile_mode = "max-autotune"
    assert torch_compile.compile_options(cfg) == {
        "backend": "inductor",
        "mode": "max-autotune",
        "dynamic": None,
    }


def test_compile_auto_on_cpu_logs_and_stays_eager(
    base_config: dict[str, Any], tmp_path: Path, weave_log: Any
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: auto compiles here")
    model, _, _ = load({**base_config, "torch_compile": "auto"}, tmp_path)
    assert "torch_compile: auto: no CUDA GPU here" in weave_log.text
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))


def test_compile_without_what_the_backend_needs_is_a_clear_error(
    base_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU requirement")
    monkeypatch.setattr(torch_compile, "has_cxx_compiler", lambda: False)
    with pytest.raises(MissingDependencyError, match="needs a C\\+\\+ compiler"):
        load({**base_config, "torch_compile": True}, tmp_path)


def test_weave_train_with_compile_checkpointing_and_packing(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **base_config,
        "sample_packing": True,
        "max_steps": 3,
        "gradient_checkpointing": True,
        "torch_compile": True,
        "torch_compile_backend": "aot_eager",
    }
    result = run_weave("train", str(write_config(tmp_path / "c.yml", config)), env=WIDE)
    output = flat(result.stdout + result.stderr)
    assert result.returncode == 0, output[-3000:]
    assert "torch_compile: 2 x LlamaDecoderLayer compiled (backend aot_eager" in output
    assert "gradient_checkpointing: on (use_reentrant=false)" in output
    records = Path(config["output_dir"], "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(r)["loss"] for r in records if "loss" in json.loads(r)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


# --- GPU -----------------------------------------------------------------------------------


def peak_training_memory(
    config: dict[str, Any], tmp_path: Path, rows: int, length: int
) -> tuple[int, float]:
    """Bytes allocated above the weights during one forward and backward on the GPU of a
    micro-batch of `rows` x `length` seeded random tokens, and its loss."""
    model, loss_fn, _ = load(config, tmp_path)
    model.cuda().train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (rows, length), generator=generator).cuda()
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    loss_fn(model, batch).backward()  # warm-up: workspaces, pinned buffers
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = loss_fn(model, batch)
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - start
    result = float(loss)
    del model, loss_fn, batch, ids, loss
    gc.collect()
    torch.cuda.empty_cache()
    return peak, result


@pytest.mark.gpu
def test_checkpointing_and_offload_lower_peak_gpu_memory(
    base_config: dict[str, Any], tmp_path: Path
) -> None:
    layers, hidden, rows, length = 16, 256, 8, 1024  # the tiny llama has 1024 positions
    model_dir = build_tiny_llama(tmp_path / "llama16", hidden_size=hidden, layers=layers)
    config = {**base_config, "base_model": str(model_dir)}
    plain, loss = peak_training_memory(config, tmp_path, rows, length)
    checkpointed, loss_checkpointed = peak_training_memory(
        {**config, "gradient_checkpointing": True}, tmp_path, rows, length
    )
    offloaded, loss_offloaded = peak_training_memory(
        {**config, "gradient_checkpointing": "offload"}, tmp_path, rows, length
    )
    assert loss_checkpointed == pytest.approx(loss, rel=1e-5)
    assert loss_offloaded == pytest.approx(loss, rel=1e-5)
    layer_inputs = layers * rows * length * hidden * 4  # float32 hidden states, one per layer
    assert checkpointed < 0.5 * plain, (plain, checkpointed)
    assert offloaded < checkpointed - layer_inputs // 2, (checkpointed, offloaded, layer_inputs)


@pytest.mark.gpu
def test_inductor_compile_trains_on_gpu(base_config: dict[str, Any], tmp_path: Path) -> None:
    config = {
        **base_config,
        "sample_packing": True,
        "max_steps": 4,
        "gradient_checkpointing": True,
        "torch_compile": "auto",
    }
    result = run_weave("train", str(write_config(tmp_path / "c.yml", config)), env=WIDE)
    output = flat(result.stdout + result.stderr)
    assert result.returncode == 0, output[-3000:]
    assert "torch_compile: 2 x LlamaDecoderLayer compiled (backend inductor" in output
    records = Path(config["output_dir"], "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(r)["loss"] for r in records if "loss" in json.loads(r)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
