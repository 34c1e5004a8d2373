"""The support matrix behind the README's "Supported models" table: every registered model family
with a `tiny_config` trains a few steps on a tiny random-weight model of its architecture.

CPU cells (CI): {full, LoRA, QLoRA (nf4, double quantization), LoRA on an 8-bit base, packing}
in float32 (bitsandbytes' CPU backend quantizes). GPU cells (`gpu` marker, skipped without
CUDA): {full, LoRA, QLoRA} in bf16, and packing with a varlen kernel. Each cell asserts that every
logged loss is finite, that the loss falls, and that the saved output (the full model, or the LoRA
adapter over the base) reloads with the logits the trained model gave. A packing cell also
asserts that packed samples do not see each other: the per-token losses and the gradients of a
packed micro-batch equal those of the same samples one by one. A family that declares it cannot
be packed (`cannot["sample_packing"]`) must be refused with that reason, recorded as "unsupported".

With `WEAVE_SUPPORT_RESULTS=path.jsonl` every cell appends one JSON line (family, cell, status,
where it ran, detail, versions, date) to that file with a single O_APPEND write, so pytest-xdist
workers can share it. `scripts/support_table.py` renders the committed files under docs/support/
into the README; the last record of a (family, cell) wins.

    rm -f docs/support/cpu.jsonl   # CPU cells (CI-like machine)
    WEAVE_SUPPORT_RESULTS=docs/support/cpu.jsonl \
        python -m pytest -q tests/test_support_matrix.py -m 'not gpu and not gptq'
    rm -f docs/support/gpu.jsonl   # GPU cells (on the CUDA machine)
    WEAVE_SUPPORT_RESULTS=docs/support/gpu.jsonl \
        python -m pytest -q tests/test_support_matrix.py -m gpu
    python scripts/support_table.py

The GPTQ cell (marker `gptq`, CPU) quantizes the tiny model to 4 bits with transformers' GPTQ
integration on the spot (`axolotl_weave_plugins.methods._gptq_quantize`) and trains LoRA on it with
`gptq: true`; it needs the GPTQ backend on the path, which `scripts/test.sh` installs and runs in a
second pytest process (`scripts/setup-gptq.sh`; results in docs/support/gptq.jsonl):

    rm -f docs/support/gptq.jsonl && WEAVE_SUPPORT_RESULTS=docs/support/gptq.jsonl \
        PYTHONPATH=$PWD/.gptq python -m pytest -q tests/test_support_matrix.py -m gptq

The Liger cell (GPU) trains with every Liger kernel the family has and checks the first step's loss
against the same run without them.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import ModelFamily, hookimpl
from axolotl_weave._hooks import Hooks
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session, train
from axolotl_weave_testing import (
    SAMPLE_TEXT,
    alpaca_rows,
    packed_and_one_by_one,
    write_config,
    write_jsonl,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS_ENV = "WEAVE_SUPPORT_RESULTS"
CPU_RESULTS = REPO / "docs" / "support" / "cpu.jsonl"
PROBE_TEXT = "Reverse the word. cat. tac. Add two and three."
MAX_STEPS = 8
# The mean loss on the training rows (their trained tokens) must fall by this fraction at least
# between the model the run starts with and the trained one. Measured on the same rows, so a
# learning rate of 0 gives exactly 0 (the logged losses, each on a different batch, "fell" by up
# to 1.7% at learning rate 1e-12: later batches can be easier). Every cell falls by 1.3-20% but
# cohere's LoRA cells (0.9%: its logit scaling keeps a random model's logits tiny).
FALL = 0.005


@dataclass(frozen=True)
class Cell:
    """One column of the matrix: how the tiny model is trained."""

    name: str
    adapter: bool
    bf16: bool
    learning_rate: float
    quantized: bool = False  # QLoRA: the base loaded in 4 bits (nf4, double quant)
    eight_bit: bool = False  # LoRA over the base loaded in 8 bits (LLM.int8)
    packed: bool = False  # sample_packing, and packed == unpacked checked on the tiny model
    attention: str | None = None  # attn_implementation of a packed cell (None: the model's)
    liger: bool = False  # every Liger kernel the family has, and the loss checked against none
    gptq: bool = False  # LoRA over the tiny model GPTQ-quantized (4 bits) on the spot

    @property
    def method_key(self) -> str | None:
        """The config key of the cell's method that a family may declare in `cannot`."""
        if self.gptq:
            return "gptq"
        if self.quantized:
            return "load_in_4bit"
        return "load_in_8bit" if self.eight_bit else None


CPU_CELLS = (
    Cell("full", adapter=False, bf16=False, learning_rate=3e-3),
    Cell("lora", adapter=True, bf16=False, learning_rate=1e-2),
    Cell("qlora", adapter=True, bf16=False, learning_rate=1e-2, quantized=True),
    Cell("lora_8bit", adapter=True, bf16=False, learning_rate=1e-2, eight_bit=True),
    Cell("packing", adapter=False, bf16=False, learning_rate=3e-3, packed=True),
)
GPU_CELLS = (
    Cell("bf16_full", adapter=False, bf16=True, learning_rate=3e-3),
    Cell("bf16_lora", adapter=True, bf16=True, learning_rate=1e-2),
    Cell("qlora", adapter=True, bf16=True, learning_rate=1e-2, quantized=True),
    Cell(
        "varlen",
        adapter=False,
        bf16=True,
        learning_rate=3e-3,
        packed=True,
        attention="flash_attention_2",  # flash-attn when installed, else torch's varlen_attn
    ),
    Cell("liger", adapter=False, bf16=True, learning_rate=3e-3, liger=True),
)
GPTQ_CELLS = (Cell("gptq", adapter=True, bf16=False, learning_rate=1e-2, gptq=True),)


def registered_families() -> list[ModelFamily]:
    """Every registered family once (a family may claim several model types), by name."""
    families = Hooks(make_plugin_manager()).model_families().values()
    return sorted({family.name: family for family in families}.values(), key=lambda f: f.name)


FAMILIES = registered_families()


def cell_params(cells: tuple[Cell, ...]) -> list[Any]:
    """(family, cell) parameters, ids like `llama-lora`."""
    return [
        pytest.param(family, cell, id=f"{family.name}-{cell.name}")
        for family in FAMILIES
        for cell in cells
    ]


# --- recording ---------------------------------------------------------------------------------


def device_name() -> str:
    """Where a cell runs: the CUDA device the core trains on when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "CPU"


def environment() -> dict[str, str]:
    """Versions, platform and date stored with every record."""
    from importlib.metadata import PackageNotFoundError, version

    import peft
    import transformers

    try:
        bitsandbytes = version("bitsandbytes")
    except PackageNotFoundError:
        bitsandbytes = "not installed"
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes,
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }


def append_record(record: dict[str, Any]) -> None:
    """Append one JSON line to the file named by WEAVE_SUPPORT_RESULTS (if set), atomically."""
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines of parallel workers do not interleave
    finally:
        os.close(fd)


def first_line(exc: BaseException, limit: int = 240) -> str:
    """`Type: message`, first line only, shortened."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:limit]


@contextmanager
def recorded(family: str, cell: str) -> Iterator[dict[str, str]]:
    """Record the outcome of the block as a pass, fail or skip of (family, cell).

    The block may set `detail` in the yielded dict (shown for a pass), and `status` to record
    something other than "pass" (a refusal the family declares: "unsupported")."""
    outcome = {"detail": "", "status": "pass"}
    record = {"family": family, "cell": cell, "where": device_name(), **environment()}
    start = time.monotonic()

    def write(status: str, detail: str) -> None:
        seconds = round(time.monotonic() - start, 1)
        append_record({**record, "status": status, "detail": detail, "seconds": seconds})

    try:
        yield outcome
    except pytest.skip.Exception as exc:
        write("skip", str(exc.msg))
        raise
    except Exception as exc:
        write("fail", first_line(exc))
        raise
    write(outcome["status"], outcome["detail"])


# --- the tiny model and the run ----------------------------------------------------------------


def tokenizer_texts() -> list[str]:
    """What the tokenizer learns from: the alpaca prompts as formatted, so they stay short."""
    from axolotl_weave_plugins.formats.alpaca import PROMPT_INPUT, PROMPT_NO_INPUT

    prompts = [
        (PROMPT_INPUT if row["input"] else PROMPT_NO_INPUT).format(**row) + row["output"]
        for row in alpaca_rows(64)
    ]
    return [SAMPLE_TEXT, *prompts]


TRAINING_ROWS = 16


def training_rows(tokenizer: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training rows as (input ids, labels): the alpaca prompt, then the response and EOS,
    only the response and EOS trained (as the alpaca format masks them)."""
    from axolotl_weave_plugins.formats.alpaca import PROMPT_INPUT, PROMPT_NO_INPUT

    rows = []
    for row in alpaca_rows(TRAINING_ROWS):
        prompt = (PROMPT_INPUT if row["input"] else PROMPT_NO_INPUT).format(**row)
        prompt_ids = tokenizer(prompt).input_ids
        ids = tokenizer(prompt + row["output"]).input_ids + [tokenizer.eos_token_id]
        labels = [-100] * len(prompt_ids) + ids[len(prompt_ids) :]
        rows.append((torch.tensor([ids]), torch.tensor([labels])))
    return rows


@pytest.fixture(scope="session")
def matrix_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One byte-level BPE tokenizer for every family (no pad token: families pick theirs)."""
    from axolotl_weave_testing import train_tokenizer

    return train_tokenizer(tmp_path_factory.mktemp("matrix-tokenizer"), tokenizer_texts())


def fit_config_to_tokenizer(config: Any, tokenizer: Any) -> None:
    """Vocabulary size and special-token ids of `config` (and its text config) from `tokenizer`;
    a pad id outside the vocabulary becomes `<unk>`'s."""
    for target in {id(c): c for c in (config, config.get_text_config())}.values():
        target.vocab_size = len(tokenizer)
        target.bos_token_id = tokenizer.bos_token_id
        target.eos_token_id = tokenizer.eos_token_id
        pad = getattr(target, "pad_token_id", None)
        if pad is not None and not 0 <= pad < len(tokenizer):
            target.pad_token_id = tokenizer.unk_token_id


def build_tiny_model(family: ModelFamily, tokenizer: Any, out_dir: Path) -> Path:
    """A random-weight model of the family's architecture from its `tiny_config`, with the
    tokenizer, saved to `out_dir`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    assert family.tiny_config is not None
    config = AutoConfig.for_model(family.model_types[0], **family.tiny_config())
    tokenizer.save_pretrained(out_dir)
    config.save_pretrained(out_dir)
    # loaded as the run loads it: a model-specific tokenizer class may add a token (qwen2's pad)
    fit_config_to_tokenizer(config, AutoTokenizer.from_pretrained(out_dir))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, matrix_tokenizer: Any) -> Any:
    """`tiny_models(family)`: the folder of the family's tiny model, built once per session."""
    built: dict[str, Path] = {}

    def get(family: ModelFamily) -> Path:
        if family.name not in built:
            out = tmp_path_factory.mktemp(f"tiny-{family.name}")
            built[family.name] = build_tiny_model(family, matrix_tokenizer, out)
        return built[family.name]

    return get


@pytest.fixture(scope="session")
def gptq_models(tmp_path_factory: pytest.TempPathFactory, tiny_models: Any) -> Any:
    """`gptq_models(family)`: the family's tiny model GPTQ-quantized (4 bits), once per session."""
    from axolotl_weave_plugins.methods._gptq_quantize import NoLayerToQuantize, quantize_gptq

    built: dict[str, Path] = {}

    def get(family: ModelFamily) -> Path:
        if family.name not in built:
            out = tmp_path_factory.mktemp(f"gptq-{family.name}")
            try:
                built[family.name] = quantize_gptq(tiny_models(family), out, tokenizer_texts())
            except NoLayerToQuantize as exc:
                pytest.skip(f"the tiny model cannot be GPTQ-quantized here: {exc}")
        return built[family.name]

    get.unquantized = tiny_models  # type: ignore[attr-defined]
    return get


class LogitsProbe:
    """A plugin that records the trained model's logits on a probe input in post_train, the
    loss on the training rows before and after training, and how many of its layers
    bitsandbytes quantized."""

    def __init__(
        self, input_ids: torch.Tensor, rows: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        self.input_ids = input_ids
        self.rows = rows
        self.logits: torch.Tensor | None = None
        self.device: torch.device | None = None
        self.bnb_layers = 0
        self.rows_loss: list[float] = []

    def record_rows_loss(self, model: Any) -> None:
        """The model's mean loss over the training rows, in eval mode (no dropout), without
        gradient."""
        training = model.training
        model.eval()
        with torch.no_grad():
            losses = [
                model(input_ids=ids.to(model.device), labels=labels.to(model.device)).loss
                for ids, labels in self.rows
            ]
        self.rows_loss.append(torch.stack(losses).float().mean().item())
        model.train(training)

    @hookimpl(trylast=True)
    def patch_attention(self, model: Any) -> None:
        """Record the loss of the model the run starts with (every patch applied)."""
        self.record_rows_loss(model)

    @hookimpl(trylast=True)
    def post_train(self, model: Any) -> None:
        """Record the logits and the trained loss (after the output was saved)."""
        self.record_rows_loss(model)
        model.eval()
        self.device = model.device
        self.bnb_layers = bnb_layer_count(model)
        with torch.no_grad():
            self.logits = model(input_ids=self.input_ids.to(model.device)).logits.float().cpu()


def bnb_layer_count(model: Any) -> int:
    """How many layers of the model bitsandbytes holds in 4 or 8 bits."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return sum(isinstance(module, kinds) for module in model.modules())


def cell_config(base: Path, cell: Cell, tmp_path: Path) -> dict[str, Any]:
    """The run's config: alpaca rows, a few steps, the cell's precision and method."""
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(TRAINING_ROWS))
    config: dict[str, Any] = {
        "base_model": str(base),
        "datasets": [{"path": str(data), "type": "alpaca"}],
        "sequence_len": 64,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": MAX_STEPS,
        "learning_rate": cell.learning_rate,
        "lr_scheduler": "constant",  # 8 steps: a cosine decay would waste the last ones
        "bf16": cell.bf16,
        "tf32": False,
        "output_dir": str(tmp_path / "out"),
        "dataset_prepared_path": str(tmp_path / "prepared"),
    }
    if cell.adapter:
        config.update(adapter="lora", lora_r=8, lora_alpha=16, lora_dropout=0.0)
    if cell.quantized:
        config.update(adapter="qlora", load_in_4bit=True)
    if cell.eight_bit:
        config.update(load_in_8bit=True)
    if cell.gptq:
        config.update(gptq=True)
    if cell.liger:
        config.update(
            liger_rope="auto",  # where liger-kernel has the family's RoPE
            liger_rms_norm=True,
            liger_glu_activation="auto",  # SwiGLU or GeGLU where the family has one
            liger_fused_linear_cross_entropy=True,
        )
    if cell.packed:  # several rows per packed row of 128 tokens
        config.update(sample_packing=True, sequence_len=128, micro_batch_size=1)
        if cell.attention:
            config.update(attn_implementation=cell.attention)
    return config


def logged_losses(state: Any) -> list[float]:
    """The training losses in step order."""
    return [
        rec["loss"] for rec in sorted(state.log_history, key=lambda r: r["step"]) if "loss" in rec
    ]


def check_losses(losses: list[float], rows_loss: list[float]) -> str:
    """Every logged loss finite, and the loss on the training rows a FALL fraction lower after
    training than before."""
    assert len(losses) == MAX_STEPS, losses
    assert all(math.isfinite(loss) for loss in losses), f"a loss is not finite: {losses}"
    before, after = rows_loss
    assert after < before * (1 - FALL), f"the loss on the training rows did not fall: {rows_loss}"
    return f"loss on the training rows {before:.2f} → {after:.2f} after {len(losses)} steps"


def reloaded_logits(cell: Cell, base: Path, out: Path, probe: LogitsProbe) -> torch.Tensor:
    """The logits of the saved output on the probe input, loaded as a user would."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if cell.bf16 else torch.float32
    extra: dict[str, Any] = {}
    if cell.quantized or cell.eight_bit:  # the adapter goes over the same quantized base
        from transformers import BitsAndBytesConfig

        if cell.quantized:
            extra["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_quant_storage=torch.bfloat16,
            )
        else:
            extra["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        extra["device_map"] = {"": probe.device}
    if cell.gptq:  # the adapter goes over the GPTQ base, on the kernel the run trained with
        from transformers import AutoConfig, GPTQConfig

        written = AutoConfig.from_pretrained(base).quantization_config
        extra["quantization_config"] = GPTQConfig.from_dict(
            {**written, "backend": "auto_trainable"}
        )
    model = AutoModelForCausalLM.from_pretrained(
        str(out if not cell.adapter else base), dtype=dtype, **extra
    )
    if cell.quantized or cell.eight_bit:  # as the run loads it
        from axolotl_weave_plugins.methods import bnb_quantization

        bnb_quantization.flatten_int8_inputs(bnb_quantization.keep_cpu_layers_differentiable(model))
    if cell.adapter:
        from peft import PeftModel
        from transformers import AutoTokenizer

        rows = len(AutoTokenizer.from_pretrained(str(out)))
        if rows > model.get_input_embeddings().num_embeddings:  # the run grew the vocabulary
            model.resize_token_embeddings(rows)
        model = PeftModel.from_pretrained(model, str(out))
    model = (model if cell.quantized or cell.eight_bit else model.to(probe.device)).eval()
    with torch.no_grad():
        return model(input_ids=probe.input_ids.to(probe.device)).logits.float().cpu()


def check_packed_isolation(family: ModelFamily, cell: Cell, base: Path, tokenizer: Any) -> str:
    """Packed per-token losses and gradients equal one-by-one ones (same attention as the run)."""
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if cell.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype).to(device)
    if cell.attention:
        from axolotl_weave_plugins.kernels import attn_implementation

        attn_implementation.patch_attention(model, open_attention(cell.attention), family)
    texts = [PROBE_TEXT, "Add two and three.", "the quick brown fox jumps over the lazy dog."]
    rows = [{"input_ids": ids, "labels": ids} for ids in (tokenizer(t).input_ids for t in texts)]
    (packed, packed_grads), (alone, alone_grads) = packed_and_one_by_one(model, rows, device)
    tolerance = 2e-2 if cell.bf16 else 1e-4
    torch.testing.assert_close(packed.float(), alone.float(), rtol=tolerance, atol=tolerance)
    for got, expected in zip(packed_grads, alone_grads, strict=True):
        error = (got.float() - expected.float()).norm() / expected.float().norm().clamp(min=1e-6)
        assert error < (5e-2 if cell.bf16 else 1e-3), f"packed gradients differ by {error:.2e}"
    return f"packed == one by one ({model.config._attn_implementation})"


def gptq_layer_count(checkpoint: Path) -> int:
    """How many layers the saved GPTQ checkpoint holds packed (`.qweight` tensors); a cell
    whose base has none would test nothing, so none fails it."""
    from safetensors import safe_open

    count = 0
    for shard in checkpoint.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as tensors:
            count += sum(key.endswith(".qweight") for key in tensors.keys())
    assert count, f"{checkpoint} holds no GPTQ-quantized layer"
    return count


def attention_supported(name: str, family: ModelFamily) -> bool:
    """Whether the family lists the attention implementation (what weave checks first)."""
    from axolotl_weave_plugins.kernels import attn_implementation

    return attn_implementation.supported_by(name, family)


def open_attention(name: str) -> Any:
    """A stand-in config carrying only `attn_implementation` (for patch_attention)."""
    from types import SimpleNamespace

    return SimpleNamespace(attn_implementation=name)


def run_cell(family: ModelFamily, cell: Cell, tiny_models: Any, tokenizer: Any, tmp: Path) -> None:
    """Train one cell, check it and record the outcome. `tiny_models(family)` gives the base."""
    with recorded(family.name, cell.name) as outcome:
        if family.tiny_config is None:
            pytest.skip(f"family '{family.name}' has no tiny_config")
        if cell.gptq and "gptq" in family.cannot:  # refused before the weights load
            base = tiny_models.unquantized(family)
        else:
            base = tiny_models(family)
        config = cell_config(base, cell, tmp)
        if cell.packed and "sample_packing" in family.cannot:
            from axolotl_weave import ConfigError

            with pytest.raises(ConfigError, match="cannot be packed"):
                train(open_session(write_config(tmp / "config.yml", config), []))
            outcome.update(status="unsupported", detail=family.cannot["sample_packing"])
            return
        if cell.method_key in family.cannot:  # refused with the family's reason
            from axolotl_weave import ConfigError

            reason = family.cannot[cell.method_key]
            with pytest.raises(ConfigError, match=f"^{cell.method_key}: .*cannot") as refused:
                train(open_session(write_config(tmp / "config.yml", config), []))
            assert reason in str(refused.value)
            outcome.update(status="unsupported", detail=reason)
            return
        if cell.liger and "liger" not in family.kernels:
            outcome.update(status="unsupported", detail=f"{family.name} does not list liger")
            return
        if cell.attention and not attention_supported(cell.attention, family):
            listed = ", ".join(family.attn_implementations)
            outcome.update(status="unsupported", detail=f"{family.name} supports {listed}")
            return
        probe = LogitsProbe(
            torch.tensor([tokenizer(PROBE_TEXT).input_ids]), training_rows(tokenizer)
        )
        pm = make_plugin_manager()
        pm.register(probe)
        state = train(open_session(write_config(tmp / "config.yml", config), [], pm))
        outcome["detail"] = check_losses(logged_losses(state), probe.rows_loss)
        if cell.packed:
            outcome["detail"] += "; " + check_packed_isolation(family, cell, base, tokenizer)
        if cell.liger:  # the first step's loss (before any update) as without the kernels
            plain = {k: v for k, v in config.items() if not k.startswith("liger_")}
            plain.update(max_steps=1, output_dir=str(tmp / "plain"))
            without = train(open_session(write_config(tmp / "plain.yml", plain), []))
            first, reference = logged_losses(state)[0], logged_losses(without)[0]
            assert abs(first - reference) <= 2e-2 * abs(reference), (first, reference)
            outcome["detail"] += f"; first loss {first:.4f} (without Liger {reference:.4f})"
        if cell.gptq:
            outcome["detail"] += f"; {gptq_layer_count(base)} linear layers in 4-bit GPTQ"
        if cell.quantized or cell.eight_bit:  # a base with nothing quantized tests nothing
            kind = "4-bit nf4" if cell.quantized else "8-bit"
            assert probe.bnb_layers, "bitsandbytes quantized no layer"
            outcome["detail"] += f"; {probe.bnb_layers} linear layers in {kind}"
        assert probe.logits is not None, "post_train was not called"
        got = reloaded_logits(cell, base, Path(config["output_dir"]), probe)
        tolerance = 5e-2 if cell.bf16 and cell.quantized else 2e-2 if cell.bf16 else 1e-4
        torch.testing.assert_close(got, probe.logits, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(("family", "cell"), cell_params(CPU_CELLS))
def test_cpu_cell(
    family: ModelFamily, cell: Cell, tiny_models: Any, matrix_tokenizer: Any, tmp_path: Path
) -> None:
    """fp32 full fine-tune and LoRA on the tiny model: loss finite and falling, reload exact."""
    run_cell(family, cell, tiny_models, matrix_tokenizer, tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize(("family", "cell"), cell_params(GPU_CELLS))
def test_gpu_cell(
    family: ModelFamily, cell: Cell, tiny_models: Any, matrix_tokenizer: Any, tmp_path: Path
) -> None:
    """bf16 full fine-tune, LoRA and QLoRA on CUDA: loss finite and falling, reload gives the
    logits."""
    run_cell(family, cell, tiny_models, matrix_tokenizer, tmp_path)


@pytest.mark.gptq
@pytest.mark.parametrize(("family", "cell"), cell_params(GPTQ_CELLS))
def test_gptq_cell(
    family: ModelFamily, cell: Cell, gptq_models: Any, matrix_tokenizer: Any, tmp_path: Path
) -> None:
    """LoRA over the tiny model GPTQ-quantized on the spot (gptqmodel's CPU kernels): loss
    finite and falling, the adapter over the GPTQ base reloads with the trained logits."""
    run_cell(family, cell, gptq_models, matrix_tokenizer, tmp_path)


# --- the committed results and the README ------------------------------------------------------

recording = pytest.mark.skipif(
    bool(os.environ.get(RESULTS_ENV)), reason="a recording run: render the table afterwards"
)


@recording
def test_readme_support_table_is_current() -> None:
    """README.md shows the table rendered from the committed docs/support/*.jsonl."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "support_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@recording
def test_every_family_is_in_the_committed_cpu_results() -> None:
    """A family added (or given a tiny_config) since the matrix last ran forces a rerun."""
    assert CPU_RESULTS.is_file(), f"{CPU_RESULTS} is missing: run the matrix (see module docstring)"
    records = [json.loads(line) for line in CPU_RESULTS.read_text().splitlines() if line.strip()]
    have = {(record["family"], record["cell"]) for record in records}
    wanted = {(f.name, c.name) for f in FAMILIES if f.tiny_config is not None for c in CPU_CELLS}
    missing = sorted(f"{family}-{cell}" for family, cell in wanted - have)
    assert not missing, (
        f"not in {CPU_RESULTS.relative_to(REPO)}: {', '.join(missing)}; rerun the matrix: "
        f"rm -f docs/support/cpu.jsonl && {RESULTS_ENV}=docs/support/cpu.jsonl "
        "python -m pytest -q tests/test_support_matrix.py -m 'not gpu and not gptq' "
        "&& python scripts/support_table.py"
    )
