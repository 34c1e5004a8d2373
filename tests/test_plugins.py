"""The plugin system and the architecture it promises, enforced.

Every hook documented and its calling style matching its docstring; every hook implemented or
tested; every built-in plugin module registered as an entry point; the core importing no plugin
and naming no model family, format or method; plugins importable without torch; a plugin from a
separately installed distribution (contrib/weave-reverse-format) adding a dataset `type:`; local
plugins named in `plugins:`; Axolotl's plugin paths; refusals (misspelt hooks, bad arguments,
duplicate names and fields, a plugin that cannot import) that name the plugin; autoload off,
blocking and hook tracing; every shipped example config valid.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave import ConfigError, DatasetFormat, PluginConfig, PluginError, hookimpl, hookspecs
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import Session, open_session, train
from axolotl_weave_plugins.commands._plugin_table import describe_plugins
from axolotl_weave_testing import (
    install_offline,
    run_weave,
    train_with,
    write_config,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "axolotl_weave"
PLUGINS = ROOT / "plugins" / "axolotl_weave_plugins"
CONTRIB_REVERSE = ROOT / "contrib" / "weave-reverse-format"
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))
GROUP = "axolotl_weave"
SPEC_ATTR = f"{hookspecs.PROJECT_NAME}_spec"
SPEC_NAMES = sorted(
    name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, SPEC_ATTR)
)
PIPELINE_HOOKS = (
    "load_model",
    "patch_attention",
    "build_dataset",
    "build_loss",
    "wrap_distributed",
    "post_train",
)
# Hooks no built-in plugin implements, and the test of this module that exercises each one.
TEST_ONLY_HOOKS = {
    "add_cli_commands": "test_plugin_adds_a_cli_command",
    "on_train_begin": "test_local_plugin_hooks_fire_during_training",
    "on_train_end": "test_local_plugin_hooks_fire_during_training",
    # implemented by ReLoRA's run-scoped object (registered by `configure`, not at start-up)
    "on_step_end": "test_run_scoped_plugin_hooks_fire_in_order",
    "lr_multiplier": "test_run_scoped_plugin_hooks_fire_in_order",
    "save_checkpoint_state": "test_run_scoped_plugin_hooks_fire_in_order",
    "load_checkpoint_state": "test_run_scoped_plugin_hooks_fire_in_order",
    # implemented by precompute_ref_log_probs's run-scoped object
    "transform_train_data": "test_transform_train_data_adds_a_column_the_batches_carry",
}
WIDE = {"COLUMNS": "200"}


def with_pythonpath(folder: Path) -> str:
    """`folder` first on PYTHONPATH, keeping what is there (where the package may be installed)."""
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH", "")]))


def flat(text: str | None) -> str:
    """Whitespace collapsed, so that a phrase split over lines (or by rich) still matches."""
    return " ".join((text or "").split())


@pytest.fixture
def local_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable]:
    """Write `name.py` with the given source into an importable folder; forget it afterwards."""
    folder = tmp_path / "local_plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    names: list[str] = []

    def write(name: str, source: str) -> str:
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def session_for(tmp_path: Path, config: dict[str, Any], name: str = "config.yml") -> Session:
    """Write `config` and open a session on it with a fresh plugin manager."""
    return open_session(write_config(tmp_path / name, config), [], make_plugin_manager())


# --- hook specifications ------------------------------------------------------------------------


def test_the_pipeline_hooks_are_specified() -> None:
    assert set(PIPELINE_HOOKS) <= set(SPEC_NAMES), SPEC_NAMES


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_hookspec_documents_its_calling_style(name: str) -> None:
    pm = make_plugin_manager(autoload=False)
    caller = getattr(pm.hook, name)
    assert caller.spec is not None
    doc = flat(inspect.getdoc(caller.spec.function))
    assert len(doc) > 80, f"{name}: document when it is called, its arguments and its result"
    says_first = "first non-None" in doc
    says_all = "Collects all" in doc
    assert says_first != says_all, f"{name}: say either 'first non-None' or 'Collects all'"
    assert caller.spec.opts["firstresult"] is says_first, (
        f"{name}: firstresult={caller.spec.opts['firstresult']} but the docstring says "
        f"{'first non-None' if says_first else 'Collects all'}"
    )


def test_every_hook_is_implemented_by_a_builtin_plugin_or_tested_here() -> None:
    rows = [row for row in describe_plugins(make_plugin_manager()) if row.builtin]
    implemented = {hook for row in rows for hook in row.hooks}
    assert set(PIPELINE_HOOKS) <= implemented
    untested = set(SPEC_NAMES) - implemented - set(TEST_ONLY_HOOKS)
    assert not untested, f"hooks neither implemented by a built-in plugin nor tested: {untested}"
    for hook, test_name in TEST_ONLY_HOOKS.items():
        assert hook in SPEC_NAMES, f"{hook} is no longer a hook"
        assert callable(globals().get(test_name)), f"{hook} should be exercised by {test_name}"


# --- built-in plugins: entry points, kinds, no heavy imports ------------------------------------


def builtin_entry_points() -> list[importlib.metadata.EntryPoint]:
    return [
        ep
        for ep in importlib.metadata.entry_points(group=GROUP)
        if ep.dist is not None and ep.dist.name == "axolotl-weave"
    ]


def test_every_plugin_module_is_an_entry_point_and_every_entry_point_exists() -> None:
    modules = {
        ".".join(path.relative_to(PLUGINS.parent).with_suffix("").parts)
        for path in PLUGINS.rglob("*.py")
        if not path.name.startswith("_")  # __init__ and shared helpers (_name.py) are no plugins
    }
    assert len(modules) >= 10, modules
    eps = builtin_entry_points()
    registered = {ep.value for ep in eps}
    assert modules - registered == set(), "plugin modules without an entry point (reinstall?)"
    assert registered - modules == set(), "entry points whose module is not in plugins/"
    assert len({ep.name for ep in eps}) == len(eps), "two built-in entry points share a name"
    for ep in eps:
        assert importlib.util.find_spec(ep.value) is not None, ep


@pytest.mark.parametrize("ep", builtin_entry_points(), ids=lambda ep: ep.name)
def test_builtin_plugin_declares_its_kind(ep: importlib.metadata.EntryPoint) -> None:
    module = ep.load()
    kind = getattr(module, "PLUGIN_KIND", None)
    assert isinstance(kind, str) and kind, f"{ep.value} lacks PLUGIN_KIND"


def test_plugins_load_without_torch_or_transformers() -> None:
    script = (
        "import sys\n"
        "from axolotl_weave._pluginmanager import make_plugin_manager\n"
        "from axolotl_weave._cli import build_app\n"
        "pm = make_plugin_manager()\n"
        "build_app(pm)\n"
        "heavy = ('torch', 'transformers', 'datasets', 'accelerate', 'peft')\n"
        "print(len(pm.get_plugins()), [m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    count, heavy = result.stdout.split(" ", 1)
    assert int(count) >= len(builtin_entry_points())
    assert heavy.strip() == "[]", f"imported at plugin load: {heavy}"


# --- the core imports no plugin and names no family, format or method ---------------------------

FAMILY_FORMAT_NAMES = re.compile(r"llama|alpaca|mistral|qwen|gemma|sharegpt|chatml", re.I)
PLUGIN_LIBRARIES = {
    "axolotl_weave_plugins",
    "peft",
    "bitsandbytes",
    "trl",
    "liger_kernel",
    "flash_attn",
    "xformers",
    "deepspeed",
    "cut_cross_entropy",
    "auto_gptq",
    "gptqmodel",
}
METHOD_NAMES = {"lora", "qlora", "relora", "gptq", "dpo", "ipo", "kto", "orpo", "simpo", "grpo"}


def core_violations(source: str, *, check_names: bool = True) -> list[str]:
    """What in this core source imports a plugin or special-cases a family/format/method."""
    found = []
    for node in ast.walk(ast.parse(source)):
        imported: list[str] = []
        if isinstance(node, ast.Import):
            imported = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
        for name in imported:
            if name.split(".")[0] in PLUGIN_LIBRARIES:
                found.append(f"line {node.lineno}: imports {name}")
            if check_names and FAMILY_FORMAT_NAMES.search(name):
                found.append(f"line {node.lineno}: imports {name}")
        # `if cfg.adapter == "lora"` / `in ("alpaca", ...)`: the core deciding for a plugin
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                elts = part.elts if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [part]
                for elt in elts:
                    if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                        word = elt.value.lower()
                        if word in METHOD_NAMES or FAMILY_FORMAT_NAMES.fullmatch(word):
                            found.append(f"line {node.lineno}: compares with {elt.value!r}")
        if check_names and isinstance(node, (ast.Name, ast.FunctionDef, ast.ClassDef)):
            ident = node.id if isinstance(node, ast.Name) else node.name
            if FAMILY_FORMAT_NAMES.search(ident):
                found.append(f"line {node.lineno}: names {ident}")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import axolotl_weave_plugins.formats.alpaca\n",
        "from axolotl_weave_plugins.models import llama\n",
        "from peft import LoraConfig\n",
        "def f(cfg):\n    return cfg.adapter == 'lora'\n",
        "def f(t):\n    return t in ('completion', 'alpaca')\n",
        "class LlamaPatch:\n    pass\n",
    ],
    ids=["plugin-import", "plugin-from-import", "peft", "adapter-eq", "type-in", "family-class"],
)
def test_the_core_check_catches_plugin_knowledge(source: str) -> None:
    assert core_violations(source)


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_plugin_and_names_no_family_format_or_method(path: Path) -> None:
    source = path.read_text()
    assert "axolotl_weave_plugins" not in source
    # the fixtures for plugin authors build a tiny model of a real architecture (LlamaConfig)
    fixtures = path.name in ("testing.py", "tiny.py")
    assert core_violations(source, check_names=not fixtures) == []


# --- a plugin from a separate distribution (the third-party path) -------------------------------


@pytest.fixture(scope="module")
def reverse_format_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """contrib/weave-reverse-format installed (offline) into its own folder, for PYTHONPATH."""
    source = tmp_path_factory.mktemp("src") / "weave-reverse-format"
    shutil.copytree(CONTRIB_REVERSE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path_factory.mktemp("site")
    install_offline(source, site)
    assert (site / "weave_reverse_format-0.1.0.dist-info").is_dir(), list(site.iterdir())
    return site


def reverse_config(base_config: dict[str, Any], tmp_path: Path, **options: Any) -> dict[str, Any]:
    rows = [{"text": "the quick brown fox"}, {"text": "jumps over the lazy dog"}] * 4
    data = write_jsonl(tmp_path / "reverse.jsonl", rows)
    entry = {"path": str(data), "type": "reverse_completion", **options}
    return {**base_config, "datasets": [entry]}


def test_installed_distribution_plugin_is_listed(reverse_format_site: Path, tmp_path: Path) -> None:
    env = {**WIDE, "PYTHONPATH": with_pythonpath(reverse_format_site)}
    result = run_weave("plugin", "list", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["reverse_completion"] == {
        "name": "reverse_completion",
        "kind": "format",
        "distribution": "weave-reverse-format==0.1.0",
        "builtin": False,
        "blocked": False,
        "hooks": ["register_dataset_formats"],  # its build function is in the registration
    }
    assert rows["alpaca"]["builtin"] is True

    without = run_weave("plugin", "list", "--json", cwd=tmp_path, env=WIDE)
    assert "reverse_completion" not in {row["name"] for row in json.loads(without.stdout)}


def test_installed_distribution_plugin_builds_its_dataset_type(
    reverse_format_site: Path, tmp_path: Path, base_config: dict[str, Any], tiny_llama_dir: Path
) -> None:
    config = write_config(
        tmp_path / "reverse.yml", reverse_config(base_config, tmp_path, separator="-")
    )
    env = {**WIDE, "PYTHONPATH": with_pythonpath(reverse_format_site)}
    result = run_weave("preprocess", str(config), "--debug", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(reverse_completion)" in result.stdout  # the summary names the entry's type

    from datasets import load_from_disk
    from transformers import AutoTokenizer

    (cache,) = [p for p in Path(base_config["dataset_prepared_path"]).iterdir() if p.is_dir()]
    train_rows = load_from_disk(str(cache / "train"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    texts = {tokenizer.decode(row, skip_special_tokens=True) for row in train_rows["input_ids"]}
    assert texts == {"fox-brown-quick-the", "dog-lazy-the-over-jumps"}
    for row in train_rows:
        assert row["labels"] == row["input_ids"]  # every token trained
        assert row["input_ids"][-1] == tokenizer.eos_token_id


def test_installed_distribution_plugin_options_are_validated(
    reverse_format_site: Path, tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = write_config(
        tmp_path / "typo.yml", reverse_config(base_config, tmp_path, separatr="-")
    )
    env = {**WIDE, "PYTHONPATH": with_pythonpath(reverse_format_site)}
    result = run_weave("validate", str(config), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    message = flat(result.stderr)
    assert "unknown key 'separatr' (did you mean separator?)" in message
    assert "Traceback" not in result.stderr
    assert "[hook]" not in result.stderr  # tracing is off unless asked for

    # without the distribution installed the type itself is unknown
    plain = write_config(tmp_path / "plain.yml", reverse_config(base_config, tmp_path))
    result = run_weave("validate", str(plain), cwd=tmp_path, env=WIDE)
    assert result.returncode == 2
    assert "unknown dataset type 'reverse_completion'" in flat(result.stderr)


# --- plugins named in the config's `plugins:` ---------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (
            """
            from axolotl_weave import hookimpl

            @hookimpl
            def load_modle(cfg):
                return None
            """,
            "load_modle",
        ),
        (
            """
            from axolotl_weave import hookimpl

            @hookimpl
            def load_model(cfg, bogus_arg):
                return None
            """,
            "bogus_arg",
        ),
    ],
    ids=["misspelt-hook", "unknown-argument"],
)
def test_invalid_config_plugin_is_refused_naming_it(
    source: str,
    fragment: str,
    local_plugin: Callable,
    tmp_path: Path,
    base_config: dict[str, Any],
) -> None:
    name = local_plugin(f"invalid_plugin_{fragment}", source)
    with pytest.raises(PluginError) as info:
        session_for(tmp_path, {**base_config, "plugins": [name]})
    assert f"plugin '{name}'" in str(info.value)
    assert fragment in str(info.value)


def test_unimportable_config_plugin_is_refused_naming_it(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    with pytest.raises(PluginError, match="no_such_weave_plugin_xyz"):
        session_for(tmp_path, {**base_config, "plugins": ["no_such_weave_plugin_xyz.Thing"]})


RECORDER = """
from axolotl_weave import PluginConfig, hookimpl

PLUGIN_KIND = "logger"
CALLS = []


class RecorderSettings(PluginConfig):
    recorder_tag: str = "none"


@hookimpl
def add_config_fields():
    return RecorderSettings


@hookimpl
def patch_attention(model, cfg):
    CALLS.append(("patch_attention", cfg.recorder_tag))


@hookimpl
def on_train_begin(cfg, state):
    CALLS.append(("on_train_begin", state.global_step))


@hookimpl
def on_log(state, metrics):
    CALLS.append(("on_log", state.global_step, metrics["loss"]))


@hookimpl
def on_train_end(cfg, state):
    CALLS.append(("on_train_end", state.global_step))
"""


RUN_SCOPED = """
from axolotl_weave import hookimpl

PLUGIN_KIND = "method"
CALLS = []


class Run:
    @hookimpl
    def lr_multiplier(self, step):
        return 0.5

    @hookimpl
    def on_step_end(self, state, optimizer):
        CALLS.append(("on_step_end", state.global_step, optimizer.param_groups[0]["lr"]))

    @hookimpl
    def save_checkpoint_state(self, state, folder, strategy):
        CALLS.append(("save_checkpoint_state", state.global_step, strategy.is_main_process))
        (folder / "run_scoped").mkdir()
        (folder / "run_scoped" / "step.txt").write_text(str(state.global_step))

    @hookimpl
    def load_checkpoint_state(self, state, folder):
        saved = int((folder / "run_scoped" / "step.txt").read_text())
        CALLS.append(("load_checkpoint_state", state.global_step, saved))


@hookimpl
def configure(cfg, register):
    CALLS.append(("configure",))
    register(Run(), "run-scoped-test")
"""


def test_run_scoped_plugin_hooks_fire_in_order(
    local_plugin: Callable, tmp_path: Path, base_config: dict[str, Any]
) -> None:
    name = local_plugin("run_scoped_plugin", RUN_SCOPED)
    config = {**base_config, "plugins": [name], "max_steps": 2, "save_steps": 1}
    config["lr_scheduler"] = "constant"
    session = session_for(tmp_path, config)
    train(session)
    calls = sys.modules[name].CALLS
    lr = config["learning_rate"] / 2  # the multiplier, in the rate the optimizer used
    assert calls == [
        ("configure",),
        ("on_step_end", 1, pytest.approx(lr)),
        ("save_checkpoint_state", 1, True),
        ("on_step_end", 2, pytest.approx(lr)),
        ("save_checkpoint_state", 2, True),
    ]
    assert not session.hooks.pm.has_plugin("run-scoped-test")  # unregistered after the run

    calls.clear()
    resume = {**config, "max_steps": 3, "resume_from_checkpoint": "auto"}
    train(session_for(tmp_path, resume, "resume.yml"))
    assert calls[:2] == [("configure",), ("load_checkpoint_state", 2, 2)]


def test_local_plugin_field_needs_the_plugin(tmp_path: Path, base_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="recorder_tag: unknown key"):
        session_for(tmp_path, {**base_config, "recorder_tag": "hello"})


def test_local_plugin_hooks_fire_during_training(
    local_plugin: Callable, tmp_path: Path, base_config: dict[str, Any]
) -> None:
    name = local_plugin("recorder_plugin", RECORDER)
    config = {**base_config, "plugins": [name], "recorder_tag": "hello", "max_steps": 2}
    session = session_for(tmp_path, config)
    assert session.hooks.pm.has_plugin(name)
    assert session.cfg.recorder_tag == "hello"

    state = train(session)
    calls = sys.modules[name].CALLS
    assert [call[0] for call in calls] == [
        "patch_attention",
        "on_train_begin",
        "on_log",
        "on_log",
        "on_train_end",
    ], calls
    assert calls[0] == ("patch_attention", "hello")
    assert calls[1] == ("on_train_begin", 0)
    assert [call[1] for call in calls[2:4]] == [1, 2]
    assert all(isinstance(call[2], float) for call in calls[2:4])
    assert calls[4] == ("on_train_end", 2) and state.global_step == 2


def test_local_plugin_class_is_instantiated(
    local_plugin: Callable, tmp_path: Path, base_config: dict[str, Any]
) -> None:
    name = local_plugin(
        "class_plugin",
        """
        from axolotl_weave import PluginConfig, hookimpl


        class ClassSettings(PluginConfig):
            class_plugin_level: int = 0


        class ClassPlugin:
            PLUGIN_KIND = "kernel"

            def __init__(self):
                self.patched = []

            @hookimpl
            def add_config_fields(self):
                return ClassSettings

            @hookimpl
            def patch_attention(self, model, cfg):
                self.patched.append((model, cfg.class_plugin_level))
        """,
    )
    path = f"{name}.ClassPlugin"
    session = session_for(tmp_path, {**base_config, "plugins": [path], "class_plugin_level": 3})
    plugin = session.hooks.pm.get_plugin(path)
    assert type(plugin).__name__ == "ClassPlugin"  # an instance, not the class
    assert session.cfg.class_plugin_level == 3
    model = object()
    session.hooks.patch_attention(model, session.cfg, None)
    assert plugin.patched == [(model, 3)]


def test_plugin_adds_a_cli_command() -> None:
    from axolotl_weave._cli import CliContext, build_app
    from typer.testing import CliRunner

    class HelloPlugin:
        @hookimpl
        def add_cli_commands(self, app: Any) -> None:
            @app.command("hello")
            def hello(name: str = "world") -> None:
                """Say hello."""
                print(f"hello {name} from a plugin")

    pm = make_plugin_manager()
    pm.register(HelloPlugin(), name="hello_cli")
    app = build_app(pm)
    result = CliRunner().invoke(app, ["hello", "--name", "weave"], obj=CliContext(pm))
    assert result.exit_code == 0, result.output
    assert "hello weave from a plugin" in result.output

    plain = make_plugin_manager()
    result = CliRunner().invoke(build_app(plain), ["hello"], obj=CliContext(plain))
    assert result.exit_code != 0


# --- Axolotl plugin paths -------------------------------------------------------------------------


def refuse_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_import(path: str) -> object:
        raise AssertionError(f"tried to import {path}")

    monkeypatch.setattr("axolotl_weave._pluginmanager.import_plugin", no_import)


def test_axolotl_plugin_without_counterpart_warns_and_validates(
    tmp_path: Path,
    base_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    weave_log: pytest.LogCaptureFixture,
) -> None:
    refuse_imports(monkeypatch)
    lm_eval = "axolotl.integrations.llm_compressor.LLMCompressorPlugin"
    session = session_for(tmp_path, {**base_config, "plugins": [lm_eval]})
    assert session.cfg.plugins == [lm_eval]
    warnings = [r.getMessage() for r in weave_log.records if r.levelno == logging.WARNING]
    assert any(lm_eval in message and "IGNORED" in message for message in warnings), warnings
    assert not session.hooks.pm.has_plugin(lm_eval)


def test_axolotl_plugin_path_maps_onto_the_plugin_declaring_it(
    tmp_path: Path,
    base_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    weave_log: pytest.LogCaptureFixture,
) -> None:
    refuse_imports(monkeypatch)
    alias = "axolotl.integrations.fake.FakePlugin"

    class FakeSettings(PluginConfig):
        fake_strength: float = 0.0

    class FakeCounterpart:
        AXOLOTL_ALIASES = (alias,)

        @hookimpl
        def add_config_fields(self) -> type[PluginConfig]:
            return FakeSettings

    pm = make_plugin_manager()
    pm.register(FakeCounterpart(), name="fake_counterpart")
    config = write_config(
        tmp_path / "alias.yml", {**base_config, "plugins": [alias], "fake_strength": 0.5}
    )
    session = open_session(config, [], pm)
    assert session.cfg.fake_strength == 0.5
    assert not pm.has_plugin(alias)
    messages = [r.getMessage() for r in weave_log.records]
    assert any(alias in m and "'fake_counterpart'" in m for m in messages), messages
    assert not [r for r in weave_log.records if r.levelno >= logging.WARNING and alias in r.msg]


# --- duplicates are refused, naming both owners --------------------------------------------------


def test_two_plugins_registering_one_format_name(
    local_plugin: Callable, tmp_path: Path, base_config: dict[str, Any]
) -> None:
    name = local_plugin(
        "second_alpaca",
        """
        from axolotl_weave import DatasetFormat, hookimpl

        @hookimpl
        def register_dataset_formats(register):
            register(DatasetFormat("alpaca", "another alpaca"))
        """,
    )
    with pytest.raises(PluginError) as info:
        session_for(tmp_path, {**base_config, "plugins": [name]})
    message = str(info.value)
    assert "'alpaca'" in message
    assert "plugin 'alpaca' (axolotl-weave==" in message
    assert f"plugin '{name}'" in message


def test_two_local_plugins_registering_one_format_name() -> None:
    def format_plugin() -> object:
        class Formats:
            @hookimpl
            def register_dataset_formats(self, register: Callable) -> None:
                register(DatasetFormat("twice"))

        return Formats()

    from axolotl_weave._hooks import Hooks

    pm = make_plugin_manager(autoload=False)
    pm.register(format_plugin(), name="first_formats")
    assert set(Hooks(pm).dataset_formats()) == {"twice"}
    pm.register(format_plugin(), name="second_formats")
    with pytest.raises(PluginError) as info:
        Hooks(pm).dataset_formats()
    assert "plugin 'first_formats'" in str(info.value)
    assert "plugin 'second_formats'" in str(info.value)


def test_two_plugins_naming_a_validator_alike(
    local_plugin: Callable, tmp_path: Path, base_config: dict[str, Any]
) -> None:
    """In the merged config class one validator would silently replace the other."""
    name = local_plugin(
        "clashing_validator",
        """
        from pydantic import model_validator

        from axolotl_weave import PluginConfig, hookimpl


        class Mine(PluginConfig):
            my_key: int = 1

            @model_validator(mode="after")
            def _check_lora_keys(self):
                return self


        @hookimpl
        def add_config_fields():
            return Mine
        """,
    )
    with pytest.raises(
        ConfigError, match="config validator '_check_lora_keys' is declared by both"
    ):
        session_for(tmp_path, {**base_config, "plugins": [name]})


def test_two_plugins_declaring_one_config_field(
    local_plugin: Callable, tmp_path: Path, base_config: dict[str, Any]
) -> None:
    name = local_plugin(
        "second_lora_r",
        """
        from axolotl_weave import PluginConfig, hookimpl


        class Rank(PluginConfig):
            lora_r: int = 4


        @hookimpl
        def add_config_fields():
            return Rank
        """,
    )
    with pytest.raises(ConfigError) as info:
        session_for(tmp_path, {**base_config, "plugins": [name]})
    message = str(info.value)
    assert "config field 'lora_r' is declared by both" in message
    assert "'lora'" in message and f"'{name}'" in message


# --- a plugin that cannot import; blocking; autoload off ----------------------------------------


@pytest.fixture
def bad_plugin_site(tmp_path: Path) -> Path:
    """A sys.path folder with a distribution `badplugin` whose entry point's import fails."""
    site = tmp_path / "bad_site"
    dist_info = site / "badplugin-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: badplugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[axolotl_weave]\nbad = bad_plugin_mod\n")
    (site / "bad_plugin_mod.py").write_text(
        "raise ImportError('bad_plugin_mod needs a package that is not installed')\n"
    )
    return site


def test_plugin_that_fails_to_import_is_an_error_naming_it(
    bad_plugin_site: Path, tmp_path: Path
) -> None:
    env = {**WIDE, "PYTHONPATH": with_pythonpath(bad_plugin_site)}
    result = run_weave("plugin", "list", "--json", cwd=tmp_path, env=env)
    assert result.returncode == PluginError.exit_code, result.stdout
    message = flat(result.stderr)
    assert "plugin 'bad' (bad_plugin_mod, from badplugin==0.1) failed to load" in message
    assert "ImportError: bad_plugin_mod needs a package" in message
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "extra_env"),
    [(["-p", "no:bad"], {}), ([], {"WEAVE_BLOCK_PLUGINS": "bad"})],
    ids=["dash-p", "env"],
)
def test_blocking_the_plugin_that_fails_lets_the_rest_load(
    args: list[str], extra_env: dict[str, str], bad_plugin_site: Path, tmp_path: Path
) -> None:
    env = {**WIDE, "PYTHONPATH": with_pythonpath(bad_plugin_site), **extra_env}
    result = run_weave(*args, "plugin", "list", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["bad"]["blocked"] is True
    assert rows["alpaca"]["blocked"] is False


def test_block_argument_of_make_plugin_manager(bad_plugin_site: Path) -> None:
    script = (
        "from axolotl_weave import PluginError\n"
        "from axolotl_weave._pluginmanager import make_plugin_manager\n"
        "try:\n"
        "    make_plugin_manager()\n"
        "    print('loaded')\n"
        "except PluginError as exc:\n"
        "    print('refused:', exc)\n"
        "pm = make_plugin_manager(block=['bad'])\n"
        "print('blocked:', pm.is_blocked('bad'), pm.has_plugin('alpaca'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": with_pythonpath(bad_plugin_site)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused: plugin 'bad'") and "badplugin==0.1" in lines[0]
    assert lines[1] == "blocked: True True"


def test_autoload_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEAVE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    assert len(make_plugin_manager().get_plugins()) >= len(builtin_entry_points())
    monkeypatch.setenv("WEAVE_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = make_plugin_manager()
    assert pm.get_plugins() == set()
    assert describe_plugins(pm) == []


# --- tracing ------------------------------------------------------------------------------------


def test_trace_hooks_prints_every_hook_call(tmp_path: Path, base_config: dict[str, Any]) -> None:
    config = write_config(tmp_path / "config.yml", base_config)
    result = run_weave("--trace-hooks", "validate", str(config), cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    traced = [line for line in result.stderr.splitlines() if line.startswith("[hook]")]

    def called(hook: str, plugin: str) -> bool:
        return any(
            line.startswith(f"[hook] {hook}(") and plugin in line.split(" -> ")[-1]
            for line in traced
        )

    assert called("register_dataset_formats", "alpaca"), traced
    assert called("add_config_fields", "lora"), traced
    assert called("register_model_families", "llama"), traced
    assert any(line.startswith("[hook] add_cli_commands = ") for line in traced), traced
    assert all(len(line) < 400 for line in traced), max(traced, key=len)  # summaries, no reprs
    assert "[hook]" not in result.stdout


def test_trace_is_off_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    from axolotl_weave._hooks import Hooks

    assert Hooks(make_plugin_manager()).dataset_formats()
    assert "[hook]" not in capsys.readouterr().err
    pm = make_plugin_manager(trace=True)
    Hooks(pm).dataset_formats()
    pm.hook.build_loss(cfg=None, model=None)
    err = capsys.readouterr().err
    assert "[hook] register_dataset_formats(register=" in err and "completion" in err
    assert "[hook] build_loss(cfg=None, model=None) -> [" in err
    assert "[hook] build_loss = " in err


# --- shipped examples -----------------------------------------------------------------------------


def test_examples_exist() -> None:
    assert any(path.name == "quickstart.yml" for path in EXAMPLES), EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    session = open_session(path, [], make_plugin_manager())
    assert session.cfg.datasets
    for entry in session.cfg.datasets:
        assert entry.type in session.formats


@pytest.mark.parametrize("path", sorted(PLUGINS.rglob("*.py")), ids=lambda p: p.name)
def test_plugins_import_only_the_public_facade(path: Path) -> None:
    """Built-in plugins use `axolotl_weave` (and `axolotl_weave.commands` for CLI commands), as
    a third party must; the underscore modules are the core's to change."""
    private = re.findall(r"^\s*(?:from|import) (axolotl_weave\._\w+)", path.read_text(), re.M)
    assert private == [], f"{path.name} imports {private}"


class RowNumbers:
    """`transform_train_data` adding a per-row scalar column (the row's number, eval rows
    negative), and a `training_step` wrapper recording what the batches carried."""

    def __init__(self) -> None:
        self.sets: list[bool] = []
        self.seen: list[float] = []

    @hookimpl
    def transform_train_data(self, dataset: Any, evaluation: bool, columns: dict) -> Any:
        self.sets.append(evaluation)
        columns["row_number"] = None
        sign = -1.0 if evaluation else 1.0
        return dataset.add_column("row_number", [sign * i for i in range(len(dataset))])

    @hookimpl(wrapper=True)
    def training_step(self, window: list[dict[str, Any]]) -> Any:
        for batch in window:
            self.seen += batch["row_number"].tolist()
        return (yield)


def test_transform_train_data_adds_a_column_the_batches_carry(
    base_config: dict, tmp_path: Path
) -> None:
    numbers = RowNumbers()
    config = {**base_config, "max_steps": 3, "val_set_size": 0.25, "micro_batch_size": 2}
    state = train_with({**config, "output_dir": str(tmp_path / "out")}, tmp_path / "c.yml", numbers)
    assert sorted(numbers.sets) == [False, True]  # the training set and the eval set
    assert len(numbers.seen) == 6 and all(n >= 0 and n == int(n) for n in numbers.seen)
    assert len(set(numbers.seen)) == 6  # six different training rows
    assert any("eval_loss" in entry for entry in state.log_history)
