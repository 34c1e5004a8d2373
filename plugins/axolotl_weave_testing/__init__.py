"""Test fixtures for Axolotl Weave and for plugin authors (a pytest plugin).

Use it with `pytest_plugins = ["axolotl_weave_testing"]` in a `conftest.py`. Everything is built
offline: a byte-level BPE tokenizer trained on the spot with `tokenizers`, and a tiny model of a
real architecture config with random weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from axolotl_weave import hookimpl
from axolotl_weave_plugins.commands._tokenizer import (  # re-exported for test suites
    SAMPLE_TEXT,
    train_tokenizer,
)


def alpaca_rows(count: int = 32) -> list[dict[str, str]]:
    """Small, learnable alpaca rows (arithmetic and word reversal)."""
    words = ["cat", "dog", "sun", "tree", "bird", "fish", "moon", "star"]
    rows = []
    for i in range(count):
        a, b = i % 7, (i * 3) % 5
        if i % 2:
            rows.append(
                {"instruction": "Add the numbers.", "input": f"{a} + {b}", "output": str(a + b)}
            )
        else:
            word = words[i % len(words)]
            rows.append({"instruction": "Reverse the word.", "input": "", "output": word[::-1]})
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON Lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a config mapping as YAML."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_weave(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess:
    """Run the `weave` CLI in a subprocess (a fresh plugin manager and accelerate state), with
    `stdin` as its input."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "axolotl_weave._cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=cwd,
        env=full_env,
        timeout=600,
    )


def install_offline(source: Path, folder: Path) -> Path:
    """The distribution at `source` (a copy of a `contrib/` folder) installed offline, without
    its dependencies, into `folder`, for PYTHONPATH (the third-party path, no index)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(folder),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return folder


def train_with(config: dict[str, Any], path: Path, *plugins: object) -> Any:
    """Write `config` to `path`, then train in this process with the installed plugins and the
    extra plugin objects given (a recorder, a fault injector...); the final `TrainState`."""
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave._run import open_session, train

    pm = make_plugin_manager()
    for plugin in plugins:
        pm.register(plugin)
    return train(open_session(write_config(path, config), [], pm))


def train_tiny_lora(base_model: Path, root: Path, **keys: Any) -> dict[str, Any]:
    """A LoRA adapter trained for 2 steps on 8 alpaca rows into `root/out` (what inference,
    serving and evaluation tests load), `keys` added to its config; its config mapping, with
    `_path` its YAML file."""
    config = {
        "base_model": str(base_model),
        "datasets": [
            {"path": str(write_jsonl(root / "a.jsonl", alpaca_rows(8))), "type": "alpaca"}
        ],
        "sequence_len": 128,
        "micro_batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "bf16": False,
        "tf32": False,
        "adapter": "lora",
        "output_dir": str(root / "out"),
        "dataset_prepared_path": str(root / "prepared"),
        **keys,
    }
    train_with(config, root / "train.yml")
    return {**config, "_path": write_config(root / "config.yml", config)}


CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A minimal ChatML template (role lines between `<|im_start|>` and `<|im_end|>`), for tests
that set a tokenizer's `chat_template` themselves."""


class CrashAt:
    """A plugin that raises `KeyboardInterrupt` in `on_log` once step `step` is logged, as a
    killed job stops (register it with `train_with(config, path, CrashAt(3))`)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_log(self, state: Any) -> None:
        """Stop when the step is logged."""
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated crash at step {self.step}")


class OneProcessStrategy:
    """The device strategy's contract on one CPU process (backward as autograd's), for tests
    that call a `training_step` or an objective directly, without a trainer."""

    num_processes = 1

    def __init__(self) -> None:
        import torch

        self.device = torch.device("cpu")

    def reduce(self, tensor: Any, op: str = "sum") -> Any:
        """One process: the tensor itself."""
        return tensor

    def no_sync(self, model: Any) -> Any:
        """Nothing to synchronise."""
        import contextlib

        return contextlib.nullcontext()

    def autocast(self) -> Any:
        """float32: no autocast."""
        import contextlib

        return contextlib.nullcontext()

    def backward(self, loss: Any) -> None:
        """Autograd's backward."""
        loss.backward()

    def unwrap(self, model: Any) -> Any:
        """Nothing wraps the model."""
        return model

    def prepare_frozen(self, model: Any) -> Any:
        """A frozen model stays where it is."""
        return model


def without_package(name: str, folder: Path) -> dict[str, str]:
    """The environment for `run_weave` in which `import name` fails as if the package were not
    installed (a package of that name on PYTHONPATH first, whose import raises
    ModuleNotFoundError): how a test shows the message a user without it gets."""
    shadow = folder / "without" / name
    shadow.mkdir(parents=True, exist_ok=True)
    (shadow / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n"
    )
    paths = [str(folder / "without"), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path for path in paths if path)}


def per_token_losses(model: Any, batch: dict[str, Any]) -> Any:
    """The cross-entropy of every target token of a (packed or padded) batch, in order."""
    import torch.nn.functional as F
    from axolotl_weave._batches import model_inputs
    from axolotl_weave._types import IGNORE_INDEX

    logits = model(**model_inputs(batch), use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(
        logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return losses[labels != IGNORE_INDEX]


def packed_and_one_by_one(
    model: Any, rows: list[dict[str, Any]], device: Any = "cpu", bins: int = 1
) -> tuple[tuple[Any, list[Any]], tuple[Any, list[Any]]]:
    """(per-token losses, gradients of their sum) for `rows` packed into `bins` packed rows, then
    for each row alone: equal when packed samples do not see each other."""
    import torch
    from axolotl_weave import collate
    from axolotl_weave_plugins.batching._multipack import collate_packed

    def run(batches: list[dict[str, Any]]) -> tuple[Any, list[Any]]:
        model.zero_grad()
        on_device = [{key: value.to(device) for key, value in b.items()} for b in batches]
        losses = torch.cat([per_token_losses(model, batch) for batch in on_device])
        losses.sum().backward()
        grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        return losses.detach(), grads

    size = -(-len(rows) // bins)
    packed = [rows[first : first + size] for first in range(0, len(rows), size)]
    return run([collate_packed(packed, pad_token_id=0)]), run([collate([r], 0) for r in rows])


GPTQ_SETUP = (
    "needs the GPTQ backend (optimum, gptqmodel): bash scripts/setup-gptq.sh, then "
    "PYTHONPATH=$PWD/.gptq python -m pytest -m gptq"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` when no CUDA device is present, and tests marked `gptq` when the
    GPTQ backend cannot be imported."""
    import importlib.util

    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items:
        import torch

        if not torch.cuda.is_available():
            for item in gpu_items:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
    if importlib.util.find_spec("gptqmodel") is None:
        for item in items:
            if item.get_closest_marker("gptq"):
                item.add_marker(pytest.mark.skip(reason=GPTQ_SETUP))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight llama with its tokenizer, built once per test session."""
    texts = [SAMPLE_TEXT, *(json.dumps(row) for row in alpaca_rows(64))]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), texts)


@pytest.fixture
def alpaca_file(tmp_path: Path) -> Path:
    """32 alpaca rows in a JSONL file."""
    return write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(32))


@pytest.fixture
def base_config(tiny_llama_dir: Path, alpaca_file: Path, tmp_path: Path) -> dict[str, Any]:
    """A small valid config mapping (alpaca on the tiny llama, CPU, fp32, a few steps)."""
    return {
        "base_model": str(tiny_llama_dir),
        "datasets": [{"path": str(alpaca_file), "type": "alpaca"}],
        "sequence_len": 128,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 4,
        "learning_rate": 1e-3,
        "bf16": False,
        "tf32": False,  # exact float32 on a GPU too, so results compare across devices
        "output_dir": str(tmp_path / "out"),
        "dataset_prepared_path": str(tmp_path / "prepared"),
    }


def dataset_entry(formats: dict[str, Any], **data: Any) -> Any:
    """A `DatasetEntry` validated as the config validates it: the format's options applied.

    `formats` is `Hooks(...).dataset_formats()`; `data` is the entry as written in YAML.
    """
    from axolotl_weave._config import DatasetEntry

    data.setdefault("path", "rows")
    return DatasetEntry.model_validate(data, context={"formats": formats})


def build_rows(
    hooks: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    cfg: Any = None,
    **entry: Any,
) -> list[dict[str, Any]]:
    """Build in-memory `rows` with their format for a `datasets:` entry written as keywords.

    `cfg` defaults to `train_on_inputs=False, sequence_len=2048`; pass any object with the
    attributes the format reads. Returns the tokenized rows as dicts.
    """
    from types import SimpleNamespace

    from axolotl_weave._rows import rows_table
    from axolotl_weave_plugins.data.pipeline import build_format

    cfg = cfg or SimpleNamespace(train_on_inputs=False, sequence_len=2048)
    validated = dataset_entry(hooks.dataset_formats(), **entry)
    built = build_format(hooks, validated, rows_table(rows), tokenizer, cfg)
    return list(built)


@pytest.fixture(scope="session")
def weave_hooks() -> Any:
    """The typed hook caller over every installed plugin (built-in and entry points)."""
    from axolotl_weave._hooks import Hooks
    from axolotl_weave._pluginmanager import make_plugin_manager

    return Hooks(make_plugin_manager())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama_dir: Path) -> Any:
    """The tiny llama's tokenizer (byte-level BPE, `<s>` BOS added, `</s>` EOS)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def build_tiny_llama(
    out_dir: Path,
    texts: Iterable[str] = (SAMPLE_TEXT,),
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """A llama-architecture model with random weights and a local tokenizer, saved to `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(out_dir, texts, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2 + hidden_size // 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return out_dir


PREFERENCE_PAIRS = [
    {"system": "Be brief.", "question": "Add 1 and 2.", "chosen": "3", "rejected": "It is 12"},
    {"system": "", "question": "Reverse cat.", "chosen": "tac", "rejected": "I cannot"},
    {"system": "", "question": "Add 4 and 4.", "chosen": "8", "rejected": "Maybe 44, or 9"},
    {"system": "Be kind.", "question": "Reverse dog.", "chosen": "god", "rejected": "dog"},
]
"""Four `chatml.intel`-shaped preference pairs (system, question, chosen, rejected)."""


def pair_rows(count: int = 8) -> list[dict[str, str]]:
    """`count` preference pairs, each question numbered so that no two rows are equal."""
    pairs = PREFERENCE_PAIRS
    return [pairs[i % 4] | {"question": f"{pairs[i % 4]['question']} ({i})"} for i in range(count)]


def dpo_lora_config(folder: Path, base_config: dict[str, Any], **keys: Any) -> dict[str, Any]:
    """`base_config` as a DPO run with a small LoRA on 8 `chatml.intel` pairs written to
    `folder`: 3 steps, every one logged; `keys` added."""
    pairs = write_jsonl(folder / "pairs.jsonl", pair_rows(8))
    return {
        **base_config,
        "datasets": [{"path": str(pairs), "type": "chatml.intel"}],
        "rl": "dpo",
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "max_steps": 3,
        "logging_steps": 1,
        **keys,
    }


def chat_template_config(folder: Path, base_model: Path) -> Path:
    """A `chat_template: chatml` config on one conversation written to `folder`, training
    into `folder/out`; its path."""
    rows = write_jsonl(folder / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    config = {
        "base_model": str(base_model),
        "chat_template": "chatml",
        "datasets": [{"path": str(rows), "type": "chat_template"}],
        "output_dir": str(folder / "out"),
    }
    return write_config(folder / "c.yml", config)


def preference_settings(**keys: Any) -> Any:
    """A config stand-in with every preference key unset (DPO, beta 0.1), `keys` applied: for
    tests that build a preference objective directly."""
    from types import SimpleNamespace

    base = dict(
        rl="dpo",
        rl_beta=0.1,
        dpo_loss_type=None,
        dpo_loss_weights=None,
        dpo_label_smoothing=None,
        dpo_use_weighting=None,
        orpo_alpha=None,
        simpo_gamma=None,
        cpo_alpha=None,
        precompute_ref_log_probs=None,
        adapter=None,
    )
    return SimpleNamespace(**(base | keys))


def greedy(loaded: Any, prompt_ids: list[int], max_new_tokens: int) -> str:
    """The greedy answer of a plain `generate` call on a model loaded for inference, decoded
    without special tokens (what the streamed answer must equal)."""
    import torch

    ids = torch.tensor([prompt_ids])
    out = loaded.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=loaded.eos_token_ids,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    return loaded.tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)


def small_lora(base_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """`base_config` with a small LoRA (rank 4, alpha 8) on q_proj and v_proj at lr 1e-2, plus
    `extra`."""
    return {
        **base_config,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "learning_rate": 1e-2,
        **extra,
    }


def optimizer_settings(**keys: Any) -> Any:
    """The keys `build_optimizer` reads (AdamW, lr 1e-3, weight decay 0.1), `keys` added."""
    from types import SimpleNamespace

    defaults = dict(
        lr_groups=[], learning_rate=1e-3, weight_decay=0.1, optimizer="adamw_torch",
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
    )  # fmt: skip
    return SimpleNamespace(**{**defaults, **keys})


def two_process_config(
    tiny_llama_dir: Path, folder: Path, rows: int = 32, **keys: Any
) -> dict[str, Any]:
    """The multi-process tests' config: `rows` alpaca rows, 2 rows x 2 micro-batches (x 2
    processes) a step, 4 steps, fp32, the prepared data cached in `folder`; `keys` added."""
    data = write_jsonl(folder / "alpaca.jsonl", alpaca_rows(rows))
    return {
        "base_model": str(tiny_llama_dir),
        "datasets": [{"path": str(data), "type": "alpaca"}],
        "sequence_len": 128,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "bf16": False,
        "tf32": False,
        "dataset_prepared_path": str(folder / "prepared"),
        **keys,
    }


@pytest.fixture
def weave_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Any:
    """caplog for the `axolotl_weave` logger at INFO (even if a CLI run turned propagation off)."""
    import logging

    monkeypatch.setattr(logging.getLogger("axolotl_weave"), "propagate", True)
    caplog.set_level(logging.INFO, logger="axolotl_weave")
    return caplog


@pytest.fixture
def unwritable_folder(tmp_path: Path) -> Any:
    """A folder no file can be created in, even by root (made immutable), or the test skips."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    locked = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if locked.returncode != 0:
        pytest.skip(f"cannot make a folder unwritable for root here: {locked.stderr!r}")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def run_weave_in_process(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the `weave` CLI in this process, as `run_weave` runs it in a subprocess, without the
    ~6 s of imports a fresh interpreter pays: the same entry point (`axolotl_weave._cli.main`)
    with `args`, in `cwd`, with `env` added to the environment (`PYTHONPATH` entries put first
    on `sys.path`, the modules imported from them forgotten afterwards), stdout and stderr piped
    (the consoles at the width `COLUMNS` gives a piped process). An exception that escapes the
    CLI is printed as a traceback on stderr with exit code 1, as the interpreter would; the
    result is a `CompletedProcess` (returncode, stdout, stderr), and everything is restored."""
    import contextlib
    import importlib
    import io
    import logging
    import traceback

    from axolotl_weave import _cli, _console

    full_env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    paths = [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    saved_env = {name: os.environ.get(name) for name in full_env}
    saved_cwd, saved_path = os.getcwd(), list(sys.path)
    consoles = (_console.console, _console.err_console)
    saved_widths = [c._width for c in consoles]
    logger = logging.getLogger("axolotl_weave")
    saved_logger = (list(logger.handlers), logger.level, logger.propagate)
    columns = full_env.get("COLUMNS", os.environ.get("COLUMNS", ""))
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    try:
        os.environ.update(full_env)
        sys.path[:0] = paths
        importlib.invalidate_caches()
        if cwd is not None:
            os.chdir(cwd)
        for c in consoles:  # what a fresh process's consoles would be built with
            c._width = int(columns) if columns.isdigit() else _console.PIPED_WIDTH
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                _cli.main(list(args))
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:  # noqa: BLE001 - as an interpreter reports an uncaught error
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for c, width in zip(consoles, saved_widths, strict=True):
            c._width = width
        logger.handlers[:] = saved_logger[0]
        logger.setLevel(saved_logger[1])
        logger.propagate = saved_logger[2]
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None) or ""
            if any(file.startswith(os.path.join(p, "")) for p in paths):
                del sys.modules[name]
    return subprocess.CompletedProcess(
        ["weave", *args], code, stdout=out.getvalue(), stderr=err.getvalue()
    )


def start_serve(config: Path, *flags: str) -> tuple[subprocess.Popen, str, str]:
    """`weave serve CONFIG --port 0 FLAGS` in a subprocess, as a user starts it: the process,
    its base URL (from the line it prints once listening) and the lines it printed until then.
    Fails the test (the process killed) when it does not start within 3 minutes."""
    import re
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "axolotl_weave._cli", "serve", str(config), "--port", "0", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        found = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        if found:
            return process, found.group(1), "".join(seen)
    process.kill()
    pytest.fail("weave serve did not start:\n" + "".join(seen))
