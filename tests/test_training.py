"""The training loop end to end on the tiny llama (CPU): loss falls, accumulation is exact,
resume equals an uninterrupted run, checkpoints are atomic, saved models reload identically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import checkpoints, hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_plugins.training._checkpoint import resolve_resume
from axolotl_weave_testing import (
    CrashAt,
    run_weave_in_process,
    train_with,
    write_config,
    write_jsonl,
)
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
PROBE = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])


class LogitsProbe:
    """A plugin that records the trained model's logits on PROBE in post_train."""

    def __init__(self) -> None:
        self.logits: torch.Tensor | None = None

    @hookimpl(trylast=True)
    def post_train(self, model: Any) -> None:
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=PROBE.to(model.device)).logits.float().cpu()


run = train_with  # train in-process with extra plugin objects registered
run_weave = run_weave_in_process  # `weave ARGS` through the CLI's entry point, in this process


def losses(state: Any) -> dict[int, float]:
    return {rec["step"]: rec["loss"] for rec in state.log_history if "loss" in rec}


def test_quickstart_trains_and_loss_falls(tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    result = run_weave(
        "train",
        "examples/quickstart.yml",
        "--output_dir",
        str(out),
        "--dataset_prepared_path",
        str(tmp_path / "prepared"),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for chatter in ("Failed to load", "register_constant", "Traceback"):  # libraries' own
        assert chatter not in result.stderr, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if "loss" in r]
    eval_losses = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(train_losses) > 10
    first, last = sum(train_losses[:2]) / 2, sum(train_losses[-3:]) / 3
    assert last < first / 2, (first, last)
    assert eval_losses and eval_losses[-1] < first / 2
    for name in ("model.safetensors", "config.json", "tokenizer.json", "config.yml"):
        assert (out / name).is_file(), name
    assert "done" in result.stdout


def test_accumulation_equals_one_big_batch(base_config: dict, tmp_path: Path) -> None:
    """One step of 4 micro-batches of 1 == one step of 1 micro-batch of 4 (same gradients)."""
    common = {
        **base_config,
        "max_steps": 1,
        "optimizer": "sgd",
        "learning_rate": 1.0,
        "max_grad_norm": None,
        "lr_scheduler": "constant",
    }
    accumulated = {**common, "micro_batch_size": 1, "gradient_accumulation_steps": 4}
    big = {**common, "micro_batch_size": 4, "gradient_accumulation_steps": 1}
    state_a = run({**accumulated, "output_dir": str(tmp_path / "a")}, tmp_path / "a.yml")
    state_b = run({**big, "output_dir": str(tmp_path / "b")}, tmp_path / "b.yml")
    assert losses(state_a)[1] == pytest.approx(losses(state_b)[1], rel=1e-5)

    weights_a = load_file(str(tmp_path / "a" / "model.safetensors"))
    weights_b = load_file(str(tmp_path / "b" / "model.safetensors"))
    base = load_file(str(Path(base_config["base_model"]) / "model.safetensors"))
    moved = max((weights_b[k] - base[k]).abs().max().item() for k in base)
    assert moved > 1e-3  # the step really changed the weights
    for key in base:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=1e-4, atol=1e-5)


def test_token_normalisation_is_not_mean_of_means(base_config: dict, tmp_path: Path) -> None:
    """The logged loss of an accumulated step is the token-weighted mean over the whole window."""
    rows = [
        {"instruction": "Say it.", "input": "", "output": " ".join(["word"] * n)}
        for n in (1, 3, 9, 20)
    ]
    data = write_jsonl(tmp_path / "varied.jsonl", rows)
    config = {
        **base_config,
        "datasets": [{"path": str(data), "type": "alpaca"}],
        "max_steps": 1,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 4,
        "learning_rate": 1e-9,
    }
    probe = PerBatchLoss()
    state = run(config, tmp_path / "c.yml", probe)
    sums = [s for s, _ in probe.seen]
    counts = [n for _, n in probe.seen]
    token_mean = sum(sums) / sum(counts)
    mean_of_means = sum(s / n for s, n in probe.seen) / len(probe.seen)
    assert len(set(counts)) == 4
    assert losses(state)[1] == pytest.approx(token_mean, rel=1e-5)
    assert abs(token_mean - mean_of_means) > 1e-4  # rows differ in length: the two differ


class PerBatchLoss:
    """Wraps the objective to record each micro-batch's (summed loss, target count)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, int]] = []

    @hookimpl(wrapper=True)
    def build_loss(self) -> Any:
        inner = yield
        outer = self

        class Recording:
            def count(self, batch: dict) -> Any:
                return inner.count(batch)

            def __call__(self, model: Any, batch: dict) -> Any:
                loss = inner(model, batch)
                outer.seen.append((float(loss.detach()), int(inner.count(batch))))
                return loss

        return Recording()


@pytest.mark.parametrize("adapter", [None, "lora"])
def test_resume_matches_uninterrupted(
    base_config: dict, tmp_path: Path, adapter: str | None
) -> None:
    config = {
        **base_config,
        "max_steps": 6,
        "save_steps": 2,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "num_epochs": 1,
        "warmup_steps": 1,
    }
    if adapter:  # dropout makes the RNG state part of what must be restored
        config.update(adapter="lora", lora_r=4, lora_dropout=0.2, lora_target_linear=True)
    full = run({**config, "output_dir": str(tmp_path / "full")}, tmp_path / "full.yml")

    crashed_dir = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run({**config, "output_dir": str(crashed_dir)}, tmp_path / "crash.yml", CrashAt(3))
    assert [p.name for p in checkpoints(crashed_dir)] == ["checkpoint-2"]

    resumed = run(
        {**config, "output_dir": str(crashed_dir), "resume_from_checkpoint": "auto"},
        tmp_path / "resume.yml",
    )
    assert resumed.global_step == 6
    expected, got = losses(full), losses(resumed)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in range(3, 7):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_checkpoint_write_is_atomic(base_config: dict, tmp_path: Path, monkeypatch) -> None:
    """A crash while writing checkpoint-4 leaves checkpoint-2 whole and resumable."""
    out = tmp_path / "out"
    config = {**base_config, "max_steps": 6, "save_steps": 2, "output_dir": str(out)}
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        if ".checkpoint-4.tmp" in str(path) and str(path).endswith("scheduler.pt"):
            raise OSError("disk full")
        calls["n"] += 1
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        run(config, tmp_path / "c.yml")
    monkeypatch.setattr(torch, "save", real_save)

    assert [p.name for p in checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "checkpoint-4").exists()
    assert resolve_resume("auto", out) == out / "checkpoint-2"
    state = run({**config, "resume_from_checkpoint": "auto"}, tmp_path / "r.yml")
    assert state.global_step == 6
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_save_total_limit_keeps_newest(base_config: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = {**base_config, "max_steps": 6, "save_steps": 1, "save_total_limit": 2}
    run({**config, "output_dir": str(out)}, tmp_path / "c.yml")
    assert [p.name for p in checkpoints(out)] == ["checkpoint-5", "checkpoint-6"]


def test_resume_from_missing_checkpoint_is_clear(base_config: dict, tmp_path: Path) -> None:
    config = {**base_config, "resume_from_checkpoint": str(tmp_path / "nope")}
    path = write_config(tmp_path / "c.yml", config)
    result = run_weave("train", str(path), cwd=tmp_path)
    assert result.returncode != 0
    assert "not a complete checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_lora_adapter_saves_and_reloads_with_same_logits(base_config: dict, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    config = {
        **base_config,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "learning_rate": 1e-2,
        "output_dir": str(out),
    }
    probe = LogitsProbe()
    run(config, tmp_path / "c.yml", probe)
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()  # the adapter alone

    base = AutoModelForCausalLM.from_pretrained(base_config["base_model"], dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(input_ids=PROBE).logits.float()
    model = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        reloaded = model(input_ids=PROBE).logits.float()
    assert probe.logits is not None
    torch.testing.assert_close(reloaded, probe.logits, rtol=1e-4, atol=1e-4)
    assert (reloaded - base_logits).abs().max() > 1e-2  # the adapter learned something
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    assert set(adapter_config["target_modules"]) == {"q_proj", "v_proj"}


def test_full_finetune_saves_and_reloads_with_same_logits(
    base_config: dict, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "full"
    probe = LogitsProbe()
    run({**base_config, "output_dir": str(out)}, tmp_path / "c.yml", probe)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        reloaded = model(input_ids=PROBE).logits.float()
    torch.testing.assert_close(reloaded, probe.logits, rtol=1e-4, atol=1e-4)
    assert AutoTokenizer.from_pretrained(str(out)).pad_token is not None


def test_output_written_before_is_kept_on_bad_config(base_config: dict, tmp_path: Path) -> None:
    """A failing run (bad data) touches nothing already in output_dir."""
    out = tmp_path / "out"
    run(
        {**base_config, "output_dir": str(out), "max_steps": 2, "save_steps": 2}, tmp_path / "a.yml"
    )
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{broken\n')
    config = {
        **base_config,
        "output_dir": str(out),
        "overwrite_output_dir": True,  # else the finished run's folder is refused before this
        "datasets": [{"path": str(bad), "type": "alpaca"}],
    }
    result = run_weave("train", str(write_config(tmp_path / "b.yml", config)), cwd=tmp_path)
    assert result.returncode != 0
    assert f"{bad}:2" in result.stderr
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the finished run's config.yml too
    shutil.rmtree(out)


def test_two_runs_in_one_process_may_differ_in_precision(base_config: dict, tmp_path: Path) -> None:
    """accelerate's process-wide state must not pin the first run's precision on the next."""
    first = run(
        {**base_config, "bf16": True, "max_steps": 1, "output_dir": str(tmp_path / "a")},
        tmp_path / "a.yml",
    )
    second = run(
        {**base_config, "bf16": False, "max_steps": 1, "output_dir": str(tmp_path / "b")},
        tmp_path / "b.yml",
    )
    assert first.global_step == second.global_step == 1
    weights = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert next(iter(weights.values())).dtype == torch.float32


def test_streamed_pretraining_dataset_trains_and_resumes(base_config: dict, tmp_path: Path) -> None:
    """`pretraining_dataset:` is read as a stream (first `skip` rows skipped), packed into
    sequence_len blocks while training; a resumed run continues the stream where it was."""
    texts = [{"text": f"the quick brown fox {i} jumps over the lazy dog {i}."} for i in range(200)]
    write_jsonl(tmp_path / "texts.jsonl", texts)
    config = {key: value for key, value in base_config.items() if key != "datasets"}
    config.update(
        pretraining_dataset=[{"path": str(tmp_path / "texts.jsonl"), "skip": 4}],
        sequence_len=32,
        max_steps=6,
        save_steps=2,
        micro_batch_size=2,
        gradient_accumulation_steps=2,
        warmup_steps=1,
    )
    full = run({**config, "output_dir": str(tmp_path / "full")}, tmp_path / "full.yml")
    assert sorted(losses(full)) == [1, 2, 3, 4, 5, 6]
    assert full.tokens_seen == 6 * 2 * 2 * 32  # full blocks: no padding, no short rows

    crashed_dir = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run({**config, "output_dir": str(crashed_dir)}, tmp_path / "crash.yml", CrashAt(3))
    resumed = run(
        {**config, "output_dir": str(crashed_dir), "resume_from_checkpoint": "auto"},
        tmp_path / "resume.yml",
    )
    expected, got = losses(full), losses(resumed)
    for step in range(3, 7):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_streamed_pretraining_dataset_needs_max_steps(base_config: dict, tmp_path: Path) -> None:
    from axolotl_weave import ConfigError

    config = {key: value for key, value in base_config.items() if key not in ("datasets",)}
    config.update(pretraining_dataset=str(tmp_path / "texts.jsonl"), max_steps=None)
    config = {key: value for key, value in config.items() if value is not None}
    with pytest.raises(ConfigError, match="pretraining_dataset: is streamed, so max_steps"):
        open_session(write_config(tmp_path / "c.yml", config))
