"""Entropy-Aware Focal Training (`use_eaft`, `eaft_alpha`, `eaft_k`): the loss against its
definition (the top-k entropy weight of each target token's cross-entropy, as Axolotl and the
EAFT reference compute it), the gradient through the cross-entropy only, a run with it, and the
configs refused."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from axolotl_weave import ConfigError
from axolotl_weave._run import open_session
from axolotl_weave_plugins.losses.sft import CrossEntropy, EntropyWeightedCrossEntropy
from axolotl_weave_testing import train_with, write_config
from transformers import AutoModelForCausalLM


def reference_eaft(logits: torch.Tensor, labels: torch.Tensor, alpha: float, k: int):
    """EAFT as defined: shift, keep the labelled targets, weight = (entropy of the softmax of
    the k largest logits) ** alpha with no gradient, weighted cross-entropy summed and divided
    by the labelled targets."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    mask = shift_labels != -100
    with torch.no_grad():
        top = torch.topk(shift_logits[mask], k=min(k, logits.shape[-1]), dim=-1).values
        p = F.softmax(top, dim=-1)
        weights = (-(p * torch.log(p + 1e-10)).sum(-1)) ** alpha
    per_token = F.cross_entropy(shift_logits[mask], shift_labels[mask], reduction="none")
    return (per_token * weights).sum() / mask.sum()


@pytest.fixture
def model_and_batch(tiny_llama_dir: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ids = torch.randint(3, model.config.vocab_size, (2, 16))
    labels = ids.clone()
    labels[0, :5] = -100  # a masked prompt
    labels[1, 12:] = -100
    return model, {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize(("alpha", "k"), [(1.0, 20), (0.5, 5), (2.0, 10_000)])
def test_eaft_loss_and_gradient_equal_the_definition(model_and_batch, alpha: float, k: int):
    model, batch = model_and_batch
    loss = EntropyWeightedCrossEntropy(alpha, k)
    ours = loss(model, batch) / loss.count(batch)
    grads = torch.autograd.grad(ours, list(model.parameters()))
    logits = model(input_ids=batch["input_ids"]).logits
    expected = reference_eaft(logits, batch["labels"], alpha, k)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    plain = CrossEntropy()
    assert abs(ours.item() - (plain(model, batch) / plain.count(batch)).item()) > 1e-3


def test_eaft_with_alpha_zero_is_the_plain_loss(model_and_batch) -> None:
    model, batch = model_and_batch
    plain, eaft = CrossEntropy(), EntropyWeightedCrossEntropy(0.0, 20)
    assert eaft.count(batch) == plain.count(batch)
    torch.testing.assert_close(eaft(model, batch), plain(model, batch), rtol=1e-6, atol=1e-6)


def step_losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [record["loss"] for record in state["log_history"] if "loss" in record]


def test_a_run_with_use_eaft_trains_on_the_weighted_loss(base_config: dict, tmp_path: Path):
    """`weave train` with `use_eaft`: alpha 0 trains exactly as the plain run (the same
    normalisation), alpha 1 another loss from the first step, and both save a model."""
    runs = {}
    for name, keys in {
        "plain": {},
        "alpha0": {"use_eaft": True, "eaft_alpha": 0.0},
        "alpha1": {"use_eaft": True, "eaft_k": 8},
    }.items():
        out = tmp_path / name
        config = {**base_config, **keys, "max_steps": 3, "logging_steps": 1, "output_dir": str(out)}
        train_with(config, tmp_path / f"{name}.yml")
        assert (out / "model.safetensors").is_file()
        runs[name] = step_losses(out)
    assert runs["alpha0"] == pytest.approx(runs["plain"], rel=1e-6)
    assert all(abs(a - b) > 1e-3 for a, b in zip(runs["alpha1"], runs["plain"], strict=True))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"use_eaft": True, "rl": "dpo"}, "use_eaft with rl: dpo"),
        ({"use_eaft": True, "reward_model": True}, "use_eaft with reward_model: True"),
        ({"use_eaft": True, "eaft_k": 0}, "eaft_k"),
        ({"use_eaft": True, "eaft_alpha": -1}, "eaft_alpha"),
    ],
)
def test_eaft_configs_refused(base_config: dict, tmp_path: Path, keys: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", {**base_config, **keys}), [])


def test_fused_losses_leave_eaft_alone_or_refuse_it() -> None:
    """Liger's and cut cross-entropy's fused losses compute the plain cross-entropy: with
    `auto` they leave EAFT's loss as it is, asked for explicitly the run stops with one
    message."""
    from axolotl_weave_plugins.kernels import cut_cross_entropy, liger

    objective = EntropyWeightedCrossEntropy(1.0, 20)
    auto = SimpleNamespace(liger_fused_linear_cross_entropy="auto", cut_cross_entropy="auto")
    assert liger.wrap_loss(auto, None, objective) is objective
    assert cut_cross_entropy.wrap_loss(auto, None, objective) is objective
    with pytest.raises(ConfigError, match="EntropyWeightedCrossEntropy, which has none"):
        liger.wrap_loss(SimpleNamespace(liger_cross_entropy=True), None, objective)
