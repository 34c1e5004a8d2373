"""Hook specifications: the whole contract between the core and every plugin.

Grouped by the phase of a run in which they are called, in that order. Each docstring says when
the hook is called, what each argument is, what a return value means, and whether the call
"stops at the first non-None result" (``firstresult``: one plugin owns the decision) or "collects
all results". Plugins implement any subset of a spec's arguments; new arguments may be added.

Arguments that recur:

- ``cfg``: the validated config (a pydantic model; the core's fields plus every plugin's own,
  read as attributes: ``cfg.sequence_len``, ``cfg.lora_r``).
- ``tokenizer``: the loaded Hugging Face tokenizer.
- ``family``: the :class:`~axolotl_weave.ModelFamily` registered for the base model's
  ``model_type``, or ``None`` when no family plugin claims it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer
    from datasets import Dataset
    from pydantic import BaseModel

    from axolotl_weave._config import DatasetEntry
    from axolotl_weave._prepared import PreparedData
    from axolotl_weave._strategy import Strategy
    from axolotl_weave._types import (
        BatchPlan,
        DatasetFormat,
        DataSource,
        LossFunction,
        ModelFamily,
        Trainer,
        TrainState,
    )

PROJECT_NAME = "axolotl_weave"
"""pluggy project name, and the entry-point group plugins register under."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------
# Start-up: registries, config fields and CLI commands. Called once per run, before the config
# is validated, so that validation knows every plugin's keys and names.
# ---------------------------------------------------------------------------------------------


@hookspec
def add_config_fields() -> type[BaseModel] | None:
    """Return a pydantic model whose fields this plugin adds to the config, or None.

    Called once, before the config is validated. The fields are merged into the root config
    (flat, with Axolotl's key names: ``lora_r``, not ``lora.r``) and validated with it; every
    field needs a default. Two plugins declaring the same field is an error naming both.

    Collects all results.
    """


@hookspec
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """Register the dataset ``type:`` names this plugin builds, by calling ``register``.

    :param register: call with a :class:`~axolotl_weave.DatasetFormat` for each format.
        Registering a name another plugin registered is an error naming both distributions.

    Called once, before the config is validated (unknown ``type:`` values are rejected with the
    registered names as suggestions). Collects all results (return value ignored).
    """


@hookspec
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Register the model architectures this plugin knows, by calling ``register``.

    :param register: call with a :class:`~axolotl_weave.ModelFamily` for each family. Two
        families claiming the same ``model_type`` is an error naming both distributions.

    Called once per run. Collects all results (return value ignored).
    """


@hookspec
def adjust_param_groups(cfg: Any, model: Any, groups: list[dict[str, Any]]) -> None:
    """Edit the optimizer's parameter groups in place before the optimizer is built.

    :param model: the model (to look parameters up by name: ``model.named_parameters()``).
    :param groups: dicts with ``params``, ``lr``, ``weight_decay`` and a ``group`` name
        (the core's two ``default`` groups, decayed and not). Split a group, or change a
        group's ``lr`` (``lr_groups`` splits first, ``tryfirst``; LoRA+ gives the B matrices
        ``lr * loraplus_lr_ratio``); keep every trainable parameter in exactly one group.

    Called once per run, before the ``register_optimizers`` builder of ``optimizer:``; the
    learning-rate schedule then scales every group. Collects all results (return value ignored).
    """


@hookspec
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register optimizers by the name `optimizer:` gives, by calling ``register``.

    :param register: call as ``register(name, build)``; ``build(param_groups, cfg)`` returns a
        ``torch.optim.Optimizer`` over the parameter groups (weight decay split, then as
        ``adjust_param_groups`` left them; each group carries its ``lr``). The core builds no
        optimizer itself: the default ``adamw_torch`` is a built-in plugin's. A name
        registered twice is an error naming both plugins.

    Called once, before the config is validated (an unknown ``optimizer:`` is rejected with the
    registered names as suggestions). Collects all results (return value ignored).
    """


@hookspec
def register_lr_schedulers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register learning-rate schedules by the name `lr_scheduler:` gives, by calling ``register``.

    :param register: call as ``register(name, build)``; ``build(cfg, total_steps,
        warmup_steps)`` returns a function ``factor(step) -> float``, the multiplier of each
        parameter group's base ``lr`` at optimizer step ``step`` (0 before the first step). The
        loop runs it as a ``torch.optim.lr_scheduler.LambdaLR``, multiplied by every
        ``lr_multiplier`` answer. A name registered twice is an error naming both plugins.

    Called once, before the config is validated (an unknown ``lr_scheduler:`` is rejected with
    the registered names as suggestions). Collects all results (return value ignored).
    """


@hookspec
def register_rl_methods(register: Callable[[str], None]) -> None:
    """Register the training methods `rl:` names (dpo, kto, grpo...), by calling ``register``.

    :param register: call as ``register(name)``, once per name your plugin trains; your
        ``build_loss`` (and ``training_step`` if it needs its own) answer when ``cfg.rl`` is that
        name. A name registered twice is an error naming both plugins.

    Called once, before the config is validated (an unknown ``rl:`` is rejected with the
    registered names as suggestions). Collects all results (return value ignored).
    """


@hookspec
def register_data_sources(register: Callable[[DataSource], None]) -> None:
    """Register where rows of a ``datasets:`` entry can come from, by calling ``register``.

    :param register: call with a :class:`~axolotl_weave.DataSource` for each kind of source
        (local files, a saved dataset, a hub name, a URL, an fsspec URL...). The pipeline asks each
        source, in registration order (``tryfirst`` plugins first), whether it ``claims`` an
        entry; the first that does loads it.

    Called once per run, before any dataset is read. Collects all results.
    """


@hookspec
def adapt_config_data(data: dict[str, Any], known_keys: frozenset[str]) -> list[str] | None:
    """Rewrite the raw config mapping in place before it is validated; return warnings.

    :param data: the YAML mapping with CLI overrides applied; edit it in place (rename an alias,
        drop a key of another tool that changes nothing trained).
    :param known_keys: every top-level key some installed plugin (or the core) validates, and
        ``SECTION.N.KEY`` (``datasets.0.field_messages``) for each key that entry N of a list of
        dataset entries accepts (the core's entry fields and its format's options).

    For compatibility plugins (Axolotl's key names, aliases, ignored keys). Called once, before
    validation. Collects all results: each plugin's warnings are logged.
    """


@hookspec(firstresult=True)
def explain_unknown_key(key: str) -> str | None:
    """Why a top-level key that no plugin validates is refused, when a plugin knows better
    than "unknown key" (a key of another tool that changes what is trained), or None.

    Called while formatting a validation error, once per unknown key. Stops at the first
    non-None result.
    """


@hookspec
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """Register this plugin's per-run object, only when its feature is on.

    :param register: call as ``register(obj, name)``; ``obj`` is a plugin (an object with
        ``@hookimpl`` methods, holding the run's state) registered for this run only and
        unregistered when the run ends, whatever its outcome.

    Called once per run, right after the config is validated and before anything is loaded
    (pytest's ``pytest_configure`` pattern: a feature that is off costs nothing and adds no
    hook). Collects all results.
    """


@hookspec(firstresult=True)
def launch_training(
    session: Any,
    config: str,
    overrides: list[str],
    global_args: list[str],
    num_processes: int | None,
    launched: int | None,
) -> int | None:
    """Run the training somewhere other than this process: in processes this one starts, on a
    Ray cluster, through a scheduler. Return the exit code, or None to train here.

    :param session: the validated run (``session.cfg``, ``session.hooks``).
    :param config: the config as the user named it (a path or URL); ``overrides`` the extra
        ``--key value`` arguments, ``global_args`` the global options (``-p no:NAME``...) to
        repeat when ``weave train`` is started again elsewhere.
    :param num_processes: ``--num-processes N``, or None.
    :param launched: the number of processes a launcher (torchrun, accelerate launch) started
        this one among, or None when none did.

    Called once by ``weave train``, after the config is validated and before anything loads.
    The built-in ``--num-processes`` launcher answers last. Stops at the first non-None result.
    """


@hookspec
def check_run(cfg: Any) -> list[str] | None:
    """Return what would make the run fail, found without loading anything: one line per
    problem, naming the key (``output_dir: ... is a file``), or None. Raising a
    :class:`~axolotl_weave.WeaveError` instead keeps its own message and exit code when it
    is the only problem found.

    Called by ``weave train`` and ``weave validate`` before any work; every plugin is asked,
    and all problems are reported together in one message (exit code 2). Collects all results.
    """


@hookspec
def add_cli_commands(app: typer.Typer) -> None:
    """Add commands to the ``weave`` command line.

    :param app: the root typer application; use ``@app.command()`` or ``app.add_typer``.

    Called once when the CLI starts, for plugins installed through entry points. Keep the module
    importable without torch: import heavy packages inside the command. Collects all results.
    """


# ---------------------------------------------------------------------------------------------
# Data: tokenizer, then one build_dataset call per `datasets:` entry.
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def load_tokenizer(cfg: Any) -> Any:
    """Load and return the tokenizer for ``cfg`` (``tokenizer_config`` or ``base_model``).

    Called once per run, before the datasets are built. The core then gives the model family's
    ``prepare_tokenizer`` and the config's ``special_tokens`` their turn.

    Stops at the first non-None result; the generic Hugging Face loader answers last.
    """


@hookspec(firstresult=True)
def prepare_datasets(cfg: Any, tokenizer: Any, hooks: Any) -> PreparedData | None:
    """Tokenize the config's datasets into the training (and eval) sets.

    The built-in ``data_pipeline`` plugin answers last: it loads each entry through the data
    sources, builds it with its format's ``build`` (or ``build_dataset``), fits rows to
    ``sequence_len``, mixes, deduplicates, splits and caches the result under
    ``dataset_prepared_path``; a ``pretraining_dataset:`` it streams. Answer first to prepare
    data another way (a remote data service, a precomputed store).

    :param cfg: the config (``datasets``, ``test_datasets``, ``sequence_len``...).
    :param tokenizer: the tokenizer, as ``load_tokenizer`` and the family prepared it.
    :param hooks: the run's hook caller, to call the registries and hooks it orchestrates
        (``dataset_formats()``, ``data_sources()``, ``build_dataset(...)``, ``pm``).

    Return a :class:`~axolotl_weave.PreparedData` (its ``stats`` say what was kept and
    dropped). Called once per run, after ``load_tokenizer``; stops at the first non-None result.
    """


@hookspec(firstresult=True)
def build_dataset(
    entry: DatasetEntry, dataset: Dataset, tokenizer: Any, cfg: Any
) -> Dataset | None:
    """Turn one ``datasets:`` entry into tokenized rows, or return None if not this plugin's type.

    The fallback, kept for compatibility: a format normally passes its build function as
    ``DatasetFormat(build=...)`` and the pipeline calls it directly, without this hook. The hook is
    called only for an entry whose format was registered without ``build`` (a plugin written
    before formats carried it) and for an entry without ``type:`` (pre-tokenized rows), so an
    implementation must check ``entry.type`` and return None for the types it does not build.

    :param entry: the validated entry; ``entry.type`` says which format; format-specific
        options are read with ``entry.option(name, default)``.
    :param dataset: the raw rows loaded from the entry's source (a ``datasets.Dataset``).
    :param tokenizer: the tokenizer.
    :param cfg: the config (``sequence_len``, ``train_on_inputs``...).

    Return a ``datasets.Dataset`` with ``input_ids`` and ``labels`` (same length, masked
    positions set to ``IGNORE_INDEX``), and optionally ``attention_mask``. Raise
    :class:`~axolotl_weave.DataError` naming the row for bad rows.

    Called once per such entry, after ``load_tokenizer``. Stops at the first non-None result:
    the plugin owning ``entry.type`` answers, the others return None.
    """


# ---------------------------------------------------------------------------------------------
# Model: load (with quantization and adapters wrapped around it), then patch attention/kernels.
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def load_model(
    cfg: Any,
    tokenizer: Any,
    family: ModelFamily | None,
    purpose: str,
    load_kwargs: dict[str, Any],
) -> Any:
    """Build and return the model (a ``torch.nn.Module`` with Hugging Face's API).

    :param purpose: ``"train"`` (the model to fine-tune), ``"infer"`` (generation, serving) or
        ``"merge"`` (``weave merge-lora``: the base, to fold an adapter into). A method plugin
        that only matters while training (k-bit preparation, a fresh adapter) checks it.
    :param load_kwargs: the keyword arguments every plugin contributed for the base model's
        ``from_pretrained`` (``model_load_kwargs``): a loader passes them on, over its own.

    Called once per run, after the datasets are built. Stops at the first non-None result; the
    generic Hugging Face causal-LM loader answers last (``trylast``). Method plugins (LoRA,
    QLoRA, ...) implement it as ``wrapper=True`` and wrap what the loader returned: they check
    their own config and return the model unchanged when they are off.
    """


@hookspec
def model_load_kwargs(cfg: Any, purpose: str, kwargs: dict[str, Any]) -> None:
    """Add to or change, in place, the keyword arguments of the base model's
    ``from_pretrained`` (``quantization_config``, ``device_map``, ``dtype``...).

    :param purpose: as in ``load_model``.
    :param kwargs: the arguments so far. Quantization plugins add theirs here instead of
        calling a loader themselves, so that whichever plugin answers ``load_model`` (a third
        party's too) honours them.

    Called once before ``load_model``, which receives the result as ``load_kwargs``. Collects
    all results.
    """


@hookspec
def patch_attention(model: Any, cfg: Any, family: ModelFamily | None) -> None:
    """Swap in the attention implementation and fused kernels the config enables, in place.

    Called once per run, after ``load_model`` and before ``build_loss`` and
    ``wrap_distributed``. Each kernel plugin checks its own config keys and does nothing when
    they are off. Collects all results (return value ignored).
    """


# ---------------------------------------------------------------------------------------------
# Training: the objective, the device strategy, and events for loggers.
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def build_loss(cfg: Any, model: Any) -> LossFunction | None:
    """Return the training objective, a :class:`~axolotl_weave.LossFunction`.

    Called once per run, after ``patch_attention``. Stops at the first non-None result: an RL
    plugin answers when ``cfg.rl`` names it; the SFT cross-entropy answers last (``trylast``).
    Fused-kernel plugins implement it as ``wrapper=True`` and wrap the objective returned.
    """


@hookspec(firstresult=True)
def wrap_distributed(cfg: Any) -> Strategy | None:
    """Return the device :class:`~axolotl_weave.Strategy` of the run.

    The strategy places the model (and any frozen extra model, such as a reference), the
    optimizer and the schedule on devices (``prepare``), runs ``backward``, steps the optimizer
    with clipping at accumulation boundaries (``optimizer_step``), unwraps the model, and saves
    and loads model and optimizer state in checkpoints (collectively where it shards). An
    engine that owns accumulation and the step (DeepSpeed) makes ``optimizer_step`` read the
    norm without stepping again. :class:`~axolotl_weave.AccelerateStrategy` is the base most
    strategies extend.

    Called once per run, after ``build_loss``. DDP, FSDP and DeepSpeed plugins answer when the
    config asks for them. Stops at the first non-None result; single device answers last.
    """


@hookspec
def transform_train_data(
    cfg: Any,
    dataset: Any,
    evaluation: bool,
    strategy: Strategy,
    columns: dict[str, int | str | None],
    pad_token_id: int,
) -> Any | None:
    """Return ``dataset`` with what this plugin adds (columns computed once, before training),
    or None to leave it as it is.

    :param dataset: the tokenized rows of the training set (``evaluation`` False) or the eval
        set (True), as the data pipeline prepared them, or as the plugin before returned them.
    :param strategy: the run's strategy (compute on ``strategy.device``; with several
        processes, compute on the main one and share through a file).
    :param columns: every batch column and its padding, as for ``plan_batches``: add the
        columns you add (``columns[name] = None`` for a per-row scalar), so the batches carry
        them.

    Called by the loop once per set, when it is built, after ``wrap_distributed`` and before
    ``plan_batches`` (``precompute_ref_log_probs`` adds the reference's log-probabilities
    here). Collects all results, in turn: each plugin gets the previous one's result.
    """


@hookspec(firstresult=True)
def plan_batches(
    cfg: Any,
    dataset: Any,
    evaluation: bool,
    strategy: Strategy,
    columns: dict[str, int | str | None],
    pad_token_id: int,
) -> BatchPlan | None:
    """Say how ``dataset`` is cut into micro-batches for this process: return a
    :class:`~axolotl_weave.BatchPlan`, or None to leave it to another plugin.

    :param dataset: the tokenized rows: a ``datasets.Dataset``, or for a streamed
        ``pretraining_dataset:`` an ``IterableDataset`` (no length: its plan counts None
        micro-batches per epoch).
    :param evaluation: False for the training set (``micro_batch_size`` rows a micro-batch, a
        new seeded order each epoch); True for the eval set (``eval_batch_size``, default
        ``micro_batch_size``; one fixed order, read as epoch 0).
    :param strategy: the run's strategy: ``process_index`` and ``num_processes`` (every
        process gets the same number of micro-batches, different rows), ``is_main_process``.
    :param columns: every batch column a registered format declares, with its padding
        (``DatasetFormat.columns``); a plan that cannot carry a column the rows have refuses it.
    :param pad_token_id: the tokenizer's pad token id.

    Called when the loop is built, after ``wrap_distributed``: once for the training set (its
    count sets the schedule) and once for the eval set when there is one. Stops at the first
    non-None result: sample packing answers when ``sample_packing`` (for the eval set
    ``eval_sample_packing``) is on; the padded batches (and streams) answer last (``trylast``).
    """


@hookspec(firstresult=True)
def make_trainer(
    cfg: Any,
    hooks: Any,
    model: Any,
    objective: LossFunction,
    strategy: Strategy,
    train_set: Any,
    eval_set: Any,
    pad_token_id: int,
    columns: dict[str, int | str | None],
    data_identity: str | None,
) -> Trainer | None:
    """Return the :class:`~axolotl_weave.Trainer` (the loop) of the run, ready to ``run()``.

    :param hooks: the run's hook caller (``hooks.plan_batches``, ``hooks.training_step``,
        ``hooks.on_log``...: the loop calls the other hooks through it).
    :param model: the loaded, patched model, not yet prepared by ``strategy``.
    :param train_set: the tokenized training rows (``eval_set`` the eval rows, or None).
    :param columns: as for ``plan_batches``; ``data_identity`` names the prepared data, so
        that a checkpoint is not resumed on other data.

    Called once per run, after ``wrap_distributed``, by ``weave train`` and ``weave bench``.
    The loop plans the batches, builds the optimizer and schedule, resumes, steps, evaluates,
    logs and checkpoints, and calls ``on_train_end`` whatever the outcome. Stops at the first
    non-None result; the built-in ``training_loop`` plugin answers last (``trylast``).
    """


@hookspec(firstresult=True)
def training_step(
    cfg: Any,
    strategy: Strategy,
    model: Any,
    objective: LossFunction,
    window: list[dict[str, Any]],
    state: TrainState,
) -> dict[str, float] | None:
    """Run the forward and backward passes of one accumulation window; return its metrics.

    :param strategy: the run's strategy: call ``strategy.backward(loss)`` (never
        ``loss.backward()``), ``strategy.no_sync(model)`` around micro-batches before the last,
        ``strategy.autocast()`` around forward passes, ``strategy.reduce`` for metrics.
    :param model: the prepared (possibly wrapped) model, in training mode.
    :param objective: what ``build_loss`` returned.
    :param window: ``gradient_accumulation_steps`` micro-batches (fewer at an epoch's end), as
        the collator made them (every column the format declared), tensors already on
        ``strategy.device``.
    :param state: ``state.global_step`` is the number of steps done before this one.

    Return a mapping with at least ``loss`` (the mean over the window, every process), and any
    other metric (``rewards/margins``, ``kl``...): each is logged and handed to loggers. The
    loop then lets the strategy step the optimizer and the schedule. Stops at the first
    non-None result: a method that needs two forward passes (a reference model) or generation
    answers when its config is on; the supervised step answers last (``trylast``).
    """


@hookspec
def on_train_begin(cfg: Any, state: TrainState) -> None:
    """Training is about to start (or resume at ``state.global_step``). For loggers.

    Called once, on the main process only. Collects all results.
    """


@hookspec
def on_step_end(cfg: Any, state: TrainState, model: Any, optimizer: Any) -> None:
    """An optimizer step (and the learning-rate schedule's step) has finished.

    :param state: ``state.global_step`` is the step just done; ``tokens_seen`` and
        ``batches_into_epoch`` count it.
    :param model: the model being trained (unwrapped from any distributed wrapper).
    :param optimizer: the optimizer; a method may edit its state or the groups' ``lr``, which
        the next step uses (the schedule sets ``lr`` afresh at each of its steps).

    For methods that act during training, such as ReLoRA's periodic merge-and-restart. Called
    on every process, after each step, before logging, evaluation and checkpointing. Collects
    all results.
    """


@hookspec
def on_log(cfg: Any, state: TrainState, metrics: dict[str, float]) -> None:
    """New metrics at ``state.global_step``: ``loss``, ``learning_rate``, ``grad_norm``,
    ``tokens_per_second``, ``epoch`` and the step's own (``rewards/margins``...), or after an
    evaluation ``eval_loss`` and the objective's measures as ``eval_<name>``.

    Called every ``logging_steps`` optimizer steps and after each evaluation, on the main process
    only. Collects all results.
    """


@hookspec
def save_checkpoint_state(
    cfg: Any, state: TrainState, model: Any, folder: Path, strategy: Strategy
) -> None:
    """Add this plugin's own state to the checkpoint being written in ``folder``.

    :param model: the unwrapped model.
    :param strategy: the run's strategy (``strategy.is_main_process``).
    :param folder: the checkpoint while it is staged (renamed into place once complete):
        write files under ``folder / <your plugin name>``.

    Called at each checkpoint on every process (write from the main one,
    ``strategy.is_main_process``, unless the state is per process), after the strategy's files.
    Collects all results.
    """


@hookspec
def load_checkpoint_state(
    cfg: Any, state: TrainState, model: Any, folder: Path, strategy: Strategy
) -> None:
    """Restore what ``save_checkpoint_state`` wrote, resuming from ``folder``.

    Called once when a run resumes, on every process, before the strategy restores the trainable
    weights, the optimizer and the schedule (so a plugin can put back base weights a
    trainable adapter sits on). Collects all results.
    """


@hookspec
def lr_multiplier(cfg: Any, step: int) -> float | None:
    """A factor on the learning rate at optimizer step ``step``, or None for none.

    Called by the schedule at each step (keep it cheap and pure: a function of ``step``);
    every answer multiplies the ``lr_scheduler``'s factor, so the logged ``learning_rate`` is
    the rate the optimizer used. Collects all results.
    """


@hookspec
def on_train_end(cfg: Any, state: TrainState, error: BaseException | None) -> None:
    """Training has ended, well or not (before ``post_train``). For loggers to flush and close.

    :param error: None when every step ran; else the exception that stopped training
        (``KeyboardInterrupt`` included), which propagates after this hook: close the run as
        failed. Checkpoints already written are intact.

    Called once, on the main process only, from a ``finally``. Collects all results.
    """


# ---------------------------------------------------------------------------------------------
# After training.
# ---------------------------------------------------------------------------------------------


@hookspec
def post_train(cfg: Any, model: Any, tokenizer: Any, strategy: Strategy, output_dir: Path) -> None:
    """Every plugin's chance after training: save, merge an adapter, push, upload artifacts.

    :param model: the trained model, unwrapped from any distributed wrapper.
    :param strategy: the run's strategy (``strategy.is_main_process``,
        ``strategy.wait_for_everyone()``, ``strategy.full_state_dict(model)`` for a sharded one).
    :param output_dir: ``cfg.output_dir`` as a path; it exists.

    Called once after the last step of a successful run, on every process (use
    ``strategy.is_main_process`` to write once). Collects all results; use
    ``tryfirst``/``trylast`` when one must run before another (saving before uploading).
    """
