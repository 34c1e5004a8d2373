"""Bad input a new user hits gets one clear message naming the culprit and the fix, the exit code
the README documents (2 config, 3 no plugin, 4 a capability refused, 1 data or runtime), and
nothing already written is lost or changed. The UTF-16 file is refused by a real `weave`
process; the other tests call the same entry point in this process (`run_weave_in_process`: the
same exit code and piped stdout/stderr, without a fresh interpreter's seconds of imports)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave_testing import (
    alpaca_rows,
    run_weave,
    run_weave_in_process,
    write_config,
    write_jsonl,
)

WIDE = {"COLUMNS": "200"}


def weave(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`weave ARGS` in tmp_path, output piped (as in CI and under a scheduler), in this
    process."""
    return run_weave_in_process(*args, cwd=tmp_path, env=WIDE)


def error_of(result: subprocess.CompletedProcess) -> str:
    """The one `error:` message, checked to come without a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr, result.stderr
    return result.stderr[result.stderr.index("error:") :]


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- data files ------------------------------------------------------------------------------------


def test_a_utf16_data_file_is_refused_naming_the_file_line_and_fix(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    data = tmp_path / "utf16.jsonl"
    text = "".join(json.dumps(row) + "\n" for row in alpaca_rows(8))
    data.write_bytes(text.encode("utf-16"))
    config = write_config(
        tmp_path / "c.yml", {**base_config, "datasets": [{"path": str(data), "type": "alpaca"}]}
    )
    result = run_weave("preprocess", str(config), cwd=tmp_path, env=WIDE)  # a real process
    assert result.returncode == 1
    message = error_of(result)
    assert str(data) in message and "UTF-16" in message and "iconv" in message, message
    assert len(message.splitlines()) <= 2, message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
@pytest.mark.parametrize("command", ["validate", "train"])
def test_validate_and_train_refuse_a_utf16_file_before_any_work(
    tmp_path: Path, base_config: dict[str, Any], encoding: str, command: str
) -> None:
    """The byte-order mark is read with the config's other problems: `weave validate` reports
    it, and a run stops before loading anything (no output folder, no cache)."""
    data = tmp_path / "wide.json"
    data.write_bytes(json.dumps(alpaca_rows(4)).encode(encoding))
    config = write_config(
        tmp_path / "c.yml",
        {**base_config, "datasets": [{"path": str(data), "type": "alpaca"}]},
    )
    result = weave(tmp_path, command, str(config))
    assert result.returncode == 2, result.stderr[-2000:]
    message = " ".join(error_of(result).split())
    name = encoding.upper()
    assert f"datasets.0.path: {data}: it is {name} text" in message, message
    assert f"iconv -f {name} -t UTF-8 wide.json" in message
    assert not Path(base_config["output_dir"]).exists()


def test_a_utf8_file_with_a_byte_order_mark_is_simply_read(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    rows = alpaca_rows(8)
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    csv = tmp_path / "bom.csv"
    lines = ["instruction,input,output"] + [f"{r['instruction']},,{r['output']}" for r in rows]
    csv.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
    for path in (data, csv):
        config = write_config(
            tmp_path / "c.yml",
            {**base_config, "datasets": [{"path": str(path), "type": "alpaca"}]},
        )
        result = weave(tmp_path, "preprocess", str(config))
        assert result.returncode == 0, result.stderr
        assert "8 train / 0 eval rows" in result.stdout, result.stdout


def test_a_folder_of_mixed_files_names_them_and_skips_notes(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    folder = tmp_path / "data"
    write_jsonl(folder / "a.jsonl", alpaca_rows(8))
    (folder / "notes.txt").write_text("not a row\n")
    (folder / "picture.png").write_bytes(b"\x89PNG")
    config = write_config(
        tmp_path / "c.yml", {**base_config, "datasets": [{"path": str(folder), "type": "alpaca"}]}
    )
    result = weave(tmp_path, "preprocess", str(config))
    assert result.returncode == 0, result.stderr
    assert "8 train / 0 eval rows" in result.stdout  # the .txt is not read as rows
    assert "skipping notes.txt" in result.stderr

    (folder / "b.csv").write_text("instruction,input,output\nq,,a\n")
    result = weave(tmp_path, "preprocess", str(config))
    assert result.returncode == 1
    message = error_of(result)
    assert "mixes data file types" in message and "a.jsonl" in message and "b.csv" in message


# -- the config and the command line ---------------------------------------------------------------


def test_a_key_given_twice_in_the_yaml_is_refused_with_both_lines(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = write_config(tmp_path / "c.yml", base_config)
    config.write_text(config.read_text() + "learning_rate: 0.5\n")
    result = weave(tmp_path, "validate", str(config))
    assert result.returncode == 2
    message = error_of(result)
    assert "key 'learning_rate' is given twice" in message and "lines" in message, message


def test_a_bare_override_of_a_key_that_is_not_true_false_is_refused(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = write_config(tmp_path / "c.yml", base_config)
    result = weave(tmp_path, "validate", str(config), "--learning_rate")
    assert result.returncode == 2
    assert "--learning_rate has no value" in error_of(result)
    assert weave(tmp_path, "validate", str(config), "--train_on_inputs").returncode == 0


def test_val_set_size_above_one_must_be_a_whole_count(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = write_config(tmp_path / "c.yml", {**base_config, "val_set_size": 1.5})
    result = weave(tmp_path, "validate", str(config))
    assert result.returncode == 2
    assert "val_set_size" in error_of(result) and "whole" in error_of(result)


def test_empty_values_mean_unset(tmp_path: Path, base_config: dict[str, Any]) -> None:
    from axolotl_weave._run import open_session

    plain = open_session(write_config(tmp_path / "a.yml", base_config)).cfg
    empty = {**base_config, "special_tokens": None, "lora_r": None, "fp16": None}
    empty["datasets"] = [{**base_config["datasets"][0], "field_instruction": None}]
    with_empty = open_session(write_config(tmp_path / "b.yml", empty)).cfg
    assert with_empty.model_dump() == plain.model_dump()


def test_blocking_a_plugin_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    result = weave(tmp_path, "-p", "no:sft_los", "plugin", "list")
    assert result.returncode == 3
    assert "no installed plugin is named 'sft_los'" in error_of(result)
    assert "sft_loss" in error_of(result)  # the close match


def test_a_tokenizer_without_eos_is_refused_with_the_fix(
    tmp_path: Path, base_config: dict[str, Any], tiny_llama_dir: Path
) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    settings["eos_token"] = None
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    special = model / "special_tokens_map.json"
    if special.exists():
        mapping = json.loads(special.read_text())
        mapping.pop("eos_token", None)
        special.write_text(json.dumps(mapping))
    config = write_config(tmp_path / "c.yml", {**base_config, "base_model": str(model)})
    result = weave(tmp_path, "preprocess", str(config))
    assert result.returncode == 2, result.stderr
    assert "has no EOS token" in error_of(result) and "eos_token" in error_of(result)


# -- what validate finds before any work -----------------------------------------------------------


def test_validate_reports_what_would_fail_before_training(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = write_config(
        tmp_path / "c.yml",
        {
            **base_config,
            "base_model": "./no-such-model",
            "datasets": [{"path": "data/train.jsonl", "type": "alpaca"}],
        },
    )
    result = weave(elsewhere, "validate", str(config))
    assert result.returncode == 2
    message = error_of(result)
    assert f"looked for {elsewhere / 'no-such-model'}" in message, message
    assert f"looked for {elsewhere / 'data' / 'train.jsonl'}" in message, message

    config = write_config(tmp_path / "ok.yml", base_config)
    result = weave(tmp_path, "-p", "no:sft_loss", "validate", str(config))
    assert result.returncode == 3
    assert "no installed plugin answers build_loss" in error_of(result)


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    output = tmp_path / "out"
    output.write_text("my notes\n")
    prepared = tmp_path / "prepared"
    config = write_config(
        tmp_path / "c.yml",
        {**base_config, "output_dir": str(output), "dataset_prepared_path": str(prepared)},
    )
    result = weave(tmp_path, "train", str(config))
    assert result.returncode == 2
    assert f"output_dir: {output} is a file" in error_of(result)
    assert output.read_text() == "my notes\n"
    assert not prepared.exists()  # refused before the data was prepared


def test_an_output_dir_without_write_permission_is_refused_before_any_work(
    tmp_path: Path, base_config: dict[str, Any], unwritable_folder: Path
) -> None:
    prepared = tmp_path / "prepared"
    config = write_config(
        tmp_path / "c.yml",
        {
            **base_config,
            "output_dir": str(unwritable_folder / "out"),
            "dataset_prepared_path": str(prepared),
        },
    )
    result = weave(tmp_path, "train", str(config))
    assert result.returncode == 2
    assert f"cannot write in {unwritable_folder}" in error_of(result)
    assert not prepared.exists()


def test_a_relative_folder_that_is_not_there_is_not_sent_to_the_hub(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    entry = {"path": "data/alpaca/train", "type": "alpaca"}
    config = write_config(tmp_path / "c.yml", {**base_config, "datasets": [entry]})
    result = weave(elsewhere, "validate", str(config))
    assert result.returncode == 2
    message = error_of(result)
    assert f"looked for {elsewhere / 'data' / 'alpaca' / 'train'}" in message, message
    assert "not a hub dataset name" in message


def test_a_base_model_that_is_no_folder_here_says_where_it_looked(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = write_config(tmp_path / "c.yml", {**base_config, "base_model": "models/tiny"})
    result = weave(tmp_path, "preprocess", str(config))
    assert result.returncode == 1
    message = error_of(result)
    assert "cannot read the model config of base_model 'models/tiny'" in message, message
    assert f"(no folder models/tiny in {tmp_path}: a hub id?)" in message
