"""Shipping: the Dockerfile (read by `dockerfile-parse`, the parser Docker tooling in Python
uses), docker-compose.yml, the dstack, SkyPilot and Modal recipes (Modal's own client builds the
app), and `weave fetch examples`, which copies the examples the package carries (a wheel built
here holds them) and whose copy trains.

dstack and SkyPilot are not installed for the tests (dstack is 17 packages and a 17 MB wheel,
SkyPilot 34 packages and it downgrades click): their recipes are checked against the fields each
tool documents (the lists below are their configuration models' fields in dstack 0.22.5 and
SkyPilot 0.14.1's task schema). docs/deploy.md says how to check them with the tools themselves.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from axolotl_weave_testing import run_weave

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

DSTACK_TASK_FIELDS = frozenset(
    "availability_zones backend_options backends commands creation_policy docker dstack "
    "entrypoint env files fleets groups home_dir idle_duration image instance_types instances "
    "max_duration max_price name nodes nvcc ports priority privileged python regions "
    "registry_auth repos reservation resources retry schedule setup shell single_branch "
    "spot_policy startup_order stop_criteria stop_duration tags type user utilization_policy "
    "volumes working_dir".split()
)
DSTACK_RESOURCES = frozenset({"cpu", "disk", "gpu", "memory", "shm_size"})
SKYPILOT_TASK_FIELDS = frozenset(
    "config envs file_mounts inputs name num_nodes outputs resources run secrets service setup "
    "volumes workdir".split()
)
SKYPILOT_RESOURCES = frozenset(
    "accelerator_args accelerators any_of autostop cloud cpus disk_size disk_tier "
    "ephemeral_storage image_id infra instance_type job_recovery labels memory network_tier "
    "ordered ports priority region use_spot volumes zone".split()
)


def project_extras() -> set[str]:
    """The optional-dependency groups of the installed axolotl-weave."""
    return set(importlib.metadata.metadata("axolotl-weave").get_all("Provides-Extra") or [])


def dockerignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` (relative to the root) out of the build context."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
        for pattern in patterns
        for prefix in prefixes
    )


# --- Dockerfile and compose ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> Any:
    pytest.importorskip("dockerfile_parse", reason="pip install 'axolotl-weave[deploy]'")
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(str(ROOT / "Dockerfile"))


def instructions(parser: Any, name: str) -> list[str]:
    return [i["value"] for i in parser.structure if i["instruction"] == name]


def test_the_dockerfile_builds_on_cuda_with_build_arguments(dockerfile: Any) -> None:
    from dockerfile_parse import DockerfileParser

    assert dockerfile.baseimage == "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04"
    other = DockerfileParser(
        str(ROOT / "Dockerfile"), build_args={"CUDA_VERSION": "12.6.3", "UBUNTU_VERSION": "22.04"}
    )
    assert other.baseimage == "nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04"
    args = instructions(dockerfile, "ARG")
    for name in ("CUDA_VERSION", "UBUNTU_VERSION", "TORCH_VERSION", "TORCH_CUDA", "EXTRAS"):
        assert any(arg.startswith(f"{name}=") for arg in args), name
    runs = "\n".join(instructions(dockerfile, "RUN"))
    assert (
        'torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}'
        in (runs)
    )
    assert '-c requirements/lock.txt ".[${EXTRAS}]"' in runs  # the project, pinned, with extras
    assert instructions(dockerfile, "ENTRYPOINT") == ['["weave"]']


def test_the_image_defaults_match_the_project(dockerfile: Any) -> None:
    """Every default extra exists, the default torch is the one setup.sh installs, and what the
    build needs is not left out of its context."""
    assert set(dockerfile.args["EXTRAS"].split(",")) <= project_extras()
    assert f"torch=={dockerfile.args['TORCH_VERSION']}" in (ROOT / "scripts/setup.sh").read_text()
    for needed in ("pyproject.toml", "README.md", "requirements/lock.txt", "core", "plugins"):
        assert not dockerignored(needed), needed
    assert not dockerignored("examples/tiny-llama/model.safetensors")
    for left_out in (".venv", ".git", "outputs", "plugins/x/__pycache__/y.pyc"):
        assert dockerignored(left_out), left_out


def test_compose_builds_the_dockerfile_and_trains_on_every_gpu(dockerfile: Any) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    train = compose["services"]["train"]
    assert (ROOT / train["build"]["context"] / train["build"]["dockerfile"]) == ROOT / "Dockerfile"
    arg_names = {arg.split("=", 1)[0] for arg in instructions(dockerfile, "ARG")}
    assert set(train["build"]["args"]) <= arg_names
    assert train["command"] == ["train", "${WEAVE_CONFIG:-examples/quickstart.yml}"]
    assert (ROOT / "examples/quickstart.yml").is_file()
    device = train["deploy"]["resources"]["reservations"]["devices"][0]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert ".:/workspace" in train["volumes"] and train["working_dir"] == "/workspace"
    assert compose["services"]["weave"]["profiles"] == ["tools"]  # not started by `up`
    defaults = dict(arg.split("=", 1) for arg in instructions(dockerfile, "ARG"))
    for name, value in train["build"]["args"].items():  # ${NAME:-default}: the Dockerfile's
        assert value == f"${{{name}:-{defaults[name]}}}"


# --- cloud recipes ------------------------------------------------------------------------------


def test_the_dstack_task_trains_with_documented_fields() -> None:
    task = yaml.safe_load((DEPLOY / "dstack" / "train.dstack.yml").read_text())
    assert task["type"] == "task"
    assert set(task) <= DSTACK_TASK_FIELDS, set(task) - DSTACK_TASK_FIELDS
    assert set(task["resources"]) <= DSTACK_RESOURCES
    assert task["resources"]["gpu"]
    assert task["commands"][-1] == 'weave train "$WEAVE_CONFIG"'
    env = dict(item.partition("=")[::2] for item in task["env"])
    assert (ROOT / env["WEAVE_CONFIG"]).is_file()
    assert set(env["WEAVE_EXTRAS"].split(",")) <= project_extras()
    assert env["HF_TOKEN"] == ""  # passed through from the user's environment, never written


def test_the_skypilot_task_trains_with_documented_fields() -> None:
    task = yaml.safe_load((DEPLOY / "skypilot" / "train.sky.yaml").read_text())
    assert set(task) <= SKYPILOT_TASK_FIELDS, set(task) - SKYPILOT_TASK_FIELDS
    assert set(task["resources"]) <= SKYPILOT_RESOURCES
    assert task["resources"]["accelerators"]
    assert task["workdir"] == "."
    assert 'weave train "$WEAVE_CONFIG"' in task["run"]
    assert '".[$WEAVE_EXTRAS]"' in task["setup"]
    assert (ROOT / task["envs"]["WEAVE_CONFIG"]).is_file()
    assert set(task["envs"]["WEAVE_EXTRAS"].split(",")) <= project_extras()
    assert all(value is None for value in task["secrets"].values())  # values from the user


def test_modal_builds_the_app_from_the_dockerfile() -> None:
    pytest.importorskip("modal", reason="pip install 'axolotl-weave[deploy]'")
    spec = importlib.util.spec_from_file_location("weave_modal_train", DEPLOY / "modal/train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.app
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # registered_* are deprecated after modal 1.6
        functions, entrypoints = app.registered_functions, app.registered_entrypoints
    assert app.name == "axolotl-weave"
    assert list(functions) == ["train"] and list(entrypoints) == ["main"]
    function_spec = functions["train"]._spec_
    assert function_spec.gpus == "L40S"
    assert set(function_spec.volumes) == {"/runs", "/root/.cache/huggingface"}
    assert module.ROOT == ROOT and (module.ROOT / "Dockerfile").is_file()


# --- weave fetch examples -----------------------------------------------------------------------


def test_fetch_copies_the_bundled_examples_and_the_copy_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session, train

    result = run_weave("fetch", "examples", "--dest", "my/examples", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    copy = tmp_path / "my" / "examples"
    assert "try: weave train my/examples/quickstart.yml" in result.stdout
    original = sorted(p.relative_to(ROOT / "examples") for p in (ROOT / "examples").rglob("*"))
    copied = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    assert copied == [p for p in original if "__pycache__" not in p.parts]
    weights = "tiny-llama/model.safetensors"
    assert (copy / weights).read_bytes() == (ROOT / "examples" / weights).read_bytes()
    config = yaml.safe_load((copy / "quickstart.yml").read_text())
    assert config["base_model"] == "my/examples/tiny-llama"  # named from where the copy is
    grpo = yaml.safe_load((copy / "grpo.yml").read_text())
    assert grpo["trl"]["reward_funcs"][0] == "my.examples.grpo_rewards.correct_answer"

    monkeypatch.chdir(tmp_path)
    overrides = ["--max_steps", "1", "--val_set_size", "0", "--micro_batch_size", "2"]
    overrides += ["--output_dir", "out", "--bf16", "false"]
    state = train(open_session(copy / "quickstart.yml", overrides, make_plugin_manager()))
    assert state.global_step == 1
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_fetch_into_the_default_folder_copies_verbatim(tmp_path: Path) -> None:
    from axolotl_weave_plugins.commands.fetch_command import fetch_examples

    fetch_examples(tmp_path / "examples", cwd=tmp_path)
    for name in ("quickstart.yml", "grpo.yml"):
        assert (tmp_path / "examples" / name).read_text() == (ROOT / "examples" / name).read_text()


def test_fetch_outside_the_current_folder_names_files_absolutely(tmp_path: Path) -> None:
    from axolotl_weave_plugins.commands.fetch_command import fetch_examples

    (tmp_path / "here").mkdir()
    fetch_examples(tmp_path / "there", cwd=tmp_path / "here")
    config = yaml.safe_load((tmp_path / "there" / "quickstart.yml").read_text())
    assert config["base_model"] == str(tmp_path / "there" / "tiny-llama")


def test_a_wheel_carries_the_examples(tmp_path: Path) -> None:
    """The package link to examples/ becomes files in the wheel (built from a copy of the
    sources, without build isolation: offline)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("core", "plugins", "examples"):
        shutil.copytree(ROOT / folder, source / folder, symlinks=True, ignore=ignore)
    assert (source / "plugins/axolotl_weave_plugins/examples").is_symlink()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("quickstart.yml", "tiny-llama/model.safetensors", "data/alpaca_tiny.jsonl"):
        assert f"axolotl_weave_plugins/examples/{name}" in names, name


# --- bad input ----------------------------------------------------------------------------------


def fetch_error(dest: Path, cwd: Path) -> str:
    """The one-line message `weave fetch examples --dest DEST` fails with (in this process)."""
    from axolotl_weave import WeaveError
    from axolotl_weave_plugins.commands.fetch_command import fetch_examples

    with pytest.raises(WeaveError) as caught:
        fetch_examples(dest, cwd=cwd)
    return str(caught.value)


def test_fetch_never_overwrites_a_folder_that_holds_anything(tmp_path: Path) -> None:
    dest = tmp_path / "examples"
    dest.mkdir()
    (dest / "quickstart.yml").write_text("mine\n")
    result = run_weave("fetch", "examples", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: --dest examples is not empty: fetch never overwrites" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in dest.iterdir()] == ["quickstart.yml"]
    assert (dest / "quickstart.yml").read_text() == "mine\n"


def test_fetch_refuses_a_file_and_an_unwritable_folder(
    tmp_path: Path, unwritable_folder: Path
) -> None:
    (tmp_path / "notes").write_text("x")
    assert "is a file: give a new or empty folder" in fetch_error(tmp_path / "notes", tmp_path)
    message = fetch_error(unwritable_folder / "examples", tmp_path)
    assert f"cannot write in {unwritable_folder} (permission denied)" in message
    assert not any(unwritable_folder.iterdir())


def test_fetch_into_an_empty_folder_fills_it(tmp_path: Path) -> None:
    from axolotl_weave_plugins.commands.fetch_command import fetch_examples

    (tmp_path / "empty").mkdir()
    fetch_examples(tmp_path / "empty", cwd=tmp_path)
    assert (tmp_path / "empty" / "quickstart.yml").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no staging folder left
