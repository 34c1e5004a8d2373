"""GRPO's reward functions: `module.function` paths (Axolotl's `trl.reward_funcs`), imported and
checked when the config is validated, before any model loads; or reward models (a folder or a hub
id, `_reward_models`), loaded when first called.

A reward function is called as TRL calls one: ``f(prompts=[...], completions=[...],
completion_ids=[...], trainer_state=..., log_metric=..., log_extra=..., **columns)``, one list
entry per completion, where ``columns`` are the dataset row's other columns (``answer=[...]``),
``trainer_state`` the run's state (``global_step``...) and ``log_metric`` / ``log_extra`` TRL's
logging callbacks; it returns one float (or None: not scored) per
completion. The module is imported with the working directory on the import path (as Axolotl
does), so ``rewards.my_reward`` finds ``./rewards.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from axolotl_weave import PluginError

CALLED_AS = (
    "f(prompts=..., completions=..., completion_ids=..., trainer_state=..., **columns) "
    "-> list[float | None]"
)


@contextlib.contextmanager
def working_directory_importable() -> Iterator[None]:
    """The working directory first on the import path while inside (as Axolotl imports a
    user's `rewards.py`)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def is_importable_path(path: str) -> bool:
    """Whether `path` is `module.name` with a module that imports from the working directory
    or the installed packages (looked up without importing it)."""
    module, _, name = path.rpartition(".")
    if not module or not name:
        return False
    try:
        with working_directory_importable():
            return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def import_object(path: str, key: str) -> Any:
    """The object at `path` (`package.module.name`), or ValueError naming the config `key`."""
    module_name, _, name = path.rpartition(".")
    if not module_name or not name:
        raise ValueError(f"{key}: '{path}' is not a module.function path (e.g. rewards.correct)")
    try:
        with working_directory_importable():
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"{key}: cannot import module '{module_name}' of '{path}' "
            f"({type(exc).__name__}: {exc}); it is looked up from the working directory "
            f"{os.getcwd()} and the installed packages"
        ) from None
    except Exception as exc:  # the user's module failed while importing
        raise ValueError(
            f"{key}: importing '{module_name}' of '{path}' failed: {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(module, name):
        raise ValueError(f"{key}: module '{module_name}' has no '{name}' ('{path}')")
    found = getattr(module, name)
    if not callable(found):
        raise ValueError(f"{key}: '{path}' is not callable (it is a {type(found).__name__})")
    return found


def load_reward_function(path: str, cfg: Any = None) -> Callable[..., Any]:
    """The reward function at `path` (a reward model where `path` names one: a folder or a hub
    id), or ValueError saying what is wrong with it."""
    from axolotl_weave_plugins.rl._reward_models import (
        RewardModelScorer,
        check_model_entry,
        names_a_model,
    )

    if names_a_model(path):
        check_model_entry(path)
        return RewardModelScorer(path, cfg)
    function = import_object(path, "trl.reward_funcs")
    check_signature(path, function)
    return function


def check_signature(path: str, function: Callable[..., Any]) -> None:
    """Refuse a function that cannot be called as TRL calls a reward function."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let the call tell
        return
    if inspect.Parameter.VAR_KEYWORD not in {p.kind for p in params}:
        raise ValueError(
            f"trl.reward_funcs: '{path}' must accept keyword arguments: it is called as "
            f"{CALLED_AS} (columns: the row's other columns); add **kwargs to its parameters"
        )


def reward_name(function: Callable[..., Any]) -> str:
    """The name TRL logs a reward function under (`rewards/<name>/mean`)."""
    return getattr(function, "__name__", type(function).__name__)


def scored(function: Callable[..., Any], name: str, count: int, **kwargs: Any) -> list[float]:
    """`function(**kwargs)`'s rewards for `count` completions as floats (None: NaN, not scored).
    What the function raises, or a wrong count or value, is one `PluginError` naming it (and
    where in its code it raised)."""
    try:
        values = list(function(**kwargs))
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)[1:]  # the first is this call
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise PluginError(
            f"trl.reward_funcs: '{name}' raised {type(exc).__name__}{where}: {exc}; it is "
            f"called as {CALLED_AS}"
        ) from exc
    if len(values) != count:
        raise PluginError(
            f"trl.reward_funcs: '{name}' returned {len(values)} rewards for {count} "
            "completions: return one per completion"
        )
    rewards = []
    for index, value in enumerate(values):
        try:
            rewards.append(math.nan if value is None else float(value))
        except (TypeError, ValueError):
            raise PluginError(
                f"trl.reward_funcs: '{name}' returned {value!r} for completion {index}: "
                "return a number (or None: not scored) per completion"
            ) from None
    return rewards
