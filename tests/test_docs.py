"""The docs say what the code does: the config reference is current, the README's commands exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_config_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_commands_exist_and_ci_runs_the_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/quickstart.sh" in readme
    assert "bash scripts/test.sh" in readme
    assert (REPO / "scripts" / "quickstart.sh").is_file()
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_axolotl_page_is_current_and_every_axolotl_key_has_a_decision() -> None:
    """Every key Axolotl knows is implemented, refused (it changes what is trained) or ignored
    with the reason it does not; docs/axolotl.md lists them as the code decides."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_axolotl_doc.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no decision" not in result.stdout + result.stderr
