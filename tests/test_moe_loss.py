"""A mixture-of-experts router's auxiliary loss reaches training when the config asks for it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from axolotl_weave_plugins.losses.sft import CrossEntropy
from transformers import AutoConfig, AutoModelForCausalLM


@pytest.mark.parametrize("asked", [True, False])
def test_sft_loss_adds_the_router_aux_loss_as_hugging_face_does(weave_hooks, asked: bool) -> None:
    family = weave_hooks.model_families()["mixtral"]
    config = AutoConfig.for_model("mixtral", **{**family.tiny_config(), "vocab_size": 100})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    family.prepare_model(
        model, SimpleNamespace(output_router_logits=asked, router_aux_loss_coef=0.5)
    )
    ids = torch.randint(3, 100, (2, 12))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    loss = CrossEntropy()
    ours = loss(model, batch) / loss.count(batch)
    reference = model(**batch).loss  # Hugging Face adds coef * aux when labels are given
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    plain = torch.nn.functional.cross_entropy(
        model(input_ids=ids).logits[:, :-1].reshape(-1, 100), ids[:, 1:].reshape(-1)
    )
    assert (ours - plain).abs().item() > 1e-3 if asked else torch.allclose(ours, plain, atol=1e-5)
