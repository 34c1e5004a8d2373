"""Every example plugin in docs/plugins.md, run as a user would: written to a module, named under
`plugins:` in a config, and trained with on the tiny llama."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave import hookimpl
from axolotl_weave_testing import train_with

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\n```python\n(.*?)```", re.DOTALL)


def examples() -> dict[str, str]:
    return dict(EXAMPLE.findall(DOC.read_text()))


def test_the_doc_has_an_example_of_each_kind_of_hook() -> None:
    found = examples()
    assert set(found) == {"shout_format", "weighted_step", "freeze_embeddings", "best_loss"}
    text = "\n".join(found.values())
    for marker in ("register(", "return None", "wrapper=True", "def configure"):
        assert marker in text


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "doc_plugins"
    folder.mkdir()
    for name, source in examples().items():
        (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    return folder


run = train_with  # train in-process with extra plugin objects registered


class Probe:
    def __init__(self) -> None:
        self.embeddings_train: bool | None = None

    @hookimpl
    def post_train(self, model: Any) -> None:
        self.embeddings_train = model.get_input_embeddings().weight.requires_grad


def test_the_format_example_builds_its_type(
    base_config: dict, tmp_path: Path, plugin_dir: Path
) -> None:
    entry = {**base_config["datasets"][0], "type": "shout"}
    config = {**base_config, "plugins": ["shout_format"], "datasets": [entry]}
    config["shout_suffix"] = "!!"
    state = run(config, tmp_path / "shout.yml")
    assert state.global_step == 4


def test_the_training_step_example_answers_and_logs_its_metric(
    base_config: dict, tmp_path: Path, plugin_dir: Path
) -> None:
    config = {**base_config, "plugins": ["weighted_step"], "weighted_loss": 2.0}
    state = run(config, tmp_path / "weighted.yml")
    logged = [entry for entry in state.log_history if "loss" in entry]
    assert logged and all(entry["weighted/scale"] == 2.0 for entry in logged)

    off = run(
        {**config, "weighted_loss": None, "output_dir": str(tmp_path / "off")},
        tmp_path / "off.yml",
    )
    assert all("weighted/scale" not in entry for entry in off.log_history)


def test_the_wrapper_example_freezes_the_embeddings(
    base_config: dict, tmp_path: Path, plugin_dir: Path
) -> None:
    probe = Probe()
    config = {**base_config, "plugins": ["freeze_embeddings"], "freeze_embeddings": True}
    run(config, tmp_path / "freeze.yml", probe)
    assert probe.embeddings_train is False


def test_the_run_scoped_example_keeps_its_state_in_checkpoints(
    base_config: dict, tmp_path: Path, plugin_dir: Path
) -> None:
    config = {**base_config, "plugins": ["best_loss"], "track_best_loss": True, "save_steps": 2}
    state = run(config, tmp_path / "best.yml")
    out = Path(config["output_dir"])
    record = json.loads((out / "best_loss.json").read_text())
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    assert record == {"best": min(losses), "status": "finished"}
    saved = json.loads((out / "checkpoint-2" / "best_loss" / "state.json").read_text())
    assert saved["best"] == min(losses[:2])
