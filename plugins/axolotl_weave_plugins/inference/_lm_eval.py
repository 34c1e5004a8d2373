"""EleutherAI's lm-evaluation-harness (`lm_eval`) run on a model already in memory, for
`weave lm-eval`: which tasks (names, `name:N` few-shot counts, globs, local YAML folders), the
harness's `HFLM` wrapped around the loaded model and tokenizer (so nothing is fetched from a
hub), `simple_evaluate` per few-shot count, and the results as table rows and JSON.

Not a plugin (no entry point): a helper of `lm_eval_command`. `lm_eval` is imported inside the
functions, after `require_lm_eval` has named the extra when it is absent.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axolotl_weave import ConfigError, WeaveError, require

INSTALL = "'axolotl-weave[lm-eval]'"
FEATURE = "weave lm-eval"
GLOB_CHARACTERS = frozenset("*?[")
MERGED_SECTIONS = ("results", "group_subtasks", "configs", "versions", "n-shot")
MERGED_SECTIONS += ("higher_is_better", "n-samples")
"""The per-task sections of `simple_evaluate`'s answer, merged across few-shot runs."""


@dataclass(frozen=True)
class TaskRequest:
    """One requested task: its name (or glob, or YAML path) and its few-shot count (None: the
    task's own, else `--num-fewshot`)."""

    name: str
    num_fewshot: int | None


@dataclass(frozen=True)
class MetricRow:
    """One line of the results table: `task` the key of the harness's sections, `label` its
    alias (indented under its group)."""

    task: str
    label: str
    metric: str
    value: Any
    stderr: Any


def require_lm_eval(feature: str = FEATURE) -> Any:
    """The `lm_eval` module, or `MissingDependencyError` naming the extra."""
    return require("lm_eval", feature=feature, install=INSTALL)


def parse_tasks(specs: Sequence[str], where: str) -> list[TaskRequest]:
    """`["arc_easy", "hellaswag:10"]` (or one comma-separated string each) as requests;
    `name:N` is Axolotl's way to give a task its own few-shot count. `where` names the flag or
    key in messages."""
    requests: list[TaskRequest] = []
    for spec in specs:
        for part in (p.strip() for p in str(spec).split(",")):
            if not part:
                continue
            name, sep, shots = part.rpartition(":")
            if not sep or not shots.isdigit() or not name:
                requests.append(TaskRequest(part, None))
                continue
            requests.append(TaskRequest(name, int(shots)))
    if not requests:
        raise ConfigError(
            f"{where}: no lm-eval task named: give --tasks a,b (or lm_eval_tasks: [a, b] in the "
            "config); `lm-eval ls tasks` lists the harness's tasks"
        )
    return requests


def batch_size_of(value: int | str, where: str) -> int | str:
    """A harness batch size: a positive int, `auto` (the largest that fits, found by the
    harness once) or `auto:N` (found again N times as inputs get shorter); else a `ConfigError`
    naming `where`."""
    text = str(value).strip()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    head, _, times = text.partition(":")
    if head == "auto" and (not times or (times.isdigit() and int(times) >= 1)):
        return text
    raise ConfigError(
        f"{where}: '{value}' is not a batch size: give a whole number of 1 or more, auto (the "
        "largest that fits), or auto:N (found again N times)"
    )


def check_include_path(include_path: str | None) -> Path | None:
    """The `--include-path` folder (of task YAML files), refused when it does not exist."""
    if include_path is None:
        return None
    folder = Path(include_path).expanduser()
    if not folder.exists():
        raise WeaveError(
            f"--include-path {folder}: no such folder (give a folder of lm-eval task YAML "
            "files, searched with its subfolders)"
        )
    return folder


def task_manager(requests: Sequence[TaskRequest], include_path: Path | None) -> Any:
    """A `TaskManager` that knows every requested task. When the requests are self-contained
    (tasks of `include_path`, or YAML files of single tasks), only those are indexed: a
    fraction of a second, where the harness's own ~15,000 tasks take several."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(
        include_path=str(include_path) if include_path else None, include_defaults=False
    )
    names = [r.name for r in requests if not has_glob(r.name)]
    if not unknown_tasks(local, requests) and self_contained(local.task_index, names):
        return local
    return TaskManager(include_path=str(include_path) if include_path else None)


def self_contained(index: dict[str, Any], names: Sequence[str]) -> bool:
    """Whether every name is in `index`, or the path of a YAML file of one task, and every
    group among them names only tasks and groups of `index` (or inline task configs), all
    the way down."""
    from lm_eval.tasks._index import TaskIndex

    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        entry = index.get(name)
        if entry is None:
            from_file = TaskIndex.entry_from_path(Path(name)) if Path(name).is_file() else None
            if from_file is None or from_file.kind.name not in ("TASK", "PY_TASK"):
                return False  # a group's file may name the harness's own tasks
            continue
        children = (entry.cfg or {}).get("task") if entry.kind.name == "GROUP" else None
        for child in children if isinstance(children, list) else []:
            if isinstance(child, str):
                pending.append(child)
    return True


def has_glob(name: str) -> bool:
    """Whether a task name is a pattern (`mmlu_*`)."""
    return bool(GLOB_CHARACTERS & set(name))


def unknown_tasks(manager: Any, requests: Sequence[TaskRequest]) -> list[str]:
    """The requested names the manager does not know: not a task, group or tag, not a YAML
    file, and (a pattern) matching none."""
    unknown = []
    for request in requests:
        if has_glob(request.name):
            if not manager.match_tasks([request.name]):
                unknown.append(request.name)
        elif request.name not in manager.task_index and not Path(request.name).is_file():
            unknown.append(request.name)
    return unknown


def check_tasks(manager: Any, requests: Sequence[TaskRequest], where: str) -> None:
    """Refuse, in one message, every requested task the manager does not know, with the
    close names of each."""
    unknown = unknown_tasks(manager, requests)
    if not unknown:
        return
    known = manager.all_tasks
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        parts.append(f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    raise ConfigError(
        f"{where}: unknown lm-eval task{plural} {'; '.join(parts)}. `lm-eval ls tasks` lists the "
        f"{len(known)} known here; a task of your own is a YAML file: its path, or its folder "
        "given as --include-path"
    )


def expand(
    manager: Any, requests: Sequence[TaskRequest], where: str
) -> dict[int | None, list[str]]:
    """The task names to run, by few-shot count (patterns expanded), in the order given; a
    task asked for with two few-shot counts is refused."""
    by_shots: dict[int | None, list[str]] = {}
    shots_of: dict[str, int | None] = {}
    for request in requests:
        names = manager.match_tasks([request.name]) if has_glob(request.name) else [request.name]
        group = by_shots.setdefault(request.num_fewshot, [])
        for name in names:
            if shots_of.setdefault(name, request.num_fewshot) != request.num_fewshot:
                raise ConfigError(
                    f"{where}: task '{name}' is named twice with different few-shot counts "
                    f"({shots_of[name]} and {request.num_fewshot}); its results would collide: "
                    "run one count at a time"
                )
            if name not in group:
                group.append(name)
    return by_shots


def run_harness(
    model: Any,
    tokenizer: Any,
    manager: Any,
    by_shots: dict[int | None, list[str]],
    num_fewshot: int | None,
    batch_size: int | str,
    limit: float | None,
) -> dict[str, Any]:
    """`simple_evaluate` once per few-shot count on `HFLM(pretrained=model, tokenizer=...)`,
    the answers merged into one (the per-task sections joined; the run's settings are the
    first run's, with `n-shot` per task)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    quiet = logging.getLogger("lm_eval.models.huggingface")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warnings that the model is an object: meant so here
    try:
        harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    finally:
        quiet.setLevel(level)
    merged: dict[str, Any] = {}
    for shots, names in by_shots.items():
        result = lm_eval.simple_evaluate(
            model=harness_model,
            tasks=names,
            num_fewshot=shots if shots is not None else num_fewshot,
            batch_size=batch_size,
            limit=limit,
            task_manager=manager,
            log_samples=False,
        )
        if result is None:  # not the main process
            continue
        if not merged:
            merged = result
            continue
        for section in MERGED_SECTIONS:
            merged.setdefault(section, {}).update(result.get(section) or {})
    return merged


def metric_rows(results: dict[str, Any]) -> list[MetricRow]:
    """Table rows: every metric of every task and group (`acc`, `exact_match (strict-match)`
    when a filter other than `none` applies), with its standard error when there is one."""
    rows = []
    for task, metrics in (results.get("results") or {}).items():
        label = str(metrics.get("alias") or task)
        for key, value in metrics.items():
            metric, sep, where = key.partition(",")
            if not sep or metric.endswith("_stderr"):
                continue
            shown = metric if where == "none" else f"{metric} ({where})"
            stderr = metrics.get(f"{metric}_stderr,{where}")
            rows.append(MetricRow(task, label, shown, value, stderr))
    return rows


def shown(value: Any) -> str:
    """A table cell: numbers to 4 decimals, anything else (`N/A`, missing) as it is."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:.4f}"
    return str(value)


def results_json(results: dict[str, Any], about: dict[str, Any]) -> str:
    """The harness's answer as JSON (its own encoder for numpy values and functions), with
    `about` (what weave evaluated) under `weave`."""
    from lm_eval.utils import handle_non_serializable

    data = {"weave": about, **results}
    return json.dumps(data, indent=2, default=handle_non_serializable) + "\n"
