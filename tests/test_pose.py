"""PoSE (`use_pose`; the `pose` plugin): the position ids follow Axolotl's
`add_pose_position_ids` (checked by its rules: contiguous chunks, skips only at the cuts, within
`pose_max_context_len`), seeded; `weave train` hands them to the model; bad configs are refused.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ConfigError, hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_plugins.methods.pose import pose_positions
from axolotl_weave_testing import train_with, write_config


def jumps(positions: list[int]) -> list[int]:
    """Indices where a position is not the one before plus one."""
    return [i for i in range(1, len(positions)) if positions[i] != positions[i - 1] + 1]


@pytest.mark.parametrize("chunks", [2, 3, 5])
def test_equal_chunks_skip_only_at_their_starts_within_the_context(chunks: int):
    ids = list(range(100, 160))
    for seed in range(50):
        positions = pose_positions(ids, 1000, None, chunks, random.Random(seed))
        assert len(positions) == len(ids) and positions[0] == 0
        cuts = {i * (60 // chunks) for i in range(1, chunks)}
        assert set(jumps(positions)) <= cuts
        assert positions[-1] < 1000
        assert all(b > a for a, b in zip(positions, positions[1:], strict=False))


def test_split_tokens_place_the_skips_and_the_draws_are_seeded():
    ids = [1, 5, 5, 9, 5, 5, 5, 9, 5, 5, 9, 5]  # 9 marks a turn
    seen = set()
    for seed in range(30):
        positions = pose_positions(ids, 64, [9], 2, random.Random(seed))
        assert set(jumps(positions)) <= {3, 7, 10}
        assert positions[:3] == [0, 1, 2]
        assert positions[-1] < 64
        seen.add(tuple(positions))
    assert len(seen) > 5  # the skips vary with the draw...
    again = pose_positions(ids, 64, [9], 2, random.Random(7))
    assert again == pose_positions(ids, 64, [9], 2, random.Random(7))  # ...and repeat with it


def test_a_row_as_long_as_the_context_skips_nothing():
    ids = list(range(32))
    assert pose_positions(ids, 32, None, 4, random.Random(0)) == list(range(32))


class SeenPositions:
    """Records the `position_ids` of the first micro-batch of each step."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    @hookimpl(wrapper=True)
    def training_step(self, window: list[dict[str, Any]]) -> Any:
        self.seen.append(window[0]["position_ids"].clone())
        return (yield)


def test_weave_train_gives_the_model_the_pose_positions(tmp_path: Path, base_config: dict):
    config = {
        **base_config,
        "use_pose": True,
        "pose_max_context_len": 512,
        "pose_num_chunks": 3,
        "max_steps": 3,
    }
    seen = SeenPositions()
    state = train_with(config, tmp_path / "pose.yml", seen)
    assert len(seen.seen) == 3
    for positions in seen.seen:
        assert positions.shape[0] == base_config["micro_batch_size"]
        assert int(positions.max()) < 512
    assert any(int(p.max()) >= 128 for p in seen.seen)  # beyond sequence_len: skipped ahead
    plain = train_with(
        {**base_config, "max_steps": 1, "output_dir": str(tmp_path / "plain")},
        tmp_path / "plain.yml",
    )
    first = [r["loss"] for r in state.log_history if "loss" in r][0]
    assert first != pytest.approx([r["loss"] for r in plain.log_history if "loss" in r][0])


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"use_pose": True}, "set pose_max_context_len"),
        ({"use_pose": True, "pose_max_context_len": 64}, "is below sequence_len 128"),
        (
            {"use_pose": True, "pose_max_context_len": 512, "sample_packing": True},
            "sample_packing sets the position ids",
        ),
    ],
)
def test_bad_pose_configs_are_refused(tmp_path: Path, base_config: dict, keys: dict, message: str):
    with pytest.raises(ConfigError) as info:
        open_session(write_config(tmp_path / "bad.yml", {**base_config, **keys}))
    assert message in " ".join(str(info.value).split())
