"""Render README.md's support table from the support matrix's recorded results.

The results are JSON lines written by tests/test_support_matrix.py (one per cell run) and
committed under docs/support/: cpu.jsonl for the CPU cells, gpu.jsonl for the GPU cells,
gptq.jsonl for the GPTQ cells (CPU, with the GPTQ backend on the path: scripts/setup-gptq.sh). The
table is never filled in by hand: a cell shows what a recorded run gave, "not run" where no run
recorded it, "not yet" where the matrix has no such cell yet.

python scripts/support_table.py          # rewrite the table in README.md
python scripts/support_table.py --check  # exit 1 if it is out of date (tests use this)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "docs" / "support"
START = "<!-- support-table:start -->"
END = "<!-- support-table:end -->"
MATRIX = "tests/test_support_matrix.py"


@dataclass(frozen=True)
class Source:
    """A results file and how to produce it."""

    name: str
    label: str
    marker: str
    env: str = ""  # what the pytest run needs on its command line first

    @property
    def path(self) -> Path:
        """The committed results file."""
        return RESULTS / f"{self.name}.jsonl"

    @property
    def command(self) -> str:
        """The command that (re)produces the file."""
        results = f"docs/support/{self.name}.jsonl"
        return (
            f"rm -f {results} && WEAVE_SUPPORT_RESULTS={results} {self.env}"
            f"python -m pytest -q {MATRIX} -m '{self.marker}'"
        )


@dataclass(frozen=True)
class Column:
    """A table column: a matrix cell read from a results file, or None for a cell not built yet."""

    title: str
    source: Source | None = None
    cell: str | None = None


CPU = Source("cpu", "CPU cells", "not gpu and not gptq")
GPU = Source("gpu", "GPU cells", "gpu")
GPTQ = Source(
    "gptq", "GPTQ cells (CPU; scripts/gptq-requirements.txt)", "gptq", "PYTHONPATH=$PWD/.gptq "
)
SOURCES = (CPU, GPU, GPTQ)
COLUMNS = (
    Column("full (fp32, CPU)", CPU, "full"),
    Column("LoRA (fp32, CPU)", CPU, "lora"),
    Column("QLoRA nf4 (CPU)", CPU, "qlora"),
    Column("8-bit LoRA (CPU)", CPU, "lora_8bit"),
    Column("bf16 full (GPU)", GPU, "bf16_full"),
    Column("bf16 LoRA (GPU)", GPU, "bf16_lora"),
    Column("QLoRA (GPU)", GPU, "qlora"),
    Column("GPTQ LoRA (CPU)", GPTQ, "gptq"),
    Column("packing (CPU)", CPU, "packing"),
    Column("packed, flash / varlen attention (GPU)", GPU, "varlen"),
    Column("Liger (GPU)", GPU, "liger"),
)
SYMBOLS = {"pass": "✅", "fail": "❌", "unsupported": "🚫"}

Results = dict[tuple[str, str], dict[str, Any]]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results file in the order written (none if the file is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest(records: list[dict[str, Any]]) -> Results:
    """(family, cell) -> its last record (a rerun of a cell replaces the earlier one)."""
    return {(record["family"], record["cell"]): record for record in records}


def registered_families() -> list[str]:
    """The names of the installed model families."""
    from axolotl_weave._hooks import Hooks
    from axolotl_weave._pluginmanager import make_plugin_manager

    return sorted(
        {family.name for family in Hooks(make_plugin_manager()).model_families().values()}
    )


def cell_text(column: Column, results: dict[str, Results], family: str) -> str:
    """✅ / ❌ / 🚫 (refused, as the family declares) from a recorded run, "not run" without one,
    "not yet" for a cell not built yet."""
    if column.source is None or column.cell is None:
        return "not yet"
    record = results[column.source.name].get((family, column.cell))
    if record is None:
        return "not run"
    return SYMBOLS.get(record["status"], "not run")


def table(families: list[str], results: dict[str, Results]) -> list[str]:
    """The markdown table: a row per family, a column per cell."""
    lines = [
        "| family | " + " | ".join(column.title for column in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for family in families:
        cells = [cell_text(column, results, family) for column in COLUMNS]
        lines.append(f"| `{family}` | " + " | ".join(cells) + " |")
    return lines


def values(records: list[dict[str, Any]], key: str) -> str:
    """The distinct values of `key` over the records, comma-separated."""
    return ", ".join(sorted({str(record.get(key, "?")) for record in records}))


def extra_versions(records: list[dict[str, Any]]) -> str:
    """`, bitsandbytes X` when the records carry its version (older records do not)."""
    found = [record for record in records if "bitsandbytes" in record]
    return f", bitsandbytes {values(found, 'bitsandbytes')}" if found else ""


def provenance(source: Source, records: list[dict[str, Any]]) -> str:
    """Where and when the file's cells ran, with which versions; or how to run them."""
    path = source.path.relative_to(REPO)
    if not records:
        return f"- {source.label}: not run yet (no `{path}`); produce it with `{source.command}`."
    dates = sorted({record["date"] for record in records})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return (
        f"- {source.label} (`{path}`): ran on {values(records, 'where')} "
        f"({values(records, 'platform')}) on {when}; torch {values(records, 'torch')}, "
        f"transformers {values(records, 'transformers')}, peft {values(records, 'peft')}"
        f"{extra_versions(records)}. Rerun: `{source.command}`."
    )


def notes(results: dict[str, Results], families: set[str]) -> list[str]:
    """A line per failing, refused or skipped cell of an installed family, with what it
    recorded."""
    return [
        f"- {SYMBOLS.get(record['status'], 'not run:')} `{family}` {cell}: {record['detail']}"
        for source in results.values()
        for (family, cell), record in sorted(source.items())
        if record["status"] in ("fail", "unsupported", "skip") and family in families
    ]


def render() -> str:
    """The text between the README's markers."""
    records = {source.name: read_records(source.path) for source in SOURCES}
    results = {name: latest(found) for name, found in records.items()}
    families = registered_families()
    failed = notes(results, set(families))
    out = [
        "Generated by `python scripts/support_table.py` from the results that",
        "`tests/test_support_matrix.py` recorded; a test fails when it is out of date.",
        "",
        *table(families, results),
        "",
        *([*failed, ""] if failed else []),
        *(provenance(source, list(results[source.name].values())) for source in SOURCES),
    ]
    return "\n".join(out)


def replaced(text: str, body: str) -> str:
    """`text` with everything between the markers replaced by `body`."""
    if START not in text or END not in text:
        raise SystemExit(f"{README}: the markers {START} and {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main() -> None:
    """Rewrite (or with --check, compare) the table in README.md."""
    text = README.read_text()
    new = replaced(text, render())
    if "--check" in sys.argv:
        if new != text:
            print(f"{README} support table is out of date: run python scripts/support_table.py")
            sys.exit(1)
        return
    README.write_text(new)
    print(f"wrote the support table in {README}")


if __name__ == "__main__":
    main()
