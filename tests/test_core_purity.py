"""The core stays a kernel: it names no model family, dataset format, kernel or method (those
are plugins, found through the registries and hooks), and only `_hooks.py` calls `pm.hook`."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

from axolotl_weave._hooks import Hooks
from axolotl_weave._pluginmanager import make_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "axolotl_weave"
PLUGIN_KINDS = {"model", "format", "kernel", "method", "loss", "rl"}
"""Kinds of built-in plugins whose names the core must not know."""
COMMON_WORDS = {
    "tokenized": "English (pre-tokenized rows); the format of that name is a plugin",
    "pretraining": "part of the core key `pretraining_dataset`, whose default type comes from "
    "the registry (`DatasetFormat.streams`)",
    "completion": "English",
    "chat_template": "the Hugging Face tokenizer attribute of that name (the cache key reads it)",
}
"""Format names that are also ordinary words or attributes, and why the core may say them."""


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def plugin_names() -> set[str]:
    """Families (names and model types), formats, and the entry-point names of the built-in
    plugins of the kinds above."""
    hooks = Hooks(make_plugin_manager())
    families = hooks.model_families()
    names = set(families) | {family.name for family in families.values()}
    names |= set(hooks.dataset_formats())
    for ep in importlib.metadata.entry_points(group="axolotl_weave"):
        if ep.dist is not None and ep.dist.name == "axolotl-weave":
            kind = getattr(ep.load(), "PLUGIN_KIND", None)
            if kind in PLUGIN_KINDS:
                names.add(ep.name)
    return {name.lower() for name in names if name} - set(COMMON_WORDS)


def code_strings(tree: ast.AST) -> list[str]:
    """String literals and identifiers of the code, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings:
                found.append(node.value)
        elif isinstance(node, ast.Name):
            found.append(node.id)
        elif isinstance(node, ast.Attribute):
            found.append(node.attr)
        elif isinstance(node, ast.alias):
            found.append(node.name)
    return found


def test_no_core_file_names_a_family_format_kernel_or_method() -> None:
    names = plugin_names()
    assert {"llama", "alpaca", "lora", "liger"} <= names  # the registries were read
    offences = []
    for path in core_files():
        for text in code_strings(ast.parse(path.read_text())):
            words = set(re.findall(r"[a-z0-9_]+", text.lower()))
            words |= {part for word in list(words) for part in word.split("_")}
            camel = {w.lower() for w in re.findall(r"[A-Z][a-z0-9]+", text)}
            hit = (words | camel) & names
            if hit:
                offences.append(f"{path.relative_to(ROOT)}: {text[:60]!r} names {sorted(hit)}")
    assert not offences, "\n".join(offences)


def test_only_the_hooks_module_calls_pm_hook() -> None:
    callers = [
        str(path.relative_to(ROOT))
        for path in [*core_files(), *(ROOT / "plugins").rglob("*.py")]
        if "pm.hook" in path.read_text()
    ]
    assert callers == ["core/axolotl_weave/_hooks.py"]
