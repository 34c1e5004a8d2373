"""Vision-language fine-tuning with Axolotl's keys: `processor_type`, `processor_kwargs`,
`image_size`, `image_resize_algorithm`, `freeze_mm_modules`, and conversations with images.

With `processor_type` set (`AutoProcessor`, or a transformers processor class):

- the model loads as `AutoModelForImageTextToText` (unless `model_type` names another class),
  through the generic loader, so quantization and LoRA wrap it as any model;
- a `type: chat_template` entry is built by this plugin's format, `multimodal.chat_template`
  (Axolotl's examples keep `chat_template`; the config is rewritten, with a note): each
  conversation is rendered by the processor's chat template (the top-level `chat_template`
  when set) and processed with its images, each image expanded into its image tokens, and the
  turns of `roles_to_train` are trained (see `_conversations`). Rows are tokenized and cached
  once, like any format's; a row longer than `sequence_len` is dropped (cutting it would cut
  an image's tokens);
- training batches are built by the processor from the cached text and images
  (`pixel_values` and whatever else the model takes), its token ids checked against the cached
  ones, the cached labels padded beside them;
- `freeze_mm_modules: true` freezes the vision (and audio) encoders and the projector, as
  Axolotl names them.

Packing is refused (rows of image tokens cannot be packed here yet), as are `excess_length_
strategy: truncate` / `split`. The inference commands load the processor saved here and take
images (`weave inference --image`, `image_url` parts in `weave serve`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from axolotl_weave import (
    IGNORE_INDEX,
    PAD_TOKEN,
    DataError,
    DatasetEntry,
    DatasetFormat,
    PluginConfig,
    epoch_order,
    hookimpl,
    map_rows,
    micro_batches_per_epoch,
    staged_into,
)
from pydantic import Field, field_validator, model_validator

from axolotl_weave_plugins.multimodal import _conversations, _images

PLUGIN_KIND = "format"
log = logging.getLogger("axolotl_weave")

FORMAT = "multimodal.chat_template"
COLUMNS: dict[str, int | str | None] = {
    "input_ids": PAD_TOKEN,
    "labels": IGNORE_INDEX,
    "attention_mask": 0,
    "mm_text": None,
    "mm_images": None,
}
"""The rows' columns: the supervised ones, the rendered text and the image references."""

MM_MODULES = (
    "vision_tower",
    "vision_model",
    "vision_encoder",
    "embed_vision",
    "multi_modal_projector",
    "visual",
    "audio_tower",
    "audio_model",
    "embed_audio",
)
"""Names of the parts of a multimodal model that are not the language model (Axolotl's)."""
AFFECTS_DATA = {"affects_data": True}
"""The keys that change the cached rows (image tokens depend on the processor and sizes)."""


class VisionLanguageSettings(PluginConfig):
    """The multimodal keys (Axolotl's names)."""

    processor_type: str | None = Field(
        None,
        description="Processor class (AutoProcessor): train a vision-language model.",
        json_schema_extra=AFFECTS_DATA,
    )
    processor_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the processor's from_pretrained.",
        json_schema_extra=AFFECTS_DATA,
    )
    image_size: int | tuple[int, int] | None = Field(
        None,
        description="Resize images first: an int pads each into that square; [width, height] "
        "stretches.",
        json_schema_extra=AFFECTS_DATA,
    )
    image_resize_algorithm: str | None = Field(
        None, description="bilinear (default), bicubic or lanczos.", json_schema_extra=AFFECTS_DATA
    )
    freeze_mm_modules: bool = Field(
        False, description="Freeze the vision/audio encoders and projector (train the LM)."
    )

    @field_validator("image_resize_algorithm")
    @classmethod
    def _known_resampling(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in _images.RESAMPLING:
            raise ValueError(f"'{value}' is not one of {', '.join(_images.RESAMPLING)}")
        return None if value is None else value.lower()

    @field_validator("processor_kwargs")
    @classmethod
    def _not_the_tokenizer(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "tokenizer" in value:
            raise ValueError("the run's tokenizer is the processor's: remove 'tokenizer'")
        return value

    @model_validator(mode="after")
    def _a_vision_language_run(self) -> VisionLanguageSettings:
        if self.processor_type is None:
            return self
        if getattr(self, "sample_packing", False):
            raise ValueError(
                "sample_packing with processor_type: rows with images cannot be packed here; "
                "set sample_packing: false"
            )
        if getattr(self, "excess_length_strategy", None) in ("truncate", "split"):
            raise ValueError(
                "excess_length_strategy truncate/split with processor_type would cut an image's "
                "tokens: use drop (the default)"
            )
        if not getattr(self, "model_type", None):
            self.model_type = "AutoModelForImageTextToText"
        return self


class MultimodalOptions(PluginConfig):
    """Options of a `type: multimodal.chat_template` entry (Axolotl's names)."""

    field_messages: str = Field("messages", description="Column holding the conversation.")
    roles_to_train: list[str] = Field(
        default_factory=lambda: ["assistant"], description="Roles whose turns are trained."
    )


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The multimodal keys."""
    return VisionLanguageSettings


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    """`multimodal.chat_template`: conversations with images (with `processor_type`)."""
    register(
        DatasetFormat(
            FORMAT,
            "Conversations whose messages hold images (role/content lists of text and image "
            "items), processed by processor_type's processor.",
            options=MultimodalOptions,
            build=build,
            columns=dict(COLUMNS),
        )
    )


@hookimpl
def adapt_config_data(data: dict[str, Any], known_keys: frozenset[str]) -> list[str]:
    """With `processor_type`, Axolotl's `type: chat_template` entries are this format's; the
    text chat_template's own options this format does not read are dropped with a warning
    (a key neither knows is left, for validation to refuse)."""
    if not data.get("processor_type"):
        return []
    kept = set(DatasetEntry.model_fields) | set(MultimodalOptions.model_fields)
    notes = []
    for section in ("datasets", "test_datasets"):
        entries = data.get(section)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict) or entry.get("type") != "chat_template":
                continue
            entry["type"] = FORMAT
            where = f"{section}[{index}]"
            notes.append(f"{where}: type chat_template with processor_type: read as " + FORMAT)
            for key in [k for k in entry if k not in kept]:
                if f"{section}.{index}.{key}" in known_keys:
                    entry.pop(key)
                    notes.append(
                        f"config key '{where}.{key}' is a text chat_template option that "
                        "conversations with images do not read: it is IGNORED"
                    )
    return notes


@functools.cache
def cached_processor(where: str, processor_type: str, kwargs: str) -> Any:
    """The processor of `where` (loaded once per process)."""
    import transformers

    loader = getattr(transformers, processor_type, None)
    if loader is None or not hasattr(loader, "from_pretrained"):
        raise DataError(
            f"processor_type: '{processor_type}' is not a transformers processor class "
            "(e.g. AutoProcessor)"
        )
    try:
        return loader.from_pretrained(where, **json.loads(kwargs))
    except (OSError, ValueError, TypeError, AttributeError, ImportError) as exc:
        hint = ""
        if importlib.util.find_spec("torchvision") is None:
            hint = (
                " (processors with a video part, Qwen2-VL's say, need torchvision, which is "
                "not installed: pip install torchvision, the build matching your torch)"
            )
        raise DataError(f"cannot load the processor of '{where}': {exc}{hint}") from None


def processor_for(cfg: Any, tokenizer: Any) -> Any:
    """The config's processor, speaking through the run's tokenizer (its pad token, its chat
    template when `chat_template` set one)."""
    if not cfg.processor_type:
        raise DataError(f"type: {FORMAT} needs processor_type (e.g. AutoProcessor)")
    processor = cached_processor(
        cfg.base_model, cfg.processor_type, json.dumps(cfg.processor_kwargs, sort_keys=True)
    )
    processor.tokenizer = tokenizer
    tokenizer.padding_side = "right"
    own = getattr(processor, "chat_template", None)
    if getattr(cfg, "chat_template", None) or not own:
        processor.chat_template = getattr(tokenizer, "chat_template", None) or own
    if not processor.chat_template:
        raise DataError(
            f"{cfg.base_model}: neither the processor nor the tokenizer has a chat template; "
            "set chat_template"
        )
    return processor


def encoder_for(cfg: Any, tokenizer: Any) -> _conversations.Encoder:
    """The `Encoder` of the config's processor and image settings."""
    size = cfg.image_size
    return _conversations.Encoder(
        processor_for(cfg, tokenizer),
        tuple(size) if isinstance(size, list) else size,
        cfg.image_resize_algorithm,
    )


def build(entry: Any, dataset: Any, tokenizer: Any, cfg: Any) -> Any:
    """Tokenize conversations with images: ids, labels of the trained roles, and the text and
    image references the batches are processed from."""
    encoder = encoder_for(cfg, tokenizer)
    source = Path(entry.path).expanduser()
    folder = source if source.is_dir() else source.parent if source.exists() else None
    field, roles = (
        entry.option("field_messages", "messages"),
        set(entry.option("roles_to_train", ["assistant"])),
    )

    def row(values: dict[str, Any]) -> dict[str, Any]:
        conversation = _conversations.read_row(values, field, folder)
        return _conversations.encode(encoder, conversation, roles, bool(cfg.train_on_inputs))

    empty = {"input_ids": [], "labels": [], "attention_mask": [], "mm_text": "", "mm_images": []}
    return map_rows(dataset, entry, row, num_proc=1, empty=empty)


class VisionLanguageRun:
    """The run-scoped plugin (registered with `processor_type`): the batches, and
    `freeze_mm_modules`."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.tokenizer: Any = None

    @hookimpl(wrapper=True, tryfirst=True)
    def load_tokenizer(self) -> Generator[None, Any, Any]:
        """Keep the run's tokenizer, for the processor of the batches."""
        self.tokenizer = yield
        return self.tokenizer

    @hookimpl(wrapper=True, tryfirst=True)
    def load_model(self, purpose: str) -> Generator[None, Any, Any]:
        """`freeze_mm_modules`: freeze the encoders and projector of the training model."""
        model = yield
        if purpose == "train" and self.cfg.freeze_mm_modules:
            frozen = 0
            for name, param in model.named_parameters():
                if param.requires_grad and any(p in MM_MODULES for p in name.split(".")):
                    param.requires_grad_(False)
                    frozen += 1
            log.info("freeze_mm_modules: froze %d vision/audio parameters", frozen)
        return model

    @hookimpl
    def post_train(self, tokenizer: Any, strategy: Any, output_dir: Path) -> None:
        """Save the processor beside the model (after it is saved), for loading it back."""
        if strategy.is_main_process:
            with staged_into(output_dir) as staging:
                processor_for(self.cfg, tokenizer).save_pretrained(staging)

    @hookimpl(tryfirst=True)
    def plan_batches(self, dataset: Any, evaluation: bool, strategy: Any) -> Any:
        """Batches processed from each row's text and images (see `ProcessedBatches`)."""
        if "mm_text" not in getattr(dataset, "column_names", ()):
            raise DataError(
                f"processor_type: every dataset must be of type {FORMAT} (or chat_template), "
                "whose rows hold the images"
            )
        cfg = self.cfg
        size = (cfg.eval_batch_size or cfg.micro_batch_size) if evaluation else cfg.micro_batch_size
        return ProcessedBatches(
            dataset,
            encoder_for(cfg, self.tokenizer),
            size,
            cfg.seed,
            not evaluation and not getattr(cfg, "curriculum_sampling", False),
            strategy.process_index,
            strategy.num_processes,
        )


class ProcessedBatches:
    """A `BatchPlan`: rows in a seeded order per epoch (the eval set in order), this process's
    share, each micro-batch processed from the rows' text and images, right-padded."""

    def __init__(
        self,
        dataset: Any,
        encoder: _conversations.Encoder,
        micro_batch_size: int,
        seed: int,
        shuffle: bool,
        rank: int,
        world_size: int,
    ) -> None:
        self.dataset, self.encoder = dataset, encoder
        self.micro_batch_size, self.seed, self.shuffle = micro_batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches per process per epoch."""
        return micro_batches_per_epoch(len(self.dataset), self.micro_batch_size, self.world_size)

    def micro_batches(self, epoch: int, start: int = 0) -> Any:
        """This process's micro-batches of `epoch`, from number `start`."""
        size = self.micro_batch_size
        if self.shuffle:
            order = epoch_order(
                len(self.dataset), self.seed, epoch, self.rank, self.world_size, size
            )
        else:
            order = sorted(epoch_order(len(self.dataset), 0, 0, self.rank, self.world_size, size))
        for number, first in enumerate(range(0, len(order), size)):
            if number >= start:
                yield self.batch(order[first : first + size])

    def batch(self, indices: list[int]) -> dict[str, Any]:
        """One micro-batch: the processor's tensors for the rows, and their labels."""
        import torch

        rows = self.dataset.select_columns(["input_ids", "labels", "mm_text", "mm_images"])[indices]
        encoder = self.encoder
        pictures = [encoder.load(refs) for refs in rows["mm_images"]]
        encoded = encoder.processor(
            text=rows["mm_text"],
            images=pictures if any(pictures) else None,
            padding=True,
            return_tensors="pt",
            add_special_tokens=encoder.special_tokens(rows["mm_text"][0]),
        )
        batch = dict(encoded)
        width = batch["input_ids"].shape[1]
        labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, row_labels) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
            if batch["input_ids"][i, : len(ids)].tolist() != ids:
                raise DataError(
                    f"row {indices[i]}: the processor tokenized it differently from the cached "
                    "rows (another processor or image_size? remove dataset_prepared_path's cache)"
                )
            labels[i, : len(row_labels)] = torch.tensor(row_labels)
        batch["labels"] = labels
        return batch


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `processor_type`, register the `VisionLanguageRun`."""
    if getattr(cfg, "processor_type", None):
        register(VisionLanguageRun(cfg), "vision-language-run")
