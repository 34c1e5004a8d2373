"""`weave fetch examples [--dest DIR]`: copy the bundled examples (configs, the tiny llama, the
small data sets) out of the installed package, with no network.

The examples ship inside the package as data (`axolotl_weave_plugins/examples`, a link to the
repository's `examples/` folder that the wheel stores as files). Their configs name their files
from the folder above `examples/` (`base_model: examples/tiny-llama`); copied anywhere else, the
copies name them from where they now are, as seen from the current folder (an absolute path
when the copy is outside it), so that `weave train DEST/quickstart.yml` works from here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import typer
from axolotl_weave import WeaveError, hookimpl

PLUGIN_KIND = "command"
BUNDLED = "examples"
"""The examples' folder inside the `axolotl_weave_plugins` package."""
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store")
REFERENCE = re.compile(r"(?<![\w./-])examples([/.])(?=\w)")
"""`examples/...` (a path) or `examples.module` (an import path, e.g. GRPO's reward functions)
in a config's text, not inside another word or path."""


def bundled_examples() -> Path:
    """The folder of examples shipped with the installed package."""
    from importlib.resources import files

    folder = Path(str(files("axolotl_weave_plugins") / BUNDLED))
    if not (folder / "quickstart.yml").is_file():
        raise WeaveError(
            f"this installation has no bundled examples (looked in {folder}): reinstall "
            "axolotl-weave from its wheel or repository"
        )
    return folder


def check_destination(dest: Path) -> None:
    """Refuse a destination that is a file, a folder holding anything, or a place that cannot
    be written; nothing is ever overwritten."""
    if dest.exists() and not dest.is_dir():
        raise WeaveError(f"--dest {dest} is a file: give a new or empty folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise WeaveError(
            f"--dest {dest} is not empty: fetch never overwrites; give a new or empty folder"
        )
    parent = dest.absolute().parent  # where the copy is staged, then renamed into place
    nearest = next(p for p in (parent, *parent.parents) if p.exists())
    if not can_write(nearest):
        raise WeaveError(f"--dest {dest}: cannot write in {nearest} (permission denied)")


def can_write(folder: Path) -> bool:
    """Whether a file can be created in `folder` (tried: read-only mounts count)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def references(dest: Path, cwd: Path) -> tuple[str, str | None]:
    """What `examples/` and `examples.` become in the copied configs: the copy's path from `cwd`
    (absolute when outside it), and its import path when it is one (else None: left as is)."""
    where = dest.absolute()
    try:
        relative = where.relative_to(cwd.absolute())
    except ValueError:
        return str(where), None
    parts = relative.parts
    module = ".".join(parts) if parts and all(p.isidentifier() for p in parts) else None
    return relative.as_posix(), module


def rewrite_configs(folder: Path, path: str, module: str | None) -> int:
    """Point every copied YAML config's `examples/` (and `examples.`) at the copy; the number of
    configs changed."""
    changed = 0

    def replace(match: re.Match[str]) -> str:
        sep = match.group(1)
        if sep == "/":
            return f"{path}/"
        return f"{module}." if module else match.group(0)

    for config in sorted([*folder.rglob("*.yml"), *folder.rglob("*.yaml")]):
        text = config.read_text(encoding="utf-8")
        new = REFERENCE.sub(replace, text)
        if new != text:
            config.write_text(new, encoding="utf-8")
            changed += 1
    return changed


def fetch_examples(dest: Path, cwd: Path | None = None) -> Path:
    """Copy the bundled examples to `dest` (new or empty), written to a temporary sibling first
    and renamed into place; their configs then name their files from `cwd`."""
    from axolotl_weave import staged_folder

    source = bundled_examples()
    check_destination(dest)
    path, module = references(dest, cwd or Path.cwd())
    try:
        with staged_folder(dest) as staging:
            shutil.copytree(source, staging, ignore=SKIPPED, dirs_exist_ok=True)
            if path != BUNDLED:
                rewrite_configs(staging, path, module)
    except OSError as exc:
        raise WeaveError(f"--dest {dest}: cannot copy the examples there: {exc}") from None
    return dest


def fetch_examples_command(
    dest: Path = typer.Option(
        Path(BUNDLED),
        "--dest",
        help="A new or empty folder to copy them into (default ./examples).",
    ),
) -> None:
    """Copy the bundled example configs, tiny model and data (no network)."""
    from axolotl_weave.commands import console

    fetch_examples(dest)
    configs = sorted(p.name for p in dest.glob("*.yml"))
    shown = os.path.relpath(dest) if dest.absolute().is_relative_to(Path.cwd()) else str(dest)
    console.print(f"[bold green]copied[/] {len(configs)} example configs to {dest}")
    console.print(f"try: weave train {Path(shown).as_posix()}/quickstart.yml", highlight=False)


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave fetch examples [--dest DIR]`."""
    from axolotl_weave.commands import user_errors

    fetch_app = typer.Typer(help="Copy files bundled with Axolotl Weave.", no_args_is_help=True)
    fetch_app.command("examples")(user_errors(fetch_examples_command))
    app.add_typer(fetch_app, name="fetch")
