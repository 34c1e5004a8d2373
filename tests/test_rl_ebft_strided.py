"""Strided EBFT (`rl: ebft`, `ebft.mode: strided`; `_ebft_strided`).

The attention layout is checked against Axolotl's `build_strided_dense_mask_and_positions`
written out with its loops; block-parallel generation against generating each block on its own
(greedy: the same tokens, and the same logits as a plain causal pass over the block's context);
the rewards against the paper's equation written block by block; each generated token's
advantage is its own block's; `weave train` runs Axolotl's strided configs (a user transform of
raw text with LoRA; the structured transform, whitening and the cross-entropy term on a full
fine-tune); bad configs are refused before any model loads.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from axolotl_weave_plugins.rl._ebft_config import EBFTArgs
from axolotl_weave_plugins.rl._ebft_strided import (
    StridedEBFTRun,
    advantages,
    strided_layout,
    strided_rewards,
    token_blocks,
)
from axolotl_weave_testing import (
    CHATML_TEMPLATE,
    OneProcessStrategy,
    run_weave,
    train_with,
    write_config,
    write_jsonl,
)


def axolotl_layout(total, length, anchor, steps, gen_len, stride, blocks):
    """Axolotl's dense mask (as booleans) and position ids, with its loops."""
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:length, :length] = torch.tril(torch.ones(length, length, dtype=torch.bool))
    for step in range(steps):
        for block in range(blocks):
            at = length + step * blocks + block
            end = min(block * stride + anchor, length - gen_len)
            allowed[at, :end] = True
            allowed[at, at] = True
            for before in range(step):
                allowed[at, length + before * blocks + block] = True
    positions = torch.empty(total, dtype=torch.long)
    positions[:length] = torch.arange(length)
    starts = torch.arange(blocks) * stride + anchor
    for step in range(steps):
        positions[length + step * blocks : length + (step + 1) * blocks] = starts + step
    return allowed, positions


@pytest.mark.parametrize(
    ("length", "anchor", "gen_len", "stride"), [(40, 8, 4, 8), (33, 10, 3, 5), (20, 4, 2, 2)]
)
def test_the_layout_is_axolotls(length: int, anchor: int, gen_len: int, stride: int):
    blocks = (length - gen_len - anchor) // stride + 1
    for steps in range(gen_len + 1):
        total = length + steps * blocks
        ours = strided_layout(total, length, anchor, steps, gen_len, stride, blocks)
        theirs = axolotl_layout(total, length, anchor, steps, gen_len, stride, blocks)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_generated_tokens_get_their_own_blocks_advantage():
    """After the document the tokens lie step by step (block 0, 1, 2 of step 0, then of step
    1...), so token i belongs to block i mod blocks."""
    assert token_blocks(3, 2).tolist() == [0, 1, 2, 0, 1, 2]
    rewards = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]])
    assert advantages(rewards, "rloo").tolist() == [[-1.5, 0.0], [1.5, -3.0], [0.0, 3.0]]
    normed = advantages(rewards, "group_norm")
    assert torch.allclose(normed, (rewards - rewards.mean(0)) / (rewards.std(0) + 1e-8))
    assert torch.equal(advantages(rewards, "reinforce"), rewards)


def test_rewards_follow_the_papers_equation_block_by_block():
    torch.manual_seed(0)
    length, anchor, gen_len, stride, blocks, samples = 20, 4, 3, 5, 3, 4
    total = length + gen_len * blocks
    features = F.normalize(torch.randn(samples, total, 6), dim=-1)
    ebft = EBFTArgs(mode="strided", stride=stride, generate_max_len=gen_len, diversity_coef=0.5)
    rewards, metrics = strided_rewards(features, length, anchor, blocks, ebft, 0.5)
    for b in range(blocks):
        gen = [features[j, length + (gen_len - 1) * blocks + b] for j in range(samples)]
        for j in range(samples):
            truth = features[j, anchor + b * stride + gen_len - 1]  # the span's last token
            others = sum(float(gen[j] @ gen[k]) for k in range(samples) if k != j)
            expected = 2 * float(F.cosine_similarity(gen[j], truth, dim=0)) - 2 * 0.5 * (
                others / (samples - 1)
            )
            assert rewards[j, b].item() == pytest.approx(expected, abs=1e-5)
    assert metrics["ebft/mean_reward"].item() == pytest.approx(rewards.mean().item(), abs=1e-6)


# --- rollouts on a model --------------------------------------------------------------------------


def strided_run(**ebft: Any) -> StridedEBFTRun:
    cfg = SimpleNamespace(ebft=EBFTArgs(mode="strided", **ebft), adapter=None)
    return StridedEBFTRun(cfg)


def test_block_parallel_generation_is_each_block_generated_alone(tiny_llama_dir: Path):
    """Greedy: each block's tokens are what the model generates from that block's context
    alone, and the strided pass gives those tokens the plain causal pass's logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa")
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (30,))
    anchor, gen_len, stride = 6, 4, 5
    run = strided_run(context_length=anchor, generate_max_len=gen_len, stride=stride,
                      temperature=0.0, n_samples_per_prompt=2)  # fmt: skip
    blocks = (len(ids) - gen_len - anchor) // stride + 1
    sequence = run.roll_out(OneProcessStrategy(), model, ids, anchor, blocks)
    assert sequence.shape == (2, len(ids) + blocks * gen_len)
    assert torch.equal(sequence[0], sequence[1])  # greedy: both samples alike
    allowed, positions = strided_layout(
        sequence.shape[1], len(ids), anchor, gen_len, gen_len, stride, blocks
    )
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        strided = model(
            input_ids=sequence[:1], attention_mask=mask[None, None], position_ids=positions[None]
        ).logits[0]
    for b in range(blocks):
        context = ids[: anchor + b * stride]
        tokens = sequence[0, len(ids) + b :: blocks]  # this block's tokens, step by step
        with torch.no_grad():
            alone = model.generate(
                context[None], max_new_tokens=gen_len, do_sample=False, pad_token_id=0
            )[0, len(context) :]
            plain = model(torch.cat([context, tokens])[None]).logits[0]
        assert tokens.tolist() == alone.tolist(), b
        at = [len(ids) + s * blocks + b for s in range(gen_len - 1)]  # predicting steps 1...
        assert torch.allclose(strided[at], plain[len(context) : -1], atol=1e-4)


def test_the_reasoning_transform_labels_the_last_answer_without_its_thinking(
    tiny_tokenizer: Any,
):
    """Axolotl's `ebft_reasoning.transform_strided`: only the last assistant turn is
    labelled; with `mask_thinking_ce`, its `<think>...</think>` tokens are not."""
    import copy

    from axolotl_weave_plugins.rl._ebft_transforms import reasoning_strided

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_tokens(["<think>", "</think>"], special_tokens=True)
    tokenizer.chat_template = CHATML_TEMPLATE
    messages = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "<think>mull it over</think>the answer"},
    ]
    think, close = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    for masked in (False, True):
        cfg = SimpleNamespace(sequence_len=256, ebft=SimpleNamespace(mask_thinking_ce=masked))
        row = reasoning_strided(cfg)[0]({"messages": messages}, tokenizer=tokenizer)
        ids, labels = row["input_ids"], row["labels"]
        trained = [i for i, label in enumerate(labels) if label != -100]
        last_start = ids.index(think)
        assert min(trained) >= (last_start if not masked else ids.index(close) + 1)
        assert "first" not in tokenizer.decode([ids[i] for i in trained])
        assert "answer" in tokenizer.decode([ids[i] for i in trained])
        assert ("mull" in tokenizer.decode([ids[i] for i in trained])) is not masked


# --- weave train ----------------------------------------------------------------------------------

PRETRAIN = '''
def transform(cfg, *args, **kwargs):
    """Axolotl's examples/ebft/ebft_pretrain.py: text padded to sequence_len."""
    def transform_fn(example, tokenizer=None):
        encoded = tokenizer(example["text"], truncation=True, max_length=cfg.sequence_len,
                            padding="max_length")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "labels": list(encoded["input_ids"])}
    return transform_fn, {"remove_columns": ["text"]}
'''


@pytest.fixture
def strided_config(
    tmp_path: Path, base_config: dict, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Axolotl's llama-1b-ebft-strided example, small: its own transform module, LoRA."""
    (tmp_path / "my_pretrain.py").write_text(PRETRAIN)
    monkeypatch.chdir(tmp_path)
    words = "the cat sat on the mat and then it ran to the door to see the rain fall".split()
    rows = [{"text": " ".join(words[i % 5 :] + words[: i % 5])} for i in range(8)]
    data = write_jsonl(tmp_path / "docs.jsonl", rows)
    return {
        **base_config,
        "rl": "ebft",
        "ebft": {
            "mode": "strided",
            "stride": 4,
            "context_length": 4,
            "generate_max_len": 3,
            "n_samples_per_prompt": 3,
            "temperature": 0.6,
            "feature_layers": [0.5, 1.0],
        },
        "datasets": [{"path": str(data), "type": "my_pretrain.transform"}],
        "special_tokens": {"pad_token": "</s>"},
        "sequence_len": 64,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_linear": True,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 2,
        "logging_steps": 1,
    }


METRICS = (
    "ebft/alignment",
    "ebft/diversity",
    "ebft/cfm_loss",
    "ebft/mean_reward",
    "ebft/num_blocks",
    "ebft/advantages_std",
    "ebft/rl_loss",
)


def test_weave_train_runs_axolotls_strided_config(tmp_path: Path, strided_config: dict):
    """Two steps, and held-out documents rolled out and scored as in a step."""
    config = {**strided_config, "val_set_size": 0.25, "eval_steps": 2}
    state = train_with(config, tmp_path / "strided.yml")
    (held_out,) = [r for r in state.log_history if "eval_loss" in r]
    assert math.isfinite(held_out["eval_loss"])
    assert math.isfinite(held_out["eval_ebft/alignment"]) and held_out["eval_ebft/num_blocks"] >= 1
    records = [r for r in state.log_history if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert all(math.isfinite(record[name]) for name in METRICS)
        assert record["ebft/num_blocks"] >= 1
        assert record["loss"] == pytest.approx(record["ebft/rl_loss"], abs=1e-6)  # ce_coef 0
        assert record["grad_norm"] > 0
    assert (Path(strided_config["output_dir"]) / "adapter_model.safetensors").is_file()


def test_the_structured_transform_with_whitening_and_cross_entropy(
    tmp_path: Path, strided_config: dict
):
    rows = [
        {"input": f"Write a function returning {i}.", "output": f"def f():\n    return {i} + {i}"}
        for i in range(6)
    ]
    data = write_jsonl(tmp_path / "code.jsonl", rows)
    config = {k: v for k, v in strided_config.items() if not k.startswith(("lora", "adapter"))}
    config |= {
        "datasets": [{"path": str(data), "type": "ebft_strided_structured.transform"}],
        "ebft": {**strided_config["ebft"], "use_whitening": True, "ce_coef": 0.1,
                 "context_length": 2, "advantage_estimator": "group_norm"},
    }  # fmt: skip
    state = train_with(config, tmp_path / "structured.yml")
    records = [r for r in state.log_history if "loss" in r]
    assert len(records) == 2
    for record in records:
        assert math.isfinite(record["loss"]) and record["ebft/ce_loss"] > 0
        expected = record["ebft/rl_loss"] + 0.1 * record["ebft/ce_loss"]
        assert record["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


BAD = [
    ({"sequence_len": 6}, "leaves no block"),
    ({"ebft": {"mode": "strided", "embed_method": "concat"}}, "last_token or mean_pooling"),
    (
        {"datasets": [{"path": "x.jsonl", "type": "ebft_opencode.transform"}]},
        "makes prompts for ebft's structured mode",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[b[1][:24] for b in BAD])
def test_bad_strided_configs_are_refused_before_any_model_loads(
    tmp_path: Path, strided_config: dict, change: dict, message: str
):
    config = {**strided_config, **change}
    result = run_weave("validate", str(write_config(tmp_path / "bad.yml", config)), cwd=tmp_path)
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr


def test_a_strided_transform_in_structured_mode_is_refused(tmp_path: Path, strided_config: dict):
    config = {
        **strided_config,
        "ebft": {"mode": "structured"},
        "datasets": [{"path": "x.jsonl", "type": "ebft_strided_chat.transform"}],
    }
    result = run_weave("validate", str(write_config(tmp_path / "bad.yml", config)), cwd=tmp_path)
    assert result.returncode != 0
    assert "makes strided EBFT rows: set ebft: {mode: strided}" in result.stderr


def test_a_resumed_strided_run_continues_exactly(tmp_path: Path, strided_config: dict):
    """Sampled rollouts included: the checkpoint restores the random state they are drawn
    from."""
    from axolotl_weave_testing import CrashAt

    config = {**strided_config, "max_steps": 4, "save_steps": 2, "micro_batch_size": 1}
    full = train_with({**config, "output_dir": str(tmp_path / "full")}, tmp_path / "full.yml")
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train_with({**config, "output_dir": str(crashed)}, tmp_path / "crash.yml", CrashAt(3))
    resumed = train_with(
        {**config, "output_dir": str(crashed), "resume_from_checkpoint": "auto"},
        tmp_path / "resume.yml",
    )

    def by_step(state: Any) -> dict[int, dict[str, float]]:
        return {r["step"]: r for r in state.log_history if "loss" in r}

    for step in (3, 4):
        for name in ("loss", "ebft/mean_reward", "ebft/alignment"):
            assert by_step(resumed)[step][name] == pytest.approx(
                by_step(full)[step][name], rel=1e-5, abs=1e-6
            ), (step, name)
