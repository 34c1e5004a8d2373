"""A preference method from a separate distribution (contrib/weave-slic, `rl: slic`): installed,
its `rl:` name validates, trains end to end on a built-in preference `type:` and logs its own
metric; not installed, the name is refused with the registered ones listed.

The distribution is installed (offline) into a temporary folder, as the third-party format's
test does (tests/test_plugins.py), and found through its entry point once that folder is on the
path.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave_testing import install_offline, train_with, write_config, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
CONTRIB_SLIC = ROOT / "contrib" / "weave-slic"

PAIRS = [
    {"system": "Be brief.", "input": "Add 1 and 2.", "chosen": "3", "rejected": "It is 12"},
    {"system": "", "input": "Reverse cat.", "chosen": "tac", "rejected": "I cannot"},
    {"system": "", "input": "Add 4 and 4.", "chosen": "8", "rejected": "Maybe 44, or 9"},
    {"system": "Be kind.", "input": "Reverse dog.", "chosen": "god", "rejected": "dog"},
]


@pytest.fixture(scope="module")
def slic_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """contrib/weave-slic installed (offline) into its own folder, for PYTHONPATH."""
    source = tmp_path_factory.mktemp("src") / "weave-slic"
    shutil.copytree(CONTRIB_SLIC, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path_factory.mktemp("site")
    install_offline(source, site)
    assert (site / "weave_slic-0.1.0.dist-info").is_dir(), list(site.iterdir())
    return site


def slic_config(tmp_path: Path, base_config: dict[str, Any]) -> dict[str, Any]:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS * 2)
    return {
        **base_config,
        "datasets": [{"path": str(pairs), "type": "chatml.default"}],
        "rl": "slic",
        "slic_delta": 1.0,
        "slic_lambda": 0.1,
        "max_steps": 3,
        "logging_steps": 1,
    }


def test_without_the_distribution_rl_slic_is_refused_with_the_registered_names(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    from axolotl_weave import ConfigError
    from axolotl_weave._run import open_session

    config = slic_config(tmp_path, base_config)
    del config["slic_delta"], config["slic_lambda"]  # its keys are unknown without it too
    path = write_config(tmp_path / "slic.yml", config)
    with pytest.raises(ConfigError, match=r"rl: unknown rl 'slic'.*valid: .*dpo.*simpo"):
        open_session(path)


def test_installed_rl_slic_is_listed_and_trains_logging_its_metric(
    slic_site: Path, tmp_path: Path, base_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found through its entry point on the path (in this process: faster than the CLI)."""
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave_plugins.commands._plugin_table import describe_plugins

    monkeypatch.syspath_prepend(str(slic_site))
    rows = {row.name: row for row in describe_plugins(make_plugin_manager())}
    assert rows["slic"].distribution == "weave-slic==0.1.0"
    assert rows["slic"].builtin is False
    assert {"register_rl_methods", "build_loss", "training_step"} <= set(rows["slic"].hooks)

    config = slic_config(tmp_path, base_config)
    state = train_with(config, tmp_path / "slic.yml")
    lines = Path(config["output_dir"], "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3] and state.global_step == 3
    for record in records:
        assert math.isfinite(record["hinge_loss"]) and "rewards/margins" in record
        expected = record["hinge_loss"] + 0.1 * record["nll_loss"]
        assert record["loss"] == pytest.approx(expected, rel=1e-5)
