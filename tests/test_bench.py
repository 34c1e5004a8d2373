"""`weave bench`: the command end to end on the tiny random-weight llama (CPU, seconds), and its
pieces: shapes, synthetic samples, token accounting, the HF budget, the device peak table.

Speed is never asserted: only that each run measured something, that packing packs, and that
mistakes give one clear message.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from axolotl_weave import ConfigError, WeaveError
from axolotl_weave_plugins.commands import _bench_data, _bench_hf, _bench_measure, _bench_shapes
from axolotl_weave_plugins.commands.bench import BenchSettings
from axolotl_weave_testing import run_weave, write_config

TINY = ["--shape", "tiny-llama", "--steps", "2", "--warmup", "1", "--samples", "64"]
TINY += ["--median-length", "40", "--max-length", "128"]


@pytest.fixture(scope="module")
def weave_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A `WEAVE_CACHE` shared by this module's runs (the tiny model is built once)."""
    return {"WEAVE_CACHE": str(tmp_path_factory.mktemp("weave-cache"))}


def bench_config(tmp_path: Path, base_config: dict[str, Any], **extra: Any) -> str:
    return str(write_config(tmp_path / "bench.yml", {**base_config, **extra}))


def test_bench_with_hf_baseline_prints_both_rows_and_writes_json(
    base_config: dict[str, Any], tmp_path: Path, weave_cache: dict[str, str]
) -> None:
    config = bench_config(tmp_path, base_config, sample_packing=True)
    out = tmp_path / "results" / "bench.json"
    result = run_weave(
        "bench", config, *TINY, "--baseline", "hf", "--json", str(out), env=weave_cache
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("│ weave") for line in lines), result.stdout
    assert any(line.startswith("│ hf") for line in lines), result.stdout
    assert "weave / hf:" in result.stdout and "real tokens/s" in result.stdout
    assert "MFU: n/a" in result.stdout  # a CPU has no known bf16 peak

    results = json.loads(out.read_text())
    weave, hf = results["runs"]["weave"], results["runs"]["hf"]
    for run in (weave, hf):
        assert run["error"] is None
        assert run["tokens_per_second"] > 0
        assert run["tokens_per_step"] > 0
        assert run["peak_memory_gib"] > 0
        assert len(run["step_seconds"]) == 2
        assert abs(run["final_loss"] - math.log(512)) < 1.0  # random weights: ~ln(vocab)
        assert run["mfu"] is None
    assert results["ratio"]["tokens_per_second"] > 0
    assert results["shape"] == "tiny-llama"
    assert results["parameters"] > 0 and results["flops_factor"] == 6
    assert results["data"]["samples"] == 64 and results["data"]["max_length"] == 128
    # packing fills the bins; padding to the longest (hf, or weave unpacked) wastes slots
    assert weave["packing_efficiency"] > weave["extra"]["unpacked_efficiency"]
    assert weave["packing_efficiency"] > hf["packing_efficiency"]
    assert weave["micro_batch"] == "2 bin(s) of 128"
    assert results["hf_budget"]["micro_batch_rows"] >= 1
    # the random-weight model is cached; bench wrote nothing to the config's output_dir
    models = list((Path(weave_cache["WEAVE_CACHE"]) / "bench-models").iterdir())
    assert [m.name.startswith("tiny-llama-") for m in models] == [True]
    assert (models[0] / "config.json").is_file()
    assert not Path(base_config["output_dir"]).exists()


def test_bench_lora_unpacked_with_profile_and_peak(
    base_config: dict[str, Any], tmp_path: Path, weave_cache: dict[str, str]
) -> None:
    config = bench_config(
        tmp_path,
        base_config,
        adapter="lora",
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["q_proj", "v_proj"],
    )
    out, profile = tmp_path / "bench.json", tmp_path / "profile"
    result = run_weave(
        "bench",
        config,
        *TINY,
        "--peak-tflops",
        "1",
        "--profile",
        str(profile),
        "--profile-steps",
        "1",
        "--json",
        str(out),
        "--micro_batch_size",  # an override of the config, as in `weave train`
        "4",
        env=weave_cache,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert list(results["runs"]) == ["weave"] and results["ratio"] is None
    weave = results["runs"]["weave"]
    assert weave["micro_batch"] == "4 row(s)"
    assert weave["packing_efficiency"] == pytest.approx(weave["extra"]["unpacked_efficiency"])
    assert results["flops_factor"] == 4  # frozen base: 4·N
    assert weave["mfu"] == pytest.approx(
        4 * results["parameters"] * weave["tokens_per_second"] / 1e12
    )
    assert (profile / "weave-trace.json").is_file()
    assert "aten::" in (profile / "weave-top-ops.txt").read_text()
    assert "top ops by self time" in result.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason="needs bitsandbytes (scripts/setup.sh installs it)",
)
def test_bench_qlora_quantizes_both_runs(
    base_config: dict[str, Any], tmp_path: Path, weave_cache: dict[str, str]
) -> None:
    """The 8B QLoRA setup's path on the tiny shape: weave and the HF baseline both load the
    base in 4 bits on this process's device (the CPU here) and train."""
    config = bench_config(
        tmp_path, base_config, adapter="qlora", load_in_4bit=True, lora_target_linear=True,
        sample_packing=True, lora_r=4, lora_alpha=8,
    )  # fmt: skip
    out = tmp_path / "bench.json"
    result = run_weave(
        "bench", config, *TINY, "--baseline", "hf", "--json", str(out), env=weave_cache
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    for run in runs.values():
        assert run["error"] is None and run["tokens_per_second"] > 0
        assert abs(run["final_loss"] - math.log(512)) < 1.0
    assert "kernels-community" not in result.stderr  # bitsandbytes' hub-kernel notice is dropped


def test_unknown_shape_is_one_clear_error(base_config: dict[str, Any], tmp_path: Path) -> None:
    config = bench_config(tmp_path, base_config)
    result = run_weave("bench", config, "--shape", "llama-3-1b")
    assert result.returncode == 2
    err = " ".join(result.stderr.split())
    assert "--shape: unknown architecture 'llama-3-1b' (did you mean llama-3.2-1b?)" in err
    assert "known: llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, tiny-llama" in err
    assert "Traceback" not in result.stderr


def test_bad_options_and_lengths_over_sequence_len_are_refused(
    base_config: dict[str, Any], tmp_path: Path, weave_cache: dict[str, str]
) -> None:
    config = bench_config(tmp_path, base_config)
    result = run_weave("bench", config, "--steps", "0", "--baseline", "vllm")
    assert result.returncode == 2
    err = " ".join(result.stderr.split())
    assert "--steps must be at least 1" in err and "'vllm' is not one of: none, hf, trl" in err

    result = run_weave(
        "bench", config, "--shape", "tiny-llama", "--max-length", "2048", env=weave_cache
    )
    assert result.returncode == 2
    assert "--max-length 2048 is more than sequence_len 128" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


DPO_LORA = {
    "rl": "dpo",
    "adapter": "lora",
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "lora_target_linear": True,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 2,
}


def test_bench_dpo_against_trl_runs_the_same_pairs(
    base_config: dict[str, Any], tmp_path: Path, weave_cache: dict[str, str]
) -> None:
    """`--baseline trl`: weave's DPO and TRL's DPOTrainer on the same synthetic pairs and budget:
    the same real tokens per step (every pair as long: any order), both losses at ln 2 (the
    policy starts as its reference), pairs/s for each."""
    config = bench_config(tmp_path, base_config, **DPO_LORA)
    out = tmp_path / "bench.json"
    args = [*TINY, "--length-sigma", "0", "--baseline", "trl", "--json", str(out)]
    result = run_weave("bench", config, *args, env=weave_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weave / trl:" in result.stdout and "pairs/s: weave" in result.stdout
    results = json.loads(out.read_text())
    weave, trl = results["runs"]["weave"], results["runs"]["trl"]
    assert results["preference"] is True and results["ratio"]["tokens_per_second"] > 0
    for run in (weave, trl):
        assert run["error"] is None and run["micro_batch"] == "2 pair(s)"
        assert abs(run["final_loss"] - math.log(2)) < 0.01
        assert run["extra"]["pairs_per_second"] > 0 and run["mfu"] is None  # a CPU: no peak
    assert results["flops_factor"] == 4 + 2  # LoRA (no weight gradients) + the reference forward
    # 2 pairs x 2 micro-batches, each pair a 40-token prompt + chosen and prompt + rejected
    assert weave["tokens_per_step"] == trl["tokens_per_step"] == 4 * 2 * 40


@pytest.mark.parametrize(
    ("keys", "baseline", "message"),
    [
        ({"rl": "kto"}, "none", "rl: kto needs data of its own"),
        ({"rl": "orpo"}, "trl", "this config has rl: orpo (use --baseline none)"),
        ({}, "trl", "this config has no rl: (use --baseline hf)"),
        ({"rl": "dpo"}, "hf", "for rl: dpo use --baseline trl"),
    ],
)
def test_bench_refuses_what_it_cannot_time_or_compare(
    base_config: dict[str, Any],
    tmp_path: Path,
    weave_cache: dict[str, str],
    keys: dict[str, Any],
    baseline: str,
    message: str,
) -> None:
    config = bench_config(tmp_path, base_config, **keys)
    result = run_weave("bench", config, *TINY, "--baseline", baseline, env=weave_cache)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bench_lengths_default_to_the_config(
    base_config: dict[str, Any], tmp_path: Path, weave_cache: dict[str, str]
) -> None:
    """No length flags on a config with a short sequence_len: the samples follow the config."""
    config = bench_config(tmp_path, base_config, sequence_len=64)
    out = tmp_path / "bench.json"
    args = ["--shape", "tiny-llama", "--steps", "1", "--warmup", "0", "--samples", "16"]
    result = run_weave("bench", config, *args, "--json", str(out), env=weave_cache)
    assert result.returncode == 0, result.stderr
    settings = json.loads(out.read_text())["data"]
    assert settings["max_length"] == 64 and settings["median_length"] == 64


# --- the pieces ----------------------------------------------------------------------------------


def test_shapes_have_the_public_parameter_counts() -> None:
    from transformers import AutoConfig

    expected = {"llama-3.2-1b": 1_235_814_400, "llama-3.1-8b": 8_030_261_248}
    for name, count in expected.items():
        shape = _bench_shapes.get_shape(name)
        config = AutoConfig.for_model(shape.model_type, **shape.config)
        assert _bench_measure.architecture_parameters(config) == count, name
    with pytest.raises(ConfigError, match="known: llama-3.2-1b"):
        _bench_shapes.get_shape("gpt-5")


def test_cache_key_follows_the_config(tmp_path: Path) -> None:
    shape = _bench_shapes.get_shape("tiny-llama")
    other = _bench_shapes.Shape("tiny-llama", "llama", {**shape.config, "hidden_size": 128}, "")
    assert _bench_shapes.model_dir(shape, tmp_path) != _bench_shapes.model_dir(other, tmp_path)
    assert _bench_shapes.model_dir(shape, tmp_path).parent == tmp_path
    assert _bench_shapes.cache_root("/x/y") == Path("/x/y")


def test_synthetic_samples_spread_and_avoid_special_ids() -> None:
    settings = BenchSettings(samples=4000, median_length=300, max_length=2048, seed=3)
    lengths = _bench_data.sample_lengths(settings)
    assert lengths.min() >= 16 and lengths.max() <= 2048
    assert 270 <= np.median(lengths) <= 330
    assert lengths.mean() > np.median(lengths)  # log-normal: a long tail
    assert (_bench_data.sample_lengths(settings) == lengths).all()  # seeded

    rows = _bench_data.synthetic_dataset(np.array([5, 17, 3]), 8, {0, 1, 2}, seed=0)
    assert rows.column_names == ["input_ids", "labels", "attention_mask"]
    assert [len(ids) for ids in rows["input_ids"]] == [5, 17, 3]
    ids = [token for row in rows["input_ids"] for token in row]
    assert set(ids) <= {3, 4, 5, 6, 7}
    assert rows["labels"] == rows["input_ids"]
    assert all(set(mask) == {1} for mask in rows["attention_mask"])


def test_step_clock_differences_the_tokens_counted_at_each_step_end() -> None:
    clock = _bench_measure.StepClock()
    clock.begin()
    seen = 0
    for step, tokens in enumerate([100, 120, 90, 110], start=1):
        seen += tokens  # the loop counts a step's tokens before its on_step_end
        clock.mark(step, seen)
    seconds, tokens, per_step = clock.window(2, 3)
    assert tokens == 120 + 90
    assert len(per_step) == 2 and seconds == pytest.approx(sum(per_step))
    assert clock.window(1, 4)[1] == 420
    with pytest.raises(WeaveError, match="ended after 4 steps, before step 5"):
        clock.window(2, 5)


def test_hf_budget_matches_real_tokens_per_step() -> None:
    lengths = np.full(100, 500)
    packed = SimpleNamespace(
        sample_packing=True, micro_batch_size=2, sequence_len=4096, gradient_accumulation_steps=4
    )
    settings = BenchSettings()
    # 2 bins x 4096 x 0.98 real tokens = ~16 rows of 500; same accumulation
    assert _bench_hf.plan_hf_budget(packed, lengths, 0.98, settings) == (16, 4)
    # fixed HF micro-batch: accumulation makes up the step's tokens
    settings.hf_micro_batch = 8
    assert _bench_hf.plan_hf_budget(packed, lengths, 0.98, settings) == (8, 8)
    unpacked = SimpleNamespace(**{**vars(packed), "sample_packing": False})
    assert _bench_hf.plan_hf_budget(unpacked, lengths, 0.5, BenchSettings()) == (2, 4)


def test_peak_table_knows_the_usual_gpus() -> None:
    peak_tflops = _bench_measure.peak_tflops
    assert peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert peak_tflops("NVIDIA H200", None) == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert peak_tflops("NVIDIA A10", None) == 125.0
    assert peak_tflops("NVIDIA A10G", None) is None  # not A10, not A100
    assert peak_tflops("NVIDIA L4", None) == 121.0
    assert peak_tflops("NVIDIA L40S", None) == 362.0
    assert peak_tflops("NVIDIA GeForce RTX 4090", None) == 165.0
    assert peak_tflops("CPU (x86_64, 2 cores)", None) is None
    assert peak_tflops("CPU (x86_64, 2 cores)", 50.0) == 50.0


BENCH_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "bench").glob("*.yml"))


@pytest.mark.parametrize("config", BENCH_CONFIGS, ids=lambda p: p.name)
def test_shipped_bench_configs_validate(config: Path, base_config: dict[str, Any]) -> None:
    """The configs docs/benchmarks.md runs on the GPU are valid (base_model comes from --shape,
    the datasets from the bench's synthetic samples)."""
    from axolotl_weave._run import open_session

    overrides = [f"--base_model={base_config['base_model']}", "--datasets=[{path: synthetic}]"]
    cfg = open_session(str(config), overrides).cfg
    assert cfg.sample_packing and cfg.attn_implementation == "flash_attention_2"
    assert cfg.liger_fused_linear_cross_entropy == "auto"
    assert cfg.rl in (None, "dpo") and (cfg.rl is None or cfg.adapter == "lora")
