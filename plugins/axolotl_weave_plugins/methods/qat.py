"""Quantization-aware training (`qat:`) and post-training quantization (`quantization:`,
`weave quantize`) with torchao, with Axolotl's keys.

`qat:` trains the whole model with its linear layers fake-quantized (with
`quantize_embedding`, its input embedding and output layer too, which otherwise stay in the
model's dtype, as transformers' `TorchAoConfig` leaves them by default): the forward pass
rounds weights and activations as the chosen scheme will, the backward pass goes straight
through, so the weights learn to live with the rounding. `fake_quant_after_n_steps: N` trains
the first N steps unrounded. Training saves a plain model (the fake-quantizers swapped back
out); `weave quantize CONFIG` then quantizes it for real with the same scheme into
`output_dir/quantized`, a checkpoint `from_pretrained` (and `weave inference --base-model`)
loads quantized. Without `qat:`, `quantization:` gives
`weave quantize` the scheme to apply to any trained model.

The schemes (`_torchao_schemes.SCHEMES`): int8 dynamic activations with int4 or int8 grouped
weights, int8 weight-only (all three on the CPU too), int4 weight-only, float8, NVFP4 and MXFP4
(a GPU). They need torchao: `pip install 'axolotl-weave[torchao]'`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import typer
from axolotl_weave import ConfigError, PluginConfig, WeaveError, hookimpl, require
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from axolotl_weave_plugins.methods import _torchao_schemes as schemes

PLUGIN_KIND = "method"
log = logging.getLogger("axolotl_weave")

INSTALL = "'axolotl-weave[torchao]'"
QUANTIZED_FOLDER = "quantized"
"""Where `weave quantize` writes, under `output_dir` (Axolotl's folder)."""


class Scheme(BaseModel):
    """A torchao quantization scheme: the dtypes and the group size (Axolotl's `PTQConfig`)."""

    model_config = ConfigDict(extra="forbid")

    weight_dtype: schemes.QuantDtype = Field(
        "int8", description="int4, int8, float8_e4m3fn (fp8), nvfp4 or mxfp4."
    )
    activation_dtype: schemes.QuantDtype | None = Field(
        None, description="int8, float8_e4m3fn, nvfp4 or mxfp4; unset: weights only."
    )
    group_size: int | None = Field(
        32, gt=0, description="Weights per quantization group (nvfp4: 16, mxfp4: 32)."
    )
    quantize_embedding: bool | None = Field(
        False,
        description="Quantize the input embedding (int4 or int8 weights) and the output "
        "layer too; without it both stay in the model's dtype.",
    )

    @field_validator("weight_dtype", "activation_dtype", mode="before")
    @classmethod
    def _axolotl_spelling(cls, value: Any) -> Any:
        return schemes.read_dtype(value)

    @model_validator(mode="after")
    def _a_known_scheme(self) -> Scheme:
        schemes.check_scheme(self.weight_dtype, self.activation_dtype, self.group_size)
        if self.quantize_embedding and self.weight_dtype not in ("int4", "int8"):
            raise ValueError(
                f"quantize_embedding needs weight_dtype int4 or int8, not {self.weight_dtype}"
            )
        if self.group_size is not None and self.weight_dtype in schemes.FIXED_GROUP:
            self.group_size = None  # the format's own blocks
        return self

    def torchao_configs(self) -> tuple[Any, Any | None]:
        """The torchao configs: the linear layers', and the embedding's (or None)."""
        base = schemes.ptq_config(self.weight_dtype, self.activation_dtype, self.group_size)
        embedding = (
            schemes.embedding_config(self.weight_dtype, self.group_size)
            if self.quantize_embedding
            else None
        )
        return base, embedding

    @property
    def described(self) -> str:
        """e.g. `weight int4 / activation int8, groups of 32`."""
        groups = f", groups of {self.group_size}" if self.group_size else ""
        return f"weight {self.weight_dtype} / activation {self.activation_dtype}{groups}"


class QatScheme(Scheme):
    """`qat:`: a scheme, and when fake quantization starts (Axolotl's `QATConfig`)."""

    fake_quant_after_n_steps: int | None = Field(
        None, ge=0, description="Train this many steps unrounded before fake quantization."
    )


class QatSettings(PluginConfig):
    """`qat:` and `quantization:`."""

    qat: QatScheme | None = Field(
        None, description="Quantization-aware training of the whole model (torchao)."
    )
    quantization: Scheme | None = Field(
        None, description="The scheme `weave quantize` applies (without qat:)."
    )

    @model_validator(mode="after")
    def _qat_trains_the_whole_model(self) -> QatSettings:
        if self.qat is None and self.quantization is None:
            return self
        if importlib.util.find_spec("torchao") is None:
            key = "qat" if self.qat is not None else "quantization"
            raise ValueError(
                f"{key} needs the package 'torchao', which is not installed: pip install {INSTALL}"
            )
        if self.qat is None:
            return self
        for key in ("load_in_4bit", "load_in_8bit"):
            if getattr(self, key, False):
                raise ValueError(f"qat and {key} cannot be used together (a full fine-tune)")
        adapter = getattr(self, "adapter", None)
        if adapter:
            raise ValueError(
                f"qat trains the whole model; with adapter: {adapter} the adapter's weights "
                "would not be quantized: remove adapter"
            )
        return self


@hookimpl
def add_config_fields() -> type[PluginConfig]:
    """`qat:` and `quantization:`."""
    return QatSettings


class QatRun:
    """The run-scoped plugin (registered only with `qat:`): fake-quantizes the model it loads
    for training, switches fake quantization on after `fake_quant_after_n_steps`, and swaps the
    fake-quantizers back out before the model is saved."""

    def __init__(self, scheme: QatScheme) -> None:
        self.scheme = scheme
        self.start = scheme.fake_quant_after_n_steps or 0
        self.model: Any = None

    @hookimpl(wrapper=True)
    def load_model(self, purpose: str) -> Generator[None, Any, Any]:
        """Fake-quantize the training model's layers (after the other wrappers)."""
        model = yield
        if purpose != "train":
            return model
        require("torchao", feature="qat", install=INSTALL)
        base, embedding = self.scheme.torchao_configs()
        try:
            schemes.fake_quantize(model, base, embedding)
        except (RuntimeError, ValueError, AssertionError, ImportError, NotImplementedError) as exc:
            raise ConfigError(
                f"qat: {self.scheme.described}: torchao cannot fake-quantize this model here: {exc}"
            ) from None
        count = schemes.set_fake_quantization(model, self.start == 0)
        log.info(
            "qat: %s, %d fake-quantizers%s",
            self.scheme.described,
            count,
            f", off for the first {self.start} steps" if self.start else "",
        )
        self.model = model
        return model

    @hookimpl
    def load_checkpoint_state(self, state: Any, model: Any) -> None:
        """Resuming past `fake_quant_after_n_steps`: fake quantization is on from the start."""
        if self.start and state.global_step >= self.start:
            schemes.set_fake_quantization(model, True)

    @hookimpl
    def on_step_end(self, state: Any, model: Any) -> None:
        """After `fake_quant_after_n_steps` steps, switch fake quantization on."""
        if self.start and state.global_step == self.start:
            schemes.set_fake_quantization(model, True)
            log.info("qat: fake quantization on from step %d", state.global_step + 1)

    @hookimpl(wrapper=True)
    def post_train(self, model: Any) -> Generator[None, Any, Any]:
        """Before any plugin saves the model: swap the fake-quantized layers back for plain
        ones (their trained weights), so what is saved is an ordinary model."""
        schemes.unfake_quantize(model)
        return (yield)


@hookimpl
def configure(cfg: Any, register: Callable[[object, str], None]) -> None:
    """With `qat:` set, register the `QatRun` for this run."""
    if getattr(cfg, "qat", None) is not None:
        register(QatRun(cfg.qat), "qat-run")


# --- weave quantize --------------------------------------------------------------------------


def scheme_of(cfg: Any) -> Scheme:
    """The config's scheme: `qat:` or `quantization:` (not both, as in Axolotl)."""
    if cfg.qat is not None and cfg.quantization is not None:
        raise ConfigError("qat and quantization: give one of them, not both")
    scheme = cfg.qat or cfg.quantization
    if scheme is None:
        raise ConfigError(
            "weave quantize needs qat: or quantization: in the config (weight_dtype, "
            "activation_dtype, group_size)"
        )
    return scheme


def model_folder(cfg: Any, model_dir: str | None) -> Path:
    """The trained model to quantize: `--model-dir`, else `output_dir`; a whole model."""
    folder = Path(model_dir or cfg.output_dir)
    key = "--model-dir" if model_dir else "output_dir"
    if (folder / "adapter_config.json").is_file():
        raise WeaveError(
            f"{key}: '{folder}' holds a LoRA adapter, not a whole model: merge it first "
            f"(weave merge-lora) and pass --model-dir {folder / 'merged'}"
        )
    if not (folder / "config.json").is_file():
        state = "does not exist" if not folder.exists() else "has no config.json"
        raise WeaveError(f"{key}: '{folder}' {state}: it is not a saved model (train first)")
    return folder


def quantize_model(cfg: Any, session: Any, model_dir: str | None, output: str | None) -> Path:
    """Load the trained model (as `model_type`, a vision-language model's class too), quantize
    it with the config's scheme and save it (with the tokenizer, and a processor saved beside
    the model) to `output`, else `output_dir/quantized`, through a staging folder."""
    from axolotl_weave import staged_folder
    from axolotl_weave.commands import family_of, load_tokenizer

    scheme = scheme_of(cfg)
    folder = model_folder(cfg, model_dir)
    target = Path(output) if output else Path(cfg.output_dir) / QUANTIZED_FOLDER
    require("torchao", feature="weave quantize", install=INSTALL)
    import transformers

    tokenizer = load_tokenizer(session, family_of(session))
    loader = getattr(transformers, getattr(cfg, "model_type", None) or "AutoModelForCausalLM")
    model = loader.from_pretrained(str(folder), dtype="auto")
    base, embedding = scheme.torchao_configs()
    try:
        schemes.quantize(model, base, embedding)
    except (RuntimeError, ValueError, AssertionError, ImportError, NotImplementedError) as exc:
        raise ConfigError(
            f"{'qat' if cfg.qat else 'quantization'}: {scheme.described}: torchao cannot "
            f"quantize this model here: {exc}"
        ) from None
    model.config.use_cache = True  # an inference artifact
    with staged_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if (folder / "processor_config.json").is_file():  # a vision-language model's
            transformers.AutoProcessor.from_pretrained(str(folder)).save_pretrained(staging)
    return target


def quantize_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    model_dir: str | None = typer.Option(
        None, "--model-dir", help="The trained model to quantize (default: output_dir)."
    ),
    output: str | None = typer.Option(
        None, "--output", help="Where to write it (default: output_dir/quantized)."
    ),
) -> None:
    """Quantize a trained model with torchao (the `qat:` or `quantization:` scheme)."""
    from axolotl_weave.commands import console, open_session

    session = open_session(config, ctx.args, ctx.obj.pm)
    scheme = scheme_of(session.cfg)
    target = quantize_model(session.cfg, session, model_dir, output)
    console.print(f"[bold green]quantized[/] ({scheme.described}): saved to {target}")


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave quantize CONFIG [--model-dir DIR] [--output DIR]`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("quantize", context_settings=OVERRIDES)(user_errors(quantize_command))
