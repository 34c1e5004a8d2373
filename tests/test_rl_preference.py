"""Preference training (`rl: dpo | ipo | orpo | simpo`: the `dpo`, `orpo`, `simpo` and
`preference_data` plugins).

The losses and metrics are checked against TRL's own code (TRL 1.16: `DPOTrainer._compute_loss`,
`ORPOTrainer` and `CPOTrainer`'s `get_batch_loss_metrics`) run on the same tiny model and batch;
Axolotl's preference `type:`s are checked token by token; `weave train` runs each method.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import IGNORE_INDEX, collate
from axolotl_weave_plugins.rl._formats import PAIR_COLUMNS
from axolotl_weave_plugins.rl._objective import PreferenceObjective
from axolotl_weave_testing import (
    OneProcessStrategy,
    build_rows,
    dpo_lora_config,
    pair_rows,
    preference_settings,
    run_weave,
    train_with,
    write_config,
)

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --- the losses against TRL's ---------------------------------------------------------------


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
def models_and_batch(tiny_llama_dir: Path, weave_hooks: Any, tiny_tokenizer: Any) -> Any:
    """(policy, reference, batch): the tiny llama, a perturbed copy, and 3 pairs collated."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).float()
    policy = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = build_rows(weave_hooks, tiny_tokenizer, pair_rows(3), type="chatml.intel")
    batch = collate(rows, tiny_tokenizer.pad_token_id or 0, columns=PAIR_COLUMNS)
    return policy, reference, batch


def ours(cfg: SimpleNamespace, policy: Any, reference: Any, batch: Any) -> tuple[float, dict]:
    objective = PreferenceObjective(cfg, reference)
    with torch.no_grad():
        loss, metrics = objective.compute(policy, batch)
    n = int(objective.count(batch))
    return float(loss) / n, {k: float(v) / n for k, v in metrics.items()}


def trl_dpo(policy: Any, reference: Any, batch: Any, **args: Any) -> tuple[float, dict]:
    """TRL's `DPOTrainer._compute_loss` on the same models (its fused LM head) and batch."""
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    fields = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    for model in (policy, reference):
        add_fused_lm_head(model, outputs=fields)
    length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def cat(column: str, value: int) -> torch.Tensor:
        return torch.cat(
            [
                torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)
                for t in (batch[f"chosen_{column}"], batch[f"rejected_{column}"])
            ]
        )

    inputs = {
        "input_ids": cat("input_ids", 0),
        "attention_mask": cat("attention_mask", 0),
        "completion_mask": (cat("labels", IGNORE_INDEX) != IGNORE_INDEX).long(),
    }
    loss_types = args.get("loss_types", ["sigmoid"])
    trainer = SimpleNamespace(
        model=policy,
        ref_model=reference,
        accelerator=FakeAccelerator(),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=False,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=args.get("loss_weights", [1.0] * len(loss_types)),
        beta=args.get("beta", 0.1),
        label_smoothing=args.get("label_smoothing", 0.0),
        use_weighting=args.get("use_weighting", False),
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    policy.train()
    loss = DPOTrainer._compute_loss(trainer, policy, inputs, False)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
LOGPS = ("logps/chosen", "logps/rejected")


@pytest.mark.parametrize(
    ("keys", "trl_args"),
    [
        ({}, {}),
        ({"dpo_loss_type": ["hinge"]}, {"loss_types": ["hinge"]}),
        ({"rl": "ipo"}, {"loss_types": ["ipo"]}),
        (
            {"dpo_loss_type": ["robust"], "dpo_label_smoothing": 0.2},
            {"loss_types": ["robust"], "label_smoothing": 0.2},
        ),
        (
            {"dpo_loss_type": ["bco_pair"], "rl_beta": 0.3},
            {"loss_types": ["bco_pair"], "beta": 0.3},
        ),
        ({"dpo_loss_type": ["sft"]}, {"loss_types": ["sft"]}),
        ({"dpo_loss_type": ["nca_pair"]}, {"loss_types": ["nca_pair"]}),
        ({"dpo_loss_type": ["sppo_hard"]}, {"loss_types": ["sppo_hard"]}),
        ({"dpo_loss_type": ["apo_zero"]}, {"loss_types": ["apo_zero"]}),
        ({"dpo_loss_type": ["apo_down"]}, {"loss_types": ["apo_down"]}),
        ({"dpo_loss_type": ["sigmoid_norm"]}, {"loss_types": ["sigmoid_norm"]}),
        (
            {"dpo_loss_type": ["sigmoid", "sft"], "dpo_loss_weights": [0.8, 0.2]},
            {"loss_types": ["sigmoid", "sft"], "loss_weights": [0.8, 0.2]},
        ),
        ({"dpo_use_weighting": True}, {"use_weighting": True}),
    ],
    ids=lambda v: json.dumps(v, sort_keys=True)[:60],
)
def test_dpo_losses_and_metrics_equal_trl(models_and_batch: Any, keys: dict, trl_args: dict):
    policy, reference, batch = models_and_batch
    loss, metrics = ours(preference_settings(**keys), policy, reference, batch)
    expected_loss, expected = trl_dpo(
        copy.deepcopy(policy), copy.deepcopy(reference), batch, **trl_args
    )
    assert loss == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    for name in METRICS + LOGPS:
        assert metrics[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    assert expected["rewards/margins"] != 0  # the policy differs from the reference


def trl_reference_free(kind: str, policy: Any, batch: Any, **args: Any) -> tuple[float, dict]:
    """TRL's ORPO or CPO (`loss_type="simpo"`) `get_batch_loss_metrics` on the same batch."""
    if kind == "orpo":
        from trl.experimental.orpo.orpo_trainer import ORPOTrainer as Trainer
    else:
        from trl.experimental.cpo.cpo_trainer import CPOTrainer as Trainer
    trainer = SimpleNamespace(
        accelerator=FakeAccelerator(),
        is_encoder_decoder=False,
        padding_value=0,
        pad_token_id=0,
        aux_loss_enabled=False,
        loss_type="simpo",
        alpha=0.0,
        label_smoothing=0.0,
        **args,
    )
    trainer.concatenated_inputs = Trainer.concatenated_inputs
    trainer.get_batch_logps = Trainer.get_batch_logps
    trainer.concatenated_forward = functools.partial(Trainer.concatenated_forward, trainer)
    loss_method = "odds_ratio_loss" if kind == "orpo" else "cpo_loss"
    setattr(trainer, loss_method, functools.partial(getattr(Trainer, loss_method), trainer))
    policy.train()
    loss, metrics = Trainer.get_batch_loss_metrics(trainer, policy, batch)
    return float(loss), metrics


@pytest.mark.parametrize(
    ("keys", "kind", "trl_args"),
    [
        ({"rl": "orpo"}, "orpo", {"beta": 0.1}),
        ({"rl": "orpo", "orpo_alpha": 0.5}, "orpo", {"beta": 0.5}),
        ({"rl": "simpo"}, "simpo", {"beta": 0.1, "simpo_gamma": 0.5, "cpo_alpha": 1.0}),
        (
            {"rl": "simpo", "rl_beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.0},
            "simpo",
            {"beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.0},
        ),
    ],
)
def test_orpo_and_simpo_equal_trl(models_and_batch: Any, keys: dict, kind: str, trl_args: dict):
    policy, reference, batch = models_and_batch
    loss, metrics = ours(preference_settings(**keys), policy, None, batch)
    expected_loss, expected = trl_reference_free(kind, policy, batch, **trl_args)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name in METRICS + LOGPS + ("nll_loss",):
        assert metrics[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    if kind == "orpo":
        for name in ("log_odds_ratio", "log_odds_chosen"):
            assert metrics[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name


# --- Axolotl's preference types -------------------------------------------------------------

CHATML_USER = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
CHATML_SYSTEM = "<|im_start|>system\n{}<|im_end|>\n"
LLAMA3_USER = (
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
LLAMA3_SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>"

CONVERSATION = {
    "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello"}],
    "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go"}],
}

CASES = [
    # (type, entry keys, raw row, prompt, chosen, rejected)
    (
        "chatml.intel",
        {},
        {"system": "Sys", "question": "Q1", "chosen": "A", "rejected": "B"},
        CHATML_SYSTEM.format("Sys") + CHATML_USER.format("Q1"),
        "A<|im_end|>",
        "B<|im_end|>",
    ),
    (
        "chatml",
        {},
        {"instruction": "Q2", "chosen_response": "A", "rejected_response": "B"},
        CHATML_USER.format("Q2"),
        "A<|im_end|>",
        "B<|im_end|>",
    ),
    (
        "chatml.default",
        {},
        {"input": "Q3", "chosen": "A", "rejected": "B"},
        CHATML_USER.format("Q3"),
        "A<|im_end|>",
        "B<|im_end|>",
    ),
    (
        "chatml.prompt_pairs",
        {},
        {"prompt": "Q4", "chosen": "A", "rejected": "B"},
        CHATML_USER.format("Q4"),
        "A<|im_end|>",
        "B<|im_end|>",
    ),
    (
        "chatml.ultra",
        {},
        {"prompt": "Hi?", **CONVERSATION},
        CHATML_USER.format("Hi?"),
        "Hello<|im_end|>",
        "Go<|im_end|>",
    ),
    (
        "chatml.argilla_chat",
        {},
        CONVERSATION,
        CHATML_USER.format("Hi?"),
        "Hello<|im_end|>",
        "Go<|im_end|>",
    ),
    (
        "llama3.intel",
        {},
        {"system": "Sys", "question": "Q1", "chosen": "A", "rejected": "B"},
        LLAMA3_SYSTEM.format("Sys") + LLAMA3_USER.format("Q1"),
        "A<|eot_id|>",
        "B<|eot_id|>",
    ),
    (
        "llama3.default",
        {},
        {"question": "Q5", "chosen": "A", "rejected": "B"},
        LLAMA3_USER.format("Q5"),
        "A<|eot_id|>",
        "B<|eot_id|>",
    ),
    (
        "llama3.prompt_pairs",
        {},
        {"prompt": "Q4", "chosen": "A", "rejected": "B"},
        LLAMA3_USER.format("Q4"),
        "A<|eot_id|>",
        "B<|eot_id|>",
    ),
    (
        "llama3.ultra",
        {},
        {"prompt": "Hi?", **CONVERSATION},
        LLAMA3_USER.format("Hi?"),
        "Hello<|eot_id|>",
        "Go<|eot_id|>",
    ),
    (
        "llama3.argilla_chat",
        {},
        CONVERSATION,
        LLAMA3_USER.format("Hi?"),
        "Hello<|eot_id|>",
        "Go<|eot_id|>",
    ),
    (
        "chat_template.default",
        {},
        {"messages": [{"role": "user", "content": "Hi?"}], "chosen": "Hello", "rejected": "Go"},
        CHATML_USER.format("Hi?"),
        "Hello<|im_end|>",
        "Go<|im_end|>",
    ),
    (
        "chat_template.default",
        {"field_messages": "conv", "message_property_mappings": {"role": "from"}},
        {
            "conv": [{"from": "user", "content": "Hi?"}],
            "chosen": {"from": "assistant", "content": "Hello"},
            "rejected": {"from": "assistant", "content": "Go"},
        },
        CHATML_USER.format("Hi?"),
        "Hello<|im_end|>",
        "Go<|im_end|>",
    ),
    (
        "chat_template.argilla_chat",
        {},
        CONVERSATION,
        CHATML_USER.format("Hi?"),
        "Hello<|im_end|>",
        "Go<|im_end|>",
    ),
    (
        "chat_template.argilla",
        {},
        {"system": "Sys", **CONVERSATION},
        CHATML_SYSTEM.format("Sys") + CHATML_USER.format("Hi?"),
        "Hello<|im_end|>",
        "Go<|im_end|>",
    ),
    (
        "chat_template.argilla",  # multi-turn: the chosen conversation's earlier turns
        {},
        {
            "chosen": [
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hey"},
                {"role": "user", "content": "Name?"},
                {"role": "assistant", "content": "Weave"},
            ],
            "rejected": [{"role": "assistant", "content": "No"}],
        },
        CHATML_USER.format("Hi?") + "Hey<|im_end|>\n" + CHATML_USER.format("Name?"),
        "Weave<|im_end|>",
        "No<|im_end|>",
    ),
    (
        "zephyr.nectar",
        {},
        {
            "prompt": "Q7",
            "answers": [
                {"answer": "best", "rank": 1},
                {"answer": "worst", "rank": 3},
                {"answer": "middle", "rank": 2},
            ],
        },
        "<|system|>\n</s>\n<|user|>\nQ7</s>\n<|assistant|>\n",
        "worst",  # Axolotl's: the highest rank is chosen, the one below it rejected
        "middle",
    ),
    (
        "user_defined.default",
        {
            "field_prompt": "q",
            "prompt_format": "[{system}] Q: {prompt}\nA: ",
            "chosen_format": "{chosen}!",
        },
        {"q": "Q6", "system": "S", "chosen": "A", "rejected": "B"},
        "[S] Q: Q6\nA: ",
        "A!",
        "B",
    ),
]


@pytest.mark.parametrize(
    ("kind", "entry", "row", "prompt", "chosen", "rejected"),
    CASES,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)],
)
def test_preference_types_mask_the_prompt_exactly(
    weave_hooks: Any, tiny_tokenizer: Any, kind, entry, row, prompt, chosen, rejected
):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHATML_TEMPLATE
    (built,) = build_rows(weave_hooks, tokenizer, [row], type=kind, **entry)
    assert set(built) == set(PAIR_COLUMNS)
    prompts = []
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        ids, labels = built[f"{side}_input_ids"], built[f"{side}_labels"]
        cut = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert all(label == IGNORE_INDEX for label in labels[:cut])
        assert labels[cut:] == ids[cut:]
        assert built[f"{side}_attention_mask"] == [1] * len(ids)
        assert tokenizer.decode(ids[:cut]) == tokenizer.bos_token + prompt
        assert tokenizer.decode(ids[cut:]) == text + tokenizer.eos_token
        prompts.append(ids[:cut])
    assert prompts[0] == prompts[1]


@pytest.mark.parametrize(
    ("kind", "bad", "named"),
    [
        ("chatml.intel", {"question": "Q", "chosen": "A", "rejected": None}, "'rejected'"),
        ("chatml.default", {"input": "Q", "chosen": "A"}, "'rejected' (or 'rejected_response')"),
        ("chatml.argilla", {"chosen": "A", "rejected": "B"}, "'prompt' (or 'input' or"),
        ("llama3.icr", {"input": None, "chosen": "A", "rejected": "B"}, "'input'"),
        (
            "chatml.ultra",
            {"prompt": "Q", "chosen": [{"content": "Q"}, {"content": None}], "rejected": []},
            "'chosen[1].content'",
        ),
        (
            "zephyr.nectar",
            {"prompt": "Q", "answers": [{"answer": "A", "rank": 1}, {"answer": None, "rank": 2}]},
            "'answer'",
        ),
    ],
)
def test_a_missing_or_null_field_names_it_and_the_row(
    weave_hooks: Any, tiny_tokenizer: Any, kind: str, bad: dict, named: str
):
    """A row without a field its type reads (absent, or null as Arrow fills it when other rows
    have it) is one message naming the field and the row, not a TypeError from inside."""
    from axolotl_weave import DataError

    good = {"question": "Q", "input": "Q", "prompt": "Q", "chosen": "A", "rejected": "B"}
    if kind == "chatml.ultra":
        good |= {"chosen": [{"content": "Q"}, {"content": "A"}]}
        good["rejected"] = [{"content": "Q"}, {"content": "B"}]
    if kind == "zephyr.nectar":
        good = {"prompt": "Q", "answers": [{"answer": "A", "rank": 1}, {"answer": "B", "rank": 2}]}
    with pytest.raises(DataError, match=rf"row 2.*field {re.escape(named)}.* is missing or null"):
        build_rows(weave_hooks, tiny_tokenizer, [good, bad], type=kind)


def test_a_preference_type_without_rl_is_refused(tmp_path: Path, base_config: dict):
    config = dpo_config(tmp_path, base_config)
    del config["rl"]
    result = run_weave("validate", str(write_config(tmp_path / "c.yml", config)))
    assert result.returncode != 0
    assert "chatml.intel holds preference pairs: set rl:" in result.stdout + result.stderr


# --- weave train ------------------------------------------------------------------------------


def dpo_config(tmp_path: Path, base_config: dict) -> dict:
    return dpo_lora_config(tmp_path, base_config)


def metrics_of(config: dict) -> list[dict[str, float]]:
    lines = Path(config["output_dir"], "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def test_weave_train_dpo_with_lora_starts_at_ln2_and_logs_rewards(
    tmp_path: Path, base_config: dict
):
    config = dpo_config(tmp_path, base_config)
    result = run_weave("train", str(write_config(tmp_path / "dpo.yml", config)))
    assert result.returncode == 0, result.stdout + result.stderr
    records = metrics_of(config)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert all("rewards/margins" in r and "logps/chosen" in r for r in records)
    assert records[-1]["rewards/margins"] > 0  # it learns to prefer the chosen responses
    assert records[-1]["loss"] < math.log(2)


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_weave_train_reference_free_methods(tmp_path: Path, base_config: dict, method: str):
    config = dpo_config(tmp_path, base_config) | {"rl": method, "max_steps": 2}
    state = train_with(config, tmp_path / f"{method}.yml")  # in this process: faster
    records = [r for r in state.log_history if "loss" in r]
    assert len(records) == 2
    assert all(math.isfinite(r["loss"]) and "nll_loss" in r for r in records)


def test_sample_packing_with_kto_is_refused(tmp_path: Path, base_config: dict):
    """DPO, IPO, ORPO and SimPO pack pairs (tests/test_rl_packing.py); KTO cannot."""
    config = dpo_config(tmp_path, base_config) | {"rl": "kto", "sample_packing": True}
    result = run_weave("train", str(write_config(tmp_path / "packed.yml", config)))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "sample_packing: true cannot be used with rl: kto" in output
    assert not Path(config["output_dir"], "metrics.jsonl").exists()


def test_full_fine_tune_dpo_uses_a_frozen_reference(tmp_path: Path, base_config: dict):
    config = dpo_config(tmp_path, base_config) | {"adapter": None, "max_steps": 2}
    for key in ("lora_r", "lora_alpha", "lora_dropout"):
        config.pop(key)
    state = train_with(config, tmp_path / "full.yml")
    records = [r for r in state.log_history if "loss" in r]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert records[1]["rewards/margins"] != 0


# --- one plugin per method ------------------------------------------------------------------


def test_each_method_is_its_own_plugin_and_the_data_is_shared():
    """`weave plugin list` shows `dpo` (dpo, ipo), `orpo`, `simpo` and `kto`, each registering
    its own `rl:` names, beside `preference_data`, which owns the preference `type:`s."""
    import importlib

    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave_plugins.commands._plugin_table import describe_plugins

    rows = {row.name: row for row in describe_plugins(make_plugin_manager())}
    owned = {"dpo": ["dpo", "ipo"], "orpo": ["orpo"], "simpo": ["simpo"], "kto": ["kto"]}
    for name, methods in owned.items():
        row = rows[name]
        assert (row.kind, row.builtin, row.blocked) == ("method", True, False), row
        assert {"register_rl_methods", "add_config_fields", "build_loss", "training_step"} <= set(
            row.hooks
        )
        registered: list[str] = []
        importlib.import_module(f"axolotl_weave_plugins.rl.{name}").register_rl_methods(
            registered.append
        )
        assert registered == methods
    data = rows["preference_data"]
    assert {"register_dataset_formats", "add_config_fields", "configure"} <= set(data.hooks)
    assert "register_rl_methods" not in data.hooks


# --- the keys and the step's normalisation -------------------------------------------------


def settings_with_rl() -> type:
    """Every preference plugin's keys with the core's `rl` key beside them (as in the merged
    config)."""
    from axolotl_weave_plugins.rl.dpo import DPOSettings
    from axolotl_weave_plugins.rl.kto import KTOSettings
    from axolotl_weave_plugins.rl.orpo import ORPOSettings
    from axolotl_weave_plugins.rl.preference_data import PreferenceDataSettings
    from axolotl_weave_plugins.rl.simpo import SimPOSettings

    class WithRl(PreferenceDataSettings, DPOSettings, ORPOSettings, SimPOSettings, KTOSettings):
        rl: str | None = None

    return WithRl


def test_keys_are_validated_naming_them():
    from pydantic import ValidationError

    PreferenceSettings = settings_with_rl()
    assert PreferenceSettings(rl="dpo", dpo_beta=0.3).rl_beta == 0.3  # the deprecated alias
    assert PreferenceSettings(rl="dpo", dpo_beta=0.3, rl_beta=0.2).rl_beta == 0.2
    refused = [
        ({"rl": "dpo", "dpo_loss_type": ["nope"]}, "dpo_loss_type"),
        ({"rl": "dpo", "dpo_loss_type": ["sigmoid", "sft"], "dpo_loss_weights": [1]}, "weights"),
        ({"rl": "ipo", "dpo_loss_type": ["hinge"]}, "dpo_loss_type: rl: ipo"),
        ({"rl": "orpo", "dpo_loss_type": ["sigmoid"]}, "dpo_loss_type applies"),
        ({"rl": "dpo", "dpo_label_smoothing": 0.5}, "dpo_label_smoothing"),
        ({"rl": "dpo", "rl_beta": 0}, "rl_beta"),
    ]
    for keys, named in refused:
        with pytest.raises(ValidationError, match=named):
            PreferenceSettings(**keys)


def test_an_unregistered_rl_name_is_refused_with_the_registered_ones(
    tmp_path: Path, base_config: dict
):
    from axolotl_weave import ConfigError
    from axolotl_weave._run import open_session

    path = write_config(tmp_path / "rl.yml", {**base_config, "rl": "dpoo"})
    refusal = r"rl: unknown rl 'dpoo' \(did you mean dpo\?\); valid: .*kto"
    with pytest.raises(ConfigError, match=refusal):
        open_session(path)


@pytest.mark.parametrize("rl", ["dpo", "simpo"])
def test_accumulated_micro_batches_equal_one_batch(
    models_and_batch: Any, weave_hooks: Any, tiny_tokenizer: Any, rl: str
):
    """Two micro-batches of 2 pairs give the loss, metrics and gradient of one micro-batch of 4:
    each micro-batch's pair-summed loss is divided by the pairs of the whole window (SimPO with
    cpo_alpha: 0, its NLL being a per-micro-batch token mean, as TRL's)."""
    from axolotl_weave_plugins.rl._objective import preference_step

    policy, reference, _ = models_and_batch
    rows = build_rows(weave_hooks, tiny_tokenizer, pair_rows(4), type="chatml.intel")
    pad = tiny_tokenizer.pad_token_id or 0
    whole = [collate(rows, pad, columns=PAIR_COLUMNS)]
    halves = [
        collate(rows[:2], pad, columns=PAIR_COLUMNS),
        collate(rows[2:], pad, columns=PAIR_COLUMNS),
    ]
    cfg = preference_settings(rl=rl, cpo_alpha=0.0)
    results = []
    for window in (whole, halves):
        model = copy.deepcopy(policy)
        metrics = preference_step(
            OneProcessStrategy(), model, PreferenceObjective(cfg, reference), window
        )
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((metrics, grads))
    (m1, g1), (m2, g2) = results
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5)
    assert m1["rewards/margins"] == pytest.approx(m2["rewards/margins"], rel=1e-5, abs=1e-7)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_axolotls_old_rpo_alpha_is_the_sft_loss_with_that_weight(
    tmp_path: Path, base_config: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """`rpo_alpha: a` (TRL's old RPO term) is what TRL replaced it with: the `sft` loss type
    added with weight `a`; where the config already weights an `sft` loss, it is dropped with a
    warning."""
    import logging

    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session

    def read(**keys: Any) -> Any:
        config = dpo_lora_config(tmp_path, base_config, **keys)
        return open_session(write_config(tmp_path / "c.yml", config), [], make_plugin_manager())

    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        cfg = read(rpo_alpha=0.5).cfg
    assert cfg.dpo_loss_type == ["sigmoid", "sft"] and cfg.dpo_loss_weights == [1.0, 0.5]
    assert "rpo_alpha: 0.5 is read as TRL's replacement" in caplog.text
    cfg = read(rpo_alpha=0.5, dpo_loss_type=["hinge"], dpo_loss_weights=[2.0]).cfg
    assert cfg.dpo_loss_type == ["hinge", "sft"] and cfg.dpo_loss_weights == [2.0, 0.5]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        cfg = read(rpo_alpha=0.5, dpo_loss_type=["sigmoid", "sft"]).cfg
    assert cfg.dpo_loss_type == ["sigmoid", "sft"] and cfg.dpo_loss_weights is None
    assert "config key 'rpo_alpha'" in caplog.text and "IGNORED" in caplog.text
