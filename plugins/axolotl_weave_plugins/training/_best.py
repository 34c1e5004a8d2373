"""The best evaluation so far, as Hugging Face's Trainer keeps it: `metric_for_best_model`,
`greater_is_better`, `early_stopping_patience`, `load_best_model_at_end` and
`save_strategy: best` (Axolotl's keys).

`metric_for_best_model` names an eval metric (`eval_` is prepended when missing: `loss` is
`eval_loss`, the default); `greater_is_better` defaults to true unless the name ends in `loss`.
An evaluation improves on the best when its value is strictly better. Early stopping ends the
run after `early_stopping_patience` evaluations in a row without improvement (as transformers'
`EarlyStoppingCallback`, threshold 0). The tracker is fed on every process with the same
(reduced) metrics, so every process decides alike; a resumed run replays the evaluations of
its log history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from axolotl_weave import ConfigError


@dataclass
class BestEvaluation:
    """Which evaluation was best so far, and how many evaluations have not improved on it."""

    metric: str
    greater_is_better: bool
    patience: int | None
    best_value: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0

    @classmethod
    def from_config(cls, cfg: Any) -> BestEvaluation | None:
        """The tracker a config asks for (any of the keys above set), or None."""
        wanted = (
            cfg.metric_for_best_model
            or cfg.early_stopping_patience
            or cfg.load_best_model_at_end
            or cfg.save_strategy == "best"
        )
        if not wanted:
            return None
        metric = metric_name(cfg.metric_for_best_model)
        greater = cfg.greater_is_better
        if greater is None:
            greater = not metric.endswith("loss")
        return cls(metric, bool(greater), cfg.early_stopping_patience)

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Take the evaluation at `step`; whether it is the new best."""
        if self.metric not in metrics:
            raise ConfigError(
                f"metric_for_best_model: '{self.metric}' is not an eval metric of this run; "
                f"it has {', '.join(sorted(metrics))}"
            )
        value = float(metrics[self.metric])
        best = self.best_value
        improved = best is None or (value > best if self.greater_is_better else value < best)
        if improved:
            self.best_value, self.best_step, self.evals_since_best = value, step, 0
        else:
            self.evals_since_best += 1
        return improved

    def replay(self, log_history: list[dict[str, Any]]) -> None:
        """Take the evaluations a resumed run's log history holds, in order."""
        for record in log_history:
            if self.metric in record:
                self.update(int(record["step"]), record)

    @property
    def should_stop(self) -> bool:
        """Whether `early_stopping_patience` evaluations in a row have not improved."""
        return self.patience is not None and self.evals_since_best >= self.patience


def metric_name(name: str | None) -> str:
    """The eval metric `metric_for_best_model` names (`eval_loss` by default)."""
    name = name or "loss"
    return name if name.startswith("eval_") else f"eval_{name}"


def loads_best_model(cfg: Any) -> bool:
    """`load_best_model_at_end`, which early stopping turns on unless it is set false (as in
    Axolotl)."""
    if cfg.load_best_model_at_end is not None:
        return bool(cfg.load_best_model_at_end)
    return bool(cfg.early_stopping_patience)
