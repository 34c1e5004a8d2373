"""The preference examples (`examples/{dpo,ipo,orpo,simpo,kto,reward_model}.yml` on the bundled
tiny llama and data) validate and name their method; the DPO example trains in this process,
switches method by `rl:` alone, resumes from a checkpoint exactly, and its LoRA adapter merges
with `weave merge-lora`.

One module-scoped DPO run (4 steps, a checkpoint every 2) serves every training test.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from axolotl_weave_testing import CrashAt, run_weave, train_with, write_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

METHOD_OF = {
    "dpo.yml": ("rl", "dpo"),
    "ipo.yml": ("rl", "ipo"),
    "orpo.yml": ("rl", "orpo"),
    "simpo.yml": ("rl", "simpo"),
    "kto.yml": ("rl", "kto"),
    "reward_model.yml": ("reward_model", True),
}
"""Each preference example and the key that picks its method."""

DPO_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def example(name: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """An example's config with its bundled paths absolute and its outputs under `tmp_path`."""
    config = yaml.safe_load((EXAMPLES / name).read_text())
    config["base_model"] = str(ROOT / config["base_model"])
    for entry in config["datasets"]:
        entry["path"] = str(ROOT / entry["path"])
    config.update(
        output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prepared"),
        bf16=False,
        tf32=False,
    )
    return config | overrides


def records(state: Any) -> dict[int, dict[str, float]]:
    """The logged training records by step."""
    return {r["step"]: r for r in state.log_history if "loss" in r}


@pytest.mark.parametrize("name", sorted(METHOD_OF))
def test_an_example_per_method_validates(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `weave validate` checks (the config, each `type:`), in this process."""
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session

    monkeypatch.chdir(ROOT)
    session = open_session(EXAMPLES / name, [], make_plugin_manager())
    key, value = METHOD_OF[name]
    assert getattr(session.cfg, key) == value
    for entry in session.cfg.datasets:
        assert (ROOT / entry.path).is_file(), entry.path
        assert entry.type in session.formats


def test_weave_validate_accepts_the_dpo_example() -> None:
    result = run_weave("validate", "examples/dpo.yml", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid: examples/dpo.yml" in result.stdout


def dpo_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The DPO example for 4 steps, a checkpoint every 2; LoRA dropout on, so that the RNG
    state is part of what a resume must restore."""
    return example(
        "dpo.yml",
        tmp_path,
        max_steps=4,
        save_steps=2,
        logging_steps=1,
        lora_dropout=0.1,
        **overrides,
    )


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Any]:
    """(config, config path, final state) of the uninterrupted DPO example run."""
    folder = tmp_path_factory.mktemp("dpo")
    config = dpo_config(folder)
    path = folder / "dpo.yml"
    return config, path, train_with(config, path)


def test_the_dpo_example_trains_and_logs_trls_metrics(dpo_run: Any) -> None:
    config, _, state = dpo_run
    logged = records(state)
    assert sorted(logged) == [1, 2, 3, 4]
    assert logged[1]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    for record in logged.values():
        assert all(name in record for name in DPO_METRICS), record
    assert logged[4]["rewards/margins"] != 0
    assert (Path(config["output_dir"]) / "adapter_model.safetensors").is_file()


def test_changing_rl_alone_switches_the_method(dpo_run: Any, tmp_path: Path) -> None:
    config, _, dpo_state = dpo_run
    switched = {**config, "rl": "simpo", "max_steps": 2, "save_steps": None}
    simpo = train_with({**switched, "output_dir": str(tmp_path / "simpo")}, tmp_path / "s.yml")
    dpo, ours = records(dpo_state), records(simpo)
    assert sorted(ours) == [1, 2]
    assert "nll_loss" in ours[1] and "nll_loss" not in dpo[1]  # SimPO's chosen NLL (cpo_alpha)
    assert set(DPO_METRICS) <= set(ours[1])
    assert ours[1]["loss"] != pytest.approx(dpo[1]["loss"], rel=1e-3)
    assert ours[1]["rewards/chosen"] != pytest.approx(dpo[1]["rewards/chosen"], abs=1e-6)


def test_resumed_dpo_equals_the_uninterrupted_run(dpo_run: Any, tmp_path: Path) -> None:
    from axolotl_weave import checkpoints

    config, _, full = dpo_run
    crashed = {**config, "output_dir": str(tmp_path / "crashed")}
    with pytest.raises(KeyboardInterrupt):
        train_with(crashed, tmp_path / "crash.yml", CrashAt(3))
    assert [p.name for p in checkpoints(tmp_path / "crashed")] == ["checkpoint-2"]
    resumed = train_with({**crashed, "resume_from_checkpoint": "auto"}, tmp_path / "r.yml")
    assert resumed.global_step == 4
    expected, got = records(full), records(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        for name in ("loss", "rewards/margins", "logps/chosen"):
            assert got[step][name] == pytest.approx(expected[step][name], rel=1e-5, abs=1e-6)


def test_merge_lora_folds_a_dpo_adapter_into_its_base(dpo_run: Any) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, path, _ = dpo_run
    out = Path(config["output_dir"])
    result = run_weave("merge-lora", str(write_config(path, config)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    ids = torch.tensor([[1, 5, 9, 30, 2]])

    def logits(model: Any) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits

    base = AutoModelForCausalLM.from_pretrained(config["base_model"], dtype=torch.float32)
    expected = logits(PeftModel.from_pretrained(base, str(out)))
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
    torch.testing.assert_close(logits(merged), expected, rtol=0, atol=1e-5)
    untouched = AutoModelForCausalLM.from_pretrained(config["base_model"], dtype=torch.float32)
    assert (logits(merged) - logits(untouched)).abs().max() > 0  # DPO moved the weights
