"""Data parallelism (DDP) and FSDP2 on the CPU with gloo: 2 processes equal 1 process with the
same global batch (micro_batch_size x gradient_accumulation_steps x processes), step for step and
in the final weights, for a full fine-tune and for LoRA with sample packing; a checkpoint of a
2-process run resumes under a two-"node" torchrun launch, FSDP2 sharded and whole
(`FULL_STATE_DICT`) ones under 2 processes;
how rows are dealt out to the processes; FSDP settings refused before any model loads.

Each 2-process run costs about half a minute on two cores, so the runs are shared between
the assertions (module-scoped fixtures): `weave train --num-processes 2` (full fine-tune),
`torchrun --nproc-per-node 2` (LoRA, packed) and the two-node launch (the resume).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import epoch_order, process_share
from axolotl_weave_plugins.batching._multipack import Packer
from axolotl_weave_testing import (
    run_weave,
    train_with,
    two_process_config,
    write_config,
)
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
}
WEAVE = [sys.executable, "-m", "axolotl_weave"]  # as launchers start it
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step_losses(output_dir: Path) -> dict[int, float]:
    """The per-step training losses of a finished run (its `trainer_state.json`)."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {rec["step"]: rec["loss"] for rec in state["log_history"] if "loss" in rec}


def assert_same_run(one: Path, two: Path, weights: str) -> None:
    """The same losses at every step, and the same saved weights (float32 tolerance)."""
    losses_one, losses_two = step_losses(one), step_losses(two)
    assert list(losses_one) == list(losses_two)
    for step, loss in losses_one.items():
        assert losses_two[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    a, b = load_file(str(one / weights)), load_file(str(two / weights))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    return result


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def common(tiny_llama_dir: Path, folder: Path) -> dict[str, Any]:
    return two_process_config(tiny_llama_dir, folder)


def one_process(config: dict[str, Any], folder: Path, name: str) -> Path:
    """Train `config` in this process with the accumulation of every process: the same
    global batch on one process."""
    out = folder / name
    accumulation = config["gradient_accumulation_steps"] * 2
    single = {**config, "gradient_accumulation_steps": accumulation, "output_dir": str(out)}
    train_with(single, folder / f"{name}.yml")
    return out


@pytest.fixture(scope="module")
def full_runs(common: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """A full fine-tune by `weave train --num-processes 2` (checkpoints at steps 2 and 4), and
    the same on one process."""
    out = folder / "full-2"
    config = {**common, "output_dir": str(out), "save_steps": 2}
    check(
        run_weave("train", str(write_config(folder / "full-2.yml", config)), "--num-processes", "2")
    )
    return one_process(common, folder, "full-1"), out


@pytest.fixture(scope="module")
def lora_packed_runs(common: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """LoRA with sample packing under `torchrun --nproc-per-node 2`, and on one process."""
    lora = {
        **common,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "learning_rate": 1e-2,
        "sample_packing": True,
        "micro_batch_size": 1,
        "max_steps": 3,
    }
    out = folder / "lora-2"
    path = write_config(folder / "lora-2.yml", {**lora, "output_dir": str(out)})
    command = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", *WEAVE[1:], "train", str(path)]
    check(subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600))
    return one_process(lora, folder, "lora-1"), out


def test_two_processes_equal_one_full_finetune(full_runs: tuple[Path, Path]) -> None:
    one, two = full_runs
    assert len(step_losses(two)) == 4
    assert_same_run(one, two, "model.safetensors")
    for name in ("model.safetensors", "config.yml", "checkpoint-2", "checkpoint-4"):
        assert (two / name).exists(), name  # written once, by the main process


def test_two_processes_equal_one_lora_with_sample_packing(
    lora_packed_runs: tuple[Path, Path],
) -> None:
    one, two = lora_packed_runs
    assert len(step_losses(two)) == 3
    assert_same_run(one, two, "adapter_model.safetensors")
    assert not (two / "model.safetensors").exists()  # the adapter alone


def test_two_node_launch_resumes_a_two_process_checkpoint_step_for_step(
    common: dict[str, Any], full_runs: tuple[Path, Path], folder: Path
) -> None:
    """`torchrun --nnodes 2` (two "nodes" on this machine, one process each) continues the
    2-process run from its step-2 checkpoint: steps 3 and 4 and the weights are the same."""
    _, two = full_runs
    out = folder / "resumed"
    config = {**common, "output_dir": str(out), "resume_from_checkpoint": str(two / "checkpoint-2")}
    path = write_config(folder / "resumed.yml", config)
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                *WEAVE[1:],
                "train",
                str(path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, (stdout[-3000:], stderr[-5000:])
    assert "resumed from" in "".join(stdout for stdout, _ in outputs)
    assert_same_run(two, out, "model.safetensors")


def test_fsdp2_on_two_processes_equals_one_and_its_sharded_checkpoint_resumes(
    common: dict[str, Any], full_runs: tuple[Path, Path], folder: Path
) -> None:
    """FSDP2 (`fsdp_version: 2`) on 2 processes trains what one plain process does; its sharded
    checkpoint (each process its shard) resumes step for step; the final model is one whole HF
    model."""
    one, _ = full_runs
    fsdp = {**common, "fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}}
    out = folder / "fsdp-2"
    path = write_config(folder / "fsdp-2.yml", {**fsdp, "output_dir": str(out), "save_steps": 2})
    check(run_weave("train", str(path), "--num-processes", "2"))
    assert_same_run(one, out, "model.safetensors")
    sharded = sorted(p.name for p in (out / "checkpoint-2" / "sharded").iterdir())
    assert sharded == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    resumed = folder / "fsdp-resumed"
    config = {
        **fsdp,
        "output_dir": str(resumed),
        "resume_from_checkpoint": str(out / "checkpoint-2"),
    }
    path = write_config(folder / "fsdp-resumed.yml", config)
    check(run_weave("train", str(path), "--num-processes", "2"))
    assert_same_run(out, resumed, "model.safetensors")


def test_fsdp2_full_state_dict_checkpoints_are_whole_and_resume(
    common: dict[str, Any], full_runs: tuple[Path, Path], folder: Path
) -> None:
    """`state_dict_type: FULL_STATE_DICT`, as Axolotl's FSDP2 examples spell it (with FSDP1's
    `sharding_strategy` beside `reshard_after_forward`): a checkpoint holds the weights gathered
    whole, in a one-process checkpoint's files, equal to the DDP run's at the same step, and the
    optimizer state by parameter name; it resumes step for step."""
    one, ddp = full_runs
    fsdp = {
        **common,
        "fsdp_version": 2,
        "fsdp_config": {
            "state_dict_type": "FULL_STATE_DICT",
            "sharding_strategy": "FULL_SHARD",
            "reshard_after_forward": True,
        },
    }
    out = folder / "fsdp-full"
    path = write_config(folder / "fsdp-full.yml", {**fsdp, "output_dir": str(out), "save_steps": 2})
    check(run_weave("train", str(path), "--num-processes", "2"))
    assert_same_run(one, out, "model.safetensors")
    checkpoint = out / "checkpoint-2"
    assert not (checkpoint / "sharded").exists()
    whole = load_file(str(checkpoint / "trainable.safetensors"))
    reference = load_file(str(ddp / "checkpoint-2" / "trainable.safetensors"))
    assert whole.keys() == reference.keys()
    for key in whole:
        torch.testing.assert_close(whole[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    assert set(optimizer["state"]) >= set(whole)
    resumed = folder / "fsdp-full-resumed"
    config = {**fsdp, "output_dir": str(resumed), "resume_from_checkpoint": str(checkpoint)}
    path = write_config(folder / "fsdp-full-resumed.yml", config)
    result = check(run_weave("train", str(path), "--num-processes", "2"))
    assert "resumed from" in result.stdout
    assert_same_run(out, resumed, "model.safetensors")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fsdp_config": {"reshard_after_forward": True}}, "without fsdp_version: 2"),
        ({"fsdp_version": 1}, "fsdp_version"),
        ({"fsdp": ["no_shard"]}, "no_shard"),
        (
            {"fsdp_version": 2, "fsdp_config": {"mixed_precision_policy": "fp16"}},
            "mixed_precision_policy",
        ),
        ({"fsdp_version": 2, "fsdp_config": {"sync_module_states": True}}, "sync_module_states"),
        ({"deepspeed": "zero2.json"}, "deepspeed"),
        (  # each crashed at its first step on 2 processes (DTensor parameters)
            {"fsdp_version": 2, "optimizer": "adafactor"},
            "optimizer: adafactor cannot step FSDP2's sharded parameters",
        ),
        ({"fsdp_version": 2, "optimizer": "came_pytorch"}, "came_pytorch cannot step FSDP2"),
        ({"fsdp_version": 2, "optimizer": "paged_adamw_8bit"}, "bitsandbytes' optimizer kernels"),
        ({"fsdp": ["full_shard"], "optimizer": "lion_32bit"}, "bitsandbytes' optimizer kernels"),
    ],
)
def test_fsdp_settings_not_implemented_are_refused(
    common: dict[str, Any], folder: Path, settings: dict[str, Any], message: str
) -> None:
    from axolotl_weave import ConfigError
    from axolotl_weave._run import open_session

    path = write_config(folder / "refused.yml", {**common, "output_dir": "x", **settings})
    with pytest.raises(ConfigError, match=message):
        open_session(path)


def test_a_one_process_checkpoint_stops_every_fsdp2_process_with_one_message(
    common: dict[str, Any], full_runs: tuple[Path, Path], folder: Path
) -> None:
    """A DDP checkpoint (its optimizer state numbered) resumed by a FULL_STATE_DICT FSDP2 run
    on 2 processes: rank 0 finds it unusable, shares the finding, and the run stops with that
    message."""
    _, ddp = full_runs
    options = {"state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True}
    config = {
        **common,
        "fsdp_version": 2,
        "fsdp_config": options,
        "output_dir": str(folder / "fsdp-from-ddp"),
        "resume_from_checkpoint": str(ddp / "checkpoint-2"),
    }
    result = run_weave(
        "train", str(write_config(folder / "fsdp-from-ddp.yml", config)), "--num-processes", "2"
    )
    assert result.returncode != 0
    assert "was saved by one process (its optimizer state is numbered" in result.stderr


def test_fsdp2_layer_class_the_model_lacks_is_refused_before_loading(
    common: dict[str, Any], folder: Path
) -> None:
    config = {
        **common,
        "output_dir": str(folder / "no-layer"),
        "fsdp_version": 2,
        "fsdp_config": {"transformer_layer_cls_to_wrap": "GPT2Block"},
    }
    result = run_weave("train", str(write_config(folder / "no-layer.yml", config)))
    assert result.returncode != 0
    assert "the model has no GPT2Block (its layer classes: LlamaDecoderLayer" in result.stderr


def test_rows_are_dealt_out_by_micro_batches_whatever_the_process_count() -> None:
    """The rows of each optimizer step are the same for 1, 2 or 4 processes with the same global
    batch; every process gets as many rows, none twice."""
    rows, size = 100, 3
    one = epoch_order(rows, seed=7, epoch=0)
    for world in (2, 4):
        shares = [
            epoch_order(rows, 7, 0, rank, world, micro_batch_size=size) for rank in range(world)
        ]
        assert {len(share) for share in shares} == {rows // world}
        seen = [row for share in shares for row in share]
        assert len(seen) == len(set(seen))
        accumulation = 2
        full_steps = rows // (size * accumulation * world)
        for step in range(full_steps):  # a step: `accumulation` micro-batches on each process
            window = slice(step * size * accumulation, (step + 1) * size * accumulation)
            together = sorted(row for share in shares for row in share[window])
            global_batch = size * accumulation * world
            assert together == sorted(one[step * global_batch : (step + 1) * global_batch])
            for rank, share in enumerate(shares):  # micro-batch composition is kept too
                first = share[window][:size]
                start = step * global_batch + rank * size
                assert first == one[start : start + size]
    assert process_share(list(range(10)), 2, 1, 2) == [2, 3, 6, 7, 9]


def test_packed_bins_are_dealt_out_by_micro_batches() -> None:
    lengths = torch.randint(5, 60, (200,)).numpy()
    one = Packer(lengths, capacity=128, micro_batch_size=2, seed=1)
    ranks = [Packer(lengths, 128, 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    bins = one.all_bins(0)
    assert ranks[0].bins(0)[:4] == [bins[0], bins[1], bins[4], bins[5]]
    assert ranks[1].bins(0)[:4] == [bins[2], bins[3], bins[6], bins[7]]
    assert ranks[0].micro_batches_per_epoch() == ranks[1].micro_batches_per_epoch()


def test_num_processes_refuses_a_bad_config_once_before_launching(
    common: dict[str, Any], folder: Path
) -> None:
    path = write_config(folder / "bad.yml", {**common, "micro_batch_sise": 2})
    result = run_weave("train", str(path), "--num-processes", "2")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("micro_batch_sise") == 1  # from this process, none launched
    launched = run_weave("train", str(path), "--num-processes", "2", env={"WORLD_SIZE": "3"})
    assert "the launcher started 3 processes" in launched.stderr


def test_the_accelerate_multinode_example_is_a_valid_accelerate_config() -> None:
    """`examples/accelerate/multinode.yaml` reads as accelerate's own cluster config: two machines
    of DDP processes, the rendezvous on the first."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    example = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "multinode.yaml"
    config = ClusterConfig.from_yaml_file(str(example))
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert (config.num_machines, config.num_processes, config.main_process_port) == (2, 16, 29500)
    assert "-m axolotl_weave train" in example.read_text()
