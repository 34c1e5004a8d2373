"""Grokfast (Axolotl's `grokfast_alpha`, `grokfast_lamb`; Lee et al., 2024, "Grokfast:
Accelerated Grokking by Amplifying Slow Gradients"): before each optimizer step, every trainable
parameter's gradient g gets its slow component added,

    ema = grokfast_alpha * ema + (1 - grokfast_alpha) * g;    g = g + grokfast_lamb * ema

with the first step's `ema` started at its gradient, after clipping (`max_grad_norm`) and before
the optimizer reads the gradients, as Axolotl's `GrokfastPlugin` does from `on_pre_optimizer_step`
(its `gradfilter_ema`). On when either key is set or `plugins:` lists Axolotl's
`axolotl.integrations.grokfast.GrokfastPlugin` (then unset keys take its defaults, 0.98 and 2.0).

The moving average is saved in checkpoints (`grokfast/ema-<rank>.pt`, each process's own, so
sharded gradients keep their shards), so a resumed run continues exactly; Axolotl restarts it.
Refused with DeepSpeed, whose engine steps its own partitioned gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from axolotl_weave import PluginConfig, hookimpl
from pydantic import Field, model_validator

PLUGIN_KIND = "method"

AXOLOTL_ALIASES = ("axolotl.integrations.grokfast.GrokfastPlugin",)

DEFAULTS = {"grokfast_alpha": 0.98, "grokfast_lamb": 2.0}
"""Axolotl's `GrokfastArgs` defaults."""

STATE_FOLDER = "grokfast"


class GrokfastSettings(PluginConfig):
    """`grokfast_alpha` and `grokfast_lamb`."""

    grokfast_alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Grokfast: the gradients' moving-average decay (on when set; default 0.98).",
    )
    grokfast_lamb: float | None = Field(
        None, description="Grokfast: how much of the moving average is added (default 2.0)."
    )

    @model_validator(mode="after")
    def _grokfast_engine(self) -> GrokfastSettings:
        if grokfast_on(self) and getattr(self, "deepspeed", None):
            raise ValueError(
                "grokfast_alpha: Grokfast filters the gradients before the optimizer step, "
                "which DeepSpeed takes inside its engine on its own partitioned gradients; use "
                "DDP or FSDP (fsdp_version: 2), or leave grokfast out"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`grokfast_alpha`, `grokfast_lamb`."""
    return GrokfastSettings


def grokfast_on(cfg: Any) -> bool:
    """Whether a key is set, or Axolotl's Grokfast plugin is listed."""
    listed = set(getattr(cfg, "plugins", None) or []) & set(AXOLOTL_ALIASES)
    return bool(listed) or any(getattr(cfg, key, None) is not None for key in DEFAULTS)


def setting(cfg: Any, key: str) -> float:
    """The key's value, or Axolotl's default."""
    value = getattr(cfg, key, None)
    return DEFAULTS[key] if value is None else value


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With Grokfast on, register the run's `GradientFilter`."""
    if grokfast_on(cfg):
        register(
            GradientFilter(setting(cfg, "grokfast_alpha"), setting(cfg, "grokfast_lamb")),
            "grokfast-run",
        )


class GradientFilter:
    """The per-run plugin: the moving average of the gradients, applied inside every optimizer
    step the strategy takes (after its clipping)."""

    def __init__(self, alpha: float, lamb: float) -> None:
        self.alpha, self.lamb = alpha, lamb
        self.ema: dict[str, Any] | None = None
        self.strategy: Any = None

    @hookimpl(wrapper=True)
    def wrap_distributed(self, cfg: Any) -> Generator[None, Any, Any]:
        """The run's strategy, its optimizer steps filtered."""
        strategy = yield
        self.filter_steps_of(strategy)
        return strategy

    def filter_steps_of(self, strategy: Any) -> None:
        """Make `strategy.optimizer_step` filter the gradients between its clipping and the
        optimizer's step (the optimizer's `step` wrapped once, on the first step)."""
        self.strategy = strategy
        take_step = strategy.optimizer_step
        wrapped: set[int] = set()

        def optimizer_step(model: Any, optimizer: Any, scheduler: Any, max_grad_norm: float):
            if id(optimizer) not in wrapped:
                wrapped.add(id(optimizer))
                step = optimizer.step

                def filtered_step(*args: Any, **kwargs: Any) -> Any:
                    self.apply(strategy.unwrap(model))
                    return step(*args, **kwargs)

                optimizer.step = filtered_step
            return take_step(model, optimizer, scheduler, max_grad_norm)

        strategy.optimizer_step = optimizer_step

    def apply(self, model: Any) -> None:
        """Axolotl's `gradfilter_ema` on the model's gradients, in place."""
        import torch

        with torch.no_grad():
            if self.ema is None:
                self.ema = {
                    name: param.grad.detach().clone()
                    for name, param in model.named_parameters()
                    if param.requires_grad and param.grad is not None
                }
            for name, param in model.named_parameters():
                if param.requires_grad and param.grad is not None:
                    self.ema[name] = self.ema[name] * self.alpha + param.grad * (1 - self.alpha)
                    param.grad.add_(self.ema[name] * self.lamb)

    @hookimpl
    def save_checkpoint_state(self, state: Any, folder: Path, strategy: Any) -> None:
        """This process's moving average (in the checkpoint's staging folder)."""
        if self.ema is None:
            return
        import torch

        target = folder / STATE_FOLDER
        target.mkdir(parents=True, exist_ok=True)
        torch.save(self.ema, target / f"ema-{strategy.process_index}.pt")

    @hookimpl
    def load_checkpoint_state(self, state: Any, folder: Path, strategy: Any) -> None:
        """Put back the moving average a resumed run continues from."""
        path = folder / STATE_FOLDER / f"ema-{strategy.process_index}.pt"
        if path.is_file():
            import torch

            self.ema = torch.load(path, map_location=strategy.device, weights_only=True)
