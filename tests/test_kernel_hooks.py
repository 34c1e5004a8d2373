"""The kernel's open parts, used by test plugins end to end: a `training_step` of its own on a
format with an extra column and its own metric; a run-scoped (`configure`) plugin with state in
the checkpoints that resumes exactly; `on_train_end` told of a failure with the last checkpoint
intact; `lr_multiplier` in the logged learning rate; the strategy the core steps through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import (
    IGNORE_INDEX,
    SFT_COLUMNS,
    AccelerateStrategy,
    DatasetFormat,
    PluginConfig,
    Strategy,
    hookimpl,
    model_inputs,
)
from axolotl_weave._checkpoint import checkpoints
from axolotl_weave_testing import train_with
from safetensors.torch import load_file

run = train_with  # train in-process with extra plugin objects registered


def losses(state: Any) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in state.log_history if "loss" in e}


# --- a training step of its own, on a column of its own -----------------------------------------


def build_weighted(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Alpaca rows as prompt+response, with a per-row `weight` column (1, 2 or 3)."""

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        prompt = tokenizer(row["instruction"] + "\n")["input_ids"]
        response = tokenizer(row["output"])["input_ids"] + [tokenizer.eos_token_id]
        return {
            "input_ids": prompt + response,
            "labels": [IGNORE_INDEX] * len(prompt) + response,
            "weight": float(1 + len(row["output"]) % 3),
        }

    return dataset.map(tokenize, remove_columns=dataset.column_names)


class WeightedStep:
    """A format declaring a scalar `weight` column, and a training step that weights each row's
    mean token loss by it and reports its own metric."""

    def __init__(self) -> None:
        self.weights_seen: list[torch.Tensor] = []
        self.logged: list[dict[str, float]] = []

    @hookimpl
    def register_dataset_formats(self, register: Any) -> None:
        register(
            DatasetFormat(
                "weighted_alpaca", build=build_weighted, columns={**SFT_COLUMNS, "weight": None}
            )
        )

    @hookimpl
    def training_step(
        self, strategy: Strategy, model: Any, window: list[dict[str, Any]]
    ) -> dict[str, float]:
        total = torch.zeros(())
        for batch in window:
            self.weights_seen.append(batch["weight"].cpu())
            logits = model(**model_inputs({k: batch[k] for k in SFT_COLUMNS})).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            per_token = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX, reduction="none"
            )
            mask = (labels != IGNORE_INDEX).float()
            per_row = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
            loss = (per_row * batch["weight"].float()).mean() / len(window)
            strategy.backward(loss)
            total += loss.detach().cpu()
        weights = torch.cat([b["weight"].float().cpu() for b in window])
        return {"loss": float(total), "weighted/mean_weight": float(weights.mean())}

    @hookimpl
    def on_log(self, metrics: dict[str, float]) -> None:
        self.logged.append(dict(metrics))


def test_a_training_step_plugin_trains_on_its_own_column_and_logs_its_metric(
    base_config: dict, tmp_path: Path
) -> None:
    plugin = WeightedStep()
    config = {
        **base_config,
        "datasets": [{**base_config["datasets"][0], "type": "weighted_alpaca"}],
    }
    state = run(config, tmp_path / "weighted.yml", plugin)

    assert state.global_step == 4
    assert len(plugin.weights_seen) == 4  # one window of one micro-batch per step
    for weights in plugin.weights_seen:  # the scalar column reached the step as a tensor
        assert weights.shape == (2,) and set(weights.tolist()) <= {1.0, 2.0, 3.0}
    train_logs = [m for m in plugin.logged if "loss" in m]
    assert len(train_logs) == 4
    assert all(1.0 <= m["weighted/mean_weight"] <= 3.0 for m in train_logs)
    assert all("grad_norm" in m and "learning_rate" in m for m in train_logs)
    assert "weighted/mean_weight" in state.log_history[0]
    metrics_file = Path(config["output_dir"]) / "metrics.jsonl"
    if metrics_file.exists():  # the JSONL logger writes every metric
        assert "weighted/mean_weight" in metrics_file.read_text()


def test_packing_is_refused_for_rows_with_other_columns(base_config: dict, tmp_path: Path) -> None:
    config = {
        **base_config,
        "sample_packing": True,
        "datasets": [{**base_config["datasets"][0], "type": "weighted_alpaca"}],
    }
    with pytest.raises(Exception, match="cannot be packed.*weight"):
        run(config, tmp_path / "packed.yml", WeightedStep())


# --- a run-scoped plugin whose state lives in the checkpoints ------------------------------------


class EmaSettings(PluginConfig):
    loss_ema: bool = False


class LossEma:
    """The run-scoped object: an exponential moving average of the loss, checkpointed."""

    def __init__(self) -> None:
        self.ema: float | None = None

    @hookimpl
    def on_log(self, metrics: dict[str, float]) -> None:
        if "loss" in metrics:
            loss = metrics["loss"]
            self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss

    @hookimpl
    def save_checkpoint_state(self, folder: Path) -> None:
        (folder / "loss_ema").mkdir()
        (folder / "loss_ema" / "state.json").write_text(json.dumps({"ema": self.ema}))

    @hookimpl
    def load_checkpoint_state(self, folder: Path) -> None:
        self.ema = json.loads((folder / "loss_ema" / "state.json").read_text())["ema"]


class LossEmaFeature:
    """The installed plugin: registers a `LossEma` for the run only when `loss_ema: true`."""

    def __init__(self) -> None:
        self.registered: list[LossEma] = []

    @hookimpl
    def add_config_fields(self) -> type[PluginConfig]:
        return EmaSettings

    @hookimpl
    def configure(self, cfg: Any, register: Any) -> None:
        if cfg.loss_ema:
            ema = LossEma()
            self.registered.append(ema)
            register(ema, "loss-ema-run")


class CrashAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, state: Any) -> None:
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_run_scoped_plugin_with_checkpointed_state_resumes_exactly(
    base_config: dict, tmp_path: Path
) -> None:
    config = {**base_config, "max_steps": 6, "save_steps": 2, "warmup_steps": 1, "loss_ema": True}

    off = LossEmaFeature()
    run({**config, "loss_ema": False, "output_dir": str(tmp_path / "off")}, tmp_path / "o.yml", off)
    assert off.registered == []  # a feature that is off registers nothing

    full = LossEmaFeature()
    run({**config, "output_dir": str(tmp_path / "full")}, tmp_path / "full.yml", full)
    expected = full.registered[0].ema

    crashed = tmp_path / "crashed"
    first = LossEmaFeature()
    with pytest.raises(KeyboardInterrupt):
        run({**config, "output_dir": str(crashed)}, tmp_path / "crash.yml", first, CrashAt(3))
    assert [p.name for p in checkpoints(crashed)] == ["checkpoint-2"]
    assert (crashed / "checkpoint-2" / "loss_ema" / "state.json").is_file()

    again = LossEmaFeature()
    config_resume = {**config, "output_dir": str(crashed), "resume_from_checkpoint": "auto"}
    resumed = run(config_resume, tmp_path / "resume.yml", again)
    assert resumed.global_step == 6
    assert again.registered[0].ema == pytest.approx(expected, rel=1e-6)


# --- failure ------------------------------------------------------------------------------------


class Outcome:
    """Records what `on_train_end` and `post_train` were told."""

    def __init__(self) -> None:
        self.errors: list[BaseException | None] = []
        self.post_train_called = False

    @hookimpl
    def on_train_end(self, error: BaseException | None) -> None:
        self.errors.append(error)

    @hookimpl
    def post_train(self) -> None:
        self.post_train_called = True


class FailAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, state: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"boom at step {self.step}")


def test_a_failed_run_tells_on_train_end_and_keeps_the_last_checkpoint(
    base_config: dict, tmp_path: Path
) -> None:
    config = {**base_config, "max_steps": 6, "save_steps": 2}
    outcome = Outcome()
    with pytest.raises(RuntimeError, match="boom at step 3"):
        run(config, tmp_path / "fail.yml", outcome, FailAt(3))
    assert len(outcome.errors) == 1 and isinstance(outcome.errors[0], RuntimeError)
    assert not outcome.post_train_called
    out = Path(config["output_dir"])
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2"]
    weights = load_file(str(out / "checkpoint-2" / "trainable.safetensors"))
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert not list(out.glob(".checkpoint-*"))  # nothing half-written
    status = json.loads((out / "run_status.json").read_text())  # the JSONL logger's record
    assert status == {"status": "failed", "step": 3, "error": "RuntimeError: boom at step 3"}

    success = Outcome()
    run({**config, "output_dir": str(tmp_path / "ok")}, tmp_path / "ok.yml", success)
    assert success.errors == [None] and success.post_train_called
    assert json.loads((tmp_path / "ok" / "run_status.json").read_text())["status"] == "finished"


# --- the learning rate a plugin scales, and the strategy -----------------------------------------


class HalfRate:
    @hookimpl
    def lr_multiplier(self, step: int) -> float:
        return 0.5


def test_an_lr_multiplier_shows_in_the_logged_learning_rate(
    base_config: dict, tmp_path: Path
) -> None:
    config = {**base_config, "lr_scheduler": "constant"}
    plain = run({**config, "output_dir": str(tmp_path / "a")}, tmp_path / "a.yml")
    halved = run({**config, "output_dir": str(tmp_path / "b")}, tmp_path / "b.yml", HalfRate())
    rates = [e["learning_rate"] for e in plain.log_history if "learning_rate" in e]
    halved_rates = [e["learning_rate"] for e in halved.log_history if "learning_rate" in e]
    assert rates and halved_rates == pytest.approx([r / 2 for r in rates])


class CountingStrategy(AccelerateStrategy):
    """The default strategy, counting what the core asks of it."""

    steps = 0
    saves = 0

    def optimizer_step(self, *args: Any) -> float:
        CountingStrategy.steps += 1
        return super().optimizer_step(*args)

    def save_state(self, *args: Any) -> None:
        CountingStrategy.saves += 1
        super().save_state(*args)


class CountingDistributed:
    def __init__(self) -> None:
        self.strategy: Strategy | None = None

    @hookimpl
    def wrap_distributed(self) -> Strategy:
        from accelerate import Accelerator

        self.strategy = CountingStrategy(Accelerator(cpu=True))
        return self.strategy


def test_the_core_steps_and_saves_through_the_strategy(base_config: dict, tmp_path: Path) -> None:
    CountingStrategy.steps = CountingStrategy.saves = 0
    config = {**base_config, "max_steps": 4, "save_steps": 2, "gradient_accumulation_steps": 2}
    distributed = CountingDistributed()
    run(config, tmp_path / "s.yml", distributed)
    assert CountingStrategy.steps == 4 and CountingStrategy.saves == 2
    assert isinstance(distributed.strategy, Strategy)


class EngineStrategy(AccelerateStrategy):
    """Steps as DeepSpeed's engine does: inside `backward`, at its own accumulation boundary,
    so the core's `optimizer_step` must only report (the core never steps twice)."""

    def __init__(self, accelerator: Any, accumulation: int) -> None:
        super().__init__(accelerator)
        self.accumulation, self.micro_batches, self.optimizer_steps = accumulation, 0, 0

    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        self.engine = super().prepare(model, optimizer, scheduler)
        return self.engine

    def backward(self, loss: Any) -> None:
        super().backward(loss)
        self.micro_batches += 1
        if self.micro_batches % self.accumulation == 0:
            model, optimizer, scheduler = self.engine
            self.accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            self.optimizer_steps += 1

    handles_overflow = True  # as DeepSpeed's engine: it skips an overflowing step itself

    def optimizer_step(self, *args: Any) -> float:
        return float("nan")  # the engine stepped in backward


class EngineDistributed:
    def __init__(self, accumulation: int) -> None:
        self.accumulation = accumulation
        self.strategy: EngineStrategy | None = None

    @hookimpl
    def wrap_distributed(self) -> Strategy:
        from accelerate import Accelerator

        self.strategy = EngineStrategy(Accelerator(cpu=True), self.accumulation)
        return self.strategy


def test_an_engine_that_steps_in_backward_trains_as_the_default_strategy(
    base_config: dict, tmp_path: Path
) -> None:
    config = {**base_config, "max_steps": 4, "gradient_accumulation_steps": 2}
    plain = run({**config, "output_dir": str(tmp_path / "plain")}, tmp_path / "p.yml")
    engine = EngineDistributed(accumulation=2)
    stepped = run({**config, "output_dir": str(tmp_path / "engine")}, tmp_path / "e.yml", engine)
    assert engine.strategy is not None and engine.strategy.optimizer_steps == 4
    assert losses(stepped) == pytest.approx(losses(plain), rel=1e-6)


def test_a_frozen_extra_model_is_placed_for_inference(tiny_llama_dir: Path) -> None:
    """`prepare_frozen` (a reference model's placement): no gradient, evaluation mode, on the
    strategy's device."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    strategy = AccelerateStrategy(Accelerator(cpu=True))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).train()
    reference = strategy.prepare_frozen(model)
    assert not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    assert {p.device for p in reference.parameters()} == {strategy.device}


# --- the loop itself is a plugin; so are the checks before any work -----------------------------


class OwnLoop:
    """A `make_trainer` of its own: one hand-written SGD step on the first micro-batch of the
    built-in padded plan, no checkpoints, its own log entry."""

    def __init__(self) -> None:
        self.parts: dict[str, Any] = {}

    @hookimpl
    def make_trainer(
        self, cfg: Any, hooks: Any, model: Any, strategy: Any, train_set: Any, columns: Any
    ) -> Any:
        self.parts = {"model": model, "train_set": train_set, "columns": columns}
        plan = hooks.plan_batches(cfg, train_set, False, strategy, columns, 0)
        return OwnTrainer(cfg, model, strategy, plan)


class OwnTrainer:
    def __init__(self, cfg: Any, model: Any, strategy: Any, plan: Any) -> None:
        self.cfg, self.model, self.strategy, self.plan = cfg, model, strategy, plan

    def run(self) -> Any:
        from axolotl_weave import TrainState

        batch = next(iter(self.plan.micro_batches(0)))
        logits = self.model(**model_inputs({k: batch[k] for k in SFT_COLUMNS})).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            batch["labels"][:, 1:].flatten(),
            ignore_index=IGNORE_INDEX,
        )
        loss.backward()
        with torch.no_grad():
            for param in self.model.parameters():
                if param.grad is not None:
                    param -= 0.1 * param.grad
        state = TrainState(output_dir=Path(self.cfg.output_dir), global_step=1, max_steps=1)
        state.log_history.append({"step": 1, "own_loss": float(loss)})
        return state


def test_a_plugin_loop_answers_make_trainer_before_the_built_in_one(
    base_config: dict, tmp_path: Path
) -> None:
    loop = OwnLoop()
    out = tmp_path / "out"
    state = run({**base_config, "output_dir": str(out), "max_steps": 5}, tmp_path / "c.yml", loop)
    assert state.log_history == [
        {"step": 1, "own_loss": pytest.approx(state.log_history[0]["own_loss"])}
    ]
    assert loop.parts["train_set"] is not None and "labels" in loop.parts["columns"]
    assert checkpoints(out) == []  # the built-in loop (which saves) did not run
    assert (out / "model.safetensors").is_file()  # post_train saved what this loop trained
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1


class OwnCheck:
    """A `check_run` that refuses every run whose `seed` is 13."""

    @hookimpl
    def check_run(self, cfg: Any) -> list[str]:
        return ["seed: 13 is unlucky"] if cfg.seed == 13 else []


def test_check_run_problems_are_reported_together_before_any_work(
    base_config: dict, tmp_path: Path
) -> None:
    from axolotl_weave import ConfigError

    out = tmp_path / "out"
    config = {**base_config, "output_dir": str(out), "seed": 13}
    config["resume_from_checkpoint"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError) as raised:
        run(config, tmp_path / "c.yml", OwnCheck())
    message = str(raised.value)
    assert "seed: 13 is unlucky" in message  # this plugin's
    assert (
        "resume_from_checkpoint:" in message and "not a complete checkpoint" in message
    )  # the loop's
    assert not out.exists()  # nothing written
