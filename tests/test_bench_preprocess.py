"""`scripts/bench_preprocess.py`, the preprocessing benchmark: its tokenizer-alone limits and the
ratios the goals are read by. The timings themselves are never asserted (a benchmark prints them);
what is checked is that each limit tokenizes the same texts and each ratio is the right quotient.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_preprocess.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_preprocess", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_preprocess"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_preprocess", None)


def test_tokenizer_alone_times_one_call_calls_of_1000_and_the_process(
    bench: ModuleType, tmp_path: Path
) -> None:
    data = tmp_path / "rows.jsonl"
    bench.write_rows(data, bench.alpaca_row, 1_200, seed=0)  # two calls of up to 1,000 texts
    one_call, calls, whole = bench.tokenizer_alone("alpaca", data, 1_200)
    assert one_call.what == "alpaca: tokenizer alone"
    assert calls.what == "alpaca: tokenizer alone, calls of 1,000 texts"
    assert whole.what == "alpaca: tokenizer alone, whole process"
    assert one_call.tokens == calls.tokens == whole.tokens and one_call.tokens > 1_200 * 2
    assert 0 < one_call.seconds < whole.seconds and 0 < calls.seconds < whole.seconds


def test_print_ratios_divides_by_each_limit_and_start_up(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    def measure(what: str, seconds: float) -> object:
        return bench.Measure(f"alpaca: {what}", seconds, 100.0, 1_000, None)

    bench.print_ratios(
        [
            measure("tokenizer alone", 10.0),
            measure("tokenizer alone, calls of 1,000 texts", 8.0),
            measure("tokenizer alone, whole process", 16.0),
            measure("weave preprocess", 12.0),
            measure("weave preprocess (cache hit)", 4.0),
            measure("dataset_processes: 1", 20.0),
            measure("dataset_processes: 2", 12.0),
            measure("dataset_processes: 1, tokenizer threads off", 24.0),
            measure("dataset_processes: 2, tokenizer threads off", 14.0),
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "alpaca: end to end 1.20x the one call, 1.50x the calls of 1,000; beyond start-up "
        "(4.00 s) 0.80x and 1.00x; 0.75x the whole process",
        "alpaca: dataset_processes 2 against 1: 1.67x end to end, 2.00x beyond start-up",
        "alpaca: dataset_processes 2 against 1, tokenizer threads off: 1.71x end to end, "
        "2.00x beyond start-up",
    ]


def test_medians_take_each_runs_middle_time_and_largest_memory(bench: ModuleType) -> None:
    def measure(what: str, seconds: float, cpu: float, peak: float) -> object:
        return bench.Measure(what, seconds, peak, 1_000, 5_000, peak / 2, cpu)

    rounds = [
        [measure("alpaca: weave preprocess", 9.0, 12.0, 900.0), measure("alpaca: hit", 4.0, 4, 1)],
        [measure("alpaca: weave preprocess", 7.0, 14.0, 950.0), measure("alpaca: hit", 3.0, 3, 1)],
        [measure("alpaca: weave preprocess", 8.0, 11.0, 920.0), measure("alpaca: hit", 5.0, 5, 1)],
    ]
    run, hit = bench.medians(rounds)
    assert (run.what, run.seconds, run.cpu_seconds) == ("alpaca: weave preprocess", 8.0, 12.0)
    assert (run.peak_rss_mb, run.anon_mb, run.rows, run.tokens) == (950.0, 475.0, 1_000, 5_000)
    assert (hit.what, hit.seconds, hit.cpu_seconds) == ("alpaca: hit", 4.0, 4)
    assert bench.medians(rounds[:1]) == rounds[0]  # one round: the runs as they were
