"""GRPO (`rl: grpo`, the `grpo` plugin).

The advantages and reward metrics are checked against TRL 1.16's own
`GRPOTrainer._generate_and_score_completions` (with `_calculate_rewards`, generation replaced
by fixed completions), and the loss, its metrics and its gradients against
`GRPOTrainer._compute_loss`, on the same tiny model and completions, for every loss type, with
and without a reference, with token and sequence importance ratios; `weave train` learns a toy
reward; a resumed run equals an uninterrupted one; bad configs are refused before any model
loads.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import types
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave_plugins.rl._grpo import (
    LossSettings,
    completion_logps,
    cut_at_eos,
    left_pad,
    score,
    surrogate_loss,
)
from axolotl_weave_testing import (
    CHATML_TEMPLATE,
    CrashAt,
    OneProcessStrategy,
    build_rows,
    run_weave,
    run_weave_in_process,
    train_with,
    write_config,
    write_jsonl,
)


class FakeAccelerator:
    device = torch.device("cpu")
    is_main_process = True
    num_processes = 1
    process_index = 0
    sync_gradients = True

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    @staticmethod
    def reduce(x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x

    @staticmethod
    def autocast() -> Any:
        import contextlib

        return contextlib.nullcontext()

    @staticmethod
    def unwrap_model(model: Any) -> Any:
        return model


# --- advantages and reward metrics against TRL's ------------------------------------------------


def reward_a(completions: list[str], **kwargs: Any) -> list[float | None]:
    """A reward with None (not scored) for some completions."""
    return [None if "skip" in c else float(len(c)) for c in completions]


def reward_b(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer, strict=True)]


COMPLETIONS = [
    "4",
    "it is 4",
    "5",
    "skip",  # group 1: prompt answer 4
    "tac",
    "cat",
    "tac!",
    "t",  # group 2: answer tac
    "x",
    "x",
    "x",
    "x",  # group 3: every reward equal (zero std)
]
ANSWERS = ["4"] * 4 + ["tac"] * 4 + ["y"] * 4


def trl_scores(
    completions: list[str],
    answers: list[str],
    weights: list[float],
    scale: str,
    aggregation: str = "sum_then_normalize",
) -> tuple[torch.Tensor, dict[str, float]]:
    """TRL's advantages and metrics for these completions (its generation replaced)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    rows = len(completions)
    ids = [[5 + i % 3, 2] for i in range(rows)]
    fake = SimpleNamespace(
        accelerator=FakeAccelerator(),
        model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
        environment_factories=None,
        environments=None,
        tools=None,
        _tokenizer=SimpleNamespace(pad_token_id=0),
        pad_to_multiple_of=None,
        mask_truncated_completions=False,
        eos_token_ids=[2],
        args=SimpleNamespace(
            steps_per_generation=1,
            gradient_accumulation_steps=1,
            per_device_train_batch_size=rows,
            gradient_checkpointing_kwargs=None,
            report_to=[],
        ),
        num_iterations=1,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        beta=0.0,
        reward_funcs=[reward_a, reward_b],
        reward_processing_classes=[None, None],
        reward_func_names=["reward_a", "reward_b"],
        state=SimpleNamespace(global_step=0, num_input_tokens_seen=0),
        num_generations=4,
        multi_objective_aggregation=aggregation,
        scale_rewards=scale,
        reward_weights=torch.tensor(weights),
        _metrics={"train": defaultdict(list)},
        _logs={
            "prompt": [],
            "completion": [],
            "rewards": defaultdict(list),
            "advantages": [],
            "extra": defaultdict(list),
        },
        _pending_extra_logs={},
        _pending_metrics={},
        log_multimodal=False,
    )
    fake._log_completion_extra = lambda *a: None
    fake._log_metric = lambda *a: None
    fake._calculate_rewards = types.MethodType(GRPOTrainer._calculate_rewards, fake)
    fake._generate = lambda prompts: (
        [[1, 7]] * rows,
        ids,
        None,
        completions,
        None,
        {},
        None,
        [],
    )
    inputs = [{"prompt": f"p{i // 4}", "answer": a} for i, a in enumerate(answers)]
    out = GRPOTrainer._generate_and_score_completions(fake, inputs)
    return out["advantages"], {k: v[-1] for k, v in fake._metrics["train"].items()}


@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("weights", [[1.0, 1.0], [0.5, 2.0]], ids=["equal", "weighted"])
def test_advantages_and_reward_metrics_equal_trl(
    scale: str, weights: list[float], aggregation: str
):
    expected, trl_metrics = trl_scores(COMPLETIONS, ANSWERS, weights, scale, aggregation)
    rewards = torch.tensor(
        [
            [math.nan if v is None else v for v in reward_a(COMPLETIONS)],
            reward_b(COMPLETIONS, ANSWERS),
        ]
    ).T
    ours = score(rewards, torch.tensor(weights), ["reward_a", "reward_b"], 4, scale, aggregation)
    torch.testing.assert_close(ours.advantages, expected, rtol=1e-6, atol=1e-6)
    for name, value in ours.metrics.items():
        assert value == pytest.approx(trl_metrics[name], rel=1e-6, abs=1e-7, nan_ok=True), name
    assert ours.advantages[8:].abs().max() == 0  # a group of equal rewards has no advantage


# --- the loss against TRL's ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_and_completions(tiny_llama_dir: Path) -> Any:
    """(policy, reference, batch): the tiny llama, a perturbed copy, and 4 prompts (left-padded)
    with completions of different lengths (right-padded) and advantages."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).float()
    policy = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 200, (n,), generator=generator) for n in (5, 3, 6, 4)]
    prompt_ids, prompt_mask = left_pad(prompts, 0)
    completion_ids = torch.randint(3, 200, (4, 7), generator=generator)
    completion_ids[0, 3] = 2  # EOS: the first completion ends after 4 tokens
    completion_ids[2, 0] = 2  # the third after 1
    completion_mask = cut_at_eos(completion_ids, [2])
    completion_ids = completion_ids.masked_fill(completion_mask == 0, 0)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.2, -0.7, 0.4, -0.9]),
    }
    return policy, reference, batch


def trl_loss(
    policy: Any, reference: Any, batch: dict, settings: LossSettings, old: Any
) -> tuple[torch.Tensor, dict[str, float], list[torch.Tensor]]:
    """TRL's `_compute_loss` (its fused LM head, its reference log-probs): loss, metrics,
    gradients."""
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    policy, reference = copy.deepcopy(policy), copy.deepcopy(reference)
    for model in (policy, reference):
        add_fused_lm_head(model, temperature=settings.temperature, outputs=("log_probs", "entropy"))
    fake = SimpleNamespace(
        model=policy,
        accelerator=FakeAccelerator(),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=settings.importance_sampling_level,
        beta=settings.beta,
        loss_type=settings.loss_type,
        epsilon_low=settings.epsilon_low,
        epsilon_high=settings.epsilon_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1,
        max_completion_length=settings.max_completion_length,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _metrics={"train": defaultdict(list)},
    )
    fake._get_per_token_logps_and_entropies = functools.partial(
        GRPOTrainer._get_per_token_logps_and_entropies, fake
    )
    inputs = dict(batch)
    inputs["num_items_in_batch"] = batch["completion_mask"].sum()
    prompt_completion = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    keep = batch["completion_ids"].shape[1]
    if settings.beta:
        with torch.no_grad():
            inputs["ref_per_token_logps"], _, _ = fake._get_per_token_logps_and_entropies(
                reference, prompt_completion, mask, keep
            )
    if old is not None:
        inputs["old_per_token_logps"] = old
    policy.train()
    loss = GRPOTrainer._compute_loss(fake, policy, inputs)
    loss.backward()
    grads = [p.grad.clone() for p in policy.parameters()]
    return loss.detach(), {k: v[-1] for k, v in fake._metrics["train"].items()}, grads


def our_loss(
    policy: Any, reference: Any, batch: dict, settings: LossSettings, old: Any
) -> tuple[torch.Tensor, dict[str, float], list[torch.Tensor]]:
    policy = copy.deepcopy(policy)
    parts = (
        batch["prompt_ids"],
        batch["prompt_mask"],
        batch["completion_ids"],
        batch["completion_mask"],
    )
    ref = None
    if settings.beta:
        with torch.no_grad():
            ref, _ = completion_logps(reference, *parts, settings.temperature)
    policy.train()
    logps, _ = completion_logps(policy, *parts, settings.temperature)
    loss, metrics = surrogate_loss(
        logps,
        old,
        ref,
        batch["advantages"],
        batch["completion_mask"],
        settings,
        1,
        batch["completion_mask"].sum(),
    )
    loss.backward()
    grads = [p.grad.clone() for p in policy.parameters()]
    return loss.detach(), {k: float(v) for k, v in metrics.items()}, grads


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize(
    ("beta", "level", "off_policy"),
    [
        (0.0, "token", False),
        (0.04, "token", True),
        (0.04, "sequence", False),
        (0.0, "sequence", True),
    ],
    ids=["beta0-token", "beta-token-old", "beta-sequence", "beta0-sequence-old"],
)
def test_loss_metrics_and_gradients_equal_trl(
    models_and_completions: Any, loss_type: str, beta: float, level: str, off_policy: bool
):
    """`off_policy`: old log-probs of another model (num_iterations > 1), so ratios differ
    from 1 and some are clipped."""
    policy, reference, batch = models_and_completions
    settings = LossSettings(
        beta=beta,
        epsilon_low=0.2,
        epsilon_high=0.28,
        loss_type=loss_type,
        importance_sampling_level=level,
        max_completion_length=7,
        temperature=0.9,
    )
    old = None
    if off_policy:
        with torch.no_grad():
            old, _ = completion_logps(
                reference,
                batch["prompt_ids"],
                batch["prompt_mask"],
                batch["completion_ids"],
                batch["completion_mask"],
                settings.temperature,
            )
            old = old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(0))
    loss, metrics, grads = our_loss(policy, reference, batch, settings, old)
    expected, trl_metrics, trl_grads = trl_loss(policy, reference, batch, settings, old)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    for got, want in zip(grads, trl_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    names = ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]
    names += ["kl"] if beta else []
    for name in names:
        assert metrics[name] == pytest.approx(trl_metrics[name], rel=1e-5, abs=1e-6), name
    assert ("kl" in metrics) == bool(beta)
    if off_policy:
        assert trl_metrics["clip_ratio/region_mean"] > 0  # clipping is exercised


# --- the data -----------------------------------------------------------------------------------


def test_prompt_rows_render_the_chat_template_and_keep_the_other_columns(
    weave_hooks: Any, tiny_tokenizer: Any
):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHATML_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    (chat,) = build_rows(weave_hooks, tokenizer, [{"prompt": messages, "answer": "4"}], type="grpo")
    row = {"prompt": "Add 2 and 2.", "answer": "4", "level": 2}
    (text,) = build_rows(weave_hooks, tokenizer, [row], type="grpo")
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert chat["prompt_input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert text["prompt_input_ids"] == tokenizer("Add 2 and 2.")["input_ids"]  # BOS added
    assert json.loads(chat["grpo_prompt"]) == messages
    assert json.loads(text["grpo_columns"]) == {"answer": "4", "level": 2}


AXOLOTL_TRANSFORM = """
def oai_gsm8k_transform(cfg, *args, **kwargs):
    def transform_fn(example, tokenizer=None):
        label = example["answer"].split("####")[-1].strip().replace(",", "")
        return {
            "prompt": [{"role": "user", "content": example["question"]}],
            "answer": label,
        }
    return transform_fn, {"remove_columns": ["question"]}
"""


def test_axolotl_dataset_transforms_make_the_prompts(
    weave_hooks: Any, tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Axolotl's `type: rewards.oai_gsm8k_transform` is `type: grpo` with `transform:`."""
    (tmp_path / "gsm_rewards.py").write_text(AXOLOTL_TRANSFORM)
    monkeypatch.chdir(tmp_path)
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHATML_TEMPLATE
    row = {"question": "What is 2+2?", "answer": "Two and two... #### 4"}
    (built,) = build_rows(
        weave_hooks, tokenizer, [row], type="grpo", transform="gsm_rewards.oai_gsm8k_transform"
    )
    assert json.loads(built["grpo_prompt"]) == [{"role": "user", "content": "What is 2+2?"}]
    assert json.loads(built["grpo_columns"]) == {"answer": "4"}


def test_an_axolotl_grpo_config_names_its_transform_as_the_type(tmp_path: Path, grpo_config: dict):
    """Axolotl's own GRPO YAML (`type: rewards.prompt_transform`) runs unchanged: under rl: grpo
    an importable module.function type is `type: grpo` with that transform; a dotted name whose
    module does not import stays a type (and is refused as before)."""
    from axolotl_weave import ConfigError
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session

    (tmp_path / "gsm_rewards.py").write_text(AXOLOTL_TRANSFORM)
    rows = [{"question": "What is 2+2?", "answer": "Two and two... #### 4"}] * 8
    data = write_jsonl(tmp_path / "gsm.jsonl", rows)
    entry = {"path": str(data), "type": "gsm_rewards.oai_gsm8k_transform"}
    config = {**grpo_config, "datasets": [entry], "chat_template": "chatml", "max_steps": 1}
    session = open_session(write_config(tmp_path / "ax.yml", config), [], make_plugin_manager())
    (read,) = session.cfg.datasets
    assert read.type == "grpo" and read.option("transform") == entry["type"]
    state = train_with(config, tmp_path / "ax-train.yml")
    assert [r["step"] for r in state.log_history if "loss" in r] == [1]

    other = {**config, "datasets": [{"path": str(data), "type": "chatml.intel"}]}
    with pytest.raises(ConfigError, match="type: chatml.intel is not a prompt dataset"):
        open_session(write_config(tmp_path / "other.yml", other), [], make_plugin_manager())


def test_chat_prompts_need_a_chat_template(weave_hooks: Any, tiny_tokenizer: Any):
    from axolotl_weave import DataError

    rows = [{"prompt": [{"role": "user", "content": "Hi"}]}]
    with pytest.raises(DataError, match="set chat_template"):
        build_rows(weave_hooks, tiny_tokenizer, rows, type="grpo")


# --- weave train --------------------------------------------------------------------------------

TOY_REWARDS = '''
def single_bytes(completions, completion_ids, **kwargs):
    """The fraction of a completion's tokens that are single bytes (ids 3 to 258)."""
    return [sum(3 <= t < 259 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def answer_seen(completions, answer, **kwargs):
    return [float(a in c) for c, a in zip(completions, answer)]


def tokens(completion_ids, **kwargs):
    return [float(len(ids)) for ids in completion_ids]


def half(completions, **kwargs):
    return [0.5] * len(completions)


def stage(completions, trainer_state, **kwargs):
    return [float(trainer_state.global_step)] * len(completions)


def chatty(completions, log_metric, log_extra, **kwargs):
    log_metric("chatty/calls", 1.0)
    log_metric("chatty/calls", 3.0)
    log_extra("chars", [len(c) for c in completions])
    return [0.0] * len(completions)
'''


@pytest.fixture
def grpo_config(
    tmp_path: Path, base_config: dict, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """String prompts, toy rewards in ./toy_rewards.py (imported from the working directory)."""
    (tmp_path / "toy_rewards.py").write_text(TOY_REWARDS)
    monkeypatch.chdir(tmp_path)
    rows = [
        {"prompt": f"Add {i % 7} and {i % 5}.", "answer": str(i % 7 + i % 5)} for i in range(16)
    ]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    return {
        **base_config,
        "datasets": [{"path": str(data), "type": "grpo"}],
        "rl": "grpo",
        "trl": {
            "num_generations": 4,
            "max_completion_length": 8,
            "reward_funcs": ["toy_rewards.single_bytes", "toy_rewards.answer_seen"],
            "reward_weights": [1.0, 0.0],
        },
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "learning_rate": 0.01,
        "max_steps": 12,
        "logging_steps": 1,
    }


def rewards_of(state: Any) -> list[float]:
    return [r["rewards/single_bytes/mean"] for r in state.log_history if "reward" in r]


def test_weave_train_grpo_learns_the_reward(tmp_path: Path, grpo_config: dict):
    state = train_with(grpo_config, tmp_path / "grpo.yml")
    records = [r for r in state.log_history if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 13))
    for name in (
        "reward",
        "reward_std",
        "rewards/single_bytes/mean",
        "rewards/answer_seen/mean",
        "completions/mean_length",
        "clip_ratio/region_mean",
        "entropy",
    ):
        assert all(name in r for r in records), name
    assert "kl" not in records[0]  # beta 0: no reference
    rewards = rewards_of(state)
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.2, rewards


def test_held_out_prompts_are_sampled_and_scored_as_in_a_step(tmp_path: Path, grpo_config: dict):
    """val_set_size: each eval prompt's completions are sampled and scored by the reward
    functions, the metrics means per completion: a reward counting a completion's tokens
    equals the mean completion length, measured apart; a constant reward is that constant.
    `weave evaluate` measures the same way, seeded (the same figures twice)."""
    config = with_trl(
        grpo_config,
        reward_funcs=["toy_rewards.tokens", "toy_rewards.half"],
        reward_weights=[1.0, 0.0],
    )
    config.update(val_set_size=0.25, max_steps=2, eval_steps=2)
    state = train_with(config, tmp_path / "grpo.yml")
    (held_out,) = [r for r in state.log_history if "eval_loss" in r]
    assert held_out["eval_reward"] == pytest.approx(held_out["eval_completions/mean_length"])
    assert held_out["eval_rewards/tokens/mean"] == pytest.approx(held_out["eval_reward"])
    assert held_out["eval_rewards/half/mean"] == pytest.approx(0.5)
    assert held_out["eval_reward_std"] >= 0 and "eval_reward_squared" not in held_out
    assert 0 <= held_out["eval_frac_reward_zero_std"] <= 1
    assert 0 < held_out["eval_completions/mean_length"] <= 8  # max_completion_length
    assert 0 <= held_out["eval_completions/clipped_ratio"] <= 1

    path = write_config(tmp_path / "evaluate.yml", config)
    runs = []
    for _ in range(2):
        result = run_weave_in_process("evaluate", str(path), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(json.loads((Path(config["output_dir"]) / "eval_results.json").read_text()))
    saved = runs[0]
    assert saved["unit"] == "completion" and saved["perplexity"] is None
    assert saved["units"] == saved["rows"] * 4  # num_generations per eval prompt
    assert saved["metrics"]["reward"] == pytest.approx(saved["metrics"]["completions/mean_length"])
    assert runs[1] == runs[0]  # seeded


def test_reward_functions_get_the_trainer_state_as_trl_gives_it(tmp_path: Path, grpo_config: dict):
    config = with_trl(grpo_config, **funcs("toy_rewards.stage", "toy_rewards.single_bytes"))
    config.update(max_steps=3)
    state = train_with(config, tmp_path / "grpo.yml")
    staged = [r["rewards/stage/mean"] for r in state.log_history if "loss" in r]
    assert staged == [0.0, 1.0, 2.0]  # the steps finished when each generation was scored


def test_reward_functions_log_metrics_and_columns_as_trl_lets_them(
    tmp_path: Path, grpo_config: dict
):
    """`log_metric` values are averaged into the step's metrics (and the held-out ones);
    `log_extra` columns join the completions table."""
    config = with_trl(
        grpo_config, log_completions=True, **funcs("toy_rewards.chatty", "toy_rewards.tokens")
    )
    config.update(max_steps=2, val_set_size=0.25, eval_steps=2)
    state = train_with(config, tmp_path / "chatty.yml")
    steps = [r for r in state.log_history if "loss" in r]
    assert [r["chatty/calls"] for r in steps] == [2.0, 2.0]
    (held_out,) = [r for r in state.log_history if "eval_loss" in r]
    assert held_out["eval_chatty/calls"] == pytest.approx(2.0)
    lines = (Path(config["output_dir"]) / "completions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all(r["extra"]["chars"] == len(r["completion"]) for r in records)


def test_resume_equals_the_uninterrupted_run(tmp_path: Path, grpo_config: dict):
    """LoRA with a reference (the adapter disabled) and generations reused for two steps: the
    checkpoint of step 3 holds the generation step 4 reuses."""
    from axolotl_weave import checkpoints

    config = {
        **grpo_config,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.1,
        "lora_target_linear": True,
        "trl": {**grpo_config["trl"], "beta": 0.04, "num_iterations": 2, "loss_type": "grpo"},
        "max_steps": 6,
        "save_steps": 3,
    }
    full = train_with({**config, "output_dir": str(tmp_path / "full")}, tmp_path / "full.yml")
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train_with({**config, "output_dir": str(crashed)}, tmp_path / "crash.yml", CrashAt(4))
    assert [p.name for p in checkpoints(crashed)] == ["checkpoint-3"]
    assert (crashed / "checkpoint-3" / "grpo").is_dir()
    resumed = train_with(
        {**config, "output_dir": str(crashed), "resume_from_checkpoint": "auto"},
        tmp_path / "resume.yml",
    )
    assert resumed.global_step == 6

    def by_step(state: Any) -> dict[int, dict[str, float]]:
        return {r["step"]: r for r in state.log_history if "loss" in r}

    expected, got = by_step(full), by_step(resumed)
    assert expected[1]["kl"] == pytest.approx(0.0, abs=1e-7)  # policy == reference at first
    for step in range(4, 7):
        for name in ("loss", "reward", "kl", "completions/mean_length", "clip_ratio/region_mean"):
            assert got[step][name] == pytest.approx(expected[step][name], rel=1e-5, abs=1e-6), (
                step,
                name,
            )
    assert expected[4]["reward"] == expected[3]["reward"]  # step 4 reuses step 3's generation
    assert expected[5]["reward"] != expected[4]["reward"]


# --- bad input ----------------------------------------------------------------------------------

BAD_REWARDS = """
NOT_A_FUNCTION = 3


def no_kwargs(completions):
    return [0.0 for _ in completions]
"""


def with_trl(config: dict[str, Any], **trl: Any) -> dict[str, Any]:
    return {**config, "trl": {**config["trl"], **trl}}


def funcs(*paths: str) -> dict[str, Any]:
    """`trl:` keys naming these reward functions (one weight each by default)."""
    return {"reward_funcs": list(paths), "reward_weights": None}


BAD = [
    (funcs("no_such_module.reward"), {}, "cannot import module 'no_such_module'"),
    (funcs("toy_rewards.missing"), {}, "module 'toy_rewards' has no 'missing'"),
    (funcs("bad_rewards.NOT_A_FUNCTION"), {}, "is not callable \\(it is a int\\)"),
    (funcs("bad_rewards.no_kwargs"), {}, "add \\*\\*kwargs"),
    (funcs("single_bytes"), {}, "is not a module.function path"),
    (funcs(), {}, "needs at least one reward function"),
    ({"reward_weights": [1.0]}, {}, "1 weight\\(s\\) for 2 reward function\\(s\\)"),
    ({"num_generations": 1}, {}, "at least 2 completions per prompt"),
    ({"num_generations": 3}, {}, "3 must divide .* = 8 x 1 = 8"),
    ({"use_vllm": True}, {}, "trl.use_vllm: .*not supported by rl: grpo here yet"),
    ({"use_vllm": True, "vllm_server_host": "0.0.0.0"}, {}, "1 problem.*\n.*trl.use_vllm: "),
    ({"betaa": 0.1}, {}, "betaa"),
    ({}, {"sample_packing": True}, "sample_packing: true cannot be used with rl: grpo"),
    ({"async_prefetch": True}, {}, "trl.async_prefetch: True is not supported .*set it to False"),
    ({"replay_buffer_size": 8}, {}, "trl.replay_buffer_size: 8 is not supported"),
    ({"generation_batch_size": 16}, {}, "trl.generation_batch_size: 16 is not supported"),
    ({"sync_ref_model": True}, {}, "with beta 0 no reference is kept"),
    ({"sync_ref_model": True, "beta": 0.1}, {"adapter": "lora"}, "with an adapter the refer"),
    ({}, {"rl": None}, "type: grpo holds prompts to generate from: set rl: grpo"),
    ({}, {"transform": "toy_rewards.nope"}, "datasets: transform: module 'toy_rewards' has no"),
]


@pytest.mark.parametrize(("trl", "top", "message"), BAD, ids=[b[2][:32] for b in BAD])
def test_bad_grpo_configs_are_refused_before_any_model_loads(
    tmp_path: Path, grpo_config: dict, trl: dict, top: dict, message: str
):
    from axolotl_weave import ConfigError
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session

    (tmp_path / "bad_rewards.py").write_text(BAD_REWARDS)
    config = {**with_trl(grpo_config, **trl), **top}
    if "transform" in top:
        config["datasets"] = [{**config["datasets"][0], "transform": config.pop("transform")}]
    if top.get("rl", "grpo") is None:
        config.pop("trl")
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "bad.yml", config), [], make_plugin_manager())


def test_other_data_and_trl_keys_need_rl_grpo(tmp_path: Path, grpo_config: dict, alpaca_file):
    from axolotl_weave import ConfigError
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session

    sft = {**grpo_config, "datasets": [{"path": str(alpaca_file), "type": "alpaca"}]}
    with pytest.raises(ConfigError, match="type: alpaca is not a prompt dataset"):
        open_session(write_config(tmp_path / "a.yml", sft), [], make_plugin_manager())
    sft.pop("rl")
    with pytest.raises(ConfigError, match="trl: holds rl: grpo options"):
        open_session(write_config(tmp_path / "b.yml", sft), [], make_plugin_manager())


def test_weave_validate_names_a_reward_function_that_does_not_import(
    tmp_path: Path, grpo_config: dict
):
    config = with_trl(grpo_config, reward_funcs=["toy_rewards.single_bytes", "nope.reward"])
    result = run_weave("validate", str(write_config(tmp_path / "c.yml", config)), cwd=tmp_path)
    assert result.returncode != 0
    assert "trl.reward_funcs: cannot import module 'nope' of 'nope.reward'" in (
        result.stdout + result.stderr
    )
    assert "Traceback" not in result.stderr


def test_full_fine_tune_with_a_reference_logs_kl_and_completions(
    tmp_path: Path, grpo_config: dict, caplog: pytest.LogCaptureFixture
):
    """A frozen copy as the reference (no adapter); Axolotl's vLLM server keys are ignored
    with a warning when vLLM is off."""
    trl = {
        **grpo_config["trl"],
        "beta": 0.04,
        "log_completions": True,
        "max_completion_length": 4,
        "vllm_server_host": "0.0.0.0",
    }
    config = {**grpo_config, "trl": trl, "max_steps": 2, "micro_batch_size": 4}
    state = train_with(config, tmp_path / "full.yml")
    records = [r for r in state.log_history if "loss" in r]
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert records[1]["kl"] > 0
    assert "trl.vllm_server_host" in caplog.text
    logged = Path(config["output_dir"], "completions.jsonl").read_text().splitlines()
    assert len(logged) == 2 * 4
    first = json.loads(logged[0])
    assert set(first) == {"step", "prompt", "completion", "rewards", "advantage"}
    assert set(first["rewards"]) == {"single_bytes", "answer_seen"}


def test_a_reward_function_that_fails_is_named_with_where_it_raised():
    """What a reward function raises, a wrong count or a value that is not a number: one
    PluginError naming the function (and the line of its code that raised), not a traceback
    from inside the step. None is "not scored" (NaN)."""
    import math

    from axolotl_weave import PluginError
    from axolotl_weave_plugins.rl._grpo_rewards import scored

    def divides(prompts, completions, **kwargs):
        return [1 / 0 for _ in completions]

    def short(prompts, completions, **kwargs):
        return [1.0]

    def wordy(prompts, completions, **kwargs):
        return [0.5, "good"]

    def partial(prompts, completions, **kwargs):
        return [None, 2]

    args = {"prompts": ["p", "p"], "completions": ["a", "b"]}
    with pytest.raises(PluginError, match=r"'divides' raised ZeroDivisionError at .*test_rl_grpo"):
        scored(divides, "divides", 2, **args)
    with pytest.raises(PluginError, match="'short' returned 1 rewards for 2 completions"):
        scored(short, "short", 2, **args)
    with pytest.raises(PluginError, match="'wordy' returned 'good' for completion 1"):
        scored(wordy, "wordy", 2, **args)
    with pytest.raises(PluginError, match=r"'len' raised TypeError: .*it is called as"):
        scored(len, "len", 2, **args)  # a builtin that cannot take these arguments
    first, second = scored(partial, "partial", 2, **args)
    assert math.isnan(first) and second == 2.0


# --- reward models as reward functions --------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def reward_model_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sequence classifier (one label, random weights) saved with a tokenizer that has
    a chat template and no pad token: a reward model as a reward_model: true run leaves one."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("reward-model") / "tiny-rm"
    config = AutoConfig.from_pretrained(tiny_llama_dir, num_labels=1)
    torch.manual_seed(7)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    return folder


def trl_model_rewards(folder: Path, prompts: list[Any], completions: list[Any]) -> torch.Tensor:
    """TRL's rewards from the reward model in `folder`: the model and tokenizer prepared as
    `GRPOTrainer.__init__` prepares them, scored by its own `_calculate_rewards`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.grpo_trainer import GRPOTrainer

    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    fake = object.__new__(GRPOTrainer)  # its methods, without a training set-up
    vars(fake).update(
        accelerator=FakeAccelerator(),
        reward_funcs=[model.eval()],
        reward_processing_classes=[tokenizer],
        reward_func_names=[folder.name],
        state=SimpleNamespace(global_step=0),
        environments=None,
        chat_template_kwargs={},
        args=SimpleNamespace(report_to=[], device=torch.device("cpu"), past_index=-1),
        is_deepspeed_enabled=False,
        _log_completion_extra=lambda *a: None,
        _log_metric=lambda *a: None,
    )
    inputs = [{"prompt": p} for p in prompts]
    return GRPOTrainer._calculate_rewards(fake, inputs, prompts, completions, [[1]] * len(prompts))


@pytest.mark.parametrize("conversational", [False, True], ids=["strings", "conversations"])
def test_a_reward_model_scores_completions_as_trl_does(
    reward_model_dir: Path, conversational: bool
) -> None:
    from axolotl_weave_plugins.rl._grpo_rewards import load_reward_function, reward_name
    from axolotl_weave_plugins.rl._reward_models import RewardModelScorer

    questions = ["Add 2 and 3.", "Reverse cat, please.", "Add 2 and 3."]
    answers = ["5", "tac tac tac tac", "It is six"]
    if conversational:
        prompts: list[Any] = [[{"role": "user", "content": q}] for q in questions]
        completions: list[Any] = [[{"role": "assistant", "content": a}] for a in answers]
    else:
        prompts, completions = [q + " " for q in questions], answers
    settings = SimpleNamespace(bf16=False, fp16=False, tf32=False)
    scorer = load_reward_function(str(reward_model_dir), settings)
    assert isinstance(scorer, RewardModelScorer) and reward_name(scorer) == "tiny-rm"
    scorer.place(OneProcessStrategy())
    ours = torch.tensor(scorer(prompts=prompts, completions=completions, completion_ids=[]))
    expected = trl_model_rewards(reward_model_dir, prompts, completions)[:, 0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert len(set(ours.tolist())) == 3  # different texts, different scores


def test_weave_train_grpo_with_a_reward_model_logs_its_reward(
    tmp_path: Path, grpo_config: dict, reward_model_dir: Path
) -> None:
    config = with_trl(
        grpo_config,
        reward_funcs=[str(reward_model_dir), "toy_rewards.single_bytes"],
        reward_weights=[1.0, 0.5],
    )
    config.update(max_steps=2)
    state = train_with(config, tmp_path / "grpo-rm.yml")
    records = [r for r in state.log_history if "loss" in r]
    assert len(records) == 2
    for record in records:
        assert math.isfinite(record["rewards/tiny-rm/mean"])
        weighted = record["rewards/tiny-rm/mean"] + 0.5 * record["rewards/single_bytes/mean"]
        assert record["reward"] == pytest.approx(weighted, rel=1e-5, abs=1e-6)


def test_a_reward_model_folder_without_a_model_is_refused(tmp_path: Path, grpo_config: dict):
    from axolotl_weave import ConfigError
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session

    (tmp_path / "empty-rm").mkdir()
    config = with_trl(grpo_config, **funcs(str(tmp_path / "empty-rm")))
    with pytest.raises(ConfigError, match="is a folder without config.json, so not a saved reward"):
        open_session(write_config(tmp_path / "bad.yml", config), [], make_plugin_manager())


def test_a_reward_model_that_cannot_load_is_one_message(tmp_path: Path, grpo_config: dict):
    config = with_trl(grpo_config, **funcs("nobody/no-such-reward-model"))
    result = run_weave("train", str(write_config(tmp_path / "rm.yml", config)), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "cannot load the reward model 'nobody/no-such-reward-model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_axolotls_other_trl_keys_run_when_they_change_nothing(
    tmp_path: Path, grpo_config: dict, caplog: pytest.LogCaptureFixture
):
    """Axolotl's async-pipeline and speed keys at values that leave their feature off are
    dropped with a warning each, so the YAML runs."""
    import logging

    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session

    axolotl = {
        "use_data_producer": False,
        "async_prefetch": False,
        "replay_buffer_size": 0,
        "reroll_start_fraction": 1.0,
        "skip_zero_advantage_batches": True,
        "use_liger_loss": True,
        "reward_num_workers": 4,
        "vllm_server_port": 8000,
    }
    config = with_trl(grpo_config, **axolotl)
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        open_session(write_config(tmp_path / "ax.yml", config), [], make_plugin_manager())
    for key in axolotl:
        assert f"config key 'trl.{key}' does nothing here" in caplog.text, key


def test_generation_settings_reach_the_sampling(tmp_path: Path, grpo_config: dict):
    """min_p and generation_kwargs are the GenerationConfig's: max_new_tokens from
    generation_kwargs cuts every completion to 3 tokens (max_completion_length is 8)."""
    config = with_trl(grpo_config, min_p=0.05, generation_kwargs={"max_new_tokens": 3})
    config.update(max_steps=1)
    state = train_with(config, tmp_path / "gen.yml")
    (record,) = [r for r in state.log_history if "loss" in r]
    assert record["completions/max_length"] <= 3


def test_chat_template_kwargs_render_the_prompts(weave_hooks: Any, tiny_tokenizer: Any):
    """trl.chat_template_kwargs (over the top-level ones) are the prompt template's
    variables, as TRL passes them."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<think>' if thinking else '' }}A:{% endif %}"
    )
    rows = [{"prompt": [{"role": "user", "content": "Hi"}]}]
    settings = SimpleNamespace(chat_template_kwargs={"thinking": False})
    trl_on = SimpleNamespace(
        chat_template_kwargs={"thinking": False},
        trl=SimpleNamespace(chat_template_kwargs={"thinking": True}),
    )
    (plain,) = build_rows(weave_hooks, tokenizer, rows, type="grpo", cfg=settings)
    (thinking,) = build_rows(weave_hooks, tokenizer, rows, type="grpo", cfg=trl_on)
    assert tokenizer.decode(plain["prompt_input_ids"]).endswith("HiA:")
    assert tokenizer.decode(thinking["prompt_input_ids"]).endswith("Hi<think>A:")


def test_sync_ref_model_mixes_the_policy_into_the_reference():
    """TR-DPO's mixup, as TRL's SyncRefModelCallback computes it."""
    from axolotl_weave_plugins.rl._grpo import sync_reference
    from trl.trainer.callbacks import SyncRefModelCallback

    torch.manual_seed(0)
    policy, reference = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    expected = copy.deepcopy(reference)
    SyncRefModelCallback._sync_target_model(policy, expected, 0.25)
    sync_reference(policy, reference, 0.25)
    for ours, theirs in zip(reference.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_weave_train_syncs_the_reference_every_n_steps(tmp_path: Path, grpo_config: dict):
    """Full fine-tune, beta > 0, alpha 1: after each sync the reference is the policy, so the
    step that follows measures no KL between them."""
    config = with_trl(
        grpo_config,
        beta=0.1,
        sync_ref_model=True,
        ref_model_mixup_alpha=1.0,
        ref_model_sync_steps=2,
    )
    config.update(max_steps=4, learning_rate=0.05)
    state = train_with(config, tmp_path / "sync.yml")
    kl = [r["kl"] for r in state.log_history if "loss" in r]
    assert kl[0] == pytest.approx(0.0, abs=1e-7)  # before any step: the same weights
    assert kl[1] > 1e-6  # one step later, the policy moved away
    assert kl[2] == pytest.approx(0.0, abs=1e-7)  # synced after step 2
    assert kl[3] > 1e-6


def test_rl_gdpo_is_grpo_normalising_each_reward_then_summing(tmp_path: Path, grpo_config: dict):
    """Axolotl's `rl: gdpo`: GRPO with multi_objective_aggregation normalize_then_sum, unless
    the config names another."""
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session

    def aggregation(config: dict) -> str:
        path = write_config(tmp_path / "gdpo.yml", config)
        return open_session(path, [], make_plugin_manager()).cfg.trl.multi_objective_aggregation

    gdpo = {**grpo_config, "rl": "gdpo"}
    assert aggregation(gdpo) == "normalize_then_sum"
    assert aggregation(with_trl(gdpo, multi_objective_aggregation="sum_then_normalize")) == (
        "sum_then_normalize"
    )
    assert aggregation(grpo_config) == "sum_then_normalize"
    state = train_with({**gdpo, "max_steps": 1}, tmp_path / "gdpo-train.yml")
    assert [r["step"] for r in state.log_history if "reward" in r] == [1]
