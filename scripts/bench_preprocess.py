"""Time `weave preprocess` against the tokenizer alone, on synthetic rows of realistic lengths.

    python scripts/bench_preprocess.py                      # 20,000 alpaca and chat rows
    python scripts/bench_preprocess.py --rows 1000000 --formats alpaca
    python scripts/bench_preprocess.py --huge-row-mb 10     # one 10 MB row beside 10 MB of rows
    python scripts/bench_preprocess.py --rows 1000000 --short --formats alpaca --skip-alone
    python scripts/bench_preprocess.py --scaling            # dataset_processes 1 against 2
    python scripts/bench_preprocess.py --before core/axolotl_weave/_rows.py  # and as in HEAD
    python scripts/bench_preprocess.py --repeat 3           # medians of 3 runs in turn

For each format it writes the rows to a JSON Lines file, then runs, each in its own process:

- `weave preprocess` end to end (a fresh cache: start-up, reading, tokenizing, fitting, caching);
- `weave preprocess` again (a cache hit);
- the tokenizer alone: one batched call on the same texts (the prompt and response texts the
  format tokenizes; for chat rows, each conversation rendered by the same chat template), the
  limit preprocessing can approach; the same texts in calls of 1,000 (one huge call slows
  down on many rows, holding every encoding at once); and that script's whole process
  (importing transformers, loading the tokenizer, reading and rendering the rows), what a
  minimal script pays end to end;
- `axolotl preprocess` on the same file and tokenizer, when Axolotl is installed.

It prints one table: seconds, rows/s, tokens/s, peak resident memory of the largest process,
peak anonymous memory of the process and its workers, CPU seconds, and the wall and CPU ratios
to the tokenizer alone (docs/benchmarks.md explains the columns); then, per format, the run's
ratio to the call alone end to end and beyond start-up (the run minus the cache hit), and to
the tokenizer script's whole process. Text lengths are drawn
log-normal around typical instruction data (prompts ~60 words, responses ~120), from a fixed
seed; `--short` makes them a tenth of that (a million rows in minutes: memory against rows).

`--before FILE...` times `weave preprocess` a second time with those files as they are in
`--before-rev` (default HEAD): a copy of today's `core/` and `plugins/` with them taken from
git goes first on `PYTHONPATH`, so that before and after are measured side by side in one run.
`--scaling` times `weave preprocess` with `dataset_processes: 1` and `2`, with the tokenizer's
own threads on (the default) and off, and prints how much faster two processes are.

`--repeat N` makes every run N times, the rounds one after the other (each round times every
run once, on a fresh cache), and reports each run's median seconds and median CPU seconds
(its largest memory): on a shared machine a single run can be a third slower or faster.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "examples" / "tiny-llama"
WORDS = (
    "the of and to in is that for it as with was on be at by this had not are but from or have "
    "an they which one you were all we her she there would their will when who him been has more "
    "if no out so said what up its about than into them can only other time new some could these "
    "two may first then do any like my now over such our man me even most made after also did "
    "model data train token layer weight gradient batch sequence attention memory kernel value"
).split()


@dataclass
class Measure:
    """One timed run."""

    what: str
    seconds: float
    peak_rss_mb: float
    rows: int
    tokens: int | None
    anon_mb: float = 0.0
    cpu_seconds: float = 0.0


SCALE = {"words": 1.0}
"""Multiplies every text's median length (`--short`: 0.1)."""


def words(rng: random.Random, median: int) -> str:
    """A text of about `median` words (log-normal lengths), wrapped in sentences."""
    count = max(1, int(rng.lognormvariate(0, 0.8) * median * SCALE["words"]))
    picked = [rng.choice(WORDS) for _ in range(count)]
    return " ".join(picked).capitalize() + "."


def alpaca_row(rng: random.Random) -> dict[str, str]:
    """An instruction row: an instruction, an input half the time, an output."""
    return {
        "instruction": words(rng, 25),
        "input": words(rng, 35) if rng.random() < 0.5 else "",
        "output": words(rng, 120),
    }


def chat_row(rng: random.Random) -> dict[str, list[dict[str, str]]]:
    """A conversation of one to three exchanges after a system message."""
    messages = [{"role": "system", "content": words(rng, 12)}]
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": words(rng, 40)})
        messages.append({"role": "assistant", "content": words(rng, 90)})
    return {"messages": messages}


FORMATS = {
    "alpaca": (alpaca_row, {"type": "alpaca"}),
    "chat_template": (
        chat_row,
        {"type": "chat_template", "field_messages": "messages", "roles_to_train": ["assistant"]},
    ),
}


def write_rows(path: Path, make: object, count: int, seed: int) -> None:
    """`count` rows of `make(rng)`, one JSON object per line."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(count):
            handle.write(json.dumps(make(rng)) + "\n")  # type: ignore[operator]


def write_config(
    folder: Path,
    data: Path,
    entry: dict,
    sequence_len: int,
    processes: int | None,
    name: str = "config.yml",
    **extra: object,
) -> Path:
    """A weave config preprocessing `data` with the bundled tokenizer into `folder/prepared`."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "base_model": str(TOKENIZER),
        "chat_template": "chatml",
        "datasets": [{"path": str(data), **entry}],
        "dataset_prepared_path": str(folder / "prepared"),
        "sequence_len": sequence_len,
        "output_dir": str(folder / "out"),
        **extra,
    }
    if processes:
        config["dataset_processes"] = processes
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


PROBE = """
import os, resource, subprocess, sys, time

def tree(pid):
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                for child in handle.read().split():
                    found += tree(int(child))
    except OSError:
        pass
    return found

def anon_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
anon = 0
while True:
    anon = max(anon, sum(anon_kb(pid) for pid in tree(child.pid)))
    try:
        out, err = child.communicate(timeout=0.2)
        break
    except subprocess.TimeoutExpired:
        pass
seconds = time.perf_counter() - start
if child.returncode:
    sys.stderr.write(out + err)
    sys.exit(child.returncode)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
peak = usage.ru_maxrss / 1024
print(f"{seconds} {peak} {anon / 1024} {usage.ru_utime + usage.ru_stime}")
print(out, end="")
"""


def timed(
    command: list[str], code: Path | None = None, extra_env: dict[str, str] | None = None
) -> tuple[float, float, float, float, str]:
    """(seconds, peak RSS in MB, peak anonymous memory in MB, CPU seconds, stdout) of
    `command`, run in a fresh child of a fresh process. The CPU seconds (user and system, its
    workers' included) are steadier than the wall time on a shared machine. The peak RSS is
    the largest one process's (its `dataset_processes` workers included), and counts the
    pages of memory-mapped Arrow files it read; the anonymous memory, sampled every 0.2 s,
    is the sum over the process and its workers of what they allocated (what grows when rows
    are kept in Python). With `code`, that copy's `core` and `plugins` go first on
    `PYTHONPATH`; `extra_env` is set in its environment."""
    env = {**os.environ, **(extra_env or {})}
    if code is not None:
        paths = [str(code / "core"), str(code / "plugins"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *command],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    first, _, rest = done.stdout.partition("\n")
    seconds, peak, anon, cpu = first.split()
    return float(seconds), float(peak), float(anon), float(cpu), rest


TOKENIZE_ALONE = """
import json, sys, time
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
kind, path = sys.argv[2], sys.argv[3]
rows = [json.loads(line) for line in open(path, encoding="utf-8")]
if kind == "alpaca":
    texts = []
    for row in rows:
        texts.append(row["instruction"] + "\\n\\n" + row["input"])
        texts.append(row["output"])
else:
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\\n{{ m['content'] }}<|im_end|>\\n"
        "{% endfor %}"
    )
    texts = [tok.apply_chat_template(row["messages"], tokenize=False) for row in rows]
start, cpu = time.perf_counter(), time.process_time()
for first in range(0, len(texts), 1000):
    tok(texts[first : first + 1000])
batched, batched_cpu = time.perf_counter() - start, time.process_time() - cpu
start, cpu = time.perf_counter(), time.process_time()
ids = tok(texts)["input_ids"]
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
tokens = sum(len(x) for x in ids)
print(json.dumps({"seconds": seconds, "cpu": cpu, "tokens": tokens, "batched": batched,
                  "batched_cpu": batched_cpu}))
"""


NO_TOKENIZER_THREADS = {"TOKENIZERS_PARALLELISM": "false"}
"""The tokenizer's own threads off: each process then uses one core, so `dataset_processes`
alone decides how many cores tokenize (with them on, one process already keeps both cores of
a 2-core machine busy during the tokenizer's calls)."""


def tokenizer_alone(kind: str, data: Path, rows: int) -> list[Measure]:
    """The tokenizer on the format's texts: its batched call (the limit), the same texts in
    calls of 1,000, and the whole process around the one call (importing transformers, loading
    the tokenizer, reading the rows and, for chat, rendering them: what a minimal script pays
    end to end; the calls of 1,000, made first in the same process, are taken out)."""
    command = [sys.executable, "-c", TOKENIZE_ALONE, str(TOKENIZER), kind, str(data)]
    seconds, peak, anon, cpu, out = timed(command)
    result = json.loads(out.strip().splitlines()[-1])
    tokens = result["tokens"]
    return [
        Measure(
            f"{kind}: tokenizer alone", result["seconds"], peak, rows, tokens, anon, result["cpu"]
        ),
        Measure(
            f"{kind}: tokenizer alone, calls of 1,000 texts",
            result["batched"],
            peak,
            rows,
            tokens,
            anon,
            result["batched_cpu"],
        ),
        Measure(
            f"{kind}: tokenizer alone, whole process",
            seconds - result["batched"],  # as if it made only the one call
            peak,
            rows,
            tokens,
            anon,
            cpu - result["batched_cpu"],
        ),
    ]


def cached_tokens(folder: Path) -> int | None:
    """The tokens the preprocessed data holds (from the cache's stats), if it can be read."""
    for stats in (folder / "prepared").rglob("stats.json"):
        return int(json.loads(stats.read_text()).get("tokens", 0)) or None
    return None


def weave(config: Path) -> list[str]:
    """The `weave preprocess` command line for `config`."""
    return [sys.executable, "-m", "axolotl_weave._cli", "preprocess", str(config)]


def before_tree(args: argparse.Namespace, work: Path) -> Path | None:
    """A copy of `core/` and `plugins/` with the `--before` files as in `--before-rev`."""
    if not args.before:
        return None
    tree = work / "before-code"
    shutil.rmtree(tree, ignore_errors=True)
    for part in ("core", "plugins"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in args.before:
        old = subprocess.run(
            ["git", "show", f"{args.before_rev}:{name}"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        (tree / name).write_bytes(old)
    return tree


def measure_format(
    kind: str, rows: int, args: argparse.Namespace, work: Path, round_: int = 0
) -> list[Measure]:
    """Every run for one format (round `round_` of `--repeat`: its own folders and caches,
    the rows written once)."""
    make, entry = FORMATS[kind]
    data = work / kind / "rows.jsonl"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        write_rows(data, make, rows, args.seed)
    folder = work / kind / f"round-{round_}"
    folder.mkdir()
    measures = []
    if not args.skip_alone:
        measures += tokenizer_alone(kind, data, rows)
    if args.before:
        config = write_config(folder / "before", data, entry, args.sequence_len, args.processes)
        seconds, peak, anon, cpu, _ = timed(weave(config), before_tree(args, work))
        tokens = cached_tokens(folder / "before")
        measures.append(
            Measure(f"{kind}: weave preprocess, before", seconds, peak, rows, tokens, anon, cpu)
        )
    config = write_config(folder, data, entry, args.sequence_len, args.processes)
    seconds, peak, anon, cpu, _ = timed(weave(config))
    tokens = cached_tokens(folder)
    measures.append(Measure(f"{kind}: weave preprocess", seconds, peak, rows, tokens, anon, cpu))
    seconds, peak, anon, cpu, _ = timed(weave(config))
    measures.append(
        Measure(f"{kind}: weave preprocess (cache hit)", seconds, peak, rows, None, anon, cpu)
    )
    if args.scaling:
        for threads, env in (("", None), (", tokenizer threads off", NO_TOKENIZER_THREADS)):
            for processes in (1, 2):
                config = write_config(
                    folder / f"p{processes}{threads and '-single'}",
                    data,
                    entry,
                    args.sequence_len,
                    processes,
                )
                seconds, peak, anon, cpu, _ = timed(weave(config), extra_env=env)
                what = f"{kind}: dataset_processes: {processes}{threads}"
                measures.append(Measure(what, seconds, peak, rows, tokens, anon, cpu))
    if shutil.which("axolotl") and kind == "alpaca":
        axolotl_config = folder / "axolotl.yml"
        shutil.copy(config, axolotl_config)
        seconds, peak, anon, cpu, _ = timed(["axolotl", "preprocess", str(axolotl_config)])
        measures.append(
            Measure(f"{kind}: axolotl preprocess", seconds, peak, rows, None, anon, cpu)
        )
    return measures


def huge_row(args: argparse.Namespace, work: Path, round_: int = 0) -> list[Measure]:
    """One row of `--huge-row-mb` MB against the same megabytes of ordinary rows (alpaca,
    `excess_length_strategy: truncate`, so that the huge row is kept: its first
    `sequence_len` tokens)."""
    folder = work / "huge" / f"round-{round_}"
    folder.mkdir(parents=True)
    rng = random.Random(args.seed)
    size = int(args.huge_row_mb * 1_000_000)
    big = {"instruction": "Summarise.", "input": "", "output": ""}
    text: list[str] = []
    length = 0
    while length < size:
        piece = words(rng, 120)
        text.append(piece)
        length += len(piece) + 1
    big["output"] = " ".join(text)
    measures = []
    for name, lines in (
        ("one huge row", [big]),
        ("same MB of rows", [{**big, "output": p} for p in text]),
    ):
        data = folder / f"{name.replace(' ', '_')}.jsonl"
        data.write_text("".join(json.dumps(line) + "\n" for line in lines))
        config = write_config(
            folder / name.replace(" ", "_"),
            data,
            {"type": "alpaca"},
            args.sequence_len,
            None,
            excess_length_strategy="truncate",
        )
        runs = [("", None)] + ([(", before", before_tree(args, work))] if args.before else [])
        for label, code in runs:
            shutil.rmtree(folder / name.replace(" ", "_") / "prepared", ignore_errors=True)
            seconds, peak, anon, cpu, _ = timed(weave(config), code)
            what = f"huge: {name} ({args.huge_row_mb:g} MB){label}"
            measures.append(Measure(what, seconds, peak, len(lines), None, anon, cpu))
    return measures


def medians(rounds: list[list[Measure]]) -> list[Measure]:
    """One measure per run, in the first round's order: the median of its seconds and, apart,
    of its CPU seconds over the rounds; its largest peak and anonymous memory."""
    import statistics

    by_run: dict[str, list[Measure]] = {}
    for measures in rounds:
        for m in measures:
            by_run.setdefault(m.what, []).append(m)
    return [
        Measure(
            what,
            statistics.median(m.seconds for m in runs),
            max(m.peak_rss_mb for m in runs),
            runs[0].rows,
            runs[0].tokens,
            max(m.anon_mb for m in runs),
            statistics.median(m.cpu_seconds for m in runs),
        )
        for what, runs in by_run.items()
    ]


def print_table(measures: list[Measure]) -> None:
    """The table, each time (wall and CPU) beside its format's tokenizer-alone time."""
    alone = {m.what.split(":")[0]: m for m in measures if m.what.endswith("alone")}
    header = (
        f"{'run':52} {'seconds':>8} {'rows/s':>9} {'tokens/s':>10} {'peak MB':>8} "
        f"{'anon MB':>8} {'x alone':>8} {'cpu s':>7} {'cpu x':>6}"
    )
    print(header)
    print("-" * len(header))
    for m in measures:
        base = alone.get(m.what.split(":")[0])
        ratio = f"{m.seconds / base.seconds:.2f}" if base else "-"
        cpu_ratio = f"{m.cpu_seconds / base.cpu_seconds:.2f}" if base and base.cpu_seconds else "-"
        tokens = f"{m.tokens / m.seconds:,.0f}" if m.tokens else "-"
        print(
            f"{m.what:52} {m.seconds:8.2f} {m.rows / m.seconds:9,.0f} {tokens:>10} "
            f"{m.peak_rss_mb:8.0f} {m.anon_mb:8.0f} {ratio:>8} {m.cpu_seconds:7.1f} {cpu_ratio:>6}"
        )


def print_ratios(measures: list[Measure]) -> None:
    """Per format, the ratios the goals are read by: end to end over the tokenizer alone (its
    one batched call, and its calls of 1,000 texts, which do not slow down as one huge call
    does on many rows); beyond start-up (the run minus the cache hit, which is all start-up)
    over the same, what a large dataset tends to; end to end over the tokenizer script's whole
    process; and, with `--scaling`, two processes against one."""
    by_name = {m.what: m for m in measures}
    for kind in FORMATS:
        hit = by_name.get(f"{kind}: weave preprocess (cache hit)")
        if hit is None:
            continue
        alone = by_name.get(f"{kind}: tokenizer alone")
        calls = by_name.get(f"{kind}: tokenizer alone, calls of 1,000 texts")
        whole = by_name.get(f"{kind}: tokenizer alone, whole process")
        run = by_name[f"{kind}: weave preprocess"]
        beyond = run.seconds - hit.seconds
        if alone and calls and whole:
            print(
                f"{kind}: end to end {run.seconds / alone.seconds:.2f}x the one call, "
                f"{run.seconds / calls.seconds:.2f}x the calls of 1,000; beyond start-up "
                f"({hit.seconds:.2f} s) {beyond / alone.seconds:.2f}x and "
                f"{beyond / calls.seconds:.2f}x; {run.seconds / whole.seconds:.2f}x the whole "
                "process"
            )
        for threads in ("", ", tokenizer threads off"):
            one = by_name.get(f"{kind}: dataset_processes: 1{threads}")
            two = by_name.get(f"{kind}: dataset_processes: 2{threads}")
            if one and two:
                print(
                    f"{kind}: dataset_processes 2 against 1{threads}: "
                    f"{one.seconds / two.seconds:.2f}x end to end, "
                    f"{(one.seconds - hit.seconds) / (two.seconds - hit.seconds):.2f}x beyond "
                    "start-up"
                )


def main() -> None:
    """Parse the options, run every measurement, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--sequence-len", type=int, default=1024)
    parser.add_argument("--processes", type=int, default=None, help="dataset_processes")
    parser.add_argument("--huge-row-mb", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--short", action="store_true", help="texts a tenth as long")
    parser.add_argument("--skip-alone", action="store_true", help="no tokenizer-alone run")
    parser.add_argument("--scaling", action="store_true", help="dataset_processes 1 and 2")
    parser.add_argument("--before", nargs="*", default=[], help="files to time as in git too")
    parser.add_argument("--before-rev", default="HEAD", help="the git revision of --before")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians are reported")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.short:
        SCALE["words"] = 0.1
    started = time.strftime("%Y-%m-%d %H:%M")
    rounds: list[list[Measure]] = []
    with tempfile.TemporaryDirectory(prefix="weave-bench-preprocess-") as tmp:
        work = Path(tmp)
        for round_ in range(args.repeat):
            measures: list[Measure] = []
            for kind in args.formats:
                measures += measure_format(kind, args.rows, args, work, round_)
            if args.huge_row_mb:
                measures += huge_row(args, work, round_)
            rounds.append(measures)
    measures = medians(rounds)
    runs = f", medians of {args.repeat} rounds" if args.repeat > 1 else ""
    print(f"\nweave preprocess vs the tokenizer alone ({args.rows:,} rows{runs}, {started})")
    print_table(measures)
    print_ratios(measures)


if __name__ == "__main__":
    main()
