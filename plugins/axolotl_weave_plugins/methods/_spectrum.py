"""Spectrum's choice of the layers to train (Hartford et al., 2024, "Spectrum: Targeted Training
on Signal to Noise Ratio"; Axolotl's `SpectrumPlugin`), a helper of `unfrozen_parameters`.

Every module with a weight is scanned as Spectrum's `spectrum.py` scans it: its type is its name
after the layer index (`self_attn.q_proj`; a module outside the layers is its own type), its
singular values S are split at the Marchenko-Pastur threshold `sigma (1 + sqrt(beta))` (sigma
estimated from S's interquartile range / 1.349, beta the matrix's aspect ratio below 1), and its
SNR is `sum(S above) / sum(S below) / max(S)` (a 1-D weight is one row). Within each type the
`top_fraction` of the modules with the highest SNR are trained, with the embeddings and the output
head, as Spectrum's unfrozen-parameters file and Axolotl list them.

Not a plugin (no entry point): a helper of the plugins in this folder.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

ALWAYS = ("^lm_head.weight$", "^model.embed_tokens.weight$")
"""What Spectrum's list always trains (Axolotl's too)."""


def weight_type(name: str) -> str:
    """The part of a module name after its layer index (the whole name outside the layers)."""
    parts = name.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), -1)
    return ".".join(parts[index + 1 :]) if index != -1 else name


def layer_snr(weight: Any) -> float:
    """Spectrum's SNR ratio of one weight."""
    import torch

    matrix = weight.detach().float()
    if matrix.ndim < 2:
        matrix = matrix.unsqueeze(0)
    values = torch.linalg.svdvals(matrix)
    sigma = (torch.quantile(values, 0.75) - torch.quantile(values, 0.25)) / 1.349
    rows, cols = matrix.shape[-2:]
    beta = rows / cols if rows < cols else cols / rows
    threshold = sigma * math.sqrt((1 + math.sqrt(beta)) ** 2)
    signal_mask = values > threshold
    signal = values[signal_mask].sum() if signal_mask.any() else values.new_zeros(())
    noise = values[~signal_mask].sum() if (~signal_mask).any() else values.new_ones(())
    snr = signal / noise if noise != 0 else torch.tensor(float("inf"))
    return float(snr / values[0])


def scan(model: Any) -> dict[str, dict[str, Any]]:
    """`{module name: {"snr": ..., "type": ...}}` of every module with a weight (Spectrum's
    results file)."""
    results = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name and weight is not None and hasattr(weight, "detach"):
            results[name] = {"snr": layer_snr(weight), "type": weight_type(name)}
    return results


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """A Spectrum results file (`snr_results_<model>.json`)."""
    return json.loads(path.read_text(encoding="utf-8"))


def trained_patterns(results: dict[str, dict[str, Any]], top_fraction: float) -> list[str]:
    """The `unfrozen_parameters` regexes: the embeddings, the head, and within each type the
    `top_fraction` of modules with the highest SNR (ties in the file's order), each name matched
    as a module of the model."""
    by_type: dict[str, list[tuple[str, float]]] = {}
    for name, info in results.items():
        by_type.setdefault(info["type"], []).append((name, float(info["snr"])))
    patterns = list(ALWAYS)
    for modules in by_type.values():
        ranked = sorted(modules, key=lambda item: item[1], reverse=True)
        keep = int(len(modules) * top_fraction)
        patterns += [f"^{re.escape(name)}\\." for name, _ in ranked[:keep]]
    return patterns


def results_name(model_name: str) -> str:
    """Spectrum's file name for a model (`snr_results_<owner-name>.json`)."""
    return f"snr_results_{model_name.replace('/', '-').replace('_', '-')}.json"
