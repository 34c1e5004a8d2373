"""PoSE, positional skip-wise training (Axolotl's `use_pose`; Zhu et al., 2023, "PoSE: Efficient
Context Window Extension of LLMs via Positional Skip-wise Training"): rows of at most
`sequence_len` tokens are trained with position ids that skip ahead, so that the model sees the
positions of a `pose_max_context_len` context without its cost.

Each row is cut into `pose_num_chunks` (default 2) equal chunks, or before every token of
`pose_split_on_token_ids` (a cut closer than 2 tokens to the start is dropped); the first chunk
keeps positions 0, 1, ...; before each later one a random number of positions is skipped, drawn
uniformly from what the skips left so far allow, so that no position reaches
`pose_max_context_len`. This is Axolotl's `add_pose_position_ids`, except that the draws are
seeded (`seed` and the row's index: the same positions every run and on every process; Axolotl
draws unseeded). The positions become the batches' `position_ids` column. As in Axolotl they
are given to the eval rows too unless `eval_sample_packing: false`.

Refused with `sample_packing` (packing sets the position ids of its own rows), streamed
datasets and the methods whose rows are not one sequence (`rl:`, reward models).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field, model_validator

PLUGIN_KIND = "method"

COLUMN = "position_ids"


class PoseSettings(PluginConfig):
    """`use_pose` and its keys (Axolotl's names)."""

    use_pose: bool = Field(False, description="PoSE: train with position ids that skip ahead.")
    pose_max_context_len: int | None = Field(
        None, gt=0, description="PoSE: no position id reaches it (required with use_pose)."
    )
    pose_split_on_token_ids: list[int] | None = Field(
        None, description="PoSE: skip only before these tokens (default: equal chunks)."
    )
    pose_num_chunks: int | None = Field(
        None, ge=1, description="PoSE: chunks of a row without split tokens (default 2)."
    )

    @model_validator(mode="after")
    def _pose(self) -> PoseSettings:
        if not self.use_pose:
            return self
        length = getattr(self, "sequence_len", None)
        if self.pose_max_context_len is None:
            raise ValueError(
                "use_pose: set pose_max_context_len, the context PoSE trains the positions of "
                "(e.g. 4 x sequence_len)"
            )
        if length is not None and self.pose_max_context_len < length:
            raise ValueError(
                f"pose_max_context_len: {self.pose_max_context_len} is below sequence_len "
                f"{length}: PoSE extends the context, so give at least sequence_len"
            )
        if getattr(self, "sample_packing", False):
            raise ValueError(
                "use_pose: sample_packing sets the position ids of the rows it packs; set "
                "sample_packing: false"
            )
        for key in ("rl", "reward_model", "process_reward_model", "pretraining_dataset"):
            if getattr(self, key, None):
                raise ValueError(
                    f"use_pose: not with {key} (PoSE gives position ids to supervised rows of "
                    "one sequence, read from files)"
                )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`use_pose`, `pose_max_context_len`, `pose_split_on_token_ids`, `pose_num_chunks`."""
    return PoseSettings


def pose_positions(
    input_ids: list[int],
    max_context_len: int,
    split_on_token_ids: list[int] | None,
    chunks: int,
    draw: random.Random,
) -> list[int]:
    """One row's position ids (Axolotl's `add_pose_position_ids`, `draw` for its `random`)."""
    length = len(input_ids)
    budget = max_context_len - length
    if split_on_token_ids:
        cuts = [i for i, token in enumerate(input_ids) if token in split_on_token_ids]
    else:
        cuts = [i * (length // chunks) for i in range(1, chunks)]
    cuts.append(length)
    if cuts[0] < 2:
        cuts = cuts[1:]
    positions: list[int] = []
    start = skipped = 0
    for cut in cuts:
        skip = draw.randint(0, budget) if start != 0 and budget else 0
        budget -= skip
        skipped += skip
        positions.extend(range(start + skipped, cut + skipped))
        start = cut
    return positions


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `use_pose`, register the run's `Pose` plugin."""
    if getattr(cfg, "use_pose", False):
        register(Pose(cfg), "pose-run")


class Pose:
    """The per-run plugin: adds the `position_ids` column to the rows."""

    def __init__(self, cfg: Any) -> None:
        self.max_context_len = cfg.pose_max_context_len
        self.split_on = cfg.pose_split_on_token_ids
        self.chunks = cfg.pose_num_chunks or 2
        self.seed = cfg.seed
        self.on_eval = getattr(cfg, "eval_sample_packing", None) is not False

    @hookimpl
    def transform_train_data(self, dataset: Any, evaluation: bool, columns: dict[str, Any]) -> Any:
        """The rows with their PoSE position ids (seeded by `seed` and the row's index)."""
        if evaluation and not self.on_eval:
            return None
        columns[COLUMN] = 0

        def add(row: dict[str, Any], index: int) -> dict[str, Any]:
            draw = random.Random(self.seed * 1_000_003 + index + (evaluation << 40))
            ids = row["input_ids"]
            return {
                COLUMN: pose_positions(ids, self.max_context_len, self.split_on, self.chunks, draw)
            }

        # in memory: no cache file beside the prepared rows
        return dataset.map(add, with_indices=True, keep_in_memory=True, desc="PoSE position ids")
