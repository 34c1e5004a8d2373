"""The `liger` and `cut_cross_entropy` kernel plugins, and their shared fused-loss helper.

CPU tests (liger-kernel and cut-cross-entropy are not installed in CI):
- the fused linear cross-entropy's plumbing (the output layer tapped, the shift, masked and
  packed positions, the families' soft-capping and logit scales, peft heads, the router's
  auxiliary loss) gives the SFT loss and gradients exactly, with a pure-torch fused function;
- each key set to `true` fails with what to install and which GPU it needs (the real path:
  nothing is faked), `auto` logs one line and trains, a family without liger is refused;
- with liger's functions replaced by pure-torch stand-ins, the hooks apply the right switches
  for the model type and training gives the plain run's losses.

GPU tests (`gpu` marker, also skipped without the package): each Liger module kernel gives the
loss of the plain model within bf16 tolerance; Liger's fused linear cross-entropy and cut
cross-entropy give the SFT loss and gradients; a full run with every Liger key on trains.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, MissingDependencyError
from axolotl_weave._run import open_session, train
from axolotl_weave_plugins.kernels import cut_cross_entropy as cce
from axolotl_weave_plugins.kernels import liger
from axolotl_weave_plugins.kernels._fused_linear_loss import (
    FusedLinearCrossEntropy,
    head_problem,
    logit_transform,
    reference_linear_cross_entropy,
)
from axolotl_weave_plugins.losses.sft import CrossEntropy
from axolotl_weave_plugins.models.gpt2 import GPT2
from axolotl_weave_plugins.models.llama import LLAMA
from axolotl_weave_testing import run_weave, train_tokenizer, write_config
from transformers import AutoConfig, AutoModelForCausalLM

HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None
HAS_CCE = importlib.util.find_spec("cut_cross_entropy") is not None
LIGER_KEYS = (*liger.MODULE_KERNELS, *liger.LOSS_KERNELS)
VOCAB = 128


def padded_batch(vocab: int = VOCAB, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows: prompt tokens masked, the second row right-padded."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, 12), generator=generator)
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, 9:] = -100
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def packed_batch(vocab: int = VOCAB, seed: int = 1) -> dict[str, torch.Tensor]:
    """Two packed rows as the packing collator makes them: rows of 5+6 and 4+3 tokens (+ pad),
    `position_ids` restarting per row, each row's first label masked, no attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, 11), generator=generator)
    labels = ids.clone()
    labels[0, [0, 5]] = -100
    labels[1, [0, 4]] = -100
    labels[1, 7:] = -100
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3]])
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": positions,
        "num_tokens": torch.tensor(18),
    }


def loss_and_grads(model: Any, loss_fn: Any, batch: dict[str, Any]) -> tuple[Any, dict]:
    """The per-token loss and the gradients of every trainable parameter."""
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch) / loss_fn.count(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(model: Any, batch: dict[str, Any], fused: Any, tol: float = 1e-5) -> None:
    """The plain SFT objective and `fused` give the same loss and gradients on `batch`."""
    loss, grads = loss_and_grads(model, CrossEntropy(), batch)
    fused_loss, fused_grads = loss_and_grads(model, fused, batch)
    torch.testing.assert_close(fused_loss, loss, atol=tol, rtol=tol)
    assert fused_grads.keys() == grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=tol, rtol=tol, msg=name)


def tiny_model(family_name: str, weave_hooks: Any, **overrides: Any) -> Any:
    """A random tiny model of a registered family (eager attention, float32)."""
    family = weave_hooks.model_families()[family_name]
    settings = {**family.tiny_config(), "vocab_size": VOCAB, **overrides}
    config = AutoConfig.for_model(family.model_types[0], **settings)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


# --- the fused loss's plumbing, with a pure-torch fused function ------------------------------


@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
def test_fused_loss_equals_the_sft_loss_and_gradients(tiny_llama_dir: Path, make_batch) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    batch = make_batch(vocab=model.config.vocab_size)
    fused = FusedLinearCrossEntropy(
        model, reference_linear_cross_entropy, name="test", base=CrossEntropy()
    )
    assert fused.count(batch) == CrossEntropy().count(batch)
    assert_same(model, batch, fused)


def test_fused_loss_never_builds_the_logits(tiny_llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    seen: list[tuple[int, ...]] = []

    def fused(hidden: Any, weight: Any, targets: Any, **kwargs: Any) -> Any:
        seen.append((tuple(hidden.shape), tuple(weight.shape), tuple(targets.shape)))
        return reference_linear_cross_entropy(hidden, weight, targets, **kwargs)

    loss = FusedLinearCrossEntropy(model, fused, name="test", base=CrossEntropy())
    logits: list[tuple[int, ...]] = []
    model.register_forward_hook(lambda m, args, out: logits.append(tuple(out.logits.shape)))
    batch = padded_batch(vocab=model.config.vocab_size)
    loss(model, batch)
    targets = int(loss.count(batch))
    hidden = model.config.hidden_size
    assert seen == [((targets, hidden), (model.config.vocab_size, hidden), (targets,))]
    assert logits == [(2, 12, 0)]  # the model's output carries no logits
    # outside a loss call the output layer is untouched
    assert model(input_ids=batch["input_ids"]).logits.shape == (2, 12, model.config.vocab_size)


@pytest.mark.parametrize(
    ("family_name", "overrides", "transform"),
    [
        ("gemma2", {"final_logit_softcapping": 2.0}, (1.0, 2.0)),
        ("cohere", {"logit_scale": 4.0}, (4.0, None)),
        ("granite", {}, (1 / 8.0, None)),  # logits divided by logits_scaling
    ],
)
def test_fused_loss_applies_the_familys_logit_transform(
    weave_hooks, family_name: str, overrides: dict, transform: tuple
) -> None:
    model = tiny_model(family_name, weave_hooks, **overrides)
    got = logit_transform(model.config)
    assert (got.scale, got.softcap) == pytest.approx(transform)
    fused = FusedLinearCrossEntropy(
        model, reference_linear_cross_entropy, name="test", base=CrossEntropy()
    )
    assert_same(model, padded_batch(), fused)


def test_fused_loss_keeps_the_router_aux_loss(weave_hooks) -> None:
    model = tiny_model("mixtral", weave_hooks)
    family = weave_hooks.model_families()["mixtral"]
    family.prepare_model(
        model, SimpleNamespace(output_router_logits=True, router_aux_loss_coef=0.5)
    )
    assert_same(
        model,
        padded_batch(),
        FusedLinearCrossEntropy(
            model, reference_linear_cross_entropy, name="t", base=CrossEntropy()
        ),
    )


def test_fused_loss_through_a_peft_model_with_a_trained_head(tiny_llama_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    model = get_peft_model(base, config)
    fused = FusedLinearCrossEntropy(
        model, reference_linear_cross_entropy, name="test", base=CrossEntropy()
    )
    batch = padded_batch(vocab=base.config.vocab_size)
    assert_same(model, batch, fused)
    _, grads = loss_and_grads(model, fused, batch)
    assert any("modules_to_save" in name and "lm_head" in name for name in grads)


def test_a_lora_adapter_on_the_head_is_refused_or_skipped(
    fake_liger: list, tiny_llama_dir: Path, weave_log: pytest.LogCaptureFixture
) -> None:
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    problem = head_problem(model)
    assert problem is not None and "LoRA" in problem and "lora_modules_to_save" in problem
    sft = CrossEntropy()
    key = "liger_fused_linear_cross_entropy"
    with pytest.raises(ConfigError, match=f"{key}: the output layer carries a LoRA"):
        liger.wrap_loss(SimpleNamespace(**{key: True}), model, sft)
    assert liger.wrap_loss(SimpleNamespace(**{key: "auto"}), model, sft) is sft
    assert any(
        r.getMessage().startswith(f"{key}: auto: not used, the output layer carries a LoRA")
        for r in weave_log.records
    )


def test_cut_cross_entropy_refuses_a_head_with_a_bias(tiny_llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.randn(head.out_features))
    assert head_problem(model) is None
    assert "bias" in (head_problem(model, bias_ok=False) or "")
    # the reference takes the bias: the fused loss still equals the SFT loss
    assert_same(
        model,
        padded_batch(vocab=model.config.vocab_size),
        FusedLinearCrossEntropy(
            model, reference_linear_cross_entropy, name="t", base=CrossEntropy()
        ),
    )


# --- config keys ------------------------------------------------------------------------------


def config_error(tmp_path: Path, config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "bad.yml", config))
    return str(info.value)


def test_liger_swiglu_is_the_older_name_of_glu_activation(
    base_config: dict, tmp_path: Path
) -> None:
    cfg = open_session(
        write_config(tmp_path / "c.yml", {**base_config, "liger_swiglu": "auto"})
    ).cfg
    assert cfg.liger_glu_activation == "auto"
    both = {**base_config, "liger_swiglu": True, "liger_glu_activation": True}
    assert "set only one" in config_error(tmp_path, both)


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ({"liger_cross_entropy": True, "liger_fused_linear_cross_entropy": "auto"}, "choose one"),
        ({"cut_cross_entropy": True, "liger_fused_linear_cross_entropy": True}, "choose one"),
        ({"cut_cross_entropy": "auto", "liger_cross_entropy": True}, "choose one"),
        ({"cut_cross_entropy": True, "bf16": False}, "needs bf16 or fp16"),
        ({"liger_rope": "sometimes"}, "liger_rope"),
    ],
)
def test_conflicting_kernel_keys_are_config_errors(
    base_config: dict, tmp_path: Path, keys: dict, words: str
) -> None:
    assert words in config_error(tmp_path, {**base_config, **keys})


def test_axolotls_plugin_paths_map_onto_these_plugins(
    base_config: dict, tmp_path: Path, weave_log: pytest.LogCaptureFixture
) -> None:
    paths = [*liger.AXOLOTL_ALIASES, *cce.AXOLOTL_ALIASES]
    config = {**base_config, "plugins": paths, "liger_rms_norm": "auto"}
    session = open_session(write_config(tmp_path / "c.yml", config))
    assert session.cfg.liger_rms_norm == "auto"
    assert not [r for r in weave_log.records if r.levelno >= logging.WARNING]


# --- the real path here: nothing installed, no GPU --------------------------------------------


@pytest.mark.skipif(HAS_LIGER and torch.cuda.is_available(), reason="liger-kernel can run here")
@pytest.mark.parametrize("key", LIGER_KEYS)
def test_liger_key_true_without_the_package_or_a_gpu_says_what_is_needed(
    base_config: dict, tmp_path: Path, key: str
) -> None:
    session = open_session(write_config(tmp_path / "c.yml", {**base_config, key: True}))
    with pytest.raises(MissingDependencyError) as info:
        train(session)
    message = str(info.value)
    assert message.startswith(f"{key}: ")
    assert "pip install liger-kernel" in message and "NVIDIA or AMD ROCm GPU" in message
    assert "missing here:" in message and f"{key}: auto" in message
    assert not (Path(base_config["output_dir"]) / "model.safetensors").exists()


@pytest.mark.skipif(HAS_LIGER and torch.cuda.is_available(), reason="liger-kernel can run here")
def test_weave_train_with_liger_true_fails_with_one_message(
    base_config: dict, tmp_path: Path
) -> None:
    config = {**base_config, "liger_fused_linear_cross_entropy": True, "liger_rms_norm": True}
    result = run_weave("train", str(write_config(tmp_path / "c.yml", config)))
    assert result.returncode == MissingDependencyError.exit_code, result.stderr[-2000:]
    err = " ".join(result.stderr.split())
    assert "pip install liger-kernel" in err and "GPU" in err
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(HAS_CCE and torch.cuda.is_available(), reason="cut-cross-entropy runs here")
def test_weave_train_with_cut_cross_entropy_true_fails_with_one_message(
    base_config: dict, tmp_path: Path
) -> None:
    config = {**base_config, "cut_cross_entropy": True, "bf16": "auto"}
    result = run_weave("train", str(write_config(tmp_path / "c.yml", config)))
    assert result.returncode == MissingDependencyError.exit_code, result.stderr[-2000:]
    err = " ".join(result.stderr.split())
    assert "cut_cross_entropy: needs" in err and "pip install cut-cross-entropy" in err
    assert "NVIDIA GPU" in err and "missing here:" in err
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(HAS_LIGER and torch.cuda.is_available(), reason="liger-kernel can run here")
def test_liger_auto_logs_a_fallback_for_each_key_and_trains(
    base_config: dict, tmp_path: Path, weave_log: pytest.LogCaptureFixture
) -> None:
    keys = [k for k in LIGER_KEYS if k != "liger_cross_entropy"]  # one liger loss at a time
    state = train(
        open_session(
            write_config(tmp_path / "c.yml", {**base_config, **dict.fromkeys(keys, "auto")})
        )
    )
    assert state.global_step == base_config["max_steps"]
    assert all(math.isfinite(entry["loss"]) for entry in state.log_history if "loss" in entry)
    messages = [r.getMessage() for r in weave_log.records]
    for key in keys:
        lines = [m for m in messages if m.startswith(f"{key}: auto: not used")]
        assert len(lines) == 1, (key, messages)
        assert "liger-kernel (not installed)" in lines[0] or "no CUDA" in lines[0]


@pytest.mark.skipif(HAS_CCE and torch.cuda.is_available(), reason="cut-cross-entropy runs here")
def test_cut_cross_entropy_auto_logs_a_fallback_and_trains(
    base_config: dict, tmp_path: Path, weave_log: pytest.LogCaptureFixture
) -> None:
    config = {**base_config, "cut_cross_entropy": "auto"}
    state = train(open_session(write_config(tmp_path / "c.yml", config)))
    assert state.global_step == base_config["max_steps"]
    lines = [
        m
        for m in (r.getMessage() for r in weave_log.records)
        if m.startswith("cut_cross_entropy: auto")
    ]
    assert len(lines) == 1, lines


@pytest.fixture
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gpt2 (a family that does not list liger) with a local tokenizer."""
    from axolotl_weave_testing import SAMPLE_TEXT
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = train_tokenizer(out, [SAMPLE_TEXT])
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    return out


def test_a_family_without_liger_is_refused_before_loading(
    base_config: dict, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    config = {**base_config, "base_model": str(tiny_gpt2_dir), "liger_rope": True}
    result = run_weave("train", str(write_config(tmp_path / "c.yml", config)))
    assert result.returncode == ConfigError.exit_code, result.stderr[-2000:]
    err = " ".join(result.stderr.split())
    assert "liger_rope: the 'gpt2' model family does not list liger" in err
    assert "set liger_rope: false" in err and "Traceback" not in result.stderr


def test_a_family_without_liger_is_skipped_with_auto(weave_log: pytest.LogCaptureFixture) -> None:
    cfg = SimpleNamespace(liger_rope="auto", liger_rms_norm="auto")
    liger.patch_attention(model=None, cfg=cfg, family=GPT2)
    messages = [r.getMessage() for r in weave_log.records]
    assert sum("does not list liger" in m for m in messages) == 2, messages


def test_a_non_sft_objective_is_left_alone_or_refused(weave_log: pytest.LogCaptureFixture) -> None:
    class Preference:
        def count(self, batch: dict) -> int:
            return 1

        def __call__(self, model: Any, batch: dict) -> Any:
            return torch.zeros(())

    objective = Preference()
    auto = SimpleNamespace(liger_fused_linear_cross_entropy="auto", cut_cross_entropy="auto")
    assert liger.wrap_loss(auto, None, objective) is objective
    assert cce.wrap_loss(auto, None, objective) is objective
    assert any("objective is Preference" in r.getMessage() for r in weave_log.records)
    with pytest.raises(ConfigError, match="liger_cross_entropy: it replaces the SFT"):
        liger.wrap_loss(SimpleNamespace(liger_cross_entropy=True), None, objective)
    with pytest.raises(ConfigError, match="cut_cross_entropy: it replaces the SFT"):
        cce.wrap_loss(SimpleNamespace(cut_cross_entropy=True), None, objective)


# --- the hooks with liger's functions replaced by pure-torch stand-ins ------------------------


def fake_apply_llama(
    rope: bool = True,
    cross_entropy: bool = False,
    fused_linear_cross_entropy: bool = True,
    rms_norm: bool = True,
    swiglu: bool = True,
    model: Any = None,
) -> None:
    """Stands in for liger's apply_liger_kernel_to_llama (same signature, records its call)."""
    CALLS.append(
        {
            "rope": rope,
            "cross_entropy": cross_entropy,
            "fused_linear_cross_entropy": fused_linear_cross_entropy,
            "rms_norm": rms_norm,
            "swiglu": swiglu,
            "model": type(model).__name__,
        }
    )


def fake_apply_gemma(
    rope: bool = True,
    cross_entropy: bool = False,
    fused_linear_cross_entropy: bool = True,
    rms_norm: bool = True,
    geglu: bool = True,
    model: Any = None,
) -> None:
    """Stands in for liger's apply_liger_kernel_to_gemma."""


CALLS: list[dict[str, Any]] = []
FAKE_APPLY = {"llama": fake_apply_llama, "gemma": fake_apply_gemma}


@pytest.fixture
def fake_liger(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """liger-kernel 'installed' with pure-torch stand-ins; returns the apply calls."""
    CALLS.clear()
    monkeypatch.setattr(liger, "missing_here", lambda: None)
    monkeypatch.setattr(liger, "liger_apply_functions", lambda: dict(FAKE_APPLY))
    monkeypatch.setattr(liger, "liger_fused_function", lambda: reference_linear_cross_entropy)
    monkeypatch.setattr(
        liger, "liger_cross_entropy_function", lambda: torch.nn.functional.cross_entropy
    )
    return CALLS


def test_module_kernels_pass_every_switch_explicitly(
    fake_liger: list, tiny_llama_dir: Path, weave_log: pytest.LogCaptureFixture
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    cfg = SimpleNamespace(liger_rope=True, liger_glu_activation="auto")
    liger.patch_attention(model=model, cfg=cfg, family=LLAMA)
    assert fake_liger == [
        {
            "rope": True,
            "cross_entropy": False,
            "fused_linear_cross_entropy": False,
            "rms_norm": False,
            "swiglu": True,
            "model": "LlamaForCausalLM",
        }
    ]
    assert any(
        "liger_rope, liger_glu_activation on model_type llama" in r.getMessage()
        for r in weave_log.records
    )


def test_module_kernels_reach_the_base_of_a_peft_model(
    fake_liger: list, tiny_llama_dir: Path
) -> None:
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    liger.patch_attention(model=model, cfg=SimpleNamespace(liger_rms_norm=True), family=LLAMA)
    assert fake_liger[0]["model"] == "LlamaForCausalLM" and fake_liger[0]["rms_norm"]


def test_glu_maps_onto_geglu_and_a_missing_kernel_is_named(
    fake_liger: list, weave_log: pytest.LogCaptureFixture
) -> None:
    cfg = SimpleNamespace(liger_glu_activation=True, liger_layer_norm="auto")
    apply_fn, switches, applied = liger.plan_module_kernels(cfg, "gemma", FAKE_APPLY)
    assert apply_fn is fake_apply_gemma and applied == ["liger_glu_activation"]
    assert switches == {"rope": False, "rms_norm": False, "geglu": True}
    assert any(
        "no layer_norm kernel for model_type 'gemma'" in r.getMessage() for r in weave_log.records
    )
    with pytest.raises(
        ConfigError,
        match=r"liger_layer_norm: liger-kernel has no layer_norm kernel for model_type "
        r"'llama' \(it has: rms_norm, rope, swiglu\)",
    ):
        liger.plan_module_kernels(SimpleNamespace(liger_layer_norm=True), "llama", FAKE_APPLY)
    with pytest.raises(
        ConfigError, match="no kernels for model_type 'gpt2' \\(it has: gemma, llama\\)"
    ):
        liger.plan_module_kernels(SimpleNamespace(liger_rope=True), "gpt2", FAKE_APPLY)


def test_liger_swiglu_is_refused_on_a_non_silu_mlp(fake_liger: list, tiny_llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.config.hidden_act = "gelu"
    with pytest.raises(ConfigError, match="computes SiLU"):
        liger.patch_attention(
            model=model, cfg=SimpleNamespace(liger_glu_activation=True), family=LLAMA
        )


@pytest.mark.parametrize("key", ["liger_fused_linear_cross_entropy", "liger_cross_entropy"])
def test_training_with_the_liger_losses_gives_the_plain_losses(
    fake_liger: list,
    base_config: dict,
    tmp_path: Path,
    key: str,
    weave_log: pytest.LogCaptureFixture,
) -> None:
    plain_config = {**base_config, "output_dir": str(tmp_path / "a")}
    plain = train(open_session(write_config(tmp_path / "a.yml", plain_config)))
    config = {**base_config, "output_dir": str(tmp_path / "b"), key: True, "liger_rope": True}
    fused = train(open_session(write_config(tmp_path / "b.yml", config)))
    assert fake_liger and fake_liger[0]["rope"]
    assert any(r.getMessage().startswith(f"liger: {key}") for r in weave_log.records)
    losses = [entry["loss"] for entry in plain.log_history if "loss" in entry]
    fused_losses = [entry["loss"] for entry in fused.log_history if "loss" in entry]
    assert losses and fused_losses == pytest.approx(losses, rel=1e-4)


def test_cut_cross_entropy_builds_the_fused_loss(
    monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path
) -> None:
    monkeypatch.setattr(cce, "missing_here", lambda: None)
    monkeypatch.setattr(cce, "precision_problem", lambda cfg: None)
    monkeypatch.setattr(cce, "cut_cross_entropy_function", lambda: reference_linear_cross_entropy)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    loss = cce.wrap_loss(SimpleNamespace(cut_cross_entropy=True), model, CrossEntropy())
    assert isinstance(loss, FusedLinearCrossEntropy) and loss.name == "cut_cross_entropy"
    assert_same(model, packed_batch(vocab=model.config.vocab_size), loss)


# --- GPU: the real kernels --------------------------------------------------------------------

needs_liger = pytest.mark.skipif(not HAS_LIGER, reason="needs liger-kernel")
needs_cce = pytest.mark.skipif(not HAS_CCE, reason="needs cut-cross-entropy")


@pytest.fixture
def restore_llama_module() -> Any:
    """Undo liger's module-level patches of transformers' llama code (RoPE, classes) after."""
    from transformers.models.llama import modeling_llama

    saved = dict(vars(modeling_llama))
    yield
    for name, value in saved.items():
        setattr(modeling_llama, name, value)


@pytest.fixture
def no_tf32() -> Any:
    """Exact float32 matmuls (an earlier run may have switched TensorFloat-32 on)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def cuda_llama(tiny_llama_dir: Path, dtype: torch.dtype = torch.bfloat16) -> Any:
    """The tiny llama on the GPU in `dtype`."""
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=dtype).cuda()


def cuda_batch(model: Any, make_batch: Any = padded_batch) -> dict[str, torch.Tensor]:
    """A batch on the GPU for `model`'s vocabulary."""
    return {k: v.cuda() for k, v in make_batch(vocab=model.config.vocab_size).items()}


def grad_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative error of a gradient (norm of the difference over the norm)."""
    return float((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-12))


@pytest.mark.gpu
@needs_liger
@pytest.mark.parametrize("key", ["liger_rope", "liger_rms_norm", "liger_glu_activation"])
def test_each_liger_module_kernel_keeps_the_loss(
    tiny_llama_dir: Path, restore_llama_module: Any, key: str
) -> None:
    model = cuda_llama(tiny_llama_dir)
    batch = cuda_batch(model)
    want, want_grads = loss_and_grads(model, CrossEntropy(), batch)
    liger.patch_attention(model=model, cfg=SimpleNamespace(**{key: True}), family=LLAMA)
    got, got_grads = loss_and_grads(model, CrossEntropy(), batch)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    for name, grad in want_grads.items():
        assert grad_error(got_grads[name], grad) < 0.1, name


@pytest.mark.gpu
@needs_liger
def test_liger_layer_norm_is_refused_on_llama(tiny_llama_dir: Path) -> None:
    model = cuda_llama(tiny_llama_dir)
    with pytest.raises(ConfigError, match="no layer_norm kernel for model_type 'llama'"):
        liger.patch_attention(model=model, cfg=SimpleNamespace(liger_layer_norm=True), family=LLAMA)


@pytest.mark.gpu
@needs_liger
@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
def test_liger_fused_linear_cross_entropy_matches_loss_and_gradients(
    tiny_llama_dir: Path, make_batch: Any, no_tf32: None
) -> None:
    model = cuda_llama(tiny_llama_dir, torch.float32)
    batch = cuda_batch(model, make_batch)
    cfg = SimpleNamespace(liger_fused_linear_cross_entropy=True)
    fused = liger.wrap_loss(cfg, model, CrossEntropy())
    assert isinstance(fused, FusedLinearCrossEntropy)
    assert_same(model, batch, fused, tol=1e-4)


@pytest.mark.gpu
@needs_liger
def test_liger_fused_linear_cross_entropy_in_bf16(tiny_llama_dir: Path) -> None:
    model = cuda_llama(tiny_llama_dir)
    batch = cuda_batch(model)
    want, want_grads = loss_and_grads(model, CrossEntropy(), batch)
    fused = liger.wrap_loss(
        SimpleNamespace(liger_fused_linear_cross_entropy=True), model, CrossEntropy()
    )
    got, got_grads = loss_and_grads(model, fused, batch)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    for name, grad in want_grads.items():
        assert grad_error(got_grads[name], grad) < 0.05, name


@pytest.mark.gpu
@needs_liger
def test_liger_cross_entropy_matches_the_loss(tiny_llama_dir: Path, no_tf32: None) -> None:
    model = cuda_llama(tiny_llama_dir, torch.float32)
    batch = cuda_batch(model)
    loss = liger.wrap_loss(SimpleNamespace(liger_cross_entropy=True), model, CrossEntropy())
    assert isinstance(loss, liger.LigerCrossEntropy)
    assert_same(model, batch, loss, tol=1e-4)


@pytest.mark.gpu
@needs_cce
@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
def test_cut_cross_entropy_matches_loss_and_gradients(
    tiny_llama_dir: Path, make_batch: Any
) -> None:
    model = cuda_llama(tiny_llama_dir)  # bf16: cut cross-entropy's backward needs half precision
    batch = cuda_batch(model, make_batch)
    want, want_grads = loss_and_grads(model, CrossEntropy(), batch)
    cfg = SimpleNamespace(cut_cross_entropy=True, bf16=True, fp16=False, tf32=False)
    fused = cce.wrap_loss(cfg, model, CrossEntropy())
    assert isinstance(fused, FusedLinearCrossEntropy)
    got, got_grads = loss_and_grads(model, fused, batch)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    for name, grad in want_grads.items():
        assert grad_error(got_grads[name], grad) < 0.05, name


@pytest.mark.gpu
@needs_liger
def test_training_with_every_liger_key_on(
    base_config: dict, tmp_path: Path, restore_llama_module: Any
) -> None:
    keys = {k: True for k in LIGER_KEYS if k not in ("liger_layer_norm", "liger_cross_entropy")}
    config = {**base_config, **keys, "bf16": True, "output_dir": str(tmp_path / "liger")}
    state = train(open_session(write_config(tmp_path / "c.yml", config)))
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    assert state.global_step == base_config["max_steps"] and all(map(math.isfinite, losses))


@pytest.mark.gpu
@needs_cce
def test_training_with_cut_cross_entropy(base_config: dict, tmp_path: Path) -> None:
    config = {**base_config, "cut_cross_entropy": True, "bf16": True, "sample_packing": True}
    state = train(open_session(write_config(tmp_path / "c.yml", config)))
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    assert state.global_step == base_config["max_steps"] and all(map(math.isfinite, losses))
