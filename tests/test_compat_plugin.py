"""Axolotl compatibility is a plugin (`axolotl_compat`): with it, Axolotl keys nothing here
implements are dropped with a warning and its aliases apply; blocked, an Axolotl-only key is an
unknown key like any other, and a key that changes what is trained gets no special reason."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave._errors import ConfigError
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import Session, open_session
from axolotl_weave_testing import run_weave, write_config

COMPAT = "axolotl_compat"


def session(tmp_path: Path, config: dict[str, Any], block: tuple[str, ...] = ()) -> Session:
    path = write_config(tmp_path / "config.yml", config)
    return open_session(path, [], make_plugin_manager(block=block))


def error(tmp_path: Path, config: dict[str, Any], block: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        session(tmp_path, config, block)
    return str(info.value)


def test_the_core_names_no_axolotl_key() -> None:
    import axolotl_weave

    core = Path(axolotl_weave.__file__).parent
    assert not (core / "_axolotl_keys.py").exists()
    for path in core.glob("*.py"):
        text = path.read_text()
        for name in ("neftune_noise_alpha", "AXOLOTL_TOP_LEVEL_KEYS", "AXOLOTL_DECISIVE_KEYS"):
            assert name not in text, (path.name, name)


def test_with_the_plugin_axolotl_keys_are_dropped_with_a_warning(
    tmp_path: Path, base_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    entry = {**base_config["datasets"][0], "roles_to_train": ["gpt"]}
    config = {**base_config, "neftune_noise_alpha": 5, "datasets": [entry]}
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        cfg = session(tmp_path, config).cfg
    assert "config key 'neftune_noise_alpha' is an Axolotl option" in caplog.text
    assert "'datasets[].roles_to_train'" in caplog.text
    assert "neftune_noise_alpha" not in cfg.model_dump()


@pytest.mark.parametrize("key", ["neftune_noise_alpha", "curriculum_sampling"])
def test_blocked_an_axolotl_only_key_is_an_unknown_key(
    tmp_path: Path, base_config: dict[str, Any], key: str
) -> None:
    message = error(tmp_path, {**base_config, key: 5}, block=(COMPAT,))
    assert f"  - {key}: unknown key" in message
    assert "IGNORED" not in message and "Axolotl option" not in message


def test_blocked_an_axolotl_dataset_key_is_an_unknown_key(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    entry = {**base_config["datasets"][0], "roles_to_train": ["gpt"]}
    message = error(tmp_path, {**base_config, "datasets": [entry]}, block=(COMPAT,))
    assert "unknown key 'roles_to_train'" in message


def test_blocked_a_key_changing_what_is_trained_gets_no_axolotl_reason(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    with_plugin = error(tmp_path, {**base_config, "rl": "dpo"})
    assert "rl: an Axolotl option that no installed plugin implements" in with_plugin
    blocked = error(tmp_path, {**base_config, "rl": "dpo"}, block=(COMPAT,))
    assert "  - rl: unknown key" in blocked


def test_the_train_on_split_alias_is_the_plugins(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    entry = {**base_config["datasets"][0], "train_on_split": "validation"}
    config = {**base_config, "datasets": [entry]}
    assert session(tmp_path, config).cfg.datasets[0].split == "validation"
    assert "unknown key 'train_on_split'" in error(tmp_path, config, block=(COMPAT,))


def test_a_format_option_is_not_taken_for_an_axolotl_key(
    tmp_path: Path, base_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """`field_messages` is an Axolotl dataset key and chat_template's option: it is kept."""
    entry = {"path": base_config["datasets"][0]["path"], "type": "chat_template"}
    entry["field_messages"] = "conversation"
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        cfg = session(tmp_path, {**base_config, "datasets": [entry]}).cfg
    assert cfg.datasets[0].option("field_messages") == "conversation"
    assert "IGNORED" not in caplog.text


def test_cli_with_the_plugin_blocked(tmp_path: Path, base_config: dict[str, Any]) -> None:
    path = write_config(tmp_path / "config.yml", {**base_config, "neftune_noise_alpha": 5})
    result = run_weave("-p", f"no:{COMPAT}", "validate", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "neftune_noise_alpha" in result.stderr and "unknown key" in result.stderr
    assert "IGNORED" not in result.stderr
