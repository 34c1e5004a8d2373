"""Time `weave preprocess` against the tokenizer alone, on synthetic rows of realistic lengths.

    python scripts/bench_preprocess.py                      # 20,000 alpaca and chat rows
    python scripts/bench_preprocess.py --rows 1000000 --formats alpaca
    python scripts/bench_preprocess.py --huge-row-mb 10     # one 10 MB row beside 10 MB of rows

For each format it writes the rows to a JSON Lines file, then runs, each in its own process:

- `weave preprocess` end to end (a fresh cache: start-up, reading, tokenizing, fitting, caching);
- `weave preprocess` again (a cache hit);
- the tokenizer alone: one batched call on the same texts (the prompt and response texts the
  format tokenizes; for chat rows, each conversation rendered by the same chat template), the
  limit preprocessing can approach;
- `axolotl preprocess` on the same file and tokenizer, when Axolotl is installed.

It prints one table: seconds, rows/s, tokens/s, peak resident memory of the process, and each
time's ratio to the tokenizer alone. Text lengths are drawn log-normal around typical
instruction data (prompts ~60 words, responses ~120), from a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
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


def words(rng: random.Random, median: int) -> str:
    """A text of about `median` words (log-normal lengths), wrapped in sentences."""
    count = max(1, int(rng.lognormvariate(0, 0.8) * median))
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
    folder: Path, data: Path, entry: dict, sequence_len: int, processes: int | None
) -> Path:
    """A weave config preprocessing `data` with the bundled tokenizer into `folder/prepared`."""
    import yaml

    config = {
        "base_model": str(TOKENIZER),
        "chat_template": "chatml",
        "datasets": [{"path": str(data), **entry}],
        "dataset_prepared_path": str(folder / "prepared"),
        "sequence_len": sequence_len,
        "output_dir": str(folder / "out"),
    }
    if processes:
        config["dataset_processes"] = processes
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def timed(command: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of `command`, run in a fresh child of a fresh process
    (so the peak is this command's alone)."""
    probe = textwrap.dedent(
        """
        import resource, subprocess, sys, time
        start = time.perf_counter()
        done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            sys.stderr.write(done.stdout + done.stderr)
            sys.exit(done.returncode)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"{seconds} {peak}")
        print(done.stdout, end="")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    first, _, rest = done.stdout.partition("\n")
    seconds, peak = first.split()
    return float(seconds), float(peak), rest


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
start = time.perf_counter()
ids = tok(texts)["input_ids"]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tokens": sum(len(x) for x in ids)}))
"""


def tokenizer_alone(kind: str, data: Path) -> tuple[float, float, int]:
    """(seconds of the batched call, peak RSS, tokens) of the tokenizer on the format's texts."""
    _, peak, out = timed([sys.executable, "-c", TOKENIZE_ALONE, str(TOKENIZER), kind, str(data)])
    result = json.loads(out.strip().splitlines()[-1])
    return result["seconds"], peak, result["tokens"]


def cached_tokens(folder: Path) -> int | None:
    """The tokens the preprocessed data holds (from the cache's stats), if it can be read."""
    for stats in (folder / "prepared").rglob("stats.json"):
        return int(json.loads(stats.read_text()).get("tokens", 0)) or None
    return None


def weave(config: Path) -> list[str]:
    """The `weave preprocess` command line for `config`."""
    return [sys.executable, "-m", "axolotl_weave._cli", "preprocess", str(config)]


def measure_format(kind: str, rows: int, args: argparse.Namespace, work: Path) -> list[Measure]:
    """Every run for one format."""
    make, entry = FORMATS[kind]
    folder = work / kind
    folder.mkdir()
    data = folder / "rows.jsonl"
    write_rows(data, make, rows, args.seed)
    config = write_config(folder, data, entry, args.sequence_len, args.processes)
    alone, alone_peak, alone_tokens = tokenizer_alone(kind, data)
    measures = [Measure(f"{kind}: tokenizer alone", alone, alone_peak, rows, alone_tokens)]
    seconds, peak, _ = timed(weave(config))
    tokens = cached_tokens(folder)
    measures.append(Measure(f"{kind}: weave preprocess", seconds, peak, rows, tokens))
    seconds, peak, _ = timed(weave(config))
    measures.append(Measure(f"{kind}: weave preprocess (cache hit)", seconds, peak, rows, None))
    if shutil.which("axolotl") and kind == "alpaca":
        axolotl_config = folder / "axolotl.yml"
        shutil.copy(config, axolotl_config)
        seconds, peak, _ = timed(["axolotl", "preprocess", str(axolotl_config)])
        measures.append(Measure(f"{kind}: axolotl preprocess", seconds, peak, rows, None))
    return measures


def huge_row(args: argparse.Namespace, work: Path) -> list[Measure]:
    """One row of `--huge-row-mb` MB against the same megabytes of ordinary rows."""
    folder = work / "huge"
    folder.mkdir()
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
        config = write_config(folder / name.replace(" ", "_"), data, {"type": "alpaca"}, 1024, None)
        seconds, peak, _ = timed(weave(config))
        measures.append(
            Measure(f"alpaca: {name} ({args.huge_row_mb:g} MB)", seconds, peak, len(lines), None)
        )
    return measures


def print_table(measures: list[Measure]) -> None:
    """The table, each time beside its format's tokenizer-alone time."""
    alone = {m.what.split(":")[0]: m.seconds for m in measures if m.what.endswith("alone")}
    header = (
        f"{'run':48} {'seconds':>9} {'rows/s':>10} {'tokens/s':>11} {'peak MB':>9} {'x alone':>8}"
    )
    print(header)
    print("-" * len(header))
    for m in measures:
        base = alone.get(m.what.split(":")[0])
        ratio = f"{m.seconds / base:.2f}" if base else "-"
        tokens = f"{m.tokens / m.seconds:,.0f}" if m.tokens else "-"
        print(
            f"{m.what:48} {m.seconds:9.2f} {m.rows / m.seconds:10,.0f} {tokens:>11} "
            f"{m.peak_rss_mb:9.0f} {ratio:>8}"
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
    args = parser.parse_args()
    measures: list[Measure] = []
    with tempfile.TemporaryDirectory(prefix="weave-bench-preprocess-") as tmp:
        work = Path(tmp)
        for kind in args.formats:
            measures += measure_format(kind, args.rows, args, work)
        if args.huge_row_mb:
            measures += huge_row(args, work)
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"\nweave preprocess vs the tokenizer alone ({args.rows:,} rows, {started})")
    print_table(measures)


if __name__ == "__main__":
    main()
