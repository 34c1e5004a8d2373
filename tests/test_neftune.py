"""NEFTune (`neftune_noise_alpha`, formerly `noisy_embedding_alpha`): transformers' noise on the
input embeddings in every training forward pass, none in evaluation, none left in the saved
model or adapter."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl, model_inputs
from axolotl_weave._run import open_session, run_scoped_plugins
from axolotl_weave_testing import alpaca_rows, train_with, write_config, write_jsonl
from transformers.integrations.neftune import neftune_post_forward_hook

ALPHA = 5.0
PROBE = torch.tensor([[1, 5, 9, 42, 7, 3, 11, 2]])
"""Token ids whose logits compare a trained model with its saved copy."""


class EmbeddingRecorder:
    """For every forward pass of the training model: the input embeddings' own output (the
    hook is attached before the plugin's, so it runs first), the random state right after it,
    whether the embeddings were training, and what the first decoder layer received; after
    training, the trained model's logits on `PROBE` and the hooks left on its embeddings."""

    def __init__(self, eval_pass_in_steps: bool = False) -> None:
        self.eval_pass_in_steps = eval_pass_in_steps
        self.in_step = False
        self.passes: list[dict[str, Any]] = []
        self.pending: dict[str, Any] = {}
        self.trained_logits: torch.Tensor | None = None
        self.hooks_after_training: int | None = None

    @staticmethod
    def base_of(model: Any) -> Any:
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def embedded(self, module: Any, args: Any, output: torch.Tensor) -> None:
        self.pending = {
            "raw": output.detach().clone(),
            "rng": torch.get_rng_state(),
            "training": module.training,
        }

    def received(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen = {**self.pending, "received": hidden.detach().clone(), "in_step": self.in_step}
        self.passes.append(seen)

    @hookimpl(wrapper=True, tryfirst=True)
    def load_model(self, purpose: str) -> Any:
        model = yield
        if purpose == "train":  # the outermost wrapper: the model as trained (peft's too)
            base = self.base_of(model)
            base.get_input_embeddings().register_forward_hook(self.embedded)
            base.model.layers[0].register_forward_pre_hook(self.received, with_kwargs=True)
        return model

    @hookimpl(tryfirst=True)
    def training_step(self, model: Any, window: list[dict[str, Any]]) -> None:
        """With `eval_pass_in_steps`: inside each step (the noise hook attached), a forward pass
        in evaluation mode, as a method's sampling or reference pass may make; the step proper
        answers after it."""
        if self.eval_pass_in_steps:
            model.eval()
            self.in_step = True
            try:
                with torch.no_grad():
                    model(**model_inputs(window[0]))
            finally:
                model.train()
                self.in_step = False

    @hookimpl
    def post_train(self, model: Any) -> None:
        self.hooks_after_training = len(self.base_of(model).get_input_embeddings()._forward_hooks)
        self.trained_logits = logits(model, PROBE, train_mode=False)


def logits(model: Any, ids: torch.Tensor, train_mode: bool) -> torch.Tensor:
    """The logits of `ids`, with the model in training or evaluation mode (left as it was)."""
    was = model.training
    model.train(train_mode)
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits
    finally:
        model.train(was)


def reference(raw: torch.Tensor, rng: torch.Tensor, alpha: float) -> torch.Tensor:
    """transformers' `neftune_post_forward_hook` on `raw`, drawing from the random state `rng`."""
    module = torch.nn.Embedding(1, 1)  # training mode; the hook reads only the two attributes
    module.neftune_noise_alpha = alpha
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(rng)
        return neftune_post_forward_hook(module, None, raw)


def sft_config(model: Path, folder: Path, **keys: Any) -> dict[str, Any]:
    """16 alpaca rows on `model`, a quarter held out and evaluated at the last step; `keys`
    added."""
    data = write_jsonl(folder / "alpaca.jsonl", alpaca_rows(16))
    return {
        "base_model": str(model),
        "datasets": [{"path": str(data), "type": "alpaca"}],
        "val_set_size": 0.25,
        "sequence_len": 128,
        "micro_batch_size": 2,
        "max_steps": 3,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "seed": 42,
        "bf16": False,
        "tf32": False,
        "output_dir": str(folder / "out"),
        "dataset_prepared_path": str(folder / "prepared"),
        **keys,
    }


@pytest.fixture(scope="module")
def runs(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same short run with NEFTune (recorded) and without. The learning rate is too small
    to move any float32 weight, so every pass of both runs sees the initial model."""
    found: dict[str, Any] = {}
    for name, keys in (("noisy", {"neftune_noise_alpha": ALPHA}), ("plain", {})):
        folder = tmp_path_factory.mktemp(name)
        recorder = EmbeddingRecorder(eval_pass_in_steps=True)
        config = sft_config(tiny_llama_dir, folder, learning_rate=1e-30, **keys)
        found[name] = (train_with(config, folder / "c.yml", recorder), recorder)
        found[f"{name}_out"] = Path(config["output_dir"])
    return found


def losses(state: Any, key: str) -> list[float]:
    return [entry[key] for entry in state.log_history if key in entry]


def test_training_passes_get_transformers_noise_and_evaluation_none(runs: dict) -> None:
    _, recorder = runs["noisy"]
    training = [p for p in recorder.passes if p["training"]]
    evaluation = [p for p in recorder.passes if not p["training"]]
    assert len(training) == 3  # one micro-batch a step
    assert sum(p["in_step"] for p in evaluation) == 3  # one inside each step
    assert any(not p["in_step"] for p in evaluation)  # the evaluation after the last step
    for seen in training:
        noise = seen["received"] - seen["raw"]
        assert torch.equal(seen["received"], reference(seen["raw"], seen["rng"], ALPHA))
        bound = ALPHA / math.sqrt(seen["raw"].shape[1] * seen["raw"].shape[2])
        assert 0.9 * bound < noise.abs().max() <= bound  # uniform noise of NEFTune's scale
    for seen in evaluation:
        assert torch.equal(seen["received"], seen["raw"])
    assert recorder.hooks_after_training == 1  # the recorder's own: the noise hook is gone


def test_neftune_changes_every_training_loss_but_not_the_eval_loss(runs: dict) -> None:
    noisy, plain = runs["noisy"][0], runs["plain"][0]
    assert len(losses(noisy, "loss")) == len(losses(plain, "loss")) == 3
    for with_noise, without in zip(losses(noisy, "loss"), losses(plain, "loss"), strict=True):
        assert with_noise != without
    assert losses(noisy, "eval_loss") == losses(plain, "eval_loss")  # the initial model's
    assert all(torch.equal(p["received"], p["raw"]) for p in runs["plain"][1].passes)


def test_the_saved_model_holds_no_noise(runs: dict, tiny_llama_dir: Path) -> None:
    """The full model saved by the NEFTune run loads as a plain model: its weights' names are the
    base model's, and in training mode as in evaluation it gives the trained model's logits."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    recorder = runs["noisy"][1]
    out = runs["noisy_out"]
    saved, base = (
        load_file(str(out / "model.safetensors")),
        load_file(str(tiny_llama_dir / "model.safetensors")),
    )
    assert set(saved) == set(base)
    assert all(torch.equal(saved[name], base[name]) for name in base)  # the rate moved none
    assert "neftune" not in (out / "config.json").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert recorder.trained_logits is not None
    for train_mode in (False, True):
        assert torch.equal(logits(model, PROBE, train_mode), recorder.trained_logits)


def test_with_lora_the_base_embeddings_get_the_noise_and_the_adapter_none(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    keys = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}
    config = sft_config(tiny_llama_dir, tmp_path, neftune_noise_alpha=ALPHA, **keys)
    config["learning_rate"] = 1e-2
    recorder = EmbeddingRecorder()
    train_with(config, tmp_path / "c.yml", recorder)
    training = [p for p in recorder.passes if p["training"]]
    assert len(training) == 3
    for seen in training:
        assert not torch.equal(seen["received"], seen["raw"])
        assert torch.equal(seen["received"], reference(seen["raw"], seen["rng"], ALPHA))
    assert recorder.hooks_after_training == 1

    out = Path(config["output_dir"])
    assert all("lora_" in key for key in load_file(str(out / "adapter_model.safetensors")))
    session = open_session(write_config(tmp_path / "infer.yml", config))
    with run_scoped_plugins(session):  # the neftune plugin registered, as in a run
        loaded = load_for_inference(session, choose_model(session.cfg, None, None)).model
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), out)
        expected = logits(plain, PROBE, train_mode=False)
        assert recorder.trained_logits is not None
        with plain.disable_adapter():  # the adapter trained: it changes the logits
            assert not torch.equal(expected, logits(plain, PROBE, False))
        torch.testing.assert_close(expected, recorder.trained_logits, rtol=0, atol=1e-6)
        for train_mode in (False, True):
            assert torch.equal(logits(loaded, PROBE, train_mode), expected)


def test_the_old_name_noisy_embedding_alpha_stands_for_neftune_noise_alpha(
    base_config: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        session = open_session(
            write_config(tmp_path / "c.yml", {**base_config, "noisy_embedding_alpha": 7})
        )
    assert "noisy_embedding_alpha is deprecated" in caplog.text
    assert session.cfg.neftune_noise_alpha == 7.0 and session.cfg.noisy_embedding_alpha is None
    with run_scoped_plugins(session):
        assert session.hooks.pm.get_plugin("neftune-run").alpha == 7.0
    both = {**base_config, "noisy_embedding_alpha": 7, "neftune_noise_alpha": 7}
    assert open_session(write_config(tmp_path / "b.yml", both)).cfg.neftune_noise_alpha == 7.0
    with pytest.raises(
        ConfigError, match=r"noisy_embedding_alpha \(7.0\) and neftune_noise_alpha \(5.0\)"
    ):
        open_session(write_config(tmp_path / "d.yml", {**both, "neftune_noise_alpha": 5}))


def test_without_the_key_no_noise_plugin_is_registered(base_config: dict, tmp_path: Path) -> None:
    session = open_session(write_config(tmp_path / "c.yml", base_config))
    with run_scoped_plugins(session):
        assert session.hooks.pm.get_plugin("neftune-run") is None


@pytest.mark.parametrize("key", ["neftune_noise_alpha", "noisy_embedding_alpha"])
@pytest.mark.parametrize("value", [0, -1.5, float("inf"), float("nan")])
def test_a_bad_alpha_is_refused_naming_the_key(
    base_config: dict, tmp_path: Path, key: str, value: float
) -> None:
    with pytest.raises(ConfigError, match=f"{key}: {key} must be a number > 0"):
        open_session(write_config(tmp_path / "c.yml", {**base_config, key: value}))


@pytest.mark.parametrize("rl", ["dpo", "grpo"])
def test_neftune_with_rl_is_refused(base_config: dict, tmp_path: Path, rl: str) -> None:
    config = {**base_config, "rl": rl, "noisy_embedding_alpha": ALPHA}
    with pytest.raises(ConfigError, match=f"noisy_embedding_alpha with rl: {rl}: NEFTune"):
        open_session(write_config(tmp_path / "c.yml", config))
