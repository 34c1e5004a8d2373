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
    from accelerate import Accelerator
    from datasets import Dataset
    from pydantic import BaseModel

    from axolotl_weave._config import DatasetEntry
    from axolotl_weave._types import DatasetFormat, LossFunction, ModelFamily, TrainState

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
    :param groups: the core's groups: dicts with ``params``, ``lr``, ``weight_decay`` and a
        ``group`` name (``default`` or an ``lr_groups`` name). Split a group, or change a
        group's ``lr`` (LoRA+ gives the B matrices ``lr * loraplus_lr_ratio``); keep every
        trainable parameter in exactly one group.

    Called once per run, before ``register_optimizers``' builder or the core's optimizer; the
    learning-rate schedule then scales every group. Collects all results (return value ignored).
    """


@hookspec
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register optimizers by the name `optimizer:` gives, by calling ``register``.

    :param register: call as ``register(name, build)``; ``build(param_groups, cfg)`` returns a
        ``torch.optim.Optimizer`` over the parameter groups the core made (weight decay and
        ``lr_groups`` already split; each group carries its ``lr``). A name registered twice,
        or one the core builds itself, is an error naming both.

    Called once, before the config is validated (an unknown ``optimizer:`` is rejected with the
    registered names as suggestions). Collects all results (return value ignored).
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
def build_dataset(
    entry: DatasetEntry, dataset: Dataset, tokenizer: Any, cfg: Any
) -> Dataset | None:
    """Turn one ``datasets:`` entry into tokenized rows, or return None if not this plugin's type.

    :param entry: the validated entry; ``entry.type`` says which format; format-specific
        options are read with ``entry.option(name, default)``.
    :param dataset: the raw rows loaded from the entry's source (a ``datasets.Dataset``).
    :param tokenizer: the tokenizer.
    :param cfg: the config (``sequence_len``, ``train_on_inputs``...).

    Return a ``datasets.Dataset`` with ``input_ids`` and ``labels`` (same length, masked
    positions set to ``IGNORE_INDEX``), and optionally ``attention_mask``. Raise
    :class:`~axolotl_weave.DataError` naming the row for bad rows.

    Called once per entry, after ``load_tokenizer``. Stops at the first non-None result: the
    plugin that registered ``entry.type`` answers, the others return None.
    """


# ---------------------------------------------------------------------------------------------
# Model: load (with quantization and adapters wrapped around it), then patch attention/kernels.
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def load_model(cfg: Any, tokenizer: Any, family: ModelFamily | None) -> Any:
    """Build and return the model to train (a ``torch.nn.Module`` with Hugging Face's API).

    Called once per run, after the datasets are built. Stops at the first non-None result; the
    generic Hugging Face causal-LM loader answers last (``trylast``). Method plugins (LoRA,
    QLoRA, ...) implement it as ``wrapper=True`` and wrap what the loader returned: they check
    their own config and return the model unchanged when they are off.
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
def wrap_distributed(cfg: Any) -> Accelerator | None:
    """Return the ``accelerate.Accelerator`` that places model, optimizer and data on devices.

    Called once per run, after ``build_loss``; the core then calls ``accelerator.prepare`` on
    the model and optimizer. DDP, FSDP and DeepSpeed plugins configure the accelerator when the
    config asks for them. Stops at the first non-None result; single device answers last.
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
    ``tokens_per_second``, ``epoch``, or ``eval_loss`` after an evaluation.

    Called every ``logging_steps`` optimizer steps and after each evaluation, on the main process
    only. Collects all results.
    """


@hookspec
def on_train_end(cfg: Any, state: TrainState) -> None:
    """Training has finished (before ``post_train``). For loggers to flush and close.

    Called once, on the main process only. Collects all results.
    """


# ---------------------------------------------------------------------------------------------
# After training.
# ---------------------------------------------------------------------------------------------


@hookspec
def post_train(
    cfg: Any, model: Any, tokenizer: Any, accelerator: Accelerator, output_dir: Path
) -> None:
    """Every plugin's chance after training: save, merge an adapter, push, upload artifacts.

    :param model: the trained model, unwrapped from any distributed wrapper.
    :param output_dir: ``cfg.output_dir`` as a path; it exists.

    Called once after the last step, on every process (use ``accelerator.is_main_process`` to
    write once). Collects all results; use ``tryfirst``/``trylast`` when one must run before
    another (saving before uploading).
    """
