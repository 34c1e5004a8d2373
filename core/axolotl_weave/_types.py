"""Small typed objects that hooks receive and return (re-exported by `axolotl_weave`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

IGNORE_INDEX = -100
"""Label value of a token that is not trained on (masked)."""


PAD_TOKEN = "pad"
"""Padding of a column declared in `DatasetFormat.columns`: the tokenizer's pad token id."""

SFT_COLUMNS: dict[str, int | str | None] = {
    "input_ids": PAD_TOKEN,
    "labels": IGNORE_INDEX,
    "attention_mask": 0,
}
"""The columns of a supervised format, and how each is right-padded in a micro-batch."""


@dataclass(frozen=True)
class DatasetFormat:
    """A dataset `type:` that a plugin can build (see `register_dataset_formats`).

    `build(entry, dataset, tokenizer, cfg)` turns the raw rows of one `datasets:` entry into
    tokenized rows (a `datasets.Dataset`); the core calls it for every entry of this `type:`
    (see the `build_dataset` hook for its contract). `columns` declares the columns a training
    batch takes from those rows and how each is right-padded: `PAD_TOKEN` (the pad token id),
    an int (e.g. `IGNORE_INDEX` for labels, 0 for a mask), or None for a column that is not a
    token sequence (a scalar such as KTO's `label`, or text such as a GRPO prompt: scalars
    become a tensor, text a list). Sequence columns are fitted to `sequence_len` together, and
    only formats with exactly the supervised columns (`SFT_COLUMNS`) can be packed.
    `options` is an optional pydantic model of the extra keys this format accepts on a
    `datasets:` entry, beyond the common ones (path, type, ds_type, data_files, split, ...).
    `inline=True` marks the one format that builds a `type:` given as a mapping (Axolotl's
    user-defined prompt format): the mapping's keys become the entry's options.
    `streams=True` marks a format that can build a streamed `pretraining_dataset:` entry; the
    first such format is the default `type` of those entries.
    `prompt` says how inference (`weave inference`, `weave serve`) renders a user's prompt as
    training did: `prompt_row(entry, text)`, a raw row of this format holding the prompt and an
    empty response (`build` then gives exactly the training prompt); `"chat"`, the tokenizer's
    chat template; `"text"`, the text as it is; `"auto"`, the chat template when the tokenizer
    has one, else the text (prompts that are conversations or strings, as GRPO's); None, it
    cannot (inference warns, and falls back as `"auto"` does).
    """

    name: str
    description: str = ""
    options: type[BaseModel] | None = None
    inline: bool = False
    streams: bool = False
    build: Callable[..., Any] | None = field(default=None, compare=False)
    prompt: Callable[[Any, str], dict[str, Any]] | str | None = field(default=None, compare=False)
    columns: dict[str, int | str | None] = field(
        default_factory=lambda: dict(SFT_COLUMNS), compare=False, hash=False
    )

    @property
    def packable(self) -> bool:
        """Whether rows of this format can be packed (exactly the supervised columns)."""
        return set(self.columns) == set(SFT_COLUMNS)


@dataclass(frozen=True)
class DataSource:
    """Where the rows of a `datasets:` entry come from (see `register_data_sources`).

    claims(entry): whether this source reads the entry (a local path, a saved dataset, a URL...).
    load(entry, streaming): the entry's raw rows: a `datasets.Dataset` (an `IterableDataset` when
        `streaming`), or a `LoadedRows` holding it with a `RowLocator` that names each row by
        file and line. The core refuses an empty result, and applies `shards` and `skip`. A
        missing file or a broken row is a `DataError` naming it.
    identity(entry): a string that changes when the source's content does (file digests, an
        ETag), for the preprocessing cache's fingerprint, computed without tokenizing. None: the
        core loads the rows (once, reused to build them) and takes `<name>:` and the loaded
        dataset's own fingerprint (which follows a hub revision).
    problem(entry): why the entry cannot be read, found before any work (a missing file, with
        where it was looked for), or None; `weave validate` and `weave train` report it.
    """

    name: str
    claims: Callable[[Any], bool]
    load: Callable[..., Any]
    identity: Callable[[Any], str] | None = None
    description: str = ""
    problem: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class ModelFamily:
    """What a model-family plugin knows about one architecture (see `register_model_families`).

    model_types: the `config.model_type` values it covers ("llama", ...).
    adapter_target_modules: the projection layers an adapter attaches to by default (when the
        config names none).
    decoder_layer: class name of the repeated decoder block (FSDP wrapping, checkpointing).
    prepare_tokenizer: called with the loaded tokenizer to fix quirks (missing pad token...).
    prepare_model: called with the loaded model and the config to fix quirks or switch on
        options (an MoE router's auxiliary loss...), before adapters wrap it.
    attn_implementations: the transformers attention implementations it supports.
    kernels: the fused-kernel plugins it works with (e.g. "liger").
    cannot: what this architecture cannot take, by capability name, each with why: a config key
        of the core or of a method plugin ("sample_packing", "gptq", "load_in_4bit",
        "load_in_8bit"...). The owner of the capability asks `family.cannot.get(name)` and
        refuses it with that reason; e.g. {"sample_packing": "it is recurrent: its state
        carries from one packed sample into the next"}. Empty when it takes everything.
    tiny_config: keyword arguments of a tiny config of this architecture (random weights, for
        tests and the support matrix): `AutoConfig.for_model(model_types[0], **tiny_config())`.
    """

    name: str
    model_types: tuple[str, ...]
    adapter_target_modules: tuple[str, ...] = ()
    decoder_layer: str | None = None
    prepare_tokenizer: Callable[[Any], None] | None = None
    prepare_model: Callable[[Any, Any], None] | None = None
    attn_implementations: tuple[str, ...] = ("eager", "sdpa")
    kernels: tuple[str, ...] = ()
    cannot: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    tiny_config: Callable[[], dict[str, Any]] | None = None
    description: str = ""


@runtime_checkable
class LossFunction(Protocol):
    """The training objective that `build_loss` returns.

    `count(batch)` is how many units (target tokens for SFT) a micro-batch adds to the
    denominator; `__call__(model, batch)` returns the loss *summed* over those units. The core
    divides by the units of the whole accumulated batch, so a step with gradient accumulation equals
    one step on the concatenated micro-batches.

    An objective computed from the final hidden states and the output layer may also implement
    `HiddenStatesLoss` (`hidden_states_loss(model, batch, head)`), so that kernel plugins (liger,
    cut_cross_entropy) can compute its cross-entropy without materialising the logits.

    Optional, read where an objective is measured on held-out rows (the loop's evaluation,
    `weave evaluate`): `unit`, the singular name of what `count` counts ("token" when absent;
    only a loss per token has a perplexity); `measures(model, batch, strategy)`, the summed
    loss and a dict of metrics, each summed over the same units (reported as means per unit)
    or a pair `(sum, count)` (reported as sum over count: KTO's desirable rows' mean reward;
    GRPO's generates completions for the batch's prompts there); `summarize(metrics, units)`,
    the reported metrics derived from those means (KTO's margin, GRPO's reward std); and
    `built_on_start`, True when the objective keeps the model it was built with as its
    reference, so that measuring another model against that reference builds it on the model
    training starts from.
    """

    def count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


@runtime_checkable
class BatchPlan(Protocol):
    """How one dataset is cut into micro-batches for this process (what `plan_batches` returns).

    `micro_batches_per_epoch`: how many micro-batches this process gets per epoch (the same on
    every process; the schedule counts steps from it), or None for a stream of unknown length.
    `micro_batches(epoch, start)`: this process's micro-batches of `epoch`, beginning at
    micro-batch number `start` (to resume where a checkpoint stopped): dicts of the batch
    columns as tensors (text as lists), on the CPU.
    """

    @property
    def micro_batches_per_epoch(self) -> int | None: ...

    def micro_batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, Any]]: ...


@dataclass
class TrainState:
    """Where training stands; passed to the logger hooks and saved in every checkpoint."""

    output_dir: Path
    max_steps: int = 0
    steps_per_epoch: int = 0
    global_step: int = 0
    epoch: int = 0
    batches_into_epoch: int = 0
    tokens_seen: int = 0
    log_history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON-serialisable form written to `trainer_state.json`."""
        return {
            "max_steps": self.max_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batches_into_epoch": self.batches_into_epoch,
            "tokens_seen": self.tokens_seen,
            "log_history": self.log_history,
        }


class Trainer(Protocol):
    """The loop of one run (what `make_trainer` returns).

    `model` is the model as `strategy` prepared it (`strategy.unwrap(model)` for the plain one),
    `plan` the training set's `BatchPlan`; `run()` trains to the end (resuming first when the
    config asks) and returns the final state, calling `on_train_end` whatever the outcome.
    """

    model: Any
    strategy: Any
    plan: BatchPlan

    def run(self) -> TrainState: ...
