"""The `weave` command line as a user runs it: plugin listing and blocking, validate's hook
table, preprocess --debug and its cache, and clear messages for bad data files and rows that do
not fit. The plugin listing on an 80-column terminal and the start-up imports run in a
subprocess; the other tests call the same entry point in this process (`run_weave_in_process`:
the same exit code and piped stdout/stderr, without a fresh interpreter's seconds of imports)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave import tokenize_prompt_response
from axolotl_weave_plugins.formats.alpaca import alpaca_prompt
from axolotl_weave_testing import alpaca_rows, run_weave, run_weave_in_process, write_config

BUILTIN_PLUGINS = (
    "hf_causal_lm",
    "llama",
    "alpaca",
    "completion",
    "lora",
    "sft_loss",
    "attn_implementation",
    "single_device",
    "save_hf",
    "jsonl_logger",
)
WIDE = {"COLUMNS": "200"}
TOKEN = re.compile(r"\((-?\d+),\s*(\d+)\)")  # `'piece'(label, id)`, possibly wrapped by rich


def weave(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run `weave ARGS` in tmp_path with a wide terminal (rich wraps nothing we check), in this
    process."""
    return run_weave_in_process(*args, cwd=tmp_path, env={**WIDE, **(env or {})})


def flat(text: str) -> str:
    """Whitespace collapsed, so that rich's line wrapping does not split a phrase."""
    return " ".join(text.split())


def assert_clean_failure(result: subprocess.CompletedProcess) -> None:
    """Non-zero exit, one `error:` message on stderr, no Python traceback."""
    assert result.returncode != 0, result.stdout
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def table_row(output: str, first_cell: str) -> str:
    """The table line whose first cell starts with `first_cell`."""
    rows = [line for line in output.splitlines() if line.startswith(f"│ {first_cell}")]
    assert len(rows) == 1, output
    return rows[0]


# --- weave plugin list ----------------------------------------------------------------------------


def test_plugin_list_names_every_builtin_plugin(tmp_path: Path) -> None:
    # an ordinary 80-column terminal, or a pipe: names must not be cut short
    result = run_weave("plugin", "list", cwd=tmp_path, env={"COLUMNS": "80"})  # a real process
    assert result.returncode == 0, result.stderr
    first_cells = {line.split("│")[1].strip() for line in result.stdout.splitlines() if "│" in line}
    assert set(BUILTIN_PLUGINS) <= first_cells
    assert "BLOCKED" not in result.stdout


def test_plugin_list_json(tmp_path: Path) -> None:
    result = weave(tmp_path, "plugin", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(BUILTIN_PLUGINS) <= set(rows)
    dist = f"axolotl-weave=={importlib.metadata.version('axolotl-weave')}"
    for name in BUILTIN_PLUGINS:
        row = rows[name]
        assert set(row) >= {"name", "kind", "distribution", "builtin", "hooks"}
        assert row["distribution"] == dist
        assert row["distribution"].startswith("axolotl-weave==")
        assert row["builtin"] is True
        assert row["blocked"] is False
        assert row["hooks"], name
    assert {"load_model", "add_config_fields"} <= set(rows["lora"]["hooks"])
    assert rows["lora"]["kind"] == "method"
    assert {"register_dataset_formats"} <= set(rows["alpaca"]["hooks"])  # build is registered
    assert rows["alpaca"]["kind"] == "format"
    assert "load_model" in rows["hf_causal_lm"]["hooks"]


HEAVY = ("torch", "transformers", "datasets", "peft", "accelerate", "trl")
"""Libraries that take seconds to import: what a command that needs no model must not import."""


def run_counting_imports(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`weave ARGS` in a fresh interpreter, and which of `HEAVY` it imported."""
    code = (
        "import sys\n"
        "from axolotl_weave._cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "    code = 0\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print('EXIT', code, file=sys.stderr)\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    return result, ast.literal_eval(result.stderr.rpartition("HEAVY ")[2].strip())


def test_plugin_list_does_not_import_heavy_libraries(tmp_path: Path) -> None:
    result, heavy = run_counting_imports(tmp_path, "plugin", "list", "--json")
    assert "EXIT 0" in result.stderr or "EXIT None" in result.stderr, result.stderr
    assert '"name": "lora"' in result.stdout  # the listing really ran
    assert heavy == [], result.stderr


def test_validate_does_not_import_heavy_libraries(tmp_path: Path, base_config: dict) -> None:
    """`weave validate` checks a whole config (keys, registries, the output folder, the data
    files) without torch, transformers or datasets."""
    path = write_config(tmp_path / "c.yml", base_config)
    result, heavy = run_counting_imports(tmp_path, "validate", str(path))
    assert "EXIT 0" in result.stderr or "EXIT None" in result.stderr, result.stderr
    assert result.stdout.startswith("valid: ")  # the validation really ran
    assert heavy == [], result.stderr


@pytest.mark.parametrize(
    ("keys", "args", "message"),
    [
        ({"rl": "orpo"}, ["bench", "--baseline", "trl"], "this config has rl: orpo"),
        ({"adapter": "lora"}, ["merge-lora", "--lora-model-dir", "nowhere"], "does not exist"),
    ],
)
def test_a_refusal_comes_before_the_libraries_load(
    tmp_path: Path, base_config: dict, keys: dict, args: list[str], message: str
) -> None:
    """What a command refuses for its options or config is refused in a second, not after
    importing torch, transformers and the rest."""
    path = write_config(tmp_path / "c.yml", {**base_config, **keys})
    result, heavy = run_counting_imports(tmp_path, args[0], str(path), *args[1:])
    assert message in " ".join(result.stderr.split()), result.stderr[-2000:]
    assert "EXIT 0" not in result.stderr and "EXIT None" not in result.stderr
    assert heavy == [], result.stderr[-2000:]


def test_blocking_a_plugin(tmp_path: Path) -> None:
    result = weave(tmp_path, "-p", "no:lora", "plugin", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["lora"]["blocked"] is True
    assert rows["lora"]["hooks"] == []
    assert all(not rows[name]["blocked"] for name in BUILTIN_PLUGINS if name != "lora")


def test_dash_p_without_no_is_an_error(tmp_path: Path) -> None:
    result = weave(tmp_path, "-p", "lora", "plugin", "list")
    assert_clean_failure(result)
    assert "no:NAME" in result.stderr


def test_blocked_plugin_no_longer_wraps_load_model(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    path = write_config(tmp_path / "config.yml", base_config)
    result = weave(tmp_path, "-p", "no:lora", "validate", str(path), env={"COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    load_model = table_row(result.stdout, "load_model").split("│")[2]
    answering = [part.split()[0] for part in load_model.split("→")]
    assert "hf_causal_lm" in answering
    assert "lora" not in answering


def test_adapter_lora_with_lora_blocked_fails_validation(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    path = write_config(tmp_path / "config.yml", {**base_config, "adapter": "lora"})
    result = weave(tmp_path, "-p", "no:lora", "validate", str(path))
    assert_clean_failure(result)
    assert "adapter: an Axolotl option that no installed plugin implements" in result.stderr


# --- weave validate ----------------------------------------------------------------------------


def test_validate_shows_which_plugin_answers_each_hook(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    (tmp_path / "t.jsonl").write_text('{"text": "a b c"}\n')  # validate checks the files exist
    datasets = [*base_config["datasets"], {"path": str(tmp_path / "t.jsonl"), "type": "completion"}]
    path = write_config(
        tmp_path / "config.yml", {**base_config, "adapter": "lora", "datasets": datasets}
    )
    result = weave(tmp_path, "validate", str(path), env={"COLUMNS": "300"})  # rows unwrapped
    assert result.returncode == 0, result.stderr
    assert f"valid: {path}" in result.stdout
    version = importlib.metadata.version("axolotl-weave")
    assert table_row(result.stdout, "build_dataset datasets[0]").split("│")[2].strip() == (
        f"plugin 'alpaca' (axolotl-weave=={version})"
    )
    assert table_row(result.stdout, "build_dataset datasets[1]").split("│")[2].strip() == (
        f"plugin 'completion' (axolotl-weave=={version})"
    )
    load_model = table_row(result.stdout, "load_model").split("│")[2].strip()
    assert load_model == (  # packing is a plugin: it refuses an unpackable family first
        "sample_packing (wrapper) → scaling_softmax (wrapper) → lora (wrapper) → "
        "liger (wrapper) → diffusion (wrapper) → cut_cross_entropy (wrapper) → "
        "bnb_quantization (wrapper) → gptq (wrapper) → "
        "reward_models → hf_causal_lm"  # reward models load a classifier, and only for them
    )
    build_loss = table_row(result.stdout, "build_loss").split("│")[2].strip()
    assert build_loss.endswith("sft_loss"), build_loss


# --- weave preprocess ----------------------------------------------------------------------------


def debug_rows(stdout: str) -> str:
    """The token-by-token part of `preprocess --debug` (before the summary table)."""
    assert "first rows" in stdout, stdout
    assert "Preprocessing summary" in stdout, stdout
    return stdout.split("first rows", 1)[1].split("Preprocessing summary", 1)[0]


def test_preprocess_debug_shows_labels_and_caches(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    path = write_config(tmp_path / "config.yml", {**base_config, "train_on_inputs": False})

    first = weave(tmp_path, "preprocess", str(path), "--debug")
    assert first.returncode == 0, first.stderr
    assert "written to cache" in first.stdout
    pairs = [(int(label), int(token)) for label, token in TOKEN.findall(debug_rows(first.stdout))]
    assert any(label == -100 for label, _ in pairs)  # the prompt is masked
    assert any(label == token for label, token in pairs)  # the response is trained on its ids
    assert all(label in (-100, token) for label, token in pairs)
    assert "Preprocessing summary" in first.stdout
    assert "32 of 32 rows" in first.stdout
    assert "rows kept" in first.stdout

    second = weave(tmp_path, "preprocess", str(path))
    assert second.returncode == 0, second.stderr
    assert "loaded from cache" in second.stdout
    assert "32 train / 0 eval rows" in flat(second.stdout)

    # an override that changes the tokenized rows must not reuse that cache
    third = weave(tmp_path, "preprocess", str(path), "--debug", "--train_on_inputs", "true")
    assert third.returncode == 0, third.stderr
    assert "written to cache" in third.stdout
    rows = debug_rows(third.stdout)
    pairs = [(int(label), int(token)) for label, token in TOKEN.findall(rows)]
    assert pairs
    assert "(-100," not in rows
    assert all(label == token for label, token in pairs)


def expected_too_long(tokenizer_dir: Path, rows: list[dict[str, str]], sequence_len: int) -> int:
    """How many alpaca rows tokenize to more than `sequence_len` tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    lengths = [
        len(
            tokenize_prompt_response(
                tokenizer,
                alpaca_prompt(row["instruction"], row["input"]),
                row["output"],
                train_on_inputs=False,
            )["input_ids"]
        )
        for row in rows
    ]
    return sum(n > sequence_len for n in lengths)


def test_rows_longer_than_sequence_len_are_dropped_with_a_warning(
    tmp_path: Path, base_config: dict[str, Any], tiny_llama_dir: Path
) -> None:
    dropped = expected_too_long(tiny_llama_dir, alpaca_rows(32), 60)
    assert 0 < dropped < 32  # the data has both kinds of rows
    path = write_config(tmp_path / "config.yml", {**base_config, "sequence_len": 60})
    result = weave(tmp_path, "preprocess", str(path), "--debug")
    assert result.returncode == 0, result.stderr
    assert f"dropped: longer than sequence_len=60: {dropped} row(s)" in flat(result.stderr)
    assert re.search(rf"dropped: longer than sequence_len=60\s*│\s*{dropped}\s*│", result.stdout)
    assert f"{32 - dropped} of 32 rows" in result.stdout


def test_all_rows_too_long_is_a_clear_error(tmp_path: Path, base_config: dict[str, Any]) -> None:
    path = write_config(tmp_path / "config.yml", base_config)
    result = weave(tmp_path, "preprocess", str(path), "--sequence_len", "20")
    assert_clean_failure(result)
    message = flat(result.stderr)
    assert "no trainable rows left" in message
    assert "dropped: longer than sequence_len=20 (32)" in message


# --- weave train with bad data -------------------------------------------------------------------


def broken_line_3(path: Path) -> str:
    lines = [json.dumps(row) for row in alpaca_rows(6)]
    lines[2] = '{"instruction": "Add the numbers.", "output": '
    path.write_text("\n".join(lines) + "\n")
    return f"{path}:3:"


def empty_file(path: Path) -> str:
    path.write_text("")
    return "empty"


def row_without_output(path: Path) -> str:
    rows = alpaca_rows(6)
    del rows[3]["output"]
    path.write_text("".join(json.dumps(row) + "\n\n" for row in rows))  # blank lines between
    return f"{path.name}:7"  # the 4th row is on line 7


@pytest.mark.parametrize("make_data", [broken_line_3, empty_file, row_without_output])
def test_train_with_a_bad_data_file(
    tmp_path: Path, base_config: dict[str, Any], make_data: Any
) -> None:
    data = tmp_path / "bad.jsonl"
    expected = make_data(data)
    config = {**base_config, "datasets": [{"path": str(data), "type": "alpaca"}]}
    path = write_config(tmp_path / "config.yml", config)
    result = weave(tmp_path, "train", str(path))
    assert_clean_failure(result)
    assert str(data) in result.stderr
    assert expected in result.stderr
    if make_data is row_without_output:
        assert "'output'" in result.stderr
    assert "done" not in result.stdout


def test_train_with_a_missing_data_file(tmp_path: Path, base_config: dict[str, Any]) -> None:
    missing = tmp_path / "nowhere" / "data.jsonl"
    path = write_config(tmp_path / "config.yml", base_config)
    result = weave(tmp_path, "train", str(path), "--datasets.0.path", str(missing))
    assert_clean_failure(result)
    assert str(missing) in result.stderr
    assert "no such file" in result.stderr
