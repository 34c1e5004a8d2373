"""`embedding_lr` / `embedding_lr_scale`: the input embedding and output layer train at their own
rate without weight decay (Axolotl's grouping), through the schedule, with LoRA's trainable
copies of them too; the configs that would do nothing or conflict are refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._optim import build_optimizer
from axolotl_weave._run import open_session
from axolotl_weave_testing import optimizer_settings as opt_cfg
from axolotl_weave_testing import train_with, write_config
from transformers import AutoModelForCausalLM


def group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, Any]:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


@pytest.mark.parametrize(
    ("keys", "rate"), [({"embedding_lr": 5e-5}, 5e-5), ({"embedding_lr_scale": 0.25}, 2.5e-4)]
)
def test_the_embeddings_get_their_own_rate_and_no_decay(
    tiny_llama_dir: Path, weave_hooks: Any, keys: dict, rate: float
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    optimizer = build_optimizer(opt_cfg(**keys), model, weave_hooks)
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        group = group_of(optimizer, layer.weight)
        assert (group["group"], group["lr"], group["weight_decay"]) == ("embeddings", rate, 0.0)
    others = [g for g in optimizer.param_groups if g["group"] != "embeddings"]
    assert {(g["lr"], g["weight_decay"]) for g in others} == {(1e-3, 0.1), (1e-3, 0.0)}
    held = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())  # each once


def test_an_lr_group_naming_the_embeddings_yields_to_embedding_lr(
    tiny_llama_dir: Path, weave_hooks: Any
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    head = SimpleNamespace(name="head", modules=["lm_head", "layers.0."], lr=7e-4)
    optimizer = build_optimizer(opt_cfg(lr_groups=[head], embedding_lr=5e-5), model, weave_hooks)
    assert group_of(optimizer, model.lm_head.weight)["lr"] == 5e-5
    assert group_of(optimizer, model.model.layers[0].mlp.up_proj.weight)["lr"] == 7e-4


class RateRecorder:
    """At each step: the embeddings' group rate over the rate of the first group (the rate
    itself where that is 0), and whether the trainable input embedding changed."""

    def __init__(self) -> None:
        self.ratios: list[float] = []
        self.embedding_moved: list[bool] = []
        self.previous: torch.Tensor | None = None

    @hookimpl
    def on_step_end(self, model: Any, optimizer: Any) -> None:
        trainable = [
            p for p in model.get_input_embeddings().parameters() if p.requires_grad
        ]  # peft's trainable copy under modules_to_save
        group, first = group_of(optimizer, trainable[0]), optimizer.param_groups[0]
        self.ratios.append(group["lr"] / first["lr"] if first["lr"] else group["lr"])
        now = trainable[0].detach().clone()
        if self.previous is not None:
            self.embedding_moved.append(not torch.equal(now, self.previous))
        self.previous = now


@pytest.mark.parametrize("adapter", [None, "lora"])
def test_a_run_keeps_the_ratio_through_the_schedule(
    base_config: dict, tmp_path: Path, adapter: str | None
) -> None:
    config = {
        **base_config,
        "embedding_lr_scale": 0.1,
        "max_steps": 4,
        "warmup_steps": 2,
        "lr_scheduler": "cosine",
    }
    if adapter:
        config |= {
            "adapter": "lora",
            "lora_target_linear": True,
            "lora_modules_to_save": ["embed_tokens", "lm_head"],
        }
    recorder = RateRecorder()
    train_with(config, tmp_path / "c.yml", recorder)
    assert recorder.ratios == pytest.approx([0.1, 0.1, 0.1, 0.0])  # cosine ends at 0
    assert all(recorder.embedding_moved)


def test_embedding_lr_with_frozen_embeddings_is_refused(base_config: dict, tmp_path: Path) -> None:
    config = {**base_config, "embedding_lr": 1e-5, "adapter": "lora", "lora_target_linear": True}
    with pytest.raises(ConfigError, match="embedding_lr: the input embedding and output layer"):
        train_with(config, tmp_path / "c.yml")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"embedding_lr": 1e-5, "embedding_lr_scale": 2.0}, "both set: give one"),
        ({"embedding_lr": 0}, "embedding_lr"),
        ({"embedding_lr_scale": -1}, "embedding_lr_scale"),
        (
            {"embedding_lr": 1e-5, "adapter": "lora", "lora_target_linear": True,
             "loraplus_lr_ratio": 16},
            "embedding_lr with loraplus_lr_ratio",
        ),
    ],
)  # fmt: skip
def test_embedding_lr_configs_refused(
    base_config: dict, tmp_path: Path, keys: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", {**base_config, **keys}), [])
