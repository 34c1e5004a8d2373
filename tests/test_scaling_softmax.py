"""SSMax (`scaling_softmax`; the `scaling_softmax` plugin): the model's attention on scaled
queries equals attention whose scores are multiplied by `s * log(n) + b` (written out, as
Axolotl's flex score function defines it), on eager and sdpa attention, with plain and restarting
(packed) positions; every model loaded from the config gets it, for training and inference.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave._run import family_of, load_tokenizer, open_session
from axolotl_weave_plugins.methods.scaling_softmax import apply_scaling_softmax
from axolotl_weave_testing import train_with, write_config

S, B = 0.6, 0.1


def reference_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling=None, **kwargs
):
    """Attention with SSMax written out: scores times `S * log(max(n, 2)) + B` (n the query's
    1-based position), then the mask, the softmax and the values."""
    repeat = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
    scores = query @ key.transpose(2, 3) * scaling
    n = (kwargs["position_ids"].float() + 1).clamp(min=2.0)
    scores = scores * (S * n.log() + B)[:, None, :, None]
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    out = scores.float().softmax(dim=-1).to(query.dtype) @ value
    return out.transpose(1, 2).contiguous(), None


@pytest.fixture(scope="module")
def reference_model(tiny_llama_dir: Path) -> Any:
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register("ssmax_reference", reference_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("ssmax_reference", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    model.set_attn_implementation("ssmax_reference")
    return model.eval()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("packed", [False, True])
def test_scaled_queries_give_the_scaled_scores(
    tiny_llama_dir: Path, reference_model: Any, implementation: str, packed: bool
):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, attn_implementation=implementation
    ).eval()
    plain = copy.deepcopy(model)
    assert apply_scaling_softmax(model, S, B) == f"ssmax_{implementation}"
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 12))
    positions = torch.arange(12).repeat(2, 1)
    if packed:  # two sequences in each row, positions restarting
        positions[:, 5:] = torch.arange(7)
    with torch.no_grad():
        ours = model(input_ids=ids, position_ids=positions).logits
        theirs = reference_model(input_ids=ids, position_ids=positions).logits
        untouched = plain(input_ids=ids, position_ids=positions).logits
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert not torch.allclose(ours, untouched, atol=1e-3)


def test_every_model_loaded_from_the_config_gets_it(tmp_path: Path, base_config: dict):
    config = {**base_config, "scaling_softmax": True, "scaling_softmax_factor": S}
    session = open_session(write_config(tmp_path / "ssmax.yml", config))
    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    for purpose in ("train", "infer"):
        model = session.hooks.load_model(session.cfg, tokenizer, family, purpose=purpose)
        assert model.config._attn_implementation.startswith("ssmax_"), purpose
    plain = train_with({**base_config, "max_steps": 2}, tmp_path / "plain.yml")
    config["output_dir"] = str(tmp_path / "ssmax-out")
    scaled = train_with({**config, "max_steps": 2}, tmp_path / "ssmax-run.yml")

    def first_loss(state: Any) -> float:
        return next(r["loss"] for r in state.log_history if "loss" in r)

    assert abs(first_loss(scaled) - first_loss(plain)) > 1e-5  # same rows, same start
