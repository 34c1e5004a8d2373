"""`weave evaluate` and the loop's evaluation on preference, KTO, reward-model and GRPO configs:
the loss per the objective's unit (a pair, a row), no perplexity where the unit is not a token,
the objective's metrics (DPO's rewards, a reward model's accuracy) logged as `eval_<name>` while
training and reported by `weave evaluate`, and a trained full fine-tune measured against the
model training started from (not against itself, which would give DPO's log 2 whatever it
learnt). GRPO's held-out measure (completions sampled and scored) is tested with GRPO, in
test_rl_grpo.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from axolotl_weave import IGNORE_INDEX
from axolotl_weave_testing import (
    dpo_lora_config,
    pair_rows,
    train_with,
    write_config,
    write_jsonl,
)

BETA = 0.1


def weave(*args: str) -> Any:
    """`weave ARGS` in this process; the click result (exit code, output)."""
    from axolotl_weave._cli import CliContext, build_app
    from axolotl_weave._pluginmanager import make_plugin_manager
    from typer.testing import CliRunner

    pm = make_plugin_manager()
    return CliRunner().invoke(build_app(pm), list(args), obj=CliContext(pm))


def last_eval(output_dir: Path) -> dict[str, float]:
    """The last evaluation the training loop logged (`metrics.jsonl`)."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval_loss" in r][-1]


def evaluated(config_path: Path, *flags: str) -> dict[str, Any]:
    """`weave evaluate CONFIG FLAGS`, succeeding; its `eval_results.json`."""
    import yaml

    result = weave("evaluate", str(config_path), *flags)
    assert result.exit_code == 0, result.output
    out = Path(yaml.safe_load(config_path.read_text())["output_dir"])
    return json.loads((out / "eval_results.json").read_text())


@pytest.mark.parametrize("precompute", [False, True], ids=["reference-copy", "precomputed"])
def test_a_trained_dpo_full_fine_tune_is_measured_against_the_model_it_started_from(
    base_config: dict, tmp_path: Path, precompute: bool
) -> None:
    config = dpo_lora_config(
        tmp_path,
        base_config,
        adapter=None,
        val_set_size=0.25,
        max_steps=2,
        eval_steps=2,
        learning_rate=1e-2,
        precompute_ref_log_probs=precompute,
    )
    config = {k: v for k, v in config.items() if not k.startswith("lora_")}
    train_with(config, tmp_path / "train.yml")
    logged = last_eval(Path(config["output_dir"]))
    assert logged["eval_rewards/margins"] != 0  # training moved the policy off the reference
    path = write_config(tmp_path / "dpo.yml", config)
    saved = evaluated(path)  # what training left in output_dir: the full model
    assert saved["model"] == config["output_dir"] and saved["split"] == "eval"
    assert saved["unit"] == "pair" and saved["units"] == saved["rows"] == 2
    assert saved["perplexity"] is None
    assert saved["eval_loss"] == pytest.approx(logged["eval_loss"], rel=1e-4)
    assert abs(saved["eval_loss"] - math.log(2)) > 1e-4
    for name in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/rejected"):
        assert saved["metrics"][name] == pytest.approx(logged[f"eval_{name}"], rel=1e-4, abs=1e-6)


def response_logps(model: Any, ids: list[int], labels: list[int]) -> torch.Tensor:
    """The summed log-probability of the labelled tokens of one sequence, in float64."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    target = torch.tensor(labels[1:])
    keep = target != IGNORE_INDEX
    picked = torch.log_softmax(logits, -1)[keep].gather(-1, target[keep][:, None])
    return picked.sum()


@torch.no_grad()
def test_a_dpo_adapter_is_measured_against_the_base_as_dpo_defines_it(
    base_config: dict, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session, preprocess
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    lora.init_lora_weights = False  # random B: the adapter changes the policy
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora).save_pretrained(
        adapter
    )
    config = dpo_lora_config(tmp_path, base_config, rl_beta=BETA)
    path = write_config(tmp_path / "dpo.yml", config)
    saved = evaluated(path, "--lora-model-dir", str(adapter))

    data, _ = preprocess(open_session(path, [], make_plugin_manager()))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    policy = PeftModel.from_pretrained(base, adapter)
    policy.eval()
    losses, accurate = [], []
    for row in data.train:
        margin = torch.zeros((), dtype=torch.float64)
        for side, sign in (("chosen", 1), ("rejected", -1)):
            ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
            with policy.disable_adapter():
                reference = response_logps(policy, ids, labels)
            margin += sign * BETA * (response_logps(policy, ids, labels) - reference)
        losses.append(float(-F.logsigmoid(margin)))
        accurate.append(float(margin > 0))
    assert saved["unit"] == "pair" and saved["units"] == len(losses) == 8
    assert saved["eval_loss"] == pytest.approx(sum(losses) / 8, rel=1e-4)
    assert saved["metrics"]["rewards/accuracies"] == pytest.approx(sum(accurate) / 8)
    assert abs(saved["eval_loss"] - math.log(2)) > 1e-4  # the adapter was applied


def test_a_reward_model_reports_the_accuracy_training_logged(
    base_config: dict, tmp_path: Path
) -> None:
    rows = [{"input": r.pop("question"), **r} for r in pair_rows(8)]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = {
        **base_config,
        "datasets": [{"path": str(pairs), "type": "bradley_terry.chat_template"}],
        "chat_template": "chatml",
        "reward_model": True,
        "val_set_size": 0.5,
        "max_steps": 2,
        "eval_steps": 2,
    }
    train_with(config, tmp_path / "train.yml")
    logged = last_eval(Path(config["output_dir"]))
    saved = evaluated(write_config(tmp_path / "rm.yml", config))
    assert saved["unit"] == "pair" and saved["perplexity"] is None
    assert saved["eval_loss"] == pytest.approx(logged["eval_loss"], rel=1e-4)
    for name in ("accuracy", "margin", "mean_reward"):
        assert saved["metrics"][name] == pytest.approx(logged[f"eval_{name}"], rel=1e-4, abs=1e-6)


def kto_config(base_config: dict, tmp_path: Path, **keys: Any) -> dict:
    """KTO (full fine-tune) on 8 prompt/completion rows, desirable two times in three."""
    rows = [
        {"prompt": f"Add {i} and 1.", "completion": str(i + 1), "label": i % 3 != 0}
        for i in range(8)
    ]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    return {
        **base_config,
        "rl": "kto",
        "datasets": [{"path": str(data), "type": "user_defined.default"}],
        **keys,
    }


def test_kto_is_measured_per_row_without_a_perplexity(base_config: dict, tmp_path: Path) -> None:
    config = kto_config(base_config, tmp_path)
    result = weave("evaluate", str(write_config(tmp_path / "kto.yml", config)))
    assert result.exit_code == 0, result.output
    saved = json.loads((Path(config["output_dir"]) / "eval_results.json").read_text())
    assert saved["unit"] == "row" and saved["units"] == saved["rows"] == 8
    assert saved["perplexity"] is None and "perplexity" not in result.output
    assert saved["eval_loss"] == pytest.approx(0.5, abs=1e-6)  # KTO's loss at the reference
    assert saved["metrics"]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)


def test_a_trained_kto_run_reports_its_metrics_over_their_own_rows(
    base_config: dict, tmp_path: Path
) -> None:
    """KTO's desirable and undesirable rows' rewards are means over those rows (not over all),
    as TRL reports them; a trained full fine-tune measured against its starting model gives
    what its training's last evaluation logged."""
    config = kto_config(
        base_config, tmp_path, val_set_size=0.5, max_steps=2, eval_steps=2, learning_rate=1e-2
    )
    train_with(config, tmp_path / "train.yml")
    logged = last_eval(Path(config["output_dir"]))
    saved = evaluated(write_config(tmp_path / "kto.yml", config))
    assert saved["eval_loss"] == pytest.approx(logged["eval_loss"], rel=1e-4)
    for name in ("rewards/chosen", "rewards/rejected", "logps/chosen", "kl"):
        if f"eval_{name}" in logged:
            assert saved["metrics"][name] == pytest.approx(
                logged[f"eval_{name}"], rel=1e-4, abs=1e-6
            ), name
    assert logged["eval_rewards/chosen"] != 0  # trained away from the reference
    margin = saved["metrics"]["rewards/chosen"] - saved["metrics"]["rewards/rejected"]
    assert saved["metrics"]["rewards/margins"] == pytest.approx(margin)
    assert logged["eval_rewards/margins"] == pytest.approx(margin, rel=1e-4, abs=1e-6)
