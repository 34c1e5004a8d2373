"""The facade's contracts between objectives and kernel plugins.

- `HiddenStatesLoss`: any objective exposing `hidden_states_loss` (here a toy pair objective,
  not the SFT class) is wrapped by liger's fused linear cross-entropy, liger's cross-entropy
  kernel and cut cross-entropy, and gives its unfused loss and gradients (pure-torch stand-ins
  for the kernels: liger-kernel and cut-cross-entropy do not run on CPU); an objective without
  it is left alone with a logged reason under `auto`, refused under `true`.
- `switch_value` / `switch_applies`: the `true | auto | false` policy both plugins use.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import (
    IGNORE_INDEX,
    ConfigError,
    HeadCrossEntropy,
    HiddenStatesLoss,
    MissingDependencyError,
    logits_cross_entropy,
    switch_applies,
    switch_value,
)
from axolotl_weave_plugins.kernels import cut_cross_entropy as cce
from axolotl_weave_plugins.kernels import liger
from axolotl_weave_plugins.kernels._fused_linear_loss import (
    FusedLinearCrossEntropy,
    reference_linear_cross_entropy,
)
from axolotl_weave_plugins.losses.sft import CrossEntropy
from transformers import AutoModelForCausalLM


class PairObjective:
    """A toy objective that is not the SFT class: each row is a (chosen, rejected) pair; the
    loss is the chosen rows' cross-entropy on their responses minus a tenth of the rejected
    rows', each from its own forward (so `head` is called twice per loss call), targets the
    token two positions ahead (not the SFT shift). Its unit is one chosen target."""

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Position t targets labels[t + 2]."""
        targets = torch.full_like(labels, IGNORE_INDEX)
        targets[:, :-2] = labels[:, 2:]
        return targets

    def count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.targets(batch["chosen_labels"]) != IGNORE_INDEX).sum()

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.hidden_states_loss(model, batch, logits_cross_entropy)

    def hidden_states_loss(
        self, model: Any, batch: dict[str, torch.Tensor], head: HeadCrossEntropy
    ) -> torch.Tensor:
        losses = {}
        for side in ("chosen", "rejected"):
            rows = {"input_ids": batch[f"{side}_input_ids"]}
            losses[side], _ = head(model, rows, self.targets(batch[f"{side}_labels"]))
        return losses["chosen"] - 0.1 * losses["rejected"]


class Opaque:
    """An objective that computes its loss its own way (no `hidden_states_loss`)."""

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return 1

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.zeros(())


def pair_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two pairs of 10 tokens, the first 3 of each (the prompt) masked."""
    generator = torch.Generator().manual_seed(0)
    batch = {}
    for side in ("chosen", "rejected"):
        ids = torch.randint(3, vocab, (2, 10), generator=generator)
        labels = ids.clone()
        labels[:, :3] = IGNORE_INDEX
        batch |= {f"{side}_input_ids": ids, f"{side}_labels": labels}
    return batch


def loss_and_grads(model: Any, loss_fn: Any, batch: dict[str, Any]) -> tuple[Any, dict]:
    """The per-unit loss and the gradients of every trainable parameter."""
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch) / loss_fn.count(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same_as_unfused(model: Any, objective: Any, wrapped: Any, batch: dict) -> None:
    """`wrapped` gives `objective`'s loss and gradients on `batch`."""
    want, want_grads = loss_and_grads(model, objective, batch)
    got, got_grads = loss_and_grads(model, wrapped, batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got_grads.keys() == want_grads.keys() and want_grads
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.fixture
def kernels_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """liger-kernel and cut-cross-entropy 'installed', with pure-torch stand-ins."""
    monkeypatch.setattr(liger, "missing_here", lambda: None)
    monkeypatch.setattr(liger, "liger_fused_function", lambda: reference_linear_cross_entropy)
    monkeypatch.setattr(
        liger, "liger_cross_entropy_function", lambda: torch.nn.functional.cross_entropy
    )
    monkeypatch.setattr(cce, "missing_here", lambda: None)
    monkeypatch.setattr(cce, "precision_problem", lambda cfg: None)
    monkeypatch.setattr(cce, "cut_cross_entropy_function", lambda: reference_linear_cross_entropy)


# --- HiddenStatesLoss ---------------------------------------------------------------------------


def test_the_sft_objective_and_the_toy_one_implement_the_contract() -> None:
    assert isinstance(CrossEntropy(), HiddenStatesLoss)
    assert isinstance(PairObjective(), HiddenStatesLoss)
    assert not isinstance(Opaque(), HiddenStatesLoss)


@pytest.mark.parametrize(
    ("module", "key"),
    [
        (liger, "liger_fused_linear_cross_entropy"),
        (liger, "liger_cross_entropy"),
        (cce, "cut_cross_entropy"),
    ],
)
def test_any_hidden_states_objective_is_wrapped_and_keeps_its_loss(
    kernels_here: None,
    tiny_llama_dir: Path,
    weave_log: pytest.LogCaptureFixture,
    module: Any,
    key: str,
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    objective = PairObjective()
    wrapped = module.wrap_loss(SimpleNamespace(**{key: True}), model, objective)
    assert wrapped is not objective and wrapped.base is objective
    if key != "liger_cross_entropy":
        assert isinstance(wrapped, FusedLinearCrossEntropy)
    assert any("PairObjective" in r.getMessage() for r in weave_log.records)
    batch = pair_batch(model.config.vocab_size)
    assert wrapped.count(batch) == objective.count(batch)
    assert_same_as_unfused(model, objective, wrapped, batch)


def test_the_fused_loss_never_builds_the_logits_for_the_toy_objective(
    kernels_here: None, tiny_llama_dir: Path
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    cfg = SimpleNamespace(liger_fused_linear_cross_entropy="auto")
    wrapped = liger.wrap_loss(cfg, model, PairObjective())
    logits: list[tuple[int, ...]] = []
    model.register_forward_hook(lambda m, args, out: logits.append(tuple(out.logits.shape)))
    wrapped(model, pair_batch(model.config.vocab_size))
    assert logits == [(2, 10, 0), (2, 10, 0)]  # one forward per side, no logits


@pytest.mark.parametrize(
    ("module", "key"),
    [
        (liger, "liger_fused_linear_cross_entropy"),
        (liger, "liger_cross_entropy"),
        (cce, "cut_cross_entropy"),
    ],
)
def test_an_objective_without_the_contract_is_left_alone_or_refused(
    kernels_here: None,
    tiny_llama_dir: Path,
    weave_log: pytest.LogCaptureFixture,
    module: Any,
    key: str,
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    objective = Opaque()
    assert module.wrap_loss(SimpleNamespace(**{key: "auto"}), model, objective) is objective
    lines = [r.getMessage() for r in weave_log.records if r.getMessage().startswith(f"{key}: ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{key}: auto: not used, it replaces the SFT cross-entropy")
    assert "the objective is Opaque" in lines[0] and "hidden_states_loss" in lines[0]
    with pytest.raises(ConfigError, match=f"{key}: it replaces the SFT .* is Opaque"):
        module.wrap_loss(SimpleNamespace(**{key: True}), model, objective)
    assert module.wrap_loss(SimpleNamespace(**{key: False}), model, objective) is objective


def test_without_the_kernels_a_contract_objective_is_left_alone_under_auto(
    tiny_llama_dir: Path, weave_log: pytest.LogCaptureFixture
) -> None:
    """The real path here (nothing faked): where liger cannot run, `auto` keeps the objective
    (it still trains by its own `__call__`) and says why."""
    if liger.missing_here() is None:
        pytest.skip("liger-kernel can run here")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    objective = PairObjective()
    cfg = SimpleNamespace(liger_fused_linear_cross_entropy="auto")
    assert liger.wrap_loss(cfg, model, objective) is objective
    assert any(
        r.getMessage().startswith("liger_fused_linear_cross_entropy: auto: not used")
        for r in weave_log.records
    )
    loss = objective(model, pair_batch(model.config.vocab_size))
    assert torch.isfinite(loss)


# --- the switch policy ------------------------------------------------------------------------


def test_switch_value_reads_true_auto_or_false() -> None:
    cfg = SimpleNamespace(a=True, b="auto", c=False, d=None, e="yes")
    assert [switch_value(cfg, k) for k in "abcdef"] == [True, "auto", False, False, False, False]


def test_switch_applies_follows_true_auto_false(weave_log: pytest.LogCaptureFixture) -> None:
    assert switch_applies("k", True, None) and switch_applies("k", "auto", None)
    assert not switch_applies("k", False, None) and not switch_applies("k", False, "why")
    assert not switch_applies("k", "auto", "no GPU here", needs="a GPU")
    assert [r.getMessage() for r in weave_log.records] == ["k: auto: not used, no GPU here"]
    with pytest.raises(MissingDependencyError) as missing:
        switch_applies("k", True, "x (not installed)", needs="the package x (pip install x)")
    assert str(missing.value) == (
        "k: needs the package x (pip install x); missing here: x (not installed). "
        "Set k: auto to use it only where it can run, or false"
    )
    with pytest.raises(ConfigError, match=r"^k: the model has no head; set k: false \(or auto"):
        switch_applies("k", True, "the model has no head")
