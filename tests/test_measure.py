"""`measure_objective`, the evaluation loop of the training loop and `weave evaluate`: the loss
per unit over every batch, a metric summed over the units reported per unit, a `(sum, count)`
metric over its own count (left out where that count is 0), and the unit's name."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from axolotl_weave import measure_objective
from axolotl_weave_testing import OneProcessStrategy


class Rows:
    """An objective whose unit is a row: each batch's `loss` column summed; metrics `score`
    (per row) and `good` (a mean over the rows flagged good)."""

    unit = "row"

    def count(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.as_tensor(len(batch["loss"]))

    def __call__(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        return batch["loss"].sum()

    def measures(
        self, model: Any, batch: dict[str, Any], strategy: Any
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        good = batch["good"].float()
        return self(model, batch), {
            "score": batch["score"].sum(),
            "good_score": ((batch["score"] * good).sum(), good.sum()),
            "never": (batch["score"].sum() * 0, torch.tensor(0.0)),
        }


def batch(loss: list[float], score: list[float], good: list[bool]) -> dict[str, torch.Tensor]:
    return {
        "loss": torch.tensor(loss),
        "score": torch.tensor(score),
        "good": torch.tensor(good),
    }


def test_metrics_are_means_per_unit_or_over_their_own_count() -> None:
    batches = [
        batch([1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [True, False, True]),
        batch([4.0], [40.0], [True]),
    ]
    measured = measure_objective(Rows(), None, batches, OneProcessStrategy())
    assert measured.unit == "row" and measured.units == 4
    assert measured.loss == pytest.approx(10.0 / 4)
    assert measured.metrics["score"] == pytest.approx(100.0 / 4)
    assert measured.metrics["good_score"] == pytest.approx((10.0 + 30.0 + 40.0) / 3)
    assert "never" not in measured.metrics  # a count of 0: no mean to report


def test_an_objective_without_measures_or_unit_is_a_token_loss() -> None:
    class Tokens:
        def count(self, batch: dict[str, Any]) -> torch.Tensor:
            return torch.as_tensor(len(batch["loss"]))

        def __call__(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
            return batch["loss"].sum()

    measured = measure_objective(
        Tokens(), None, [batch([2.0, 4.0], [0, 0], [1, 1])], OneProcessStrategy()
    )
    assert measured.unit == "token" and measured.loss == pytest.approx(3.0)
    assert measured.metrics == {}


def test_summarize_derives_what_is_not_a_mean() -> None:
    """An objective's `summarize` gets the means and the units: KTO's margin is the difference
    of its two means, GRPO's reward std comes from the means of the reward and its square."""
    from axolotl_weave_plugins.rl._grpo import GRPOObjective
    from axolotl_weave_plugins.rl._kto import KTOObjective

    class Summarized(Rows):
        @staticmethod
        def summarize(metrics: dict[str, float], units: int) -> dict[str, float]:
            return {**metrics, "units_seen": float(units)}

    measured = measure_objective(
        Summarized(), None, [batch([1.0, 3.0], [2.0, 4.0], [True, True])], OneProcessStrategy()
    )
    assert measured.metrics["units_seen"] == 2.0

    kto = KTOObjective.summarize({"rewards/chosen": 0.5, "rewards/rejected": -0.25}, 4)
    assert kto["rewards/margins"] == pytest.approx(0.75)
    rewards = torch.tensor([1.0, 1.0, 3.0, 3.0])
    means = {"reward": float(rewards.mean()), "reward_squared": float((rewards**2).mean())}
    grpo = GRPOObjective.summarize(means, len(rewards))
    assert "reward_squared" not in grpo
    assert grpo["reward_std"] == pytest.approx(float(rewards.std()))  # Bessel-corrected
