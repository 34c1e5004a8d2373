"""Generic Hugging Face causal-LM loader: tokenizer and model through `from_pretrained`.

The fallback (`trylast`) for every architecture: a family plugin or a method plugin may answer
first or wrap the result. Works with a local folder or a hub name alike.
"""

from __future__ import annotations

from typing import Any

from axolotl_weave import ModelFamily, WeaveError, hookimpl, resolve_precision

PLUGIN_KIND = "model"


@hookimpl(trylast=True)
def load_tokenizer(cfg: Any) -> Any:
    """`AutoTokenizer.from_pretrained(tokenizer_config or base_model)`."""
    from transformers import AutoTokenizer

    where = cfg.tokenizer_config or cfg.base_model
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:
        raise WeaveError(f"cannot load the tokenizer from '{where}': {exc}") from None


@hookimpl(trylast=True)
def load_model(cfg: Any, tokenizer: Any, family: ModelFamily | None) -> Any:
    """`AutoModelForCausalLM.from_pretrained(base_model)` in the configured dtype."""
    return load_pretrained(cfg, tokenizer, family)


def load_pretrained(
    cfg: Any, tokenizer: Any, family: ModelFamily | None, **model_kwargs: Any
) -> Any:
    """Load `base_model` with `from_pretrained`; `model_kwargs` (a quantization config...) are
    passed on. Method plugins that must change how the weights load call this.

    Grows the embeddings when the tokenizer has more tokens than the model, turns the generation
    cache off (it only costs memory in training), and gives the family's `prepare_model` its turn.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, resolve_precision(cfg).weight_dtype)
    try:
        config = AutoConfig.from_pretrained(
            cfg.base_model_config or cfg.base_model, trust_remote_code=cfg.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            cfg.base_model,
            config=config,
            dtype=model_kwargs.pop("dtype", dtype),
            trust_remote_code=cfg.trust_remote_code,
            **model_kwargs,
        )
    except (OSError, ValueError) as exc:
        raise WeaveError(f"cannot load base_model '{cfg.base_model}': {exc}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.use_cache = False
    if family is not None and family.prepare_model is not None:
        family.prepare_model(model, cfg)
    return model
