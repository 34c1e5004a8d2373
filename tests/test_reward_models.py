"""Reward models (`reward_model: true`, `process_reward_model: true`, the `reward_models` plugin).

The Bradley-Terry loss and metrics are checked against TRL 1.16's `RewardTrainer.compute_loss`
run on the same sequence classifier and batch, the token-classification loss against the
model's own loss (what TRL's PRMTrainer optimises); Axolotl's `bradley_terry.chat_template` and
`stepwise_supervised` rows are checked token by token; `weave train` trains and saves each kind.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import IGNORE_INDEX, collate, set_pad_token
from axolotl_weave_plugins.rewards._formats import PAIR_COLUMNS, STEPWISE_COLUMNS
from axolotl_weave_plugins.rewards._objective import BradleyTerry, TokenClassification
from axolotl_weave_testing import CHATML_TEMPLATE, build_rows, run_weave, write_config, write_jsonl

PAIRS = [
    {"system": "Be brief.", "input": "Add 1 and 2.", "chosen": "3", "rejected": "It is 12"},
    {"system": "", "input": "Reverse cat.", "chosen": "tac", "rejected": "I cannot"},
    {"system": "", "input": "Add 4 and 4.", "chosen": "8", "rejected": "Maybe 44, or 9"},
    {"system": "Be kind.", "input": "Reverse dog.", "chosen": "god", "rejected": "dog"},
]

STEPS = [
    {"prompt": "Add 1 and 2.", "completions": ["1 + 2", "= 3"], "labels": [True, True]},
    {
        "prompt": "Add 4 and 4.",
        "completions": ["4 + 4", "= 9", "so 9"],
        "labels": [True, False, False],
    },
    {"prompt": "Reverse cat.", "completions": ["c a t", "t a c"], "labels": [True, True]},
    {"prompt": "Reverse dog.", "completions": ["god dog"], "labels": [False]},
]


def pair_rows(count: int = 8) -> list[dict[str, str]]:
    return [PAIRS[i % 4] | {"input": f"{PAIRS[i % 4]['input']} ({i})"} for i in range(count)]


def step_rows(count: int = 8) -> list[dict[str, Any]]:
    return [STEPS[i % 4] | {"prompt": f"{STEPS[i % 4]['prompt']} ({i})"} for i in range(count)]


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_tokenizer: Any) -> Any:
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHATML_TEMPLATE
    set_pad_token(tokenizer, "unk_token", "eos_token")  # as the llama family does
    return tokenizer


# --- the formats, token by token ------------------------------------------------------------


def test_bradley_terry_rows_render_each_conversation_with_the_template(
    weave_hooks: Any, chat_tokenizer: Any
):
    (row,) = build_rows(weave_hooks, chat_tokenizer, [PAIRS[0]], type="bradley_terry.chat_template")
    assert set(row) == set(PAIR_COLUMNS)
    for side in ("chosen", "rejected"):
        text = (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAdd 1 and 2.<|im_end|>\n"
            f"<|im_start|>assistant\n{PAIRS[0][side]}<|im_end|>\n"
        )
        ids = row[f"{side}_input_ids"]
        assert ids == chat_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert row[f"{side}_attention_mask"] == [1] * len(ids)
        assert row[f"{side}_labels"] == [IGNORE_INDEX, *ids[1:]]
    (no_system,) = build_rows(
        weave_hooks, chat_tokenizer, [PAIRS[1]], type="bradley_terry.chat_template"
    )
    assert chat_tokenizer.decode(no_system["chosen_input_ids"]).startswith("<|im_start|>user\n")


def test_a_template_refusing_a_rows_system_message_names_the_row(
    weave_hooks: Any, chat_tokenizer: Any
):
    """Gemma's template raises on a system message (Axolotl's gemma2 reward-model example with
    a dataset that has one): one message naming the row and the way out, not a traceback."""
    from axolotl_weave import DataError

    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + CHATML_TEMPLATE
    )
    with pytest.raises(
        DataError,
        match=r"row 3: ValueError: the chat template refused the conversation: System role not "
        r"supported \(this template has no system role: remove the rows' system field",
    ):
        build_rows(weave_hooks, tokenizer, PAIRS[1:], type="bradley_terry.chat_template")


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("options", "separator", "last_only"),
    [
        ({}, "\n", False),
        ({"step_separator": " | "}, " | ", False),
        ({"train_on_last_step_only": True}, "\n", True),
    ],
)
def test_stepwise_rows_label_the_last_token_of_each_step(
    weave_hooks: Any, tiny_tokenizer: Any, options: dict, separator: str, last_only: bool
):
    row = STEPS[1]
    (built,) = build_rows(weave_hooks, tiny_tokenizer, [row], type="stepwise_supervised", **options)
    assert set(built) == set(STEPWISE_COLUMNS)
    prompt = [tiny_tokenizer.bos_token_id, *encode(tiny_tokenizer, row["prompt"])]
    ids, labels = list(prompt), [IGNORE_INDEX] * len(prompt)
    wanted = [1, 0, 0] if not last_only else [IGNORE_INDEX, IGNORE_INDEX, 0]
    for step, label in zip(row["completions"], wanted, strict=True):
        step_ids = encode(tiny_tokenizer, step) + encode(tiny_tokenizer, separator)
        ids += step_ids
        labels += [IGNORE_INDEX] * (len(step_ids) - 1) + [label]
    assert built["input_ids"] == ids
    assert built["labels"] == labels
    assert built["attention_mask"] == [1] * len(ids)
    assert [x for x in built["labels"] if x != IGNORE_INDEX] == [x for x in wanted if x >= 0]


def test_stepwise_max_completion_length_cuts_the_steps(weave_hooks: Any, tiny_tokenizer: Any):
    (full,) = build_rows(weave_hooks, tiny_tokenizer, [STEPS[1]], type="stepwise_supervised")
    (cut,) = build_rows(
        weave_hooks, tiny_tokenizer, [STEPS[1]], type="stepwise_supervised", max_completion_length=3
    )
    prompt = 1 + len(encode(tiny_tokenizer, STEPS[1]["prompt"]))
    assert cut["input_ids"] == full["input_ids"][: prompt + 3]
    assert cut["labels"] == full["labels"][: prompt + 3]


# --- the losses against TRL's ---------------------------------------------------------------


class FakeAccelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather


@pytest.fixture(scope="module")
def classifier_and_pairs(tiny_llama_dir: Path, weave_hooks: Any, chat_tokenizer: Any) -> Any:
    from transformers import AutoModelForSequenceClassification

    pad = chat_tokenizer.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama_dir, num_labels=1, pad_token_id=pad
    ).float()
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # rewards that differ between chosen and rejected
    rows = build_rows(weave_hooks, chat_tokenizer, pair_rows(4), type="bradley_terry.chat_template")
    return model, collate(rows, pad, columns=PAIR_COLUMNS), pad


def trl_reward(model: Any, batch: dict, pad: int, center: float | None) -> tuple[float, dict]:
    """TRL's `RewardTrainer.compute_loss` on the chosen rows then the rejected ones."""
    from trl import RewardTrainer

    length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def cat(column: str, value: int) -> torch.Tensor:
        return torch.cat(
            [
                torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)
                for t in (batch[f"chosen_{column}"], batch[f"rejected_{column}"])
            ]
        )

    trainer = SimpleNamespace(
        model=model,
        accelerator=FakeAccelerator(),
        args=SimpleNamespace(center_rewards_coefficient=center),
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {"input_ids": cat("input_ids", pad), "attention_mask": cat("attention_mask", 0)}
    loss = RewardTrainer.compute_loss(trainer, model, inputs)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


class OneProcess:
    device = torch.device("cpu")
    num_processes = 1

    @staticmethod
    def reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
        return tensor

    @staticmethod
    def no_sync(model: Any) -> Any:
        import contextlib

        return contextlib.nullcontext()

    @staticmethod
    def autocast() -> Any:
        import contextlib

        return contextlib.nullcontext()

    @staticmethod
    def backward(loss: torch.Tensor) -> None:
        pass


@pytest.mark.parametrize("center", [None, 0.01])
def test_bradley_terry_loss_and_metrics_equal_trl(classifier_and_pairs: Any, center: Any):
    from axolotl_weave_plugins.rewards._objective import bradley_terry_step

    model, batch, pad = classifier_and_pairs
    model.train()
    with torch.no_grad():
        ours = bradley_terry_step(OneProcess(), model, BradleyTerry(center, pad), [batch])
        expected_loss, expected = trl_reward(model, dict(batch), pad, center)
    assert ours["loss"] == pytest.approx(expected_loss, rel=1e-5)
    for name in ("accuracy", "margin", "min_reward", "mean_reward", "max_reward"):
        assert ours[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    assert 0 < expected["accuracy"] < 1 or expected["margin"] != 0


def test_the_window_is_normalised_by_its_pairs(classifier_and_pairs: Any):
    """Two micro-batches of 1 and 3 pairs: the same loss as one micro-batch of the 4."""
    from axolotl_weave_plugins.rewards._objective import bradley_terry_step

    model, batch, pad = classifier_and_pairs
    split = [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}]
    with torch.no_grad():
        whole = bradley_terry_step(OneProcess(), model, BradleyTerry(None, pad), [batch])
        parts = bradley_terry_step(OneProcess(), model, BradleyTerry(None, pad), split)
    for name in ("loss", "accuracy", "margin"):
        assert parts[name] == pytest.approx(whole[name], rel=1e-5), name


def test_token_classification_loss_is_the_models_own(
    tiny_llama_dir: Path, weave_hooks: Any, tiny_tokenizer: Any
):
    from transformers import AutoModelForTokenClassification

    pad = tiny_tokenizer.pad_token_id or 0
    model = AutoModelForTokenClassification.from_pretrained(tiny_llama_dir, num_labels=2).float()
    rows = build_rows(weave_hooks, tiny_tokenizer, step_rows(4), type="stepwise_supervised")
    batch = collate(rows, pad, columns=STEPWISE_COLUMNS)
    objective = TokenClassification()
    with torch.no_grad():
        ours = objective(model, batch) / objective.count(batch)
        expected = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
    assert int(objective.count(batch)) == sum(len(r["completions"]) for r in step_rows(4))
    assert float(ours) == pytest.approx(float(expected), rel=1e-5)


# --- the keys -------------------------------------------------------------------------------


def reward_config(tmp_path: Path, base_config: dict) -> dict:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    return {
        **base_config,
        "datasets": [{"path": str(pairs), "type": "bradley_terry.chat_template"}],
        "chat_template": "chatml",
        "reward_model": True,
        "model_type": "AutoModelForSequenceClassification",  # as Axolotl's example sets them
        "num_labels": 1,
        "max_steps": 3,
        "logging_steps": 1,
        "learning_rate": 1e-3,
    }


def prm_config(tmp_path: Path, base_config: dict) -> dict:
    steps = write_jsonl(tmp_path / "steps.jsonl", step_rows(8))
    return {
        **base_config,
        "datasets": [{"path": str(steps), "type": "stepwise_supervised"}],
        "process_reward_model": True,
        "model_type": "AutoModelForTokenClassification",
        "num_labels": 2,
        "max_steps": 3,
        "logging_steps": 1,
    }


def test_keys_are_validated_naming_them():
    from axolotl_weave_plugins.rewards.reward_models import RewardSettings
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="set one of them"):
        RewardSettings(reward_model=True, process_reward_model=True)
    with pytest.raises(ValidationError, match="center_rewards_coefficient applies"):
        RewardSettings(center_rewards_coefficient=0.01)
    with pytest.raises(ValidationError, match="num_labels"):
        RewardSettings(reward_model=True, num_labels=2)


def refusal(tmp_path: Path, config: dict) -> str:
    """The config error of `config`, validated in this process (as `weave validate` does)."""
    from axolotl_weave import ConfigError
    from axolotl_weave._run import open_session

    with pytest.raises(ConfigError) as caught:
        open_session(write_config(tmp_path / "refused.yml", config))
    return str(caught.value)


@pytest.mark.parametrize("key", ["reward_model", "process_reward_model"])
def test_packing_and_a_causal_lm_class_are_refused(tmp_path: Path, base_config: dict, key: str):
    config = (reward_config if key == "reward_model" else prm_config)(tmp_path, base_config)
    assert f"sample_packing: true cannot be used with {key}: true" in refusal(
        tmp_path, config | {"sample_packing": True}
    )
    causal = {"model_type": "AutoModelForCausalLM"}
    assert "model_type: AutoModelForCausalLM cannot load a" in refusal(tmp_path, config | causal)
    mixed = config["datasets"] + base_config["datasets"]
    assert f"{key}: true trains on type:" in refusal(tmp_path, config | {"datasets": mixed})
    off = {k: v for k, v in config.items() if k not in (key, "model_type", "num_labels")}
    assert f"trains a reward model: set {key}: true" in refusal(tmp_path, off)


def test_weave_validate_names_the_packing_key(tmp_path: Path, base_config: dict):
    config = reward_config(tmp_path, base_config) | {"sample_packing": True}
    result = run_weave("validate", str(write_config(tmp_path / "packed.yml", config)))
    assert result.returncode != 0
    assert "sample_packing: true cannot be used with reward_model: true" in result.stderr + (
        result.stdout
    )


# --- weave train ------------------------------------------------------------------------------


def metrics_of(config: dict) -> list[dict[str, float]]:
    lines = Path(config["output_dir"], "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def test_weave_train_reward_model_saves_a_sequence_classifier(tmp_path: Path, base_config: dict):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = reward_config(tmp_path, base_config)
    result = run_weave("train", str(write_config(tmp_path / "rm.yml", config)))
    assert result.returncode == 0, result.stdout + result.stderr
    records = metrics_of(config)
    assert [r["step"] for r in records] == [1, 2, 3]
    for name in ("accuracy", "margin", "min_reward", "mean_reward", "max_reward"):
        assert all(name in r for r in records), name
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
    out = Path(config["output_dir"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id
    messages = [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "3"}]
    ids = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        reward = model(**ids).logits
    assert reward.shape == (1, 1) and torch.isfinite(reward).all()


def test_weave_train_process_reward_model_saves_a_token_classifier(
    tmp_path: Path, base_config: dict
):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    config = prm_config(tmp_path, base_config)
    result = run_weave("train", str(write_config(tmp_path / "prm.yml", config)))
    assert result.returncode == 0, result.stdout + result.stderr
    records = metrics_of(config)
    assert [r["step"] for r in records] == [1, 2, 3]
    out = Path(config["output_dir"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    assert model.config.num_labels == 2
    ids = tokenizer("Add 1 and 2.1 + 2\n= 3\n", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 2)


def test_a_lora_reward_model_trains_its_head_and_loads_on_its_base(
    tmp_path: Path, base_config: dict
):
    """With `adapter: lora` the adapter is a classifier's (peft's SEQ_CLS): the score head is
    trained in full and saved with it, and the adapter loads on the base classifier."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = reward_config(tmp_path, base_config) | {
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_linear": True,
    }
    result = run_weave("train", str(write_config(tmp_path / "rm.yml", config)))
    assert result.returncode == 0, result.stdout + result.stderr
    out = Path(config["output_dir"])
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS"
    assert "score" in (adapter["modules_to_save"] or [])
    base = AutoModelForSequenceClassification.from_pretrained(config["base_model"], num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(out)
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, out).eval()
    ids = tokenizer("Add 1 and 2. 3", return_tensors="pt")
    with torch.no_grad():
        reward = model(**ids).logits
    assert reward.shape == (1, 1) and torch.isfinite(reward).all()
    # it writes no text: `weave inference` says so, naming the class, before reading a prompt
    path = write_config(tmp_path / "rm.yml", config)
    refused = run_weave("inference", str(path), stdin="Add 1 and 2.\n")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "(LlamaForSequenceClassification) scores text but does not write it" in refused.stderr
    assert "Traceback" not in refused.stderr
