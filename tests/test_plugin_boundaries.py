"""Every built-in plugin has the shape of a third-party one: it imports the core only through its
public modules (the `axolotl_weave` facade, `axolotl_weave.commands`,
never an `axolotl_weave._private` module), and never another plugin's module. What two plugins
share lives in the core, behind the facade.

One exception: a plugin folder's private helper modules (`_name.py`, no entry point) belong to
the plugins of that folder, which may import them, and they may import those plugins (for
types), e.g. `commands/_bench_hf.py` and `commands/bench.py`, `models/_moe.py` and the MoE
family plugins. Every module under plugins/ is read with `ast` (type-checking imports count).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[1] / "plugins" / "axolotl_weave_plugins"
PACKAGE = "axolotl_weave_plugins"

KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()
"""(importing file relative to plugins/axolotl_weave_plugins, imported module) pairs that break
the rule today, in folders whose owners have yet to move the shared code to the core. Each must
still exist (a stale entry fails), so the list only shrinks."""


def module_name(path: Path) -> str:
    """`axolotl_weave_plugins.methods.lora` for plugins/axolotl_weave_plugins/methods/lora.py."""
    parts = path.relative_to(PLUGINS.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports (`from package import name` gives `package.name` too, since
    the name may be a submodule); relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(base)
            if is_package(base):  # the names may be submodules
                found += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return found


def is_package(module: str) -> bool:
    """Whether `module` is the facade, this package, or one of its plugin folders."""
    return module == "axolotl_weave" or (
        module.split(".")[0] == PACKAGE and len(module.split(".")) <= 2
    )


def plugin_parts(module: str) -> tuple[str, str | None] | None:
    """(folder, module) of a module of this package, module None for a folder's package; None
    for a module of another package."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    return parts[1], (parts[2] if len(parts) > 2 else None)


def is_private(name: str) -> bool:
    """`_name`, not `__dunder__`."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(path: Path) -> list[tuple[str, str]]:
    """(file, imported module) for each import of `path` that breaks the rule."""
    own = module_name(path)
    own_parts = plugin_parts(own)
    relative = str(path.relative_to(PLUGINS))
    bad: list[tuple[str, str]] = []
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] == "axolotl_weave" and any(is_private(part) for part in parts[1:]):
            bad.append((relative, module))
            continue
        target = plugin_parts(module)
        if target is None or own_parts is None or module == own:
            continue
        if module == PACKAGE or target[1] is None:
            if target[0] != own_parts[0]:  # another plugin folder's package
                bad.append((relative, module))
            continue
        same_folder = target[0] == own_parts[0]
        private = is_private(target[1]) or is_private(own_parts[1] or "")
        if not (same_folder and private):
            bad.append((relative, module))
    return bad


def plugin_files() -> list[Path]:
    return sorted(PLUGINS.rglob("*.py"))


def test_plugin_modules_are_found() -> None:
    files = plugin_files()
    assert len(files) > 50, files
    assert PLUGINS / "methods" / "lora.py" in files


def test_no_plugin_imports_another_plugin_or_a_private_core_module() -> None:
    found = {pair for path in plugin_files() for pair in violations(path)}
    unexpected = sorted(found - KNOWN_EXCEPTIONS)
    assert not unexpected, (
        "plugins import another plugin's module or a private core module (share through the "
        "axolotl_weave facade instead):\n" + "\n".join(f"  {f}: {m}" for f, m in unexpected)
    )
    stale = sorted(KNOWN_EXCEPTIONS - found)
    assert not stale, "known exceptions that no longer exist (remove them): " + repr(stale)


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        ("methods/bnb_quantization.py", "from axolotl_weave_plugins.models import x", ["x"]),
        ("methods/lora.py", "from axolotl_weave_plugins.models.hf_causal_lm import f", ["hf"]),
        ("models/gpt_oss.py", "from axolotl_weave_plugins.models.mixtral import f", ["mixtral"]),
        ("models/gpt_oss.py", "from axolotl_weave_plugins.models._moe import f", []),
        ("commands/_bench_hf.py", "from axolotl_weave_plugins.commands.bench import S", []),
        ("commands/bench.py", "from axolotl_weave_plugins.commands import _bench_data", []),
        ("kernels/liger.py", "from axolotl_weave_plugins.losses._x import f", ["losses"]),
        ("kernels/liger.py", "from axolotl_weave._run import open_session", ["_run"]),
        ("kernels/liger.py", "from axolotl_weave import hookimpl, model_inputs", []),
        ("kernels/liger.py", "from axolotl_weave.commands import console", []),
        ("kernels/liger.py", "from . import _varlen_attention", []),
        ("kernels/liger.py", "from .torch_compile import f", ["torch_compile"]),
        ("kernels/liger.py", "from ..losses import sft", ["losses"]),
    ],
)
def test_the_rule_itself(
    importer: str, source: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = PLUGINS / importer
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    found = [module for _, module in violations(path)]
    assert len(found) >= len(expected) and all(
        any(word in module for module in found) for word in expected
    ), found
    if not expected:
        assert not found, found
