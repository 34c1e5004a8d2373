"""Packed preference training (`sample_packing: true` with `rl: dpo | ipo | orpo | simpo`).

Pairs are packed whole (a pair's chosen and rejected sequences side by side in one row, positions
restarting at each sequence), and the per-sequence log-probabilities are summed from the packed
forward pass by sequence id: the loss, the metrics and the gradients must equal the padded
(unpacked) computation of the same pairs, as SFT packing is tested (`tests/test_packing.py`).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from axolotl_weave import IGNORE_INDEX, ConfigError, collate
from axolotl_weave_plugins.batching._multipack import Packer, collate_packed_pairs, pair_lengths
from axolotl_weave_plugins.batching.packed import PackedBatches, refuse_unpackable_columns
from axolotl_weave_plugins.rl._formats import PAIR_COLUMNS
from axolotl_weave_plugins.rl._objective import PreferenceObjective, preference_step
from axolotl_weave_testing import (
    OneProcessStrategy,
    build_rows,
    dpo_lora_config,
    pair_rows,
    preference_settings,
    run_weave,
    write_config,
)


@pytest.fixture(scope="module")
def setup(tiny_llama_dir: Path, weave_hooks: Any, tiny_tokenizer: Any) -> Any:
    """(policy, reference, tokenized pairs, pad id): a perturbed tiny llama and its base."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).float()
    reference.set_attn_implementation("sdpa")
    policy = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = build_rows(weave_hooks, tiny_tokenizer, pair_rows(5), type="chatml.intel")
    return policy, reference, rows, tiny_tokenizer.pad_token_id or 0


# --- the packed micro-batch -------------------------------------------------------------------


def test_pairs_are_packed_whole_with_restarting_positions_and_sequence_ids() -> None:
    x = IGNORE_INDEX
    a = {
        "chosen_input_ids": [1, 2, 3],
        "chosen_labels": [x, 2, 3],
        "rejected_input_ids": [1, 4],
        "rejected_labels": [x, 4],
        "ref_chosen_logps": -1.5,
    }
    b = {
        "chosen_input_ids": [5, 6],
        "chosen_labels": [x, 6],
        "rejected_input_ids": [5, 7, 8],
        "rejected_labels": [x, 7, 8],
        "ref_chosen_logps": -2.5,
    }
    batch = collate_packed_pairs([[a, b]], pad_token_id=0, pad_to=12, per_pair=["ref_chosen_logps"])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 1, 4, 5, 6, 5, 7, 8, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 0, 1, 2, 0, 1]]
    # chosen of pair k is sequence k, its rejected one 2 + k (the unpacked order); padding -1
    assert batch["sequence_ids"].tolist() == [[0, 0, 0, 2, 2, 1, 1, 3, 3, 3, -1, -1]]
    assert batch["labels"].tolist() == [[x, 2, 3, x, 4, x, 6, x, 7, 8, x, x]]
    assert int(batch["num_pairs"]) == 2 and int(batch["num_tokens"]) == 10
    assert batch["ref_chosen_logps"].tolist() == [-1.5, -2.5]
    assert "attention_mask" not in batch


def test_the_packer_puts_each_pair_whole_into_one_bin_of_twice_sequence_len(
    setup: Any, tmp_path: Path
) -> None:
    from datasets import Dataset

    *_, rows, pad = setup
    rows = rows * 6  # 30 pairs
    dataset = Dataset.from_list(rows)
    lengths = pair_lengths(dataset)
    longest = max(max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"])) for r in rows)
    packer = Packer(lengths, capacity=2 * longest, micro_batch_size=2, seed=3)
    plan = PackedBatches(packer, dataset, pad, None, dict(PAIR_COLUMNS))
    seen = 0
    for batch in plan.micro_batches(0):
        assert batch["input_ids"].shape[1] <= 2 * longest
        ids = batch["sequence_ids"]
        pairs = int(batch["num_pairs"])
        assert set(ids[ids >= 0].tolist()) == set(range(2 * pairs))  # every sequence, whole
        seen += pairs
    assert seen == len(rows)
    assert packer.efficiency() > 0.8
    assert np.array_equal(
        lengths, [len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows]
    )


def test_the_packed_plan_of_pairs_pads_to_twice_sequence_len(setup: Any) -> None:
    """`plan_batches` (the `sample_packing` plugin) packs the pairs into bins of
    2 x sequence_len; `pad_to_sequence_len` pads every row to that width."""
    from axolotl_weave_plugins.batching.packed import plan_batches
    from datasets import Dataset

    *_, rows, pad = setup
    cfg = SimpleNamespace(
        sample_packing=True,
        eval_sample_packing=None,
        sequence_len=256,
        pad_to_sequence_len=True,
        micro_batch_size=2,
        eval_batch_size=None,
        seed=0,
        sample_packing_group_size=1000,
        sample_packing_bin_size=200,
        sample_packing_sequentially=False,
        sample_packing_eff_est=None,
    )
    strategy = SimpleNamespace(process_index=0, num_processes=1, is_main_process=False)
    plan = plan_batches(cfg, Dataset.from_list(rows), True, strategy, dict(PAIR_COLUMNS), pad)
    batches = list(plan.micro_batches(0))
    assert plan.packer.capacity == 512
    assert all(b["input_ids"].shape[1] == 512 for b in batches)
    assert len(batches) < len(rows) / 2  # several pairs in a row
    assert sum(int(b["num_pairs"]) for b in batches) == len(rows)


def test_other_columns_than_pairs_and_scalars_are_refused() -> None:
    from datasets import Dataset

    columns = {**PAIR_COLUMNS, "ref_chosen_logps": None, "completion_input_ids": 0}
    pairs = {c: [[1, 2]] for c in PAIR_COLUMNS} | {"ref_chosen_logps": [0.5]}
    refuse_unpackable_columns(Dataset.from_dict(pairs), columns)  # pairs and a scalar: packed
    with pytest.raises(ConfigError, match="completion_input_ids"):
        refuse_unpackable_columns(
            Dataset.from_dict(pairs | {"completion_input_ids": [[3]]}), columns
        )


# --- packed == unpacked -----------------------------------------------------------------------


def loss_metrics_grads(
    objective: PreferenceObjective, policy: Any, batch: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, float], list[torch.Tensor]]:
    policy.zero_grad()
    loss, metrics = objective.compute(policy, batch)
    loss.backward()
    grads = [p.grad.detach().clone() for p in policy.parameters()]
    return loss.detach(), {k: float(v) for k, v in metrics.items()}, grads


@pytest.mark.parametrize(
    "keys",
    [
        {"rl": "dpo"},
        {"rl": "dpo", "dpo_loss_type": ["sigmoid", "sft"], "dpo_use_weighting": True},
        {"rl": "ipo"},
        {"rl": "orpo"},
        {"rl": "simpo"},
    ],
    ids=["dpo", "dpo-sft-wpo", "ipo", "orpo", "simpo"],
)
def test_packed_loss_metrics_and_gradients_equal_unpacked(setup: Any, keys: dict) -> None:
    policy, reference, rows, pad = setup
    objective = PreferenceObjective(preference_settings(**keys), reference)
    padded = collate(rows, pad, columns=PAIR_COLUMNS)
    packed = collate_packed_pairs([rows[:2], rows[2:]], pad)  # 5 pairs in 2 packed rows
    assert packed["input_ids"].shape[0] == 2
    loss_u, metrics_u, grads_u = loss_metrics_grads(objective, policy, padded)
    loss_p, metrics_p, grads_p = loss_metrics_grads(objective, policy, packed)
    assert int(objective.count(packed)) == int(objective.count(padded)) == 5
    torch.testing.assert_close(loss_p, loss_u, rtol=1e-5, atol=1e-6)
    assert metrics_p.keys() == metrics_u.keys()
    for name in metrics_u:
        assert metrics_p[name] == pytest.approx(metrics_u[name], rel=1e-5, abs=1e-6), name
    scale = max(float(g.abs().max()) for g in grads_u)  # IPO's are ~50 times DPO's
    for gp, gu in zip(grads_p, grads_u, strict=True):
        torch.testing.assert_close(gp, gu, rtol=1e-4, atol=1e-6 * max(scale, 1.0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["torch_varlen", "flex_attention", "sdpa"])
def test_packed_pairs_equal_unpacked_on_the_gpu(setup: Any, name: str) -> None:
    """bf16 on CUDA: DPO on packed pairs with each GPU attention gives the padded loss and
    gradient (padded with sdpa)."""
    from axolotl_weave_plugins.kernels import _varlen_attention, attn_implementation

    if name == "torch_varlen":
        if not attn_implementation.has_torch_varlen():
            pytest.skip("torch < 2.10 has no varlen_attn")
        _varlen_attention.register(name)
    policy, reference, rows, pad = setup
    policy = copy.deepcopy(policy).to("cuda", torch.bfloat16)
    objective = PreferenceObjective(preference_settings(rl="dpo"), reference.to(torch.bfloat16))
    reference.float()
    objective.reference.to("cuda")

    def run(implementation: str, batch: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        for model in (policy, objective.reference):
            model.set_attn_implementation(implementation)
        batch = {k: v.to("cuda") for k, v in batch.items()}
        loss, _, grads = loss_metrics_grads(objective, policy, batch)
        return loss.float(), [g.float() for g in grads]

    loss_u, grads_u = run("sdpa", collate(rows, pad, columns=PAIR_COLUMNS))
    loss_p, grads_p = run(name, collate_packed_pairs([rows[:2], rows[2:]], pad))
    torch.testing.assert_close(loss_p, loss_u, rtol=2e-2, atol=2e-2)
    for gp, gu in zip(grads_p, grads_u, strict=True):
        assert (gp - gu).norm() <= 0.05 * gu.norm() + 1e-3


def test_a_leak_between_packed_pairs_would_be_caught(setup: Any) -> None:
    """Without restarting positions (one causal sequence per row), the packed sums differ."""
    policy, reference, rows, pad = setup
    objective = PreferenceObjective(preference_settings(rl="simpo"), reference)
    packed = collate_packed_pairs([rows], pad)
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    with torch.no_grad():
        good = objective.forward(policy, packed).sums()
        unpacked = objective.forward(policy, collate(rows, pad, columns=PAIR_COLUMNS)).sums()
        leaked = objective.forward(policy, leaky).sums()
    torch.testing.assert_close(good, unpacked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(leaked, unpacked, rtol=1e-3, atol=1e-3)


def test_a_packed_window_steps_as_the_padded_one(setup: Any) -> None:
    """Through the training step: two packed micro-batches give the padded window's loss,
    metrics and gradient (the step counts each micro-batch's pairs from `num_pairs`)."""
    policy, reference, rows, pad = setup
    strategy = OneProcessStrategy()
    windows = {
        "padded": [
            collate(rows[:3], pad, columns=PAIR_COLUMNS),
            collate(rows[3:], pad, columns=PAIR_COLUMNS),
        ],
        "packed": [
            collate_packed_pairs([rows[:1], rows[1:3]], pad),
            collate_packed_pairs([rows[3:]], pad),
        ],
    }
    results = {}
    for name, window in windows.items():
        model = copy.deepcopy(policy)
        objective = PreferenceObjective(preference_settings(rl="dpo"), reference)
        metrics = preference_step(strategy, model, objective, window)
        results[name] = (metrics, [p.grad.clone() for p in model.parameters()])
    (m_u, g_u), (m_p, g_p) = results["padded"], results["packed"]
    assert m_p["loss"] == pytest.approx(m_u["loss"], rel=1e-5)
    assert m_p["rewards/margins"] == pytest.approx(m_u["rewards/margins"], rel=1e-4, abs=1e-7)
    for a, b in zip(g_p, g_u, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --- configs ----------------------------------------------------------------------------------


def packed_config(tmp_path: Path, base_config: dict, **keys: Any) -> dict:
    # rows of up to 512 tokens: 2 to 4 of these pairs each
    return dpo_lora_config(tmp_path, base_config, sample_packing=True, sequence_len=256, **keys)


def test_kto_cannot_pack_and_says_why(tmp_path: Path, base_config: dict) -> None:
    """(GRPO's refusal is in tests/test_rl_grpo.py, the CLI's in tests/test_rl_preference.py.)"""
    from axolotl_weave._run import open_session

    config = packed_config(tmp_path, base_config, rl="kto")
    refusal = "sample_packing: true cannot be used with rl: kto: its KL estimate"
    with pytest.raises(ConfigError, match=refusal):
        open_session(write_config(tmp_path / "kto.yml", config))


def test_weave_train_dpo_packed_trains(tmp_path: Path, base_config: dict) -> None:
    config = packed_config(tmp_path, base_config)
    result = run_weave("train", str(write_config(tmp_path / "dpo.yml", config)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "sample_packing: 8 rows in" in output  # the pairs were packed
    lines = Path(config["output_dir"], "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    assert records[-1]["rewards/margins"] > 0
