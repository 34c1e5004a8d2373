"""What `weave bench` prints and writes: the table of runs, the notes under it, the profiles' top
ops, and the JSON file.

Not a plugin (no entry point): a helper of the `bench` command plugin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from axolotl_weave import write_atomically

from axolotl_weave_plugins.commands._bench_measure import RunResult

COLUMNS = (
    "run",
    "real tokens/s",
    "MFU",
    "peak memory GiB",
    "packing eff.",
    "real tokens/step",
    "micro-batch x accum.",
    "loss",
)


def command_line() -> str | None:
    """The command as typed (`weave bench ...`), when this process is the CLI."""
    import shlex

    args = sys.argv[1:]
    return "weave " + shlex.join(args) if "bench" in args else None


def ratios(runs: list[RunResult]) -> dict[str, float | None] | None:
    """weave / the baseline (hf or trl) for tokens/s and peak memory, when both ran."""
    if len(runs) < 2:
        return None
    weave, hf = runs[0], runs[1]

    def ratio(a: float | None, b: float | None) -> float | None:
        """a / b, or None when either is unknown (or b is 0)."""
        return a / b if a is not None and b else None

    return {
        "tokens_per_second": ratio(weave.tokens_per_second, hf.tokens_per_second),
        "peak_memory": ratio(weave.peak_memory_gib, hf.peak_memory_gib),
    }


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """`value` formatted, or 'n/a'."""
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def percent(fraction: float | None) -> str:
    """`fraction` as a percentage with one decimal, or 'n/a'."""
    return fmt(None if fraction is None else 100 * fraction, ".1f", "%")


def results_table(results: dict[str, Any]) -> Any:
    """The rich table: one row per run."""
    from rich.table import Table

    title = f"weave bench: {results['shape'] or results['base_model']} on {results['device']}"
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, run in results["runs"].items():
        if run["error"]:
            table.add_row(name, f"[red]{run['error']}[/]", "", "", "", "", run["micro_batch"], "")
            continue
        table.add_row(
            name,
            fmt(run["tokens_per_second"], ",.0f"),
            percent(run["mfu"]),
            fmt(run["peak_memory_gib"], ".2f"),
            percent(run["packing_efficiency"]),
            fmt(run["tokens_per_step"], ",.0f"),
            f"{run['micro_batch']} x {run['gradient_accumulation_steps']}",
            fmt(run["final_loss"], ".4f"),
        )
    return table


def notes(results: dict[str, Any]) -> list[str]:
    """The lines under the table: the ratio, and what MFU and memory mean here."""
    lines = []
    ratio, names = results["ratio"], list(results["runs"])
    if ratio is not None:
        speed = fmt(ratio["tokens_per_second"], ".2f", "x")
        memory = fmt(ratio["peak_memory"], ".2f", "x")
        lines.append(f"[bold]weave / {names[1]}[/]: {speed} real tokens/s, {memory} peak memory")
    pairs = {name: run["extra"].get("pairs_per_second") for name, run in results["runs"].items()}
    if results.get("preference"):
        lines.append(
            "pairs/s: "
            + ", ".join(f"{name} {fmt(value, ',.2f')}" for name, value in pairs.items())
            + " (a pair: a prompt with its chosen and its rejected completion)"
        )
    params, factor = results["parameters"], results["flops_factor"]
    counted = f"{factor}·N FLOPs per real token, N = {params:,} parameters" if params else ""
    if results["peak_tflops"] and params:
        lines.append(f"MFU: {counted}, of a {results['peak_tflops']:g} TFLOP/s bf16 dense peak")
    else:
        lines.append(
            "MFU: n/a (no known bf16 peak for this device: pass --peak-tflops)"
            if params
            else "MFU: n/a (the architecture's parameters could not be counted)"
        )
    lines.append(f"peak memory: {results['memory_kind']}")
    return lines


def print_results(results: dict[str, Any], console: Any) -> None:
    """The table, the notes, and each profiled run's top ops with where its trace went."""
    console.print(results_table(results))
    for line in notes(results):
        console.print(line)
    for name, run in results["runs"].items():
        info = run["extra"].get("profile")
        if info:
            console.print(f"[bold]{name}[/]: top ops by self time over {info['steps']} step(s)")
            console.print(
                (Path(info["trace"]).parent / f"{name}-top-ops.txt").read_text(),
                markup=False,
                highlight=False,
            )
            console.print(f"trace: {info['trace']} (open in chrome://tracing or Perfetto)")


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write the results to `path` (its folder made), through a temporary file renamed into
    place."""
    write_atomically(path, json.dumps(results, indent=2) + "\n")
