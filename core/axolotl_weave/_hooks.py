"""The one place the core calls hooks: typed methods over `pm.hook`, plus the registries.

Every hook call of the core goes through `Hooks`, so a reader (and a type checker) sees each call
with its arguments, and firstresult hooks that nobody answered fail with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from axolotl_weave._errors import PluginError, WeaveError
from axolotl_weave._types import BatchPlan, DatasetFormat, LossFunction, ModelFamily, TrainState

if TYPE_CHECKING:
    import typer
    from datasets import Dataset
    from pydantic import BaseModel

    from axolotl_weave._config import DatasetEntry
    from axolotl_weave._prepared import PreparedData
    from axolotl_weave._strategy import Strategy
    from axolotl_weave._types import DataSource, Trainer

T = TypeVar("T")


class Hooks:
    """Typed calls of every hook on one plugin manager."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._dist_names: dict[int, str] = {}  # "name==version" per distribution, read once

    # -- start-up --------------------------------------------------------------------------
    def config_fields(self) -> list[tuple[str, type[BaseModel]]]:
        """(plugin name, model) for each plugin that adds config fields."""
        fields = []
        for impl in self.pm.hook.add_config_fields.get_hookimpls():
            model = self._call_impl("add_config_fields", impl)
            if model is not None:
                fields.append((impl.plugin_name, model))
        return fields

    def dataset_formats(self) -> dict[str, DatasetFormat]:
        """Every registered dataset format by name."""
        found = self._collect("register_dataset_formats", lambda fmt: [fmt.name])
        return {name: item for name, (item, _) in found.items()}

    def dataset_format_owners(self) -> dict[str, str]:
        """The plugin (with its distribution) that registered each dataset format."""
        found = self._collect("register_dataset_formats", lambda fmt: [fmt.name])
        return {name: owner for name, (_, owner) in found.items()}

    def model_families(self) -> dict[str, ModelFamily]:
        """Every registered model family by the `model_type` values it claims."""
        found = self._collect("register_model_families", lambda fam: list(fam.model_types))
        return {name: item for name, (item, _) in found.items()}

    def adjust_param_groups(self, cfg: Any, model: Any, groups: list[dict[str, Any]]) -> None:
        """Let plugins split or re-rate the optimizer's parameter groups."""
        self.pm.hook.adjust_param_groups(cfg=cfg, model=model, groups=groups)

    def optimizers(self) -> dict[str, Callable[..., Any]]:
        """Every plugin-registered optimizer builder by name."""
        found = self._collect("register_optimizers", lambda item: [item[0]])  # (name, build)
        return {name: item[1] for name, (item, _) in found.items()}

    def lr_schedulers(self) -> dict[str, Callable[..., Any]]:
        """Every plugin-registered learning-rate schedule builder by name."""
        found = self._collect("register_lr_schedulers", lambda item: [item[0]])  # (name, build)
        return {name: item[1] for name, (item, _) in found.items()}

    def rl_methods(self) -> list[str]:
        """Every plugin-registered `rl:` name."""
        return sorted(self._collect("register_rl_methods", lambda name: [name]))

    def data_sources(self) -> list[DataSource]:
        """Every registered data source, in the order they are asked to claim an entry."""
        sources: list[DataSource] = []
        for impl in reversed(self.pm.hook.register_data_sources.get_hookimpls()):
            self._call_impl("register_data_sources", impl, register=sources.append)
        return sources

    def adapt_config_data(self, data: dict[str, Any], known_keys: frozenset[str]) -> list[str]:
        """Let compatibility plugins rewrite the raw config; their warnings."""
        results = self.pm.hook.adapt_config_data(data=data, known_keys=known_keys)
        return [warning for warnings in results if warnings for warning in warnings]

    def explain_unknown_key(self, key: str) -> str | None:
        """A plugin's reason for refusing an unknown key, if any."""
        return self.pm.hook.explain_unknown_key(key=key)

    def configure(self, cfg: Any) -> list[str]:
        """Register the run-scoped plugin objects; returns their names (to `unconfigure`)."""
        names: list[str] = []

        def register(obj: object, name: str) -> None:
            self.pm.register(obj, name)
            names.append(name)

        self.pm.hook.configure(cfg=cfg, register=register)
        return names

    def unconfigure(self, names: list[str]) -> None:
        """Unregister the run-scoped plugin objects `configure` registered."""
        for name in names:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)

    def launch_training(
        self,
        session: Any,
        config: str,
        overrides: list[str],
        global_args: list[str],
        num_processes: int | None,
        launched: int | None,
    ) -> int | None:
        """The exit code of a training a plugin ran elsewhere, or None to train here."""
        return self.pm.hook.launch_training(
            session=session,
            config=config,
            overrides=overrides,
            global_args=global_args,
            num_processes=num_processes,
            launched=launched,
        )

    def add_cli_commands(self, app: typer.Typer) -> None:
        """Let plugins add commands to the CLI."""
        self.pm.hook.add_cli_commands(app=app)

    def _collect(self, hook_name: str, keys: Callable[[T], list[str]]) -> dict[str, tuple[T, str]]:
        """Call a `register(...)` hook per plugin: key -> (item, owner); a key registered by two
        plugins is an error naming both."""
        found: dict[str, tuple[T, str]] = {}
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            owner = self._owner(impl.plugin)

            def register(*parts: Any, owner: str = owner) -> None:
                item = parts[0] if len(parts) == 1 else parts  # register(name, build) too
                for key in keys(item):
                    if key in found and found[key][1] != owner:
                        raise PluginError(
                            f"'{key}' is registered by both {found[key][1]} and {owner} "
                            f"({hook_name}); uninstall or block one of them"
                        )
                    found[key] = (item, owner)

            self._call_impl(hook_name, impl, register=register)
        return found

    def _call_impl(self, hook_name: str, impl: pluggy.HookImpl, **kwargs: Any) -> Any:
        """Call one plugin's implementation directly (to know whose result it is), traced the
        way `pm.hook` calls are, so `--trace-hooks` shows these calls too."""
        from axolotl_weave._pluginmanager import TRACING, trace_call, trace_result

        tracing = getattr(self.pm, TRACING, False)
        if tracing:
            trace_call(hook_name, [impl], kwargs)
        result = impl.function(*[kwargs[name] for name in impl.argnames])
        if tracing:
            trace_result(pluggy.Result(result, None), hook_name, [impl], kwargs)
        return result

    def _owner(self, plugin: object) -> str:
        name = self.pm.get_name(plugin)
        for dist_plugin, dist in self.pm.list_plugin_distinfo():
            if dist_plugin is plugin:
                raw = getattr(dist, "_dist", dist)  # the pm holds it: its id stays its own
                if id(raw) not in self._dist_names:  # reading metadata costs milliseconds
                    self._dist_names[id(raw)] = f"{dist.project_name}=={dist.version}"
                return f"plugin '{name}' ({self._dist_names[id(raw)]})"
        return f"plugin '{name}'"

    # -- data ------------------------------------------------------------------------------
    def load_tokenizer(self, cfg: Any) -> Any:
        """The tokenizer for the config."""
        return self._answered("load_tokenizer", self.pm.hook.load_tokenizer(cfg=cfg))

    def prepare_datasets(self, cfg: Any, tokenizer: Any) -> PreparedData:
        """The tokenized training (and eval) sets, by the data pipeline plugin."""
        result = self.pm.hook.prepare_datasets(cfg=cfg, tokenizer=tokenizer, hooks=self)
        return self._answered("prepare_datasets", result)

    def build_dataset(
        self, entry: DatasetEntry, dataset: Dataset, tokenizer: Any, cfg: Any
    ) -> Dataset:
        """Tokenized rows of one dataset entry, by the plugin owning its `type:`."""
        result = self.pm.hook.build_dataset(
            entry=entry, dataset=dataset, tokenizer=tokenizer, cfg=cfg
        )
        return self._answered(f"build_dataset (type: {entry.type})", result)

    # -- model -----------------------------------------------------------------------------
    def load_model(
        self, cfg: Any, tokenizer: Any, family: ModelFamily | None, purpose: str = "train"
    ) -> Any:
        """The model for `purpose` (train, infer, merge), every method plugin's wrapping applied;
        the loader gets every plugin's `model_load_kwargs`."""
        load_kwargs: dict[str, Any] = {}
        self.pm.hook.model_load_kwargs(cfg=cfg, purpose=purpose, kwargs=load_kwargs)
        result = self.pm.hook.load_model(
            cfg=cfg, tokenizer=tokenizer, family=family, purpose=purpose, load_kwargs=load_kwargs
        )
        return self._answered("load_model", result)

    def patch_attention(self, model: Any, cfg: Any, family: ModelFamily | None) -> None:
        """Let kernel plugins patch the model in place."""
        self.pm.hook.patch_attention(model=model, cfg=cfg, family=family)

    # -- training --------------------------------------------------------------------------
    def build_loss(self, cfg: Any, model: Any) -> LossFunction:
        """The training objective."""
        return self._answered("build_loss", self.pm.hook.build_loss(cfg=cfg, model=model))

    def wrap_distributed(self, cfg: Any) -> Strategy:
        """The device strategy that places model, optimizer and data."""
        return self._answered("wrap_distributed", self.pm.hook.wrap_distributed(cfg=cfg))

    def transform_train_data(
        self,
        cfg: Any,
        dataset: Any,
        evaluation: bool,
        strategy: Strategy,
        columns: dict[str, int | str | None],
        pad_token_id: int,
    ) -> Any:
        """`dataset` as every plugin's `transform_train_data` left it, in turn."""
        for impl in reversed(self.pm.hook.transform_train_data.get_hookimpls()):
            result = self._call_impl(
                "transform_train_data",
                impl,
                cfg=cfg,
                dataset=dataset,
                evaluation=evaluation,
                strategy=strategy,
                columns=columns,
                pad_token_id=pad_token_id,
            )
            dataset = dataset if result is None else result
        return dataset

    def plan_batches(
        self,
        cfg: Any,
        dataset: Any,
        evaluation: bool,
        strategy: Strategy,
        columns: dict[str, int | str | None],
        pad_token_id: int,
    ) -> BatchPlan:
        """How `dataset` is cut into this process's micro-batches (train set or eval set)."""
        result = self.pm.hook.plan_batches(
            cfg=cfg,
            dataset=dataset,
            evaluation=evaluation,
            strategy=strategy,
            columns=columns,
            pad_token_id=pad_token_id,
        )
        return self._answered("plan_batches", result)

    def make_trainer(self, cfg: Any, **parts: Any) -> Trainer:
        """The run's loop over `parts` (model, objective, strategy, train_set, eval_set,
        pad_token_id, columns, data_identity), ready to `run()`."""
        return self._answered(
            "make_trainer", self.pm.hook.make_trainer(cfg=cfg, hooks=self, **parts)
        )

    def check_run(self, cfg: Any) -> tuple[list[str], list[WeaveError]]:
        """What every plugin finds that would make the run fail, before any work: the problems
        returned, and the errors raised (each plugin asked, whatever another raised)."""
        problems: list[str] = []
        errors: list[WeaveError] = []
        for impl in reversed(self.pm.hook.check_run.get_hookimpls()):
            try:
                problems += self._call_impl("check_run", impl, cfg=cfg) or []
            except WeaveError as exc:
                errors.append(exc)
        return problems, errors

    def training_step(
        self,
        cfg: Any,
        strategy: Strategy,
        model: Any,
        objective: LossFunction,
        window: list[dict[str, Any]],
        state: TrainState,
    ) -> dict[str, float]:
        """Forward and backward over one accumulation window; the step's metrics."""
        result = self.pm.hook.training_step(
            cfg=cfg, strategy=strategy, model=model, objective=objective, window=window, state=state
        )
        return self._answered("training_step", result)

    def save_checkpoint_state(
        self, cfg: Any, state: TrainState, model: Any, folder: Path, strategy: Strategy
    ) -> None:
        """Let plugins add their state to a staged checkpoint."""
        self.pm.hook.save_checkpoint_state(
            cfg=cfg, state=state, model=model, folder=folder, strategy=strategy
        )

    def load_checkpoint_state(
        self, cfg: Any, state: TrainState, model: Any, folder: Path, strategy: Strategy
    ) -> None:
        """Let plugins restore their state from the checkpoint resumed from."""
        self.pm.hook.load_checkpoint_state(
            cfg=cfg, state=state, model=model, folder=folder, strategy=strategy
        )

    def lr_multiplier(self, cfg: Any) -> Callable[[int], float]:
        """The product of every plugin's `lr_multiplier` at a step, as a function of the step."""
        caller = self.pm.hook.lr_multiplier
        if not caller.get_hookimpls():
            return lambda step: 1.0

        def factor(step: int) -> float:
            result = 1.0
            for value in caller(cfg=cfg, step=step):
                if value is not None:
                    result *= float(value)
            return result

        return factor

    def on_train_begin(self, cfg: Any, state: TrainState) -> None:
        """Tell loggers training starts."""
        self.pm.hook.on_train_begin(cfg=cfg, state=state)

    def on_step_end(self, cfg: Any, state: TrainState, model: Any, optimizer: Any) -> None:
        """Let methods act after an optimizer step."""
        self.pm.hook.on_step_end(cfg=cfg, state=state, model=model, optimizer=optimizer)

    def on_log(self, cfg: Any, state: TrainState, metrics: dict[str, float]) -> None:
        """Hand new metrics to loggers."""
        self.pm.hook.on_log(cfg=cfg, state=state, metrics=metrics)

    def on_train_end(self, cfg: Any, state: TrainState, error: BaseException | None) -> None:
        """Tell loggers training ended, and how (`error` is None on success)."""
        self.pm.hook.on_train_end(cfg=cfg, state=state, error=error)

    def post_train(
        self, cfg: Any, model: Any, tokenizer: Any, strategy: Strategy, output_dir: Path
    ) -> None:
        """Every plugin's after-training step (saving first)."""
        self.pm.hook.post_train(
            cfg=cfg, model=model, tokenizer=tokenizer, strategy=strategy, output_dir=output_dir
        )

    def may_build_loss(self, cfg: Any) -> bool:
        """Whether some plugin's `build_loss` answers for `cfg`, asked before any model loads
        (with `model=None`; a plugin that needs the model to decide counts as answering)."""
        caller = self.pm.hook.build_loss
        for impl in caller.get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                continue
            try:
                if self._call_impl("build_loss", impl, cfg=cfg, model=None) is not None:
                    return True
            except Exception:
                return True
        return False

    def implementations(self, hook_name: str) -> list[str]:
        """Plugin names implementing `hook_name`, in call order, wrappers marked."""
        caller = getattr(self.pm.hook, hook_name)
        names = []
        for impl in reversed(caller.get_hookimpls()):
            tag = " (wrapper)" if impl.wrapper or impl.hookwrapper else ""
            names.append(f"{impl.plugin_name}{tag}")
        return names

    @staticmethod
    def _answered(what: str, result: T | None) -> T:
        if result is None:
            raise PluginError(f"no installed plugin answered {what}; see `weave plugin list`")
        return result
