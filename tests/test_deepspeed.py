"""DeepSpeed ZeRO (`deepspeed:`): the shipped configs and how their `auto` values are filled from
the config, what is refused before any model loads, and, on 2 CPU processes (DeepSpeed's CPU
accelerator over gloo), ZeRO-2 and ZeRO-3 training what one plain process does with the same
global batch, step for step and in the final (gathered) weights, and a ZeRO-3 checkpoint
resuming step for step.

The 2-process runs cost over a minute each on two cores: they are `slow` and shared between the
assertions (module-scoped fixtures).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError
from axolotl_weave_plugins.distributed._deepspeed_config import (
    SHIPPED_DIR,
    fill_from_config,
    fill_model_sizes,
    read_config,
    shipped_configs,
)
from axolotl_weave_testing import (
    run_weave,
    train_with,
    two_process_config,
    without_package,
    write_config,
)
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
SHIPPED = [
    "zero1",
    "zero2",
    "zero3",
    "zero3_bf16",
    "zero3_bf16_cpuoffload_params",
    "zero3_bf16_cpuoffload_all",
]
ENV = {"OMP_NUM_THREADS": "1"}
NEEDS_DEEPSPEED = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None or sys.platform != "linux",
    reason="needs DeepSpeed (pip install 'axolotl-weave[deepspeed]') and Linux",
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deepspeed")


@pytest.fixture(scope="module")
def common(tiny_llama_dir: Path, folder: Path) -> dict[str, Any]:
    return two_process_config(tiny_llama_dir, folder)


def validated(common: dict[str, Any], folder: Path, **settings: Any) -> Any:
    """The validated config (`cfg`) of `common` with `settings`."""
    from axolotl_weave._run import open_session

    path = write_config(folder / "cfg.yml", {**common, "output_dir": "out", **settings})
    return open_session(path).cfg


def configured(common: dict[str, Any], folder: Path, **settings: Any) -> None:
    """Validate and run every plugin's `configure` (what a run does before loading anything)."""
    from axolotl_weave._run import open_session

    path = write_config(folder / "cfg.yml", {**common, "output_dir": "out", **settings})
    session = open_session(path)
    session.hooks.unconfigure(session.hooks.configure(session.cfg))


# -- the shipped configs and `auto` ------------------------------------------------------------


def test_the_shipped_configs_are_in_the_repository_and_the_package() -> None:
    assert sorted(shipped_configs()) == sorted(SHIPPED)
    for name in SHIPPED:
        top = REPO / "deepspeed_configs" / f"{name}.json"
        assert json.loads(top.read_text()) == json.loads((SHIPPED_DIR / f"{name}.json").read_text())
        data = read_config(f"deepspeed_configs/{name}.json")  # Axolotl's spelling, from anywhere
        assert data["zero_optimization"]["stage"] == (
            1 if name == "zero1" else 2 if name == "zero2" else 3
        )
    offload = read_config("deepspeed_configs/zero3_bf16_cpuoffload_all.json")["zero_optimization"]
    assert offload["offload_param"]["device"] == offload["offload_optimizer"]["device"] == "cpu"
    assert (
        "offload_optimizer"
        not in read_config("deepspeed_configs/zero3_bf16_cpuoffload_params.json")[
            "zero_optimization"
        ]
    )


def test_auto_values_are_filled_from_the_config(common: dict[str, Any], folder: Path) -> None:
    cfg = validated(
        common,
        folder,
        micro_batch_size=3,
        gradient_accumulation_steps=4,
        max_grad_norm=0.5,
        deepspeed="deepspeed_configs/zero3.json",
    )
    filled = fill_from_config(cfg.deepspeed, cfg, world_size=2)
    assert filled["train_micro_batch_size_per_gpu"] == 3
    assert filled["gradient_accumulation_steps"] == 4
    assert filled["train_batch_size"] == 3 * 4 * 2
    assert filled["gradient_clipping"] == 0.5
    assert filled["bf16"]["enabled"] is False and filled["fp16"]["enabled"] is False
    assert filled["zero_optimization"]["reduce_bucket_size"] == "auto"  # the model's size, later
    fill_model_sizes(filled, hidden_size=64)
    zero = filled["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["stage3_param_persistence_threshold"]) == (4096, 640)
    assert "auto" not in json.dumps(filled)
    inline = {
        "zero_optimization": {"stage": 2},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": 1e-8}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto"}},
    }
    cfg = validated(common, folder, deepspeed=inline, max_grad_norm=0)
    filled = fill_from_config(cfg.deepspeed, cfg, world_size=1)
    assert "optimizer" not in filled and "scheduler" not in filled  # the config's are used
    assert filled["gradient_clipping"] == 0.0 and filled["train_batch_size"] == 4


@pytest.mark.parametrize(
    ("deepspeed", "message"),
    [
        (
            {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 8},
            "is 8 but micro_batch_size gives 2",
        ),
        (
            {"zero_optimization": {"stage": 2}, "gradient_clipping": 2.0},
            "gradient_clipping is 2.0 but max_grad_norm",
        ),
        (
            {"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}},
            "fp16.enabled is True but the config's fp16",
        ),
        (
            {
                "zero_optimization": {"stage": 2},
                "optimizer": {"type": "AdamW", "params": {"lr": 0.1}},
            },
            "optimizer.params.lr is 0.1 but the config's learning_rate",
        ),
        (
            {"zero_optimization": {"stage": 2}, "optimizer": {"type": "Lamb"}},
            "does not describe optimizer: adamw_torch",
        ),
        (
            {
                "zero_optimization": {"stage": 2},
                "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
            },
            "scheduler section sets warmup_num_steps",
        ),
        (
            {"zero_optimization": {"stage": 2, "sub_group_size": "auto"}},
            "fills 'auto' for zero_optimization.sub_group_size",
        ),
        (
            "deepspeed_configs/zero3_bf16.json",
            "bf16.enabled is True but the config's bf16 resolves to False",
        ),
    ],
)
def test_values_that_disagree_with_the_config_are_refused(
    common: dict[str, Any], folder: Path, deepspeed: Any, message: str
) -> None:
    cfg = validated(common, folder, deepspeed=deepspeed)
    with pytest.raises(ConfigError, match=message):
        fill_from_config(cfg.deepspeed, cfg, world_size=1)


# -- refused before any model loads --------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"deepspeed": "missing/zero2.json"}, "'missing/zero2.json' does not exist"),
        ({"deepspeed": "deepspeed_configs/zero9.json"}, "deepspeed_configs/zero1.json"),
        ({"deepspeed": "BROKEN"}, "is not valid JSON: Expecting ',' delimiter at line 1"),
        ({"deepspeed": "LIST"}, "must be a JSON object"),
        ({"deepspeed": {"zero_optimization": {"stage": 0}}}, "stage must be 1, 2 or 3"),
        ({"deepspeed": {"train_batch_size": 8}}, "stage must be 1, 2 or 3"),
    ],
)
def test_a_bad_deepspeed_value_is_refused_at_validation(
    common: dict[str, Any], folder: Path, settings: dict[str, Any], message: str
) -> None:
    (folder / "broken.json").write_text('{"zero_optimization": {"stage": 2} "bf16": 1}')
    (folder / "list.json").write_text("[1, 2]")
    value = settings["deepspeed"]
    if value in ("BROKEN", "LIST"):
        value = str(folder / ("broken.json" if value == "BROKEN" else "list.json"))
    with pytest.raises(ConfigError, match="deepspeed") as caught:
        validated(common, folder, deepspeed=value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}},
            "deepspeed and fsdp_version, fsdp_config are both set",
        ),
        ({"optimizer": "adafactor"}, "optimizer: adafactor cannot be sharded by DeepSpeed ZeRO"),
        ({"optimizer": "came_pytorch"}, "optimizer: came_pytorch cannot be sharded by DeepSpeed"),
        ({"optimizer": "muon"}, "optimizer: muon cannot be sharded by DeepSpeed ZeRO"),
        (
            {"adapter": "lora", "lora_target_linear": True, "relora_steps": 2},
            "relora_steps with deepspeed is not implemented",
        ),
        (
            {
                "micro_batch_size": 3,
                "deepspeed": {
                    "zero_optimization": {"stage": 1},
                    "train_micro_batch_size_per_gpu": 2,
                },
            },
            "is 2 but micro_batch_size gives 3",
        ),
    ],
)
def test_what_deepspeed_cannot_do_is_refused_when_the_run_is_configured(
    common: dict[str, Any], folder: Path, settings: dict[str, Any], message: str
) -> None:
    settings = {"deepspeed": "deepspeed_configs/zero2.json", **settings}
    with pytest.raises(ConfigError, match=message):
        configured(common, folder, **settings)


def test_without_deepspeed_installed_the_extra_is_named_before_any_model_loads(
    common: dict[str, Any], folder: Path
) -> None:
    """As a user sees it: one message naming the extra, a non-zero exit, no traceback."""
    config = {
        **common,
        "output_dir": str(folder / "none"),
        "deepspeed": "deepspeed_configs/zero3.json",
    }
    path = write_config(folder / "none.yml", config)
    result = run_weave("train", str(path), env=without_package("deepspeed", folder))
    assert result.returncode != 0
    assert "pip install 'axolotl-weave[deepspeed]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "parameters:" not in result.stderr + result.stdout  # no model was loaded


# -- 2 CPU processes equal 1 (needs DeepSpeed's CPU accelerator) ---------------------------------


def step_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {rec["step"]: rec["loss"] for rec in state["log_history"] if "loss" in rec}


def assert_same_run(one: Path, two: Path) -> None:
    """The same losses at every step and the same whole saved model (float32 tolerance)."""
    losses_one, losses_two = step_losses(one), step_losses(two)
    assert list(losses_one) == list(losses_two)
    for step, loss in losses_one.items():
        assert losses_two[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    a = load_file(str(one / "model.safetensors"))
    b = load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert b[key].shape == a[key].shape, key  # gathered, not a ZeRO-3 shard
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def train_two(config: dict[str, Any], folder: Path, name: str) -> Path:
    out = folder / name
    path = write_config(folder / f"{name}.yml", {**config, "output_dir": str(out)})
    result = run_weave("train", str(path), "--num-processes", "2", env=ENV)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    return out


@pytest.fixture(scope="module")
def one_process(common: dict[str, Any], folder: Path) -> Path:
    """One plain process (no DeepSpeed) with the accumulation of both: the same global batch."""
    out = folder / "one"
    single = {**common, "gradient_accumulation_steps": 4, "output_dir": str(out)}
    train_with(single, folder / "one.yml")
    return out


@pytest.mark.slow
@NEEDS_DEEPSPEED
def test_zero2_on_two_cpu_processes_equals_one_process(
    common: dict[str, Any], folder: Path, one_process: Path
) -> None:
    two = train_two({**common, "deepspeed": "deepspeed_configs/zero2.json"}, folder, "zero2")
    assert_same_run(one_process, two)


@pytest.mark.slow
@NEEDS_DEEPSPEED
def test_zero3_on_two_cpu_processes_equals_one_process_and_resumes(
    common: dict[str, Any], folder: Path, one_process: Path
) -> None:
    """ZeRO-3 partitions the weights; the saved model is gathered whole; its checkpoint holds
    each process's shards and resumes step for step."""
    zero3 = {**common, "deepspeed": "deepspeed_configs/zero3.json"}
    two = train_two({**zero3, "save_steps": 2}, folder, "zero3")
    assert_same_run(one_process, two)
    shards = sorted(os.listdir(two / "checkpoint-2" / "deepspeed"))
    assert [s for s in shards if s.endswith("optim_states.pt")] == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    resumed = train_two(
        {**zero3, "resume_from_checkpoint": str(two / "checkpoint-2")}, folder, "zero3-resumed"
    )
    assert_same_run(two, resumed)


@pytest.mark.gpu
@pytest.mark.slow
@NEEDS_DEEPSPEED
def test_zero3_bf16_at_world_size_one_trains_on_a_gpu(common: dict[str, Any], folder: Path) -> None:
    """`zero3_bf16` without a launcher: one process, bf16 weights on the GPU; the saved model is
    whole and in bf16."""
    config = {
        **common,
        "bf16": True,
        "max_steps": 2,
        "deepspeed": "deepspeed_configs/zero3_bf16.json",
        "output_dir": str(folder / "gpu"),
    }
    result = run_weave("train", str(write_config(folder / "gpu.yml", config)))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    assert len(step_losses(folder / "gpu")) == 2
    saved = load_file(str(folder / "gpu" / "model.safetensors"))
    reference = load_file(str(Path(common["base_model"]) / "model.safetensors"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in reference.items()}
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}
