"""Generic Hugging Face causal-LM loader: tokenizer and model through `from_pretrained`.

The fallback (`trylast`) for every architecture: a family plugin or a method plugin may answer
first or wrap the result. Works with a local folder or a hub name alike. It owns Axolotl's
loading keys: `model_type` / `tokenizer_type` (transformers class names), the config and kwargs
overrides, `cls_model_config`, `added_tokens_overrides` (`_added_tokens`), and the embedding
sizing keys (`resize_token_embeddings_to_32x`, `shrink_embeddings`, `mean_resizing_embeddings`).
"""

from __future__ import annotations

import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

from axolotl_weave import (
    ConfigError,
    ModelFamily,
    PluginConfig,
    WeaveError,
    fit_embeddings,
    hookimpl,
    override_model_config,
    require,
    resolve_precision,
)
from pydantic import Field

PLUGIN_KIND = "model"


class LoaderSettings(PluginConfig):
    """How the base model and tokenizer load (Axolotl's keys)."""

    model_type: str | None = Field(
        None, description="transformers class that loads the model (default AutoModelForCausalLM)."
    )
    tokenizer_type: str | None = Field(
        None, description="transformers class that loads the tokenizer (default AutoTokenizer)."
    )
    tokenizer_use_fast: bool = Field(True, description="Use the fast (Rust) tokenizer.")
    overrides_of_model_config: dict[str, Any] = Field(
        default_factory=dict, description="Model config values to replace (e.g. rope_scaling)."
    )
    overrides_of_model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for from_pretrained."
    )
    tokenizer_use_mistral_common: bool = Field(
        False, description="Load Mistral's own tokenizer (mistral-common, its tekken.json)."
    )
    resize_token_embeddings_to_32x: bool = Field(
        False, description="Round the embedding rows up to a multiple of 32 (faster matmuls)."
    )
    added_tokens_overrides: dict[int, str] | None = Field(
        None,
        description="New texts for tokens the tokenizer added (reserved ones): {token id: "
        "text}, e.g. {128011: '<tool_call>'}; ids and embedding rows stay.",
    )
    cls_model_config: str | None = Field(
        None,
        description="The transformers config class base_model's config is read with (e.g. "
        "Gemma3TextConfig: the text model's config of a multimodal checkpoint); default "
        "AutoConfig.",
    )
    mean_resizing_embeddings: bool = Field(
        False,
        description="Added tokens' embedding rows start at the mean of the others "
        "(transformers' mean_resizing); by default, as in Axolotl, the model's own random "
        "initialisation.",
    )
    shrink_embeddings: bool = Field(
        False,
        description="Cut the embedding rows down to the tokenizer's length when the model has "
        "more (by default they are kept).",
    )


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """The loader's keys."""
    return LoaderSettings


def transformers_class(name: str, key: str, suffix: str) -> Any:
    """The transformers class called `name` (for `model_type` / `tokenizer_type`)."""
    import transformers

    found = getattr(transformers, name, None)
    if found is None or not hasattr(found, "from_pretrained"):
        raise ConfigError(
            f"{key}: '{name}' is not a transformers class with from_pretrained "
            f"(e.g. Auto{suffix}, LlamaFor{suffix.removeprefix('Model')}...)"
        )
    return found


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@hookimpl
def check_run(cfg: Any) -> list[str]:
    """A `base_model` (or `base_model_config`, `tokenizer_config`) that is neither a local
    folder nor a hub id (`owner/name`)."""
    for key in ("base_model", "base_model_config", "tokenizer_config"):
        where = getattr(cfg, key, None)
        if not where or Path(where).expanduser().exists():
            continue
        if HUB_ID.match(where) and not where.startswith((".", "~")):
            continue
        looked = Path(where).expanduser().absolute()
        return [f"{key}: {where} is not a folder (looked for {looked}) nor a hub id (owner/name)"]
    return []


@hookimpl(wrapper=True)
def load_tokenizer(cfg: Any) -> Generator[None, Any, Any]:
    """Whichever plugin loaded the tokenizer: rename its added tokens that
    `added_tokens_overrides` names."""
    tokenizer = yield
    overrides = getattr(cfg, "added_tokens_overrides", None)
    if not overrides:
        return tokenizer
    from axolotl_weave_plugins.models._added_tokens import override_added_tokens

    return override_added_tokens(tokenizer, overrides)


@hookimpl(trylast=True, specname="load_tokenizer")
def load_tokenizer_from_pretrained(cfg: Any) -> Any:
    """`AutoTokenizer` (or `tokenizer_type`) `.from_pretrained(tokenizer_config or base_model)`."""
    from transformers import AutoTokenizer

    where = cfg.tokenizer_config or cfg.base_model
    loader = (
        transformers_class(cfg.tokenizer_type, "tokenizer_type", "Tokenizer")
        if cfg.tokenizer_type
        else AutoTokenizer
    )
    if cfg.tokenizer_use_mistral_common:
        require(
            "mistral_common",
            feature="tokenizer_use_mistral_common: true",
            install="'axolotl-weave[mistral-common]'",
        )
        from transformers.tokenization_mistral_common import MistralCommonBackend

        loader = MistralCommonBackend
    revision = None if cfg.tokenizer_config else cfg.revision_of_model
    try:
        return loader.from_pretrained(
            where,
            revision=revision,
            use_fast=cfg.tokenizer_use_fast,
            trust_remote_code=cfg.trust_remote_code,
        )
    except Exception as exc:
        raise WeaveError(f"cannot load the tokenizer from '{where}': {exc}") from None


@hookimpl(trylast=True)
def load_model(
    cfg: Any,
    tokenizer: Any,
    family: ModelFamily | None,
    purpose: str,
    load_kwargs: dict[str, Any],
) -> Any:
    """`AutoModelForCausalLM.from_pretrained(base_model)` in the configured dtype, with every
    plugin's `load_kwargs` (a quantization config...)."""
    return load_pretrained(cfg, tokenizer, family, purpose, load_kwargs)


def config_class(name: str | None) -> Any:
    """The transformers config class `cls_model_config` names (AutoConfig when unset)."""
    import transformers

    if name is None:
        return transformers.AutoConfig
    found = getattr(transformers, name, None)
    if not isinstance(found, type) or not issubclass(found, transformers.PretrainedConfig):
        raise ConfigError(
            f"cls_model_config: '{name}' is not a transformers config class (e.g. LlamaConfig, "
            "Gemma3TextConfig)"
        )
    return found


def load_config(cfg: Any, config: Any = None) -> Any:
    """The model's config (`base_model_config` or `base_model`, read with `cls_model_config`,
    unless `config` is given, as a quantization plugin gives the checkpoint's),
    `overrides_of_model_config` applied; an override naming no known key is refused."""
    where = cfg.base_model_config or cfg.base_model
    if config is None:
        reader = config_class(cfg.cls_model_config)
        try:
            config = reader.from_pretrained(
                where, revision=cfg.revision_of_model, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise WeaveError(f"cannot read the model config of '{where}': {exc}") from None
    return override_model_config(config, cfg.overrides_of_model_config)


def load_pretrained(
    cfg: Any,
    tokenizer: Any,
    family: ModelFamily | None,
    purpose: str = "train",
    load_kwargs: dict[str, Any] | None = None,
) -> Any:
    """Load `base_model` with `from_pretrained`; `load_kwargs` (what `model_load_kwargs` hooks
    contributed) are passed on after `overrides_of_model_kwargs`, and a `config` among them
    replaces the one `load_config` would read (the overrides are applied to it too).

    Fits the embeddings to the tokenizer (`fit_embeddings`), turns the generation cache off for
    training (it only costs memory there), and gives the family's `prepare_model` its turn.
    """
    import torch
    from transformers import AutoModelForCausalLM

    loader = (
        transformers_class(cfg.model_type, "model_type", "ModelForCausalLM")
        if cfg.model_type
        else AutoModelForCausalLM
    )
    model_kwargs = dict(load_kwargs or {})
    config = load_config(cfg, model_kwargs.pop("config", None))
    kwargs = {
        "dtype": getattr(torch, resolve_precision(cfg).weight_dtype),
        "revision": cfg.revision_of_model,
        **cfg.overrides_of_model_kwargs,
        **model_kwargs,
    }
    try:
        model = loader.from_pretrained(
            cfg.base_model, config=config, trust_remote_code=cfg.trust_remote_code, **kwargs
        )
    except (OSError, ValueError, TypeError) as exc:
        raise WeaveError(f"cannot load base_model '{cfg.base_model}': {exc}") from None
    fit_embeddings(model, tokenizer, cfg)
    if purpose == "train":
        model.config.use_cache = False
    if family is not None and family.prepare_model is not None:
        family.prepare_model(model, cfg)
    return model
