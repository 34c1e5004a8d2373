"""EBFT (`rl: ebft`, structured mode; the `grpo` plugin with `_ebft`).

The rewards are checked against the paper's equation 7 written out completion by completion,
whitening by what it promises (a group's whitened embeddings are orthonormal), the features
against the frozen network (the base under an adapter, whatever the adapter holds), and Axolotl's
dataset transforms row by row; `weave train` runs an Axolotl EBFT config (its opencode transform,
LoRA; the last-turn transform with whitening, a full fine-tune) and logs the EBFT metrics; bad
configs are refused before any model loads.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from axolotl_weave_plugins.rl._ebft import (
    EBFTRun,
    feature_rewards,
    layer_features,
    layer_indices,
    pool,
)
from axolotl_weave_plugins.rl._ebft_config import EBFTArgs
from axolotl_weave_plugins.rl._ebft_transforms import (
    all_turns,
    first_turn,
    last_turn,
    opencode,
    reasoning_answer_only,
    reasoning_split_thinking,
)
from axolotl_weave_plugins.rl._grpo import GRPOObjective
from axolotl_weave_plugins.rl.grpo import GRPOArgs
from axolotl_weave_testing import (
    CHATML_TEMPLATE,
    OneProcessStrategy,
    build_rows,
    run_weave,
    train_with,
    write_config,
    write_jsonl,
)

# --- rewards, whitening and pooling --------------------------------------------------------------


def equation_7(generated: torch.Tensor, truth: torch.Tensor, group: int, a: float, d: float):
    """The paper's reward, one completion at a time, on L2-normalised embeddings."""
    rewards = []
    for j in range(generated.shape[0]):
        g = generated[j] / generated[j].norm()
        t = truth[j // group] / truth[j // group].norm()
        first = (j // group) * group
        others = [
            float(g @ (generated[k] / generated[k].norm()))
            for k in range(first, first + group)
            if k != j
        ]
        rewards.append(2 * a * float(g @ t) - 2 * d * sum(others) / (group - 1))
    return rewards


@pytest.mark.parametrize(("a", "d"), [(1.0, 1.0), (0.7, 0.0), (1.0, 2.5)])
def test_rewards_follow_the_papers_equation_7(a: float, d: float):
    torch.manual_seed(0)
    generated, truth = torch.randn(12, 10), torch.randn(3, 10)
    ebft = EBFTArgs(alignment_coef=a, diversity_coef=d)
    rewards, metrics = feature_rewards(generated, truth, 4, ebft)
    assert rewards.tolist() == pytest.approx(equation_7(generated, truth, 4, a, d), abs=1e-5)
    assert metrics["ebft/reward"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    normed = F.normalize(generated, dim=-1).view(3, 4, 10)
    cfm = ((normed.mean(1) - F.normalize(truth, dim=-1)) ** 2).sum(-1).mean()
    assert metrics["ebft/cfm_loss"] == pytest.approx(cfm.item(), abs=1e-6)
    alignment = 2 * F.cosine_similarity(generated, truth.repeat_interleave(4, 0))
    assert metrics["ebft/alignment"] == pytest.approx(alignment.mean().item(), abs=1e-6)


def test_whitening_makes_each_groups_embeddings_orthonormal():
    """W = U diag(1/S) U^T of a group's SVD maps its n embeddings (n <= D) to orthonormal
    rows, so the diversity term vanishes and the alignment is the truth's whitened cosine."""
    torch.manual_seed(1)
    generated, truth = torch.randn(8, 16) * 3 + 1, torch.randn(2, 16)
    rewards, metrics = feature_rewards(generated, truth, 4, EBFTArgs(use_whitening=True))
    assert metrics["ebft/diversity"] == pytest.approx(0.0, abs=1e-4)
    for group in range(2):
        phi = generated[group * 4 : (group + 1) * 4]
        u, s, _ = torch.linalg.svd(phi.T, full_matrices=False)
        w = u @ torch.diag(1 / s) @ u.T
        whitened = phi @ w
        assert torch.allclose(whitened @ whitened.T, torch.eye(4), atol=1e-4)
        cosine = F.cosine_similarity(whitened, (truth[group] @ w).expand(4, -1))
        assert rewards[group * 4 : (group + 1) * 4].tolist() == pytest.approx(
            (2 * cosine).tolist(), abs=1e-4
        )


def test_each_embed_method_pools_as_defined():
    hidden = torch.arange(2 * 8 * 3, dtype=torch.float32).view(2, 8, 3)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    prompts = torch.tensor([3, 2])
    assert pool(hidden, "last_token", mask, prompts).tolist() == [
        hidden[0, 7].tolist(),
        hidden[1, 4].tolist(),
    ]
    mean = pool(hidden, "mean_pooling", mask, prompts)
    assert torch.allclose(mean[1], hidden[1, :5].mean(0))
    completion = pool(hidden, "completion_mean", mask, prompts)
    assert torch.allclose(completion[0], hidden[0, 3:].mean(0))
    assert torch.allclose(completion[1], hidden[1, 2:5].mean(0))
    concat = pool(hidden, "concat", mask, prompts)
    assert concat[1].tolist() == hidden[1, [1, 2, 3]].reshape(-1).tolist()  # 5//4, 5//2, 15//4


# --- the features of a model ---------------------------------------------------------------------


def run_on(model: Any, tokenizer: Any, adapter: str | None = None, **ebft: Any) -> EBFTRun:
    """An `EBFTRun` bound to `model` as a step binds it (groups of 2)."""
    cfg = SimpleNamespace(
        rl="ebft",
        trl=GRPOArgs(num_generations=2, max_completion_length=8),
        ebft=EBFTArgs(**ebft),
        sequence_len=64,
        adapter=adapter,
        chat_template_kwargs=None,
    )
    run = EBFTRun(cfg)
    run.tokenizer = tokenizer
    GRPOObjective(cfg, model, run=run)
    run.strategy, run.model = OneProcessStrategy(), model
    return run


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_tokenizer: Any) -> Any:
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def test_a_completion_equal_to_its_ground_truth_is_fully_aligned(
    tiny_llama_dir: Path, chat_tokenizer: Any
):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    run = run_on(model, chat_tokenizer, diversity_coef=0.0)
    prompts = [[{"role": "user", "content": "Sort a list."}]] * 2
    truth = "def f(x): return sorted(x)"
    completions = [[{"role": "assistant", "content": text}] for text in (truth, "no")]
    rewards = run.feature_matching(prompts, completions, ground_truth=[truth, truth])
    assert rewards[0] == pytest.approx(2.0, abs=1e-5)
    assert rewards[1] < 2.0 - 1e-3
    assert layer_indices(model, [0.25, 0.5, 0.75]) == [0, 1, 1]  # 2 layers
    assert set(run.flush_logged()) == {
        "ebft/alignment",
        "ebft/diversity",
        "ebft/cfm_loss",
        "ebft/reward",
    }


def test_under_an_adapter_the_features_are_the_base_models(tiny_llama_dir: Path, chat_tokenizer):
    """The feature network is the frozen base: an adapter's weights, whatever they hold, change
    no feature (it is disabled for them), and no copy of the model is kept."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    texts, prompts = ["a b c", "hello"], ["a", "h"]
    plain = run_on(copy.deepcopy(base), chat_tokenizer).embed(texts, prompts)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config).train()
    run = run_on(peft_model, chat_tokenizer, adapter="lora")
    assert run.objective.reference is None
    assert torch.allclose(run.embed(texts, prompts), plain, atol=1e-6)
    assert peft_model.training  # put back as it was
    ids = chat_tokenizer(texts[:1], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():  # the adapter does change the features when it is on
        layers = layer_indices(base, run.ebft.feature_layers)
        enabled = layer_features(peft_model, ids.input_ids, ids.attention_mask, layers)
    assert not torch.allclose(enabled[0, -1], plain[0], atol=1e-3)


# --- Axolotl's dataset transforms ----------------------------------------------------------------


def test_axolotls_transforms_make_prompts_and_ground_truths():
    row, options = opencode(None)
    assert options == {"remove_columns": "__all__"}
    assert row({"input": "Q", "output": "A", "id": 3}) == {
        "prompt": [{"role": "user", "content": "Q"}],
        "ground_truth": "A",
    }
    conversation = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "1"},
            {"role": "assistant", "content": "<think>x</think> one"},
            {"role": "user", "content": "2"},
            {"role": "assistant", "content": "<think>\ny\n</think>\ntwo"},
        ]
    }
    last = last_turn(None)[0](conversation)
    assert last["prompt"] == conversation["messages"][:4]
    assert last["ground_truth"] == "<think>\ny\n</think>\ntwo"
    assert reasoning_answer_only(None)[0](conversation)["ground_truth"] == "two"
    split = reasoning_split_thinking(None)[0](conversation)
    assert split["prompt"][2] == {"role": "assistant", "content": "one", "reasoning_content": "x"}
    assert split["prompt"][0] == {"role": "system", "content": "S", "reasoning_content": ""}
    assert split["ground_truth"] == "<think>\ny\n</think>\n\ntwo"
    with pytest.raises(KeyError, match="no assistant turn"):
        last_turn(None)[0]({"messages": [{"role": "user", "content": "hi"}]})
    first = first_turn(None)[0](conversation)
    assert first["prompt"] == conversation["messages"][:2]
    assert first["ground_truth"] == "<think>x</think> one"
    assert first["remaining_turns"] == conversation["messages"][3:]


def test_the_all_turns_transform_makes_a_row_per_assistant_turn(
    weave_hooks: Any, chat_tokenizer: Any
):
    """Axolotl's batched `transform_all_turns`: two conversations of two answers each become
    four prompt rows, each with the turns before its answer."""
    rows, options = all_turns(None)
    assert options == {"remove_columns": "__all__", "batched": True}
    conversations = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}"},
                {"role": "user", "content": f"r{i}"},
                {"role": "assistant", "content": f"b{i}"},
            ]
        }
        for i in range(2)
    ]
    cfg = SimpleNamespace(rl="ebft", sequence_len=64, train_on_inputs=False)
    built = build_rows(
        weave_hooks,
        chat_tokenizer,
        conversations,
        cfg,
        type="grpo",
        transform="axolotl_weave_plugins.rl._ebft_transforms.all_turns",
    )
    assert [json.loads(r["grpo_columns"])["ground_truth"] for r in built] == [
        "a0",
        "b0",
        "a1",
        "b1",
    ]
    assert [len(json.loads(r["grpo_prompt"])) for r in built] == [1, 3, 1, 3]


def test_a_multi_turn_completion_is_rolled_out_through_the_rows_later_turns(
    tiny_llama_dir: Path, chat_tokenizer: Any
):
    """`ebft_chat_multiturn.transform`: after the first answer the row's user turns are
    written in and its assistant turns sampled; the conversation is compared whole."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    run = run_on(model, chat_tokenizer, diversity_coef=0.0)
    prompts = [[{"role": "user", "content": "Count to 1."}]] * 2
    later = [{"role": "user", "content": "Now to 2."}, {"role": "assistant", "content": "1 2"}]
    texts = run.roll_out(prompts, ["1", "one"], [later, later])
    for text, first in zip(texts, ["1", "one"], strict=True):
        assert text.startswith(
            run.render([*prompts[0], {"role": "assistant", "content": first}], False)
        )
        assert "Now to 2." in text and text.count("<|im_start|>assistant") == 2
    rewards = run.feature_matching(
        prompts,
        [[{"role": "assistant", "content": "1"}]] * 2,
        ground_truth=["1", "1"],
        remaining_turns=[later, later],
    )
    assert all(-2.0 <= r <= 2.0 for r in rewards)


def test_a_transform_that_removes_all_columns_keeps_only_its_own(
    weave_hooks: Any, chat_tokenizer: Any
):
    """Axolotl's `remove_columns: "__all__"`: the raw row's columns do not reach the reward
    (only what the transform returns does)."""
    cfg = SimpleNamespace(rl="ebft", sequence_len=64, train_on_inputs=False)
    rows = [{"input": "Q", "output": "A", "source": "web"}]
    (row,) = build_rows(
        weave_hooks,
        chat_tokenizer,
        rows,
        cfg,
        type="grpo",
        transform="axolotl_weave_plugins.rl._ebft_transforms.opencode",
    )
    assert json.loads(row["grpo_columns"]) == {"ground_truth": "A"}
    assert json.loads(row["grpo_prompt"]) == [{"role": "user", "content": "Q"}]


# --- weave train ---------------------------------------------------------------------------------


@pytest.fixture
def ebft_config(tmp_path: Path, base_config: dict) -> dict[str, Any]:
    """Axolotl's opencode EBFT example, small: LoRA, HF generate, groups of 4."""
    rows = [
        {"input": f"Write a function returning {i}.", "output": f"def f():\n    return {i}"}
        for i in range(8)
    ]
    data = write_jsonl(tmp_path / "code.jsonl", rows)
    return {
        **base_config,
        "chat_template": "chatml",
        "rl": "ebft",
        "ebft": {"feature_layers": [0.5, 1.0], "embed_method": "last_token"},
        "trl": {"num_generations": 4, "max_completion_length": 6, "scale_rewards": True},
        "datasets": [{"path": str(data), "type": "ebft_opencode.transform"}],
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_linear": True,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "max_steps": 2,
        "logging_steps": 1,
        "learning_rate": 1e-3,
    }


EBFT_METRICS = ("ebft/alignment", "ebft/diversity", "ebft/cfm_loss", "ebft/reward")


def test_weave_train_runs_axolotls_ebft_config_with_lora(tmp_path: Path, ebft_config: dict):
    """Two steps and a held-out evaluation, whose completions are scored as a step's."""
    config = {**ebft_config, "val_set_size": 0.25, "eval_steps": 2}
    state = train_with(config, tmp_path / "ebft.yml")
    (held_out,) = [r for r in state.log_history if "eval_loss" in r]
    assert math.isfinite(held_out["eval_rewards/feature_matching/mean"])
    assert math.isfinite(held_out["eval_ebft/alignment"])
    records = [r for r in state.log_history if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        for name in (*EBFT_METRICS, "rewards/feature_matching/mean", "reward", "reward_std"):
            assert math.isfinite(record[name]), name
        assert record["rewards/feature_matching/mean"] == pytest.approx(
            record["ebft/reward"], abs=1e-5
        )
        assert -2.0 - 1e-5 <= record["ebft/alignment"] <= 2.0 + 1e-5
    assert (Path(ebft_config["output_dir"]) / "adapter_model.safetensors").is_file()


def test_a_full_fine_tune_with_whitening_and_the_last_turn(tmp_path: Path, ebft_config: dict):
    conversations = [
        {
            "messages": [
                {"role": "user", "content": f"Count to {i}."},
                {"role": "assistant", "content": " ".join(str(k) for k in range(i + 1))},
            ]
        }
        for i in range(8)
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", conversations)
    config = {
        key: value for key, value in ebft_config.items() if not key.startswith(("lora", "adapter"))
    }
    config |= {
        "datasets": [{"path": str(data), "type": "ebft_chat_multiturn.transform_last_turn"}],
        "ebft": {"use_whitening": True, "embed_method": "completion_mean", "diversity_coef": 0.5},
        "trl": {**ebft_config["trl"], "beta": 0.04},
    }
    state = train_with(config, tmp_path / "full.yml")
    records = [r for r in state.log_history if "loss" in r]
    assert len(records) == 2
    assert all(math.isfinite(r["ebft/reward"]) and "kl" in r for r in records)
    assert all(abs(r["ebft/diversity"]) < 1e-3 for r in records)  # whitened: orthonormal


def test_weave_train_rolls_out_axolotls_multi_turn_rows(tmp_path: Path, ebft_config: dict):
    conversations = [
        {
            "messages": [
                {"role": "user", "content": f"Say {i}."},
                {"role": "assistant", "content": str(i)},
                {"role": "user", "content": "Again."},
                {"role": "assistant", "content": f"{i} again"},
            ]
        }
        for i in range(8)
    ]
    data = write_jsonl(tmp_path / "turns.jsonl", conversations)
    config = {
        **ebft_config,
        "datasets": [{"path": str(data), "type": "ebft_chat_multiturn.transform"}],
        "max_steps": 1,
    }
    state = train_with(config, tmp_path / "turns.yml")
    (record,) = [r for r in state.log_history if "loss" in r]
    assert math.isfinite(record["ebft/reward"]) and math.isfinite(record["loss"])


BAD = [
    ({"trl": {"reward_funcs": ["rewards.f"]}}, "feature matching only"),
    ({"trl": {"sync_ref_model": True, "beta": 0.1}}, "stays frozen"),
    ({"ebft": {"feature_layers": [1.5]}}, "fractions of the depth"),
    (
        {"rl": "grpo", "datasets": [{"path": "x.jsonl", "type": "grpo"}]},
        "ebft: holds rl: ebft options",
    ),
    ({"datasets": [{"path": "x.jsonl", "type": "ebft_pretrain.transform"}]}, "strided"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[b[1][:24] for b in BAD])
def test_bad_ebft_configs_are_refused_before_any_model_loads(
    tmp_path: Path, ebft_config: dict, change: dict, message: str
):
    config = {**ebft_config, **change}
    if "trl" in change:
        config["trl"] = {**ebft_config["trl"], **change["trl"]}
    result = run_weave("validate", str(write_config(tmp_path / "bad.yml", config)))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_row_without_a_ground_truth_is_named_by_file_and_line(tmp_path: Path, ebft_config):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}] * 8)
    config = {**ebft_config, "datasets": [{"path": str(data), "type": "grpo"}]}
    result = run_weave("preprocess", str(write_config(tmp_path / "no-truth.yml", config)))
    assert result.returncode != 0
    assert "prompts.jsonl:1:" in result.stderr, result.stderr
    assert "no ground_truth text" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_processes_log_the_ebft_metrics_of_every_process(tmp_path: Path, ebft_config: dict):
    """`weave train --num-processes 2` (DDP, gloo): each process scores its own prompt groups;
    the logged `ebft/*` means are over both, as the gathered reward is."""
    config = {**ebft_config, "max_steps": 2}
    result = run_weave(
        "train", str(write_config(tmp_path / "ddp.yml", config)), "--num-processes", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [
        json.loads(line)
        for line in (Path(config["output_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in records if "loss" in r and "ebft/reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:
        assert record["ebft/reward"] == pytest.approx(
            record["rewards/feature_matching/mean"], abs=1e-5
        )
