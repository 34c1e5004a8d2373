"""Named architecture configs for `weave bench --shape NAME`, and the random-weight models built
from them.

Each shape is the architecture part of a public model's `config.json` (sizes, heads, RoPE,
vocabulary, tied embeddings), written here as a Python dict so that no data file ships and
nothing is downloaded. The weights are random (seeded), built once into a cache folder with
`save_pretrained` together with a small tokenizer trained on the spot, so that weave and the Hugging
Face baseline load the very same weights through `from_pretrained` (QLoRA can only quantize
while loading). Token ids of the synthetic samples are drawn from the model's vocabulary; the
tokenizer only supplies the special ids (pad, bos, eos) and is never asked to decode them.

Not a plugin (no entry point): a helper of the `bench` command plugin.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axolotl_weave import ConfigError, staged_folder

from axolotl_weave_plugins.commands._tokenizer import train_tokenizer

LAYOUT_VERSION = 1
"""Bump when the saved layout changes (the cache key includes it)."""

INIT_SEED = 0
"""The weights' seed: fixed, so that `--seed` (which draws the data) never rebuilds an 8B model."""


@dataclass(frozen=True)
class Shape:
    """A named architecture: `AutoConfig.for_model(model_type, **config)`."""

    name: str
    model_type: str
    config: dict[str, Any]
    description: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


LLAMA3_ROPE_1B = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
LLAMA3_ROPE_8B = {**LLAMA3_ROPE_1B, "factor": 8.0}

LLAMA3: dict[str, Any] = {
    "vocab_size": 128256,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
}
"""What the Llama 3.1 / 3.2 `config.json`s share; each shape adds its sizes, RoPE scaling and
whether the embeddings are tied."""

SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape(
            name="llama-3.2-1b",
            model_type="llama",
            description="Llama 3.2 1B: 16 layers, hidden 2048, GQA 32/8, tied embeddings "
            "(1,235,814,400 parameters)",
            source="meta-llama/Llama-3.2-1B config.json",
            config={
                **LLAMA3,
                "hidden_size": 2048,
                "intermediate_size": 8192,
                "num_hidden_layers": 16,
                "num_attention_heads": 32,
                "head_dim": 64,
                "rope_scaling": LLAMA3_ROPE_1B,
                "tie_word_embeddings": True,
            },
        ),
        Shape(
            name="llama-3.2-3b",
            model_type="llama",
            description="Llama 3.2 3B: 28 layers, hidden 3072, GQA 24/8, tied embeddings",
            source="meta-llama/Llama-3.2-3B config.json",
            config={
                **LLAMA3,
                "hidden_size": 3072,
                "intermediate_size": 8192,
                "num_hidden_layers": 28,
                "num_attention_heads": 24,
                "rope_scaling": LLAMA3_ROPE_1B,
                "tie_word_embeddings": True,
            },
        ),
        Shape(
            name="llama-3.1-8b",
            model_type="llama",
            description="Llama 3.1 8B: 32 layers, hidden 4096, GQA 32/8 (8,030,261,248 parameters)",
            source="meta-llama/Llama-3.1-8B config.json",
            config={
                **LLAMA3,
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "rope_scaling": LLAMA3_ROPE_8B,
                "tie_word_embeddings": False,
            },
        ),
        Shape(
            name="tiny-llama",
            model_type="llama",
            description="a 2-layer llama of hidden 64 and 512 tokens, for tests (CPU, seconds)",
            config={
                "vocab_size": 512,
                "hidden_size": 64,
                "intermediate_size": 176,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "hidden_act": "silu",
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False,
                "initializer_range": 0.02,
            },
        ),
    )
}


def get_shape(name: str) -> Shape:
    """The shape called `name`, or a `ConfigError` listing the known ones."""
    from axolotl_weave.commands import did_you_mean

    if name not in SHAPES:
        known = ", ".join(SHAPES)
        raise ConfigError(
            f"--shape: unknown architecture '{name}'{did_you_mean(name, list(SHAPES))}; "
            f"known: {known}"
        )
    return SHAPES[name]


def cache_root(explicit: str | None = None) -> Path:
    """Where built models are kept: `--cache-dir`, else `$WEAVE_CACHE/bench-models`, else
    `~/.cache/axolotl_weave/bench-models` (the same root as downloaded data files)."""
    if explicit:
        return Path(explicit).expanduser()
    root = os.environ.get("WEAVE_CACHE") or Path.home() / ".cache" / "axolotl_weave"
    return Path(root) / "bench-models"


def shape_key(shape: Shape) -> str:
    """A short hash of everything that makes the saved model: config, init seed, layout."""
    payload = json.dumps(
        [shape.model_type, shape.config, INIT_SEED, LAYOUT_VERSION], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def model_dir(shape: Shape, root: Path) -> Path:
    """The folder holding `shape`'s random-weight model and tokenizer."""
    return root / f"{shape.name}-{shape_key(shape)}"


def ensure_model(shape: Shape, root: Path, log: Any = None) -> Path:
    """The folder of `shape`'s model, built first if the cache lacks it.

    The weights are initialised on the GPU when there is one (an 8B model in seconds rather than
    minutes), in bfloat16, seeded by `INIT_SEED`, and saved with `save_pretrained` into a
    temporary sibling folder renamed into place: an interrupted build is never taken for whole.
    """
    target = model_dir(shape, root)
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with staged_folder(target, replace=False) as staging:  # another process first: theirs is kept
        tokenizer = train_tokenizer(  # pad set: no family quirk picks another for weave or HF
            staging, vocab_size=min(512, int(shape.config["vocab_size"])), pad_token="</s>"
        )
        config = AutoConfig.for_model(
            shape.model_type,
            **shape.config,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if log is not None:
            log(f"building the random-weight '{shape.name}' model on {device} into {target}")
        torch.manual_seed(INIT_SEED)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(staging)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        (staging / "bench_shape.json").write_text(
            json.dumps({"shape": shape.name, "source": shape.source, "init_seed": INIT_SEED})
        )
    return target
