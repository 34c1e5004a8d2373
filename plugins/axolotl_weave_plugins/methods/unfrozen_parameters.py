"""`unfrozen_parameters:` (Axolotl's key): train only the parameters whose names match one of the
regexes, every other one frozen (a partial full fine-tune).

Spectrum (`spectrum_top_fraction`, `spectrum_model_name`, or Axolotl's `SpectrumPlugin` listed:
`_spectrum`) chooses those parameters: the modules with the highest signal-to-noise ratio of
each kind, read from Spectrum's results file `./model_snr_results/snr_results_<model>.json` (where
Axolotl looks) or, when there is none, scanned from the loaded model as Spectrum's script scans
it (Axolotl downloads Spectrum's published file instead); the scan is written to
`output_dir/snr_results_<model>.json`, ready to be put where the next run reads it."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from axolotl_weave import ConfigError, ModelFamily, PluginConfig, hookimpl, write_atomically
from pydantic import Field, model_validator

PLUGIN_KIND = "method"

log = logging.getLogger("axolotl_weave")

AXOLOTL_ALIASES = ("axolotl.integrations.spectrum.SpectrumPlugin",)

SPECTRUM_RESULTS = Path("model_snr_results")
"""Where Spectrum's results files are read from (the working directory's, as Axolotl reads)."""


class UnfrozenSettings(PluginConfig):
    """The regexes of the parameters to train."""

    unfrozen_parameters: list[str] = Field(
        default_factory=list,
        description="Regexes of parameter names to train; all others frozen (full fine-tune).",
    )
    spectrum_top_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Spectrum: train this fraction of each kind of module, those of highest "
        "SNR (on when set; default 0.5 with Axolotl's SpectrumPlugin listed).",
    )
    spectrum_model_name: str | None = Field(
        None, description="Spectrum: the model whose results file to read (default base_model)."
    )

    @model_validator(mode="after")
    def _spectrum(self) -> UnfrozenSettings:
        if not spectrum_on(self):
            return self
        if self.unfrozen_parameters:
            raise ValueError(
                "unfrozen_parameters: Spectrum chooses the parameters to train; give "
                "unfrozen_parameters or spectrum_top_fraction, not both"
            )
        if getattr(self, "adapter", None):
            raise ValueError(
                f"adapter: {self.adapter}: Spectrum trains some of the model's own weights (a "
                "full fine-tune); remove the adapter or Spectrum"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`unfrozen_parameters`."""
    return UnfrozenSettings


def apply_unfrozen_parameters(model: Any, patterns: list[str]) -> int:
    """Freeze every parameter whose name matches none of the regexes; return how many train."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"unfrozen_parameters: {pattern!r} is not a regex: {exc}") from None
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(any(c.search(name) for c in compiled))
        count += int(param.requires_grad)
    if count == 0:
        raise ConfigError(
            f"unfrozen_parameters: {patterns} match no parameter (names look like "
            f"{next(n for n, _ in model.named_parameters())!r})"
        )
    return count


class Unfreezer:
    """The run-scoped plugin (registered only when `unfrozen_parameters` is set): for training,
    freeze what the regexes do not name, on the model as every other wrapper left it (this
    wrapper is the outermost)."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns

    def choose(self, model: Any) -> list[str]:
        """The patterns of the parameters to train."""
        return self.patterns

    @hookimpl(wrapper=True, tryfirst=True)
    def load_model(
        self, cfg: Any, tokenizer: Any, family: ModelFamily | None, purpose: str
    ) -> Generator[None, Any, Any]:
        """Freeze every parameter the patterns do not name (training only)."""
        model = yield
        if purpose == "train":
            count = apply_unfrozen_parameters(model, self.choose(model))
            log.info("unfrozen_parameters: %d parameter tensors train", count)
        return model


def spectrum_on(cfg: Any) -> bool:
    """Whether a Spectrum key is set, or Axolotl's Spectrum plugin is listed."""
    listed = set(getattr(cfg, "plugins", None) or []) & set(AXOLOTL_ALIASES)
    keys = ("spectrum_top_fraction", "spectrum_model_name")
    return bool(listed) or any(getattr(cfg, key, None) is not None for key in keys)


class Spectrum(Unfreezer):
    """The run-scoped plugin with Spectrum on: its patterns come from Spectrum's results (read,
    or scanned from the model being loaded)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__([])
        self.fraction = cfg.spectrum_top_fraction or 0.5
        self.name = cfg.spectrum_model_name or cfg.base_model
        self.output_dir = Path(cfg.output_dir)

    def choose(self, model: Any) -> list[str]:
        """The embeddings, the head and the top fraction of each kind of module by SNR, read
        from Spectrum's results file, else scanned from `model`."""
        from axolotl_weave_plugins.methods import _spectrum

        filename = _spectrum.results_name(self.name)
        found = SPECTRUM_RESULTS / filename
        if found.is_file():
            results = _spectrum.read_results(found)
            log.info("Spectrum: SNR of %d modules read from %s", len(results), found)
        else:
            results = _spectrum.scan(model)
            written = self.output_dir / filename
            write_atomically(written, json.dumps(results, indent=2))
            log.info("Spectrum: scanned the SNR of %d modules (%s)", len(results), written)
        return _spectrum.trained_patterns(results, self.fraction)


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `unfrozen_parameters` set, register the `Unfreezer` for this run; with Spectrum, the
    `Spectrum` one."""
    if spectrum_on(cfg):
        register(Spectrum(cfg), "unfrozen_parameters_run")
    elif cfg.unfrozen_parameters:
        register(Unfreezer(list(cfg.unfrozen_parameters)), "unfrozen_parameters_run")
