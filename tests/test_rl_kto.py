"""KTO (`rl: kto`, the `kto` plugin; its data types are `preference_data`'s).

The loss and metrics are checked against TRL 1.16's own `KTOTrainer._compute_loss` (its KL
pairs built by TRL's collator from completions rotated as TRL's `_prepare_dataset` rotates
them) on the same tiny model and batch; Axolotl's KTO `type:`s are checked token by token
against TRL's tokenization; `weave train` runs `rl: kto` with LoRA.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import IGNORE_INDEX, collate
from axolotl_weave_plugins.rl._kto import KTOObjective, kl_sequences, kto_step
from axolotl_weave_plugins.rl._kto_formats import UNPAIRED_COLUMNS
from axolotl_weave_testing import (
    OneProcessStrategy,
    build_rows,
    run_weave,
    train_with,
    write_config,
    write_jsonl,
)

ROWS = [
    {"system": "Be brief.", "question": "Add 1 and 2.", "completion": "3", "label": True},
    {"system": "", "question": "Reverse cat.", "completion": "I cannot", "label": False},
    {"system": "", "question": "Add 4 and 4.", "completion": "8", "label": True},
    {"system": "Be kind.", "question": "Reverse dog.", "completion": "dog, or odg", "label": False},
]


def kto_rows(count: int = 8) -> list[dict[str, Any]]:
    return [
        ROWS[i % len(ROWS)] | {"question": f"{ROWS[i % 4]['question']} ({i})"} for i in range(count)
    ]


KTO = SimpleNamespace(train_on_inputs=False, sequence_len=2048, rl="kto")


def build_kto(hooks: Any, tokenizer: Any, rows: list[dict], **entry: Any) -> list[dict]:
    return build_rows(hooks, tokenizer, rows, cfg=KTO, **entry)


# --- the loss against TRL's -----------------------------------------------------------------


class FakeAccelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    @staticmethod
    def unwrap_model(model: Any) -> Any:
        return model


@pytest.fixture(scope="module")
def models_and_rows(tiny_llama_dir: Path, weave_hooks: Any, tiny_tokenizer: Any) -> Any:
    """(policy, reference, rows): the tiny llama, a perturbed copy, and 4 KTO rows."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).float()
    policy = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = build_kto(weave_hooks, tiny_tokenizer, kto_rows(4), type="chatml.intel")
    return policy, reference, rows


def settings(**keys: Any) -> SimpleNamespace:
    base = dict(
        rl="kto",
        rl_beta=0.1,
        kto_desirable_weight=1.0,
        kto_undesirable_weight=1.0,
        adapter=None,
        sequence_len=2048,
    )
    return SimpleNamespace(**(base | keys))


def ours(cfg: SimpleNamespace, policy: Any, reference: Any, rows: list[dict]) -> tuple:
    """Our loss (mean over the rows) and the step's metrics, on one micro-batch."""
    batch = collate(rows, 0, columns=UNPAIRED_COLUMNS)
    objective = KTOObjective(cfg, reference)
    with torch.no_grad():
        loss, _ = objective.compute(policy, batch)
    metrics = kto_step(OneProcessStrategy(), copy.deepcopy(policy), objective, [batch])
    return float(loss) / len(rows), metrics


def trl_batch(rows: list[dict]) -> dict[str, Any]:
    """TRL's batch of the same rows: prompt and completion ids split where the labels start,
    the KL completions rotated by +1 (TRL's `add_kl_completion_ids`), TRL's collator."""
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    examples = []
    for row in rows:
        ids, labels = row["completion_input_ids"], row["completion_labels"]
        cut = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        examples.append(
            {"prompt_ids": ids[:cut], "completion_ids": ids[cut:], "label": row["label"]}
        )
    completions = [e["completion_ids"] for e in examples]
    for example, kl in zip(examples, [completions[-1]] + completions[:-1], strict=True):
        example["KL_completion_ids"] = kl
    return DataCollatorForUnpairedPreference(pad_token_id=0)(examples)


def trl_kto(policy: Any, reference: Any, rows: list[dict], **args: Any) -> tuple[float, dict]:
    """TRL's `KTOTrainer._compute_loss` on the same models (its fused LM head) and rows."""
    from trl.trainer.kto_trainer import KTOTrainer
    from trl.trainer.utils import add_fused_lm_head

    for model in (policy, reference):
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits"))
    trainer = SimpleNamespace(
        model=policy,
        ref_model=reference,
        accelerator=FakeAccelerator(),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False,
        precompute_ref_logps=False,
        calculate_KL=True,
        loss_type="kto",
        beta=args.get("beta", 0.1),
        desirable_weight=args.get("desirable_weight", 1.0),
        undesirable_weight=args.get("undesirable_weight", 1.0),
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    trainer._compute_kl_logps = functools.partial(KTOTrainer._compute_kl_logps, trainer)
    policy.train()
    loss = KTOTrainer._compute_loss(trainer, policy, trl_batch(rows), False)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


METRICS = (
    "kl",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


@pytest.mark.parametrize(
    ("keys", "trl_args"),
    [
        ({}, {}),
        ({"rl_beta": 0.5}, {"beta": 0.5}),
        (
            {"kto_desirable_weight": 1.5, "kto_undesirable_weight": 0.5},
            {"desirable_weight": 1.5, "undesirable_weight": 0.5},
        ),
        ({"kto_undesirable_weight": 2.0}, {"undesirable_weight": 2.0}),
    ],
    ids=lambda v: json.dumps(v, sort_keys=True)[:60],
)
@pytest.mark.parametrize("swapped", [False, True], ids=["kl-clamped", "kl-positive"])
def test_kto_loss_and_metrics_equal_trl(
    models_and_rows: Any, keys: dict, trl_args: dict, swapped: bool
):
    """The perturbed model as the policy gives a negative KL estimate (clamped to 0, as TRL
    clamps it); as the reference, a positive one that enters every row's loss."""
    policy, reference, rows = models_and_rows
    if swapped:
        policy, reference = reference, policy
    loss, metrics = ours(settings(**keys), policy, reference, rows)
    expected_loss, expected = trl_kto(
        copy.deepcopy(policy), copy.deepcopy(reference), rows, **trl_args
    )
    assert loss == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    for name in METRICS:
        assert metrics[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    assert (expected["kl"] > 1.0) if swapped else (expected["kl"] == 0.0)
    assert expected["rewards/margins"] != 0


def test_the_weights_change_the_loss_as_trls(models_and_rows: Any):
    """Each weight scales its rows' losses only: the loss is linear in the two weights."""
    policy, reference, rows = models_and_rows
    base, _ = ours(settings(), policy, reference, rows)
    desirable, _ = ours(settings(kto_desirable_weight=2.0), policy, reference, rows)
    undesirable, _ = ours(settings(kto_undesirable_weight=2.0), policy, reference, rows)
    both, _ = ours(
        settings(kto_desirable_weight=2.0, kto_undesirable_weight=2.0), policy, reference, rows
    )
    assert desirable > base and undesirable > base
    assert both == pytest.approx(2 * base, rel=1e-6)
    assert desirable + undesirable == pytest.approx(3 * base, rel=1e-6)
    expected, _ = trl_kto(
        copy.deepcopy(policy), copy.deepcopy(reference), rows, desirable_weight=2.0
    )
    assert desirable == pytest.approx(expected, rel=1e-5)


def test_kl_pairs_rotate_completions_within_the_micro_batch(models_and_rows: Any):
    _, _, rows = models_and_rows
    batch = collate(rows, 0, columns=UNPAIRED_COLUMNS)
    expected = trl_batch(rows)
    ids, mask, labels = kl_sequences(batch)
    torch.testing.assert_close(ids, expected["KL_input_ids"])
    torch.testing.assert_close(mask, expected["KL_attention_mask"])
    torch.testing.assert_close((labels != IGNORE_INDEX).long(), expected["KL_completion_mask"])


def test_a_policy_equal_to_its_reference_has_loss_half(models_and_rows: Any):
    """Policy == reference: every log-ratio and the KL are 0, each row's loss 1 - sigmoid(0)."""
    _, reference, rows = models_and_rows
    loss, metrics = ours(settings(), reference, reference, rows)
    assert loss == pytest.approx(0.5, abs=1e-6)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)


# --- Axolotl's KTO types ----------------------------------------------------------------------

CHATML_USER = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
CHATML_SYSTEM = "<|im_start|>system\n{}<|im_end|>\n"
LLAMA3_USER = (
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
LLAMA3_SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>"
CONVERSATION = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello"}]

CASES = [
    # (type, entry keys, raw row, prompt, completion, label)
    (
        "chatml.argilla",
        {},
        {"system": "Sys", "instruction": "Q1", "completion": "A", "label": True},
        CHATML_SYSTEM.format("Sys") + CHATML_USER.format("Q1"),
        "A<|im_end|>",
        True,
    ),
    (
        "chatml.intel",
        {},
        {"question": "Q2", "completion": "B", "label": False},
        CHATML_USER.format("Q2"),
        "B<|im_end|>",
        False,
    ),
    (
        "chatml.ultra",
        {},
        {"system": "", "prompt": "Q3", "completion": "C", "label": True},
        CHATML_USER.format("Q3"),
        "C<|im_end|>",
        True,
    ),
    (
        "chatml.argilla_chat",
        {},
        {"completion": CONVERSATION, "label": False},
        CHATML_USER.format("Hi?"),
        "Hello<|im_end|>",
        False,
    ),
    (
        "llama3.argilla",
        {},
        {"system": "Sys", "instruction": "Q1", "completion": "A", "label": False},
        LLAMA3_SYSTEM.format("Sys") + LLAMA3_USER.format("Q1"),
        "A<|eot_id|>",
        False,
    ),
    (
        "llama3.intel",
        {},
        {"system": "Sys", "question": "Q2", "completion": "B", "label": True},
        LLAMA3_SYSTEM.format("Sys") + LLAMA3_USER.format("Q2"),
        "B<|eot_id|>",
        True,
    ),
    (
        "llama3.ultra",
        {},
        {"prompt": "Q3", "completion": "C", "label": True},
        LLAMA3_USER.format("Q3"),
        "C<|eot_id|>",
        True,
    ),
    (
        "llama3.argilla_chat",
        {},
        {"completion": CONVERSATION, "label": True},
        LLAMA3_USER.format("Hi?"),
        "Hello<|eot_id|>",
        True,
    ),
    (
        "user_defined.default",
        {},
        {"prompt": "Q4", "completion": "D", "label": False},
        "Q4",
        "D",
        False,
    ),
    (
        "user_defined.default",
        {
            "field_prompt": "q",
            "field_completion": "answer",
            "field_label": "good",
            "prompt_format": "[{system}] Q: {prompt}\nA: ",
            "completion_format": "{completion}!",
        },
        {"q": "Q5", "system": "S", "answer": "E", "good": True},
        "[S] Q: Q5\nA: ",
        "E!",
        True,
    ),
]


@pytest.mark.parametrize(
    ("kind", "entry", "row", "prompt", "completion", "label"),
    CASES,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)],
)
def test_kto_types_mask_the_prompt_exactly(
    weave_hooks: Any, tiny_tokenizer: Any, kind, entry, row, prompt, completion, label
):
    from trl.data_utils import common_prefix_length

    (built,) = build_kto(weave_hooks, tiny_tokenizer, [row], type=kind, **entry)
    assert set(built) == set(UNPAIRED_COLUMNS)
    assert built["label"] is label
    ids, labels = built["completion_input_ids"], built["completion_labels"]
    cut = next(i for i, value in enumerate(labels) if value != IGNORE_INDEX)
    assert labels[:cut] == [IGNORE_INDEX] * cut
    assert labels[cut:] == ids[cut:]
    assert built["completion_attention_mask"] == [1] * len(ids)
    assert tiny_tokenizer.decode(ids[:cut]) == tiny_tokenizer.bos_token + prompt
    assert tiny_tokenizer.decode(ids[cut:]) == completion + tiny_tokenizer.eos_token
    # TRL's tokenization: the prompt alone and prompt+completion+EOS, cut at their common prefix
    whole = tiny_tokenizer(prompt + completion + tiny_tokenizer.eos_token)["input_ids"]
    assert ids == whole
    assert cut == common_prefix_length(tiny_tokenizer(prompt)["input_ids"], whole)


def test_the_shared_type_names_still_build_pairs_without_kto(weave_hooks, tiny_tokenizer):
    row = {"question": "Q", "chosen": "A", "rejected": "B"}
    (built,) = build_rows(weave_hooks, tiny_tokenizer, [row], type="chatml.intel")
    assert "chosen_input_ids" in built and "completion_input_ids" not in built


def test_a_bad_label_names_the_row(weave_hooks, tiny_tokenizer):
    from axolotl_weave import DataError

    row = {"question": "Q", "completion": "A", "label": "yes"}
    with pytest.raises(DataError, match="KTO label must be a boolean"):
        build_kto(weave_hooks, tiny_tokenizer, [row], type="chatml.intel")


def test_keys_are_validated_naming_them():
    from axolotl_weave_plugins.rl.dpo import DPOSettings
    from axolotl_weave_plugins.rl.kto import KTOSettings
    from axolotl_weave_plugins.rl.preference_data import PreferenceDataSettings
    from pydantic import ValidationError

    class PreferenceSettings(PreferenceDataSettings, DPOSettings, KTOSettings):
        rl: str | None = None  # the core's rl key beside them, as when merged

    keys = PreferenceSettings(rl="kto", kto_desirable_weight=1.3)
    assert (keys.kto_desirable_weight, keys.kto_undesirable_weight) == (1.3, 1.0)
    refused = [
        ({"rl": "dpo", "kto_desirable_weight": 2.0}, "kto_desirable_weight applies to rl: kto"),
        ({"rl": "kto", "kto_undesirable_weight": 0}, "kto_undesirable_weight"),
        ({"rl": "kto", "dpo_loss_type": ["sigmoid"]}, "dpo_loss_type applies"),
    ]
    for keys, named in refused:
        with pytest.raises(ValidationError, match=named):
            PreferenceSettings(**keys)


# --- weave train ------------------------------------------------------------------------------


def kto_config(tmp_path: Path, base_config: dict) -> dict:
    data = write_jsonl(tmp_path / "kto.jsonl", kto_rows(8))
    return {
        **base_config,
        "datasets": [{"path": str(data), "type": "chatml.intel"}],
        "rl": "kto",
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,  # a step is the 8 rows: both labels in every step
        "max_steps": 3,
        "logging_steps": 1,
    }


def test_weave_train_kto_with_lora_logs_kl_and_rewards(tmp_path: Path, base_config: dict):
    config = kto_config(tmp_path, base_config)
    result = run_weave("train", str(write_config(tmp_path / "kto.yml", config)))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = Path(config["output_dir"], "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # policy == reference
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    for name in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"):
        assert all(name in r for r in records), name
    assert records[-1]["rewards/margins"] > 0  # it learns to prefer the desirable completions
    assert records[-1]["loss"] < 0.5


def test_kto_needs_two_rows_per_micro_batch(tmp_path: Path, base_config: dict):
    config = kto_config(tmp_path, base_config) | {"micro_batch_size": 1}
    result = run_weave("validate", str(write_config(tmp_path / "c.yml", config)))
    assert result.returncode != 0
    assert "rl: kto needs at least 2 rows per micro-batch" in result.stdout + result.stderr


def test_kto_refuses_a_pairs_only_type(tmp_path: Path, base_config: dict):
    config = kto_config(tmp_path, base_config)
    config["datasets"][0]["type"] = "chatml.default"
    result = run_weave("validate", str(write_config(tmp_path / "c.yml", config)))
    assert result.returncode != 0
    assert "type: chatml.default holds preference pairs, not KTO rows" in (
        result.stdout + result.stderr
    )


def test_full_fine_tune_kto_uses_a_frozen_reference(tmp_path: Path, base_config: dict):
    config = kto_config(tmp_path, base_config) | {"adapter": None, "max_steps": 2}
    for key in ("lora_r", "lora_alpha", "lora_dropout"):
        config.pop(key)
    state = train_with(config, tmp_path / "full.yml")
    records = [r for r in state.log_history if "loss" in r]
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-4)
    assert records[1]["rewards/margins"] != 0
