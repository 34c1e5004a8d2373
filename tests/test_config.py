"""Config loading and validation: defaults, plugin fields, one message listing every problem with
"did you mean", Axolotl keys not implemented here (warned and dropped), CLI overrides, URLs,
broken YAML, the JSON schema, and the saved resolved config."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from axolotl_weave._errors import ConfigError
from axolotl_weave._overrides import apply_overrides, parse_overrides
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import Session, config_schema, open_session, save_resolved_config
from axolotl_weave_testing import run_weave, write_config

WIDE = {"COLUMNS": "200"}


def session_for(tmp_path: Path, config: dict[str, Any], overrides: list[str] = ()) -> Session:
    """Write `config` to tmp_path/config.yml and open it with a fresh plugin manager."""
    path = write_config(tmp_path / "config.yml", config)
    return open_session(path, list(overrides), make_plugin_manager())


def config_error(tmp_path: Path, config: dict[str, Any], overrides: list[str] = ()) -> str:
    """The message of the ConfigError that opening `config` raises."""
    with pytest.raises(ConfigError) as info:
        session_for(tmp_path, config, overrides)
    return str(info.value)


def problem_lines(message: str) -> list[str]:
    """The '  - key: what is wrong' lines of a validation message."""
    return [line for line in message.splitlines() if line.startswith("  - ")]


def flat(text: str) -> str:
    """Whitespace collapsed, so that rich's line wrapping does not split a phrase."""
    return " ".join(text.split())


@pytest.fixture
def weave_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Any:
    """caplog that sees the `axolotl_weave` logger's warnings even after the CLI set it up."""
    monkeypatch.setattr(logging.getLogger("axolotl_weave"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="axolotl_weave")
    return caplog


# --- a valid config ---------------------------------------------------------------------------


def test_valid_config_fills_defaults_and_plugin_fields(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = {k: v for k, v in base_config.items() if k != "micro_batch_size"}
    config["lora_alpha"] = 32
    cfg = session_for(tmp_path, config).cfg
    assert cfg.micro_batch_size == 1  # core default
    assert cfg.gradient_accumulation_steps == 1
    assert cfg.learning_rate == 1e-3  # from the file
    assert cfg.optimizer == "adamw_torch"
    assert cfg.datasets[0].type == "alpaca"
    assert cfg.datasets[0].split == "train"
    # fields added by plugins through add_config_fields
    assert cfg.lora_r == 8  # lora's default
    assert cfg.lora_alpha == 32  # lora's field, from the file
    assert cfg.adapter is None
    assert cfg.attn_implementation is None  # attn_implementation's field


@pytest.mark.parametrize(
    ("key", "value"),
    [("lora_r", "abc"), ("lora_r", 0), ("lora_dropout", 1.5), ("adapter", "lorax")],
)
def test_plugin_fields_are_validated(
    tmp_path: Path, base_config: dict[str, Any], key: str, value: Any
) -> None:
    message = config_error(tmp_path, {**base_config, key: value})
    assert "1 problem(s)" in message
    assert [line.split(":")[0] for line in problem_lines(message)] == [f"  - {key}"]


# --- unknown keys and bad values ----------------------------------------------------------------


def test_unknown_key_suggests_the_right_one(tmp_path: Path, base_config: dict[str, Any]) -> None:
    message = config_error(tmp_path, {**base_config, "lerning_rate": 0.1})
    assert "lerning_rate" in message
    assert "did you mean learning_rate" in message
    assert str(tmp_path / "config.yml") in message  # the file is named


def test_an_unknown_key_in_a_section_is_matched_against_that_sections_keys(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    """A misspelt key inside a block (`trl:`, a model of its own) is compared with that
    block's keys, not the top-level ones."""
    grpo = {"rl": "grpo", "trl": {"num_generation": 4, "reward_funcs": ["x.y"]}}
    message = config_error(tmp_path, {**base_config, **grpo})
    assert "trl.num_generation: unknown key (did you mean num_generations?)" in message


def test_unknown_key_on_the_cli_is_one_message_and_exit_2(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    path = write_config(tmp_path / "config.yml", {**base_config, "lerning_rate": 0.1})
    result = run_weave("validate", str(path), cwd=tmp_path, env=WIDE)
    assert result.returncode == 2, result.stderr
    assert "lerning_rate" in result.stderr
    assert "did you mean learning_rate" in result.stderr
    assert "Traceback" not in result.stderr
    assert "valid:" not in result.stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"micro_batch_size": "lots"}, ["micro_batch_size", "integer", "got 'lots'"]),
        ({"sequence_len": -5}, ["sequence_len", "greater than 0"]),
        ({"optimizer": "adamw_torhc"}, ["optimizer", "did you mean adamw_torch", "sgd"]),
        ({"lr_scheduler": "cosin"}, ["lr_scheduler", "did you mean cosine"]),
        ({"base_model": None}, ["base_model", "required key is missing"]),
        ({"datasets": None}, ["give datasets:", "at least one entry"]),
        ({"datasets": []}, ["give datasets:", "at least one entry"]),
        ({"bf16": True, "fp16": True}, ["bf16 and fp16"]),
    ],
)
def test_bad_value_names_the_key(
    tmp_path: Path, base_config: dict[str, Any], change: dict[str, Any], expected: list[str]
) -> None:
    config = {**base_config, **change}
    config = {k: v for k, v in config.items() if v is not None}
    message = config_error(tmp_path, config)
    assert len(problem_lines(message)) == 1, message
    for text in expected:
        assert text in message


def test_unknown_dataset_type_suggests_a_format(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = {**base_config, "datasets": [{"path": "data.jsonl", "type": "alpacca"}]}
    message = config_error(tmp_path, config)
    assert "datasets.0.type" in message
    assert "alpacca" in message
    assert "did you mean alpaca" in message
    assert "completion" in message  # the valid formats are listed


def test_unknown_key_in_a_dataset_entry(tmp_path: Path, base_config: dict[str, Any]) -> None:
    config = {**base_config, "datasets": [{"path": "d.jsonl", "type": "completion", "feild": "t"}]}
    message = config_error(tmp_path, config)
    assert "datasets.0" in message
    assert "feild" in message
    assert "did you mean field" in message


def test_dataset_entry_without_a_path(tmp_path: Path, base_config: dict[str, Any]) -> None:
    message = config_error(tmp_path, {**base_config, "datasets": [{"type": "alpaca"}]})
    assert "datasets.0.path: required key is missing" in message
    assert "Training data sources" not in message  # that describes `datasets`, not `path`


def test_every_problem_is_reported_in_one_message(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = {k: v for k, v in base_config.items() if k != "base_model"}
    config.update(
        lerning_rate=0.1,
        micro_batch_size="lots",
        optimizer="adamw_torhc",
        lora_r="abc",
        datasets=[{"path": "d.jsonl", "type": "alpacca"}],
    )
    message = config_error(tmp_path, config)
    keys = ["base_model", "lerning_rate", "micro_batch_size", "optimizer", "lora_r", "datasets.0"]
    assert f"{len(keys)} problem(s)" in message
    lines = problem_lines(message)
    assert len(lines) == len(keys), message
    for key in keys:
        assert sum(line.startswith(f"  - {key}") for line in lines) == 1, key


def test_empty_config_lists_the_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("# nothing here\n")
    with pytest.raises(ConfigError) as info:
        open_session(path, [], make_plugin_manager())
    lines = problem_lines(str(info.value))
    assert [line.split(":")[0] for line in lines] == ["  - base_model", "  - datasets"]


# --- Axolotl keys not implemented here ----------------------------------------------------------


def test_unimplemented_axolotl_keys_warn_and_are_dropped(
    tmp_path: Path, base_config: dict[str, Any], weave_log: pytest.LogCaptureFixture
) -> None:
    entry = {**base_config["datasets"][0], "roles_to_train": ["gpt"]}
    config = {
        **base_config,
        # (neftune_noise_alpha and curriculum_sampling were the examples: they change what is
        # trained, so they are refused now; these two only change how a run is watched)
        "gc_steps": 5,
        "comet_project_name": "demo",
        "datasets": [entry],
    }
    cfg = session_for(tmp_path, config).cfg
    warnings = [r.getMessage() for r in weave_log.records if r.levelno == logging.WARNING]
    for key in ("'gc_steps'", "'comet_project_name'", "'datasets[].roles_to_train'"):
        assert any(key in w and "IGNORED" in w for w in warnings), (key, warnings)
    dumped = cfg.model_dump()
    assert "gc_steps" not in dumped
    assert "comet_project_name" not in dumped
    assert "roles_to_train" not in dumped["datasets"][0]
    assert cfg.datasets[0].option("roles_to_train") is None


def test_unimplemented_axolotl_key_on_the_cli_validates_with_a_warning(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    path = write_config(tmp_path / "config.yml", {**base_config, "gc_steps": 5})
    result = run_weave("validate", str(path), cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "config key 'gc_steps'" in flat(result.stderr)
    assert "IGNORED" in result.stderr


def test_a_truly_unknown_key_is_still_an_error_next_to_ignored_ones(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    message = config_error(tmp_path, {**base_config, "flash_attention": True, "flash_atention": 1})
    assert "flash_atention" in message
    assert "'flash_attention'" not in message  # the known Axolotl key is not a problem
    assert len(problem_lines(message)) == 1


# --- CLI overrides ----------------------------------------------------------------------------


def test_parse_overrides_reads_yaml_scalars_and_every_form() -> None:
    args = [
        "--learning_rate",
        "0.5",
        "--bf16=false",
        "--micro-batch-size",
        "4",
        "--datasets.0.type",
        "completion",
        "--lora_target_modules",
        "[q_proj, v_proj]",
        "--lora_target_linear",
    ]
    assert parse_overrides(args) == [
        ("learning_rate", 0.5),
        ("bf16", False),
        ("micro_batch_size", 4),
        ("datasets.0.type", "completion"),
        ("lora_target_modules", ["q_proj", "v_proj"]),
        ("lora_target_linear", True),
    ]


def test_a_bare_flag_before_another_option_is_true() -> None:
    assert parse_overrides(["--train_on_inputs", "--bf16", "false"]) == [
        ("train_on_inputs", True),
        ("bf16", False),
    ]


def test_apply_overrides_sets_nested_keys_on_a_copy() -> None:
    data = {"learning_rate": 0.1, "datasets": [{"path": "a", "type": "alpaca"}]}
    result = apply_overrides(data, ["--datasets.0.type", "completion", "--seed=7"])
    assert result == {
        "learning_rate": 0.1,
        "seed": 7,
        "datasets": [{"path": "a", "type": "completion"}],
    }
    assert data["datasets"][0]["type"] == "alpaca"  # the input is untouched
    assert "seed" not in data


@pytest.mark.parametrize(
    "args", [["--learning_rate", "0.5"], ["--learning_rate=0.5"], ["--learning-rate", "0.5"]]
)
def test_learning_rate_override_wins_over_the_file(
    tmp_path: Path, base_config: dict[str, Any], args: list[str]
) -> None:
    assert base_config["learning_rate"] != 0.5
    assert session_for(tmp_path, base_config, args).cfg.learning_rate == 0.5


def test_overrides_win_over_the_file(tmp_path: Path, base_config: dict[str, Any]) -> None:
    config = {**base_config, "bf16": True, "micro_batch_size": 2}
    overrides = [
        "--bf16",
        "false",
        "--micro-batch-size",
        "4",
        "--datasets.0.type",
        "completion",
        "--lora_target_linear",
    ]
    cfg = session_for(tmp_path, config, overrides).cfg
    assert cfg.bf16 is False
    assert cfg.micro_batch_size == 4
    assert cfg.datasets[0].type == "completion"
    assert cfg.datasets[0].path == base_config["datasets"][0]["path"]  # siblings kept
    assert cfg.lora_target_linear is True


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--datasets.3.type", "completion"], ["datasets.3", "list of 1 item"]),
        (["--learning_rate.x", "1"], ["learning_rate"]),
        (["learning_rate=0.5"], ["unexpected argument 'learning_rate=0.5'"]),
    ],
)
def test_bad_override_is_a_config_error(
    tmp_path: Path, base_config: dict[str, Any], args: list[str], expected: list[str]
) -> None:
    message = config_error(tmp_path, base_config, args)
    for text in expected:
        assert text in message


def test_overridden_value_is_validated(tmp_path: Path, base_config: dict[str, Any]) -> None:
    message = config_error(tmp_path, base_config, ["--micro-batch-size", "lots"])
    assert "micro_batch_size" in message


def test_overrides_on_the_cli(tmp_path: Path, base_config: dict[str, Any]) -> None:
    path = write_config(tmp_path / "config.yml", base_config)
    ok = run_weave(
        "validate",
        str(path),
        "--learning_rate=0.5",
        "--bf16",
        "false",
        "--micro-batch-size",
        "4",
        "--lora_target_linear",
        cwd=tmp_path,
        env=WIDE,
    )
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    # the same forms reach validation: bad values are reported by key (the file itself is valid)
    bad = run_weave(
        "validate",
        str(path),
        "--micro-batch-size",
        "lots",
        "--datasets.0.type=alpacca",
        "--lora_r",
        "abc",
        cwd=tmp_path,
        env=WIDE,
    )
    assert bad.returncode == 2, bad.stderr
    assert "3 problem(s)" in bad.stderr
    for text in ("micro_batch_size", "datasets.0.type", "did you mean alpaca", "lora_r"):
        assert text in bad.stderr
    assert "Traceback" not in bad.stderr


# --- sources: URLs, broken YAML ---------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A folder served over http on 127.0.0.1 (loopback only), and its base URL."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_config_from_an_http_url(http_root: tuple[Path, str], base_config: dict[str, Any]) -> None:
    root, url = http_root
    write_config(root / "remote.yml", {**base_config, "learning_rate": 0.25})
    session = open_session(f"{url}/remote.yml", ["--seed", "3"], make_plugin_manager())
    assert session.cfg.learning_rate == 0.25
    assert session.cfg.seed == 3
    assert session.source == f"{url}/remote.yml"


def test_config_url_that_fails_is_a_config_error(http_root: tuple[Path, str]) -> None:
    _, url = http_root
    with pytest.raises(ConfigError, match="cannot read config") as info:
        open_session(f"{url}/missing.yml", [], make_plugin_manager())
    assert f"{url}/missing.yml" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        open_session(tmp_path / "nope.yml", [], make_plugin_manager())
    assert str(tmp_path / "nope.yml") in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("base_model: x\ndatasets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        open_session(path, [], make_plugin_manager())
    assert str(path) in str(info.value)


def test_top_level_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yml"
    path.write_text("- base_model: x\n- datasets: []\n")
    with pytest.raises(ConfigError, match="top level must be a mapping") as info:
        open_session(path, [], make_plugin_manager())
    assert str(path) in str(info.value)


@pytest.mark.parametrize("plugins", ["my_plugin", [1, 2], {"a": "b"}, ["ok", None]])
def test_plugins_must_be_a_list_of_strings(
    tmp_path: Path, base_config: dict[str, Any], plugins: Any
) -> None:
    message = config_error(tmp_path, {**base_config, "plugins": plugins})
    assert "plugins:" in message
    assert "list" in message


# --- the schema and the resolved config ---------------------------------------------------------


def test_config_schema_includes_core_and_plugin_keys(tmp_path: Path) -> None:
    result = run_weave("config-schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    properties = json.loads(result.stdout)["properties"]
    for key in ("base_model", "sequence_len", "datasets", "micro_batch_size"):
        assert key in properties
    for key in ("lora_r", "adapter", "attn_implementation"):  # plugins' fields
        assert key in properties
    assert properties["lora_r"]["type"] == "integer"


def test_schema_of_a_blocked_plugin_loses_its_fields() -> None:
    properties = config_schema(make_plugin_manager(block=["lora"]))["properties"]
    assert "lora_r" not in properties
    assert "adapter" not in properties
    assert "attn_implementation" in properties


def test_resolved_config_round_trips(tmp_path: Path, base_config: dict[str, Any]) -> None:
    config = {k: v for k, v in base_config.items() if k != "micro_batch_size"}
    cfg = session_for(tmp_path, config, ["--lora_r", "4"]).cfg
    out = tmp_path / "out"
    out.mkdir()
    path = save_resolved_config(cfg, out)
    assert path == out / "config.yml"
    assert [p.name for p in out.iterdir()] == ["config.yml"]  # no temporary file left
    saved = yaml.safe_load(path.read_text())
    assert saved["micro_batch_size"] == 1  # defaults are written out
    assert saved["lora_r"] == 4  # overrides too
    again = open_session(path, [], make_plugin_manager()).cfg
    assert again.model_dump() == cfg.model_dump()


def test_union_alternatives_are_one_problem(tmp_path: Path, base_config: dict[str, Any]) -> None:
    path = write_config(tmp_path / "c.yml", {**base_config, "bf16": "maybe"})
    with pytest.raises(ConfigError) as info:
        open_session(path, [], make_plugin_manager())
    text = str(info.value)
    assert "1 problem(s)" in text
    assert "  - bf16: " in text and "bf16.bool" not in text


def test_unset_axolotl_keys_are_dropped_quietly(
    tmp_path: Path, base_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(
        tmp_path / "c.yml", {**base_config, "comet_project_name": None, "flash_attention": False}
    )
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        cfg = open_session(path, [], make_plugin_manager()).cfg
    assert "comet_project_name" not in caplog.text and "flash_attention" not in caplog.text
    assert "comet_project_name" not in cfg.model_dump()


def test_nested_override_keys_take_dashes(base_config: dict[str, Any]) -> None:
    data = apply_overrides(base_config, ["--datasets.0.ds-type", "json"])
    assert data["datasets"][0]["ds_type"] == "json"
