"""A run, top to bottom: config → tokenizer → datasets → model → attention → loss → devices →
training loop → post_train. `weave preprocess` stops after the datasets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import yaml

from axolotl_weave._atomic import write_atomically
from axolotl_weave._checkpoint import FINISHED_MARKER
from axolotl_weave._config import (
    CoreConfig,
    build_config_model,
    load_config_data,
    validate_config,
)
from axolotl_weave._console import quiet_libraries
from axolotl_weave._errors import ConfigError, PluginError, WeaveError
from axolotl_weave._hooks import Hooks
from axolotl_weave._overrides import refuse_valueless_flags
from axolotl_weave._pluginmanager import make_plugin_manager, register_config_plugins
from axolotl_weave._prepared import PreparedData
from axolotl_weave._secrets import redacted
from axolotl_weave._types import DatasetFormat, ModelFamily, Trainer, TrainState

log = logging.getLogger("axolotl_weave")


@dataclass
class Session:
    """A validated config with the plugin manager and registries it was validated against."""

    cfg: Any
    hooks: Hooks
    source: str
    formats: dict[str, DatasetFormat] = field(default_factory=dict)
    families: dict[str, ModelFamily] = field(default_factory=dict)
    is_main_process: bool = True
    """False, once training has started, on the other processes of a distributed run."""


def open_session(
    source: str | Path, overrides: list[str] | None = None, pm: pluggy.PluginManager | None = None
) -> Session:
    """Read the config, register the plugins it names, validate it with every plugin's fields
    (without importing torch, transformers or datasets: `weave validate` needs none of them)."""
    data = load_config_data(source, overrides)
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{source}: plugins: must be a list of import paths, got {plugins!r}")
    pm = pm or make_plugin_manager()
    register_config_plugins(pm, plugins)
    hooks = Hooks(pm)
    model = build_config_model(hooks.config_fields())
    formats = hooks.dataset_formats()
    cfg = validate_config(data, model, formats, str(source), hooks)
    refuse_valueless_flags(cfg, overrides or [])
    return Session(cfg, hooks, str(source), formats, hooks.model_families())


def config_schema(pm: pluggy.PluginManager) -> dict[str, Any]:
    """The JSON schema of the config, with every installed plugin's fields."""
    return build_config_model(Hooks(pm).config_fields()).model_json_schema()


def model_type_of(cfg: CoreConfig) -> str | None:
    """The base model's `model_type` (from its config), to find its family plugin: read from a
    local folder's config.json directly (no transformers import), else through `AutoConfig`."""
    where = cfg.base_model_config or cfg.base_model
    local = Path(where).expanduser() / "config.json"
    try:
        if local.is_file() and not cfg.trust_remote_code:
            return json.loads(local.read_text(encoding="utf-8")).get("model_type")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            where, revision=cfg.revision_of_model, trust_remote_code=cfg.trust_remote_code
        )
    except Exception as exc:
        looked = "" if local.parent.exists() else f" (no folder {where} in {Path.cwd()}: a hub id?)"
        raise WeaveError(
            f"cannot read the model config of base_model '{where}'{looked}: {exc}"
        ) from None
    return getattr(config, "model_type", None)


def family_of(session: Session) -> ModelFamily | None:
    """The registered family of the base model, or None (the generic path then applies)."""
    model_type = model_type_of(session.cfg)
    family = session.families.get(model_type or "")
    log.info("model_type %s: %s", model_type, f"family '{family.name}'" if family else "generic")
    return family


def load_tokenizer(session: Session, family: ModelFamily | None) -> Any:
    """The tokenizer, family quirks fixed, `special_tokens` set, `tokens` added and a pad token
    ensured. The libraries' own progress bars and chatter are turned off first."""
    quiet_libraries()
    cfg = session.cfg
    tokenizer = session.hooks.load_tokenizer(cfg)
    if family is not None and family.prepare_tokenizer is not None:
        family.prepare_tokenizer(tokenizer)
    if cfg.special_tokens:
        tokenizer.add_special_tokens(dict(cfg.special_tokens))
    if cfg.tokens:
        added = tokenizer.add_tokens(list(cfg.tokens))
        log.info("tokens: added %d new token(s) to the vocabulary", added)
    if tokenizer.eos_token is None:
        raise ConfigError(
            f"the tokenizer of {cfg.tokenizer_config or cfg.base_model} has no EOS token, so no "
            "row would end with one and the model would not learn to stop: name it, e.g. "
            "special_tokens: {eos_token: '</s>'} (a token of its vocabulary)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def preprocess(session: Session) -> tuple[PreparedData, Any]:
    """Tokenize, filter, split and cache the datasets; returns them and the tokenizer."""
    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    return session.hooks.prepare_datasets(session.cfg, tokenizer), tokenizer


def save_resolved_config(cfg: CoreConfig, output_dir: Path) -> Path:
    """Write the validated config, defaults filled in and secrets redacted, to
    `output_dir/config.yml` (atomically)."""
    data = redacted(cfg.model_dump(mode="json"))
    return write_atomically(output_dir / "config.yml", yaml.safe_dump(data, sort_keys=False))


def train(session: Session) -> TrainState:
    """The whole fine-tune: every pipeline hook in order, then the loop, then `post_train`.

    What would fail is found before any work (`check_before_work`). A finished run's folder
    keeps its `config.yml` until this run finishes too; then `trainer_state.json` at the top
    of `output_dir` marks the run finished.
    """
    cfg = session.cfg
    output_dir = Path(cfg.output_dir)
    check_before_work(session)
    output_dir.mkdir(parents=True, exist_ok=True)
    replaces_finished_run = (output_dir / FINISHED_MARKER).exists()
    if not replaces_finished_run:
        save_resolved_config(cfg, output_dir)
    with run_scoped_plugins(session):
        state = train_configured(session)
    if not session.is_main_process:  # the main process writes the files
        return state
    if replaces_finished_run:
        save_resolved_config(cfg, output_dir)
    write_atomically(output_dir / FINISHED_MARKER, json.dumps(state.to_json(), indent=1))
    return state


REQUIRED_HOOKS = (
    "load_tokenizer",
    "load_model",
    "build_loss",
    "wrap_distributed",
    "plan_batches",
    "training_step",
    "make_trainer",
)
"""Hooks a run cannot do without: with no plugin answering one, it would fail halfway."""


def check_before_work(session: Session) -> None:
    """Raise what would make the run fail, before any data is read: a required hook no
    plugin answers (`PluginError`), or every problem of `run_problems` (`ConfigError`)."""
    answering = {
        h: [n for n in session.hooks.implementations(h) if "(wrapper)" not in n]
        for h in REQUIRED_HOOKS
    }
    missing = [hook for hook, names in answering.items() if not names]
    if "build_loss" not in missing and not session.hooks.may_build_loss(session.cfg):
        missing.append("build_loss")
    if missing:
        raise PluginError(
            f"no installed plugin answers {', '.join(missing)}: the run cannot train without "
            "(is its plugin blocked with -p no:NAME? `weave plugin list` shows them)"
        )
    problems = run_problems(session)
    if problems:
        raise ConfigError(
            f"{session.source}: the run would fail:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def run_problems(session: Session) -> list[str]:
    """What the config asks that cannot be done, found without loading anything: every
    plugin's `check_run` (the output folder, the base model's location...) and the data files.
    An error a plugin raised is raised as it is when it is the only problem."""
    cfg = session.cfg
    problems, errors = session.hooks.check_run(cfg)
    for key in ("datasets", "test_datasets", "pretraining_dataset"):
        for index, entry in enumerate(getattr(cfg, key)):
            source = next((s for s in session.hooks.data_sources() if s.claims(entry)), None)
            why = source.problem(entry) if source and source.problem else None
            if why:
                problems.append(f"{key}.{index}.path: {entry.path}: {why}")
    if errors and not problems:
        raise errors[0]
    return problems + [str(error) for error in errors]


@contextlib.contextmanager
def run_scoped_plugins(session: Session) -> Iterator[None]:
    """The run-scoped plugin objects `configure` registers, unregistered when the run ends."""
    names = session.hooks.configure(session.cfg)
    try:
        yield
    finally:
        session.hooks.unconfigure(names)


def train_configured(session: Session) -> TrainState:
    """`train` once the run-scoped plugins are registered."""
    from accelerate.utils import set_seed  # as transformers seeds; without importing peft

    cfg, hooks = session.cfg, session.hooks
    output_dir = Path(cfg.output_dir)
    set_seed(cfg.seed)

    family = family_of(session)
    tokenizer = load_tokenizer(session, family)
    data = hooks.prepare_datasets(cfg, tokenizer)
    if data.streaming:
        log.info("data: pretraining_dataset streamed, tokenized while training")
    else:
        log.info(
            "data: %d train / %d eval rows, %d tokens (%d trained)%s",
            data.stats.train_rows,
            data.stats.eval_rows,
            data.stats.tokens,
            data.stats.target_tokens,
            " [cache]" if data.from_cache else "",
        )

    trainer = build_trainer(session, family, tokenizer, data.train, data.eval, data.identity)
    strategy = trainer.strategy
    session.is_main_process = strategy.is_main_process
    state = trainer.run()
    hooks.post_train(cfg, strategy.unwrap(trainer.model), tokenizer, strategy, output_dir)
    return state


def batch_columns(formats: dict[str, DatasetFormat]) -> dict[str, Any]:
    """Every column some format declares, with its padding; two formats padding one column
    differently is a plugin conflict."""
    columns: dict[str, Any] = {}
    for fmt in formats.values():
        for name, padding in fmt.columns.items():
            if columns.setdefault(name, padding) != padding:
                raise ConfigError(
                    f"dataset formats disagree on how column '{name}' is padded "
                    f"({columns[name]!r} vs {padding!r} in '{fmt.name}')"
                )
    return columns


def build_trainer(
    session: Session,
    family: ModelFamily | None,
    tokenizer: Any,
    train_set: Any,
    eval_set: Any = None,
    data_identity: str | None = None,
) -> Trainer:
    """Model (load_model, patch_attention), loss, devices and the loop (`make_trainer`), ready
    to `run()` on prepared rows. `weave train` and `weave bench` both start here."""
    from axolotl_weave._precision import apply_tf32, resolve_precision

    cfg, hooks = session.cfg, session.hooks
    apply_tf32(resolve_precision(cfg))
    model = hooks.load_model(cfg, tokenizer, family)
    hooks.patch_attention(model, cfg, family)
    objective = hooks.build_loss(cfg, model)
    strategy = hooks.wrap_distributed(cfg)
    log_parameter_counts(model)
    return hooks.make_trainer(
        cfg,
        model=model,
        objective=objective,
        strategy=strategy,
        train_set=train_set,
        eval_set=eval_set,
        pad_token_id=tokenizer.pad_token_id,
        columns=batch_columns(session.formats),
        data_identity=data_identity,
    )


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; a packed 4-bit weight (bitsandbytes') counts as the
    weight it stands for, not as its packed storage."""

    def count(param: Any) -> int:
        shape = getattr(getattr(param, "quant_state", None), "shape", None)
        return math.prod(shape) if shape is not None else param.numel()

    params = list(model.parameters())
    return sum(count(p) for p in params if p.requires_grad), sum(count(p) for p in params)


def log_parameter_counts(model: Any) -> None:
    """Log trainable and total parameter counts."""
    trainable, total = parameter_counts(model)
    log.info(
        "parameters: %s trainable of %s (%.2f%%)",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
