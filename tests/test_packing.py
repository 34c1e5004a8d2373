"""Sample packing: the bin packing, the packed micro-batches, and that packing changes nothing.

Packed training must give the same per-token loss and the same gradients as the same samples
unpacked, for every attention implementation this machine runs (eager and sdpa on CPU; flex and
the varlen kernels on a GPU, `gpu` marker), and a planted pair of samples shows that a leak
between packed samples would be caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from axolotl_weave import IGNORE_INDEX, ConfigError, MissingDependencyError
from axolotl_weave._batches import collate, model_inputs, padded_efficiency
from axolotl_weave._run import open_session, train
from axolotl_weave_plugins.batching._multipack import (
    Packer,
    collate_packed,
    first_fit_decreasing,
    next_fit,
)
from axolotl_weave_plugins.kernels import _varlen_attention, attn_implementation
from axolotl_weave_testing import (
    packed_and_one_by_one,
    per_token_losses,
    run_weave_in_process,
    write_config,
)

HAS_CUDA = torch.cuda.is_available()
run_weave = run_weave_in_process  # `weave ARGS` through the CLI's entry point, in this process


def lognormal_lengths(count: int, median: int = 300, low: int = 16, high: int = 2048) -> Any:
    """Realistic sample lengths: log-normal around `median`, clipped to [low, high]."""
    rng = np.random.default_rng(0)
    return np.clip(np.exp(rng.normal(np.log(median), 0.9, count)), low, high).astype(np.int64)


# --- bin packing -------------------------------------------------------------------------------


@pytest.mark.parametrize("pack", [first_fit_decreasing, next_fit])
def test_every_row_is_packed_once_within_the_bin_limits(pack: Any) -> None:
    lengths = lognormal_lengths(3000, median=100, high=512)
    bins = pack(list(range(3000)), lengths, 512, 7)
    rows = [row for b in bins for row in b]
    assert sorted(rows) == list(range(3000))
    assert all(int(lengths[b].sum()) <= 512 and len(b) <= 7 for b in bins)


def test_first_fit_decreasing_packs_a_realistic_spread_at_98_percent_or_more() -> None:
    lengths = lognormal_lengths(6000)
    packer = Packer(lengths, capacity=2048, micro_batch_size=8)
    assert packer.efficiency() >= 0.98
    assert Packer(lengths, 2048, 8, pad_to_capacity=True).efficiency() >= 0.98
    assert padded_efficiency(lengths, 8) < 0.5  # what padding to the longest wastes instead
    assert Packer(lengths, 2048, 8, sequentially=True).efficiency() < packer.efficiency()


def test_a_row_longer_than_a_bin_is_refused() -> None:
    with pytest.raises(ValueError, match="row 1 has 9 tokens"):
        first_fit_decreasing([0, 1], np.array([3, 9]), 8, 10)


def test_packing_is_seeded_reshuffled_each_epoch_and_even_across_processes() -> None:
    lengths = lognormal_lengths(999, median=40, high=256)

    def packer(**kw: Any) -> Packer:
        return Packer(lengths, capacity=256, micro_batch_size=2, **{"seed": 3, **kw})

    assert packer().bins(0) == packer().bins(0)  # deterministic for a seed
    assert packer().bins(0) != packer().bins(1)  # reshuffled each epoch
    assert packer().bins(0) != packer(seed=4).bins(0)
    ranks = [packer(rank=r, world_size=3) for r in range(3)]
    counts = {p.micro_batches_per_epoch() for p in ranks}
    assert len(counts) == 1  # every process the same number of micro-batches
    seen = [row for p in ranks for b in p.bins(0) for row in b]
    assert len(seen) == len(set(seen))  # no row on two processes
    assert len(list(ranks[0].micro_batch_bins(0))) == ranks[0].micro_batches_per_epoch()


def test_collate_packed_restarts_positions_and_masks_each_first_label() -> None:
    rows_a = [
        {"input_ids": [5, 6, 7], "labels": [5, 6, 7]},
        {"input_ids": [8, 9], "labels": [8, 9]},
    ]
    rows_b = [{"input_ids": [4, 4, 4, 4], "labels": [IGNORE_INDEX, 4, 4, 4]}]
    batch = collate_packed([rows_a, rows_b], pad_token_id=0, pad_to=6)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0], [4, 4, 4, 4, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    x = IGNORE_INDEX
    assert batch["labels"].tolist() == [[x, 6, 7, x, 9, x], [x, 4, 4, 4, x, x]]
    assert int(batch["num_tokens"]) == 9
    assert "attention_mask" not in batch  # the model builds the packed mask from position_ids
    assert set(model_inputs(batch)) == {"input_ids", "position_ids"}


# --- packed == unpacked ------------------------------------------------------------------------


def sample_rows(count: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Rows of varied length with a masked prompt, as a format plugin builds them."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        n = 5 + (i * 7) % 13
        ids = torch.randint(3, 200, (n,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 2 + ids[2:]})
    return rows


@pytest.fixture
def tiny_model(tiny_llama_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_packed_loss_and_gradients_equal_unpacked(tiny_model: Any, implementation: str) -> None:
    tiny_model.set_attn_implementation(implementation)
    (loss_p, grads_p), (loss_u, grads_u) = packed_and_one_by_one(tiny_model, sample_rows(6), bins=2)
    torch.testing.assert_close(loss_p, loss_u, rtol=1e-5, atol=1e-5)
    for gp, gu in zip(grads_p, grads_u, strict=True):
        torch.testing.assert_close(gp, gu, rtol=1e-4, atol=1e-6)


def test_a_planted_pair_would_show_a_leak_between_packed_samples(tiny_model: Any) -> None:
    """B after A: B's losses packed equal B alone; without the packed positions they differ."""
    tiny_model.set_attn_implementation("sdpa")
    a, b = sample_rows(2, seed=1)
    b_alone = per_token_losses(tiny_model, collate([b], 0))
    packed = collate_packed([[a, b]], 0)
    b_packed = per_token_losses(tiny_model, packed)[-len(b_alone) :]
    torch.testing.assert_close(b_packed, b_alone, rtol=1e-5, atol=1e-5)
    leaking = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
    b_leaking = per_token_losses(tiny_model, leaking)[-len(b_alone) :]
    assert (b_leaking - b_alone).abs().max() > 1e-2  # the control: a leak changes B's loss


def test_flex_attention_packed_forward_equals_unpacked_on_cpu(tiny_model: Any) -> None:
    """FlexAttention's document mask from position_ids (CPU: forward only, no backward)."""
    tiny_model.set_attn_implementation("flex_attention")
    rows = sample_rows(4)
    with torch.no_grad():
        packed = per_token_losses(tiny_model, collate_packed([rows], 0))
        unpacked = torch.cat([per_token_losses(tiny_model, collate([r], 0)) for r in rows])
    torch.testing.assert_close(packed, unpacked, rtol=1e-4, atol=1e-4)


def reference_kernel(q: Any, k: Any, v: Any, segments: Any, scale: Any, window: Any) -> Any:
    """Per-sequence causal SDPA in float32: what a varlen kernel must compute."""
    outs = []
    bounds = segments.cu_seqlens.tolist()
    for start, end in zip(bounds, bounds[1:], strict=False):
        qs, ks, vs = (x[start:end].transpose(0, 1).float() for x in (q, k, v))
        ks = ks.repeat_interleave(qs.shape[0] // ks.shape[0], 0)
        vs = vs.repeat_interleave(qs.shape[0] // vs.shape[0], 0)
        outs.append(
            F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1)
        )
    return torch.cat(outs).to(q.dtype)


@pytest.mark.parametrize("name", ["torch_varlen", "xformers"])
def test_varlen_attention_finds_the_sequences_of_packed_and_padded_batches(
    tiny_model: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The varlen functions' plumbing (sequences from position_ids or the padding mask, unpad,
    GQA, restore) with a float32 reference in place of the CUDA kernel."""
    monkeypatch.setitem(_varlen_attention.KERNELS, name, reference_kernel)
    monkeypatch.setattr(_varlen_attention, "half_precision", lambda x: x.dtype)
    _varlen_attention.register(name)
    rows = sample_rows(5)
    tiny_model.set_attn_implementation("sdpa")
    with torch.no_grad():
        expected_packed = per_token_losses(tiny_model, collate_packed([rows[:2], rows[2:]], 0))
        expected_padded = per_token_losses(tiny_model, collate(rows, 0))
    tiny_model.set_attn_implementation(name)
    with torch.no_grad():
        packed = per_token_losses(tiny_model, collate_packed([rows[:2], rows[2:]], 0))
        padded = per_token_losses(tiny_model, collate(rows, 0))
    torch.testing.assert_close(packed, expected_packed, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(padded, expected_padded, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["torch_varlen", "flex_attention", "sdpa"])
def test_packed_equals_unpacked_on_the_gpu(tiny_model: Any, name: str) -> None:
    """bf16 on CUDA: packed training with each GPU attention gives the unpacked losses/grads."""
    if name == "torch_varlen":
        if not attn_implementation.has_torch_varlen():
            pytest.skip("torch < 2.10 has no varlen_attn")
        _varlen_attention.register(name)
    model = tiny_model.to("cuda", torch.bfloat16)
    model.set_attn_implementation("sdpa")
    _, (loss_u, grads_u) = packed_and_one_by_one(model, sample_rows(8), "cuda", bins=2)
    model.set_attn_implementation(name)
    (loss_p, grads_p), _ = packed_and_one_by_one(model, sample_rows(8), "cuda", bins=2)
    torch.testing.assert_close(loss_p.float(), loss_u.float(), rtol=2e-2, atol=2e-2)
    for gp, gu in zip(grads_p, grads_u, strict=True):
        assert (gp.float() - gu.float()).norm() <= 0.05 * gu.float().norm() + 1e-3


# --- end to end --------------------------------------------------------------------------------


def packing_config(base_config: dict[str, Any], tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        **base_config,
        "sample_packing": True,
        "sequence_len": 256,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 2,
        "num_epochs": 2,
        "max_steps": None,
        "learning_rate": 3e-3,
        "val_set_size": 0.25,
        "output_dir": str(tmp_path / "out"),
        **extra,
    }


def test_weave_train_packs_reports_efficiency_and_knows_its_steps(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = packing_config(base_config, tmp_path, logging_steps=1)
    result = run_weave("train", str(write_config(tmp_path / "packed.yml", config)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "sample_packing:" in out and "efficiency" in out, out
    again = {**config, "overwrite_output_dir": True}  # the same run again, in process
    state = train(open_session(write_config(tmp_path / "again.yml", again), []))
    log = [r for r in state.log_history if "loss" in r]
    assert state.global_step == state.max_steps == 2 * state.steps_per_epoch  # known up front
    assert f"step {state.max_steps}/{state.max_steps}" in out
    assert log[-1]["loss"] < log[0]["loss"]
    assert any("eval_loss" in r for r in state.log_history)


class CrashAt:
    """Interrupt training after step `step` (as a kill would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    from axolotl_weave import hookimpl

    @hookimpl
    def on_step_end(self, state: Any) -> None:
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_packed_training_resumes_where_it_stopped(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    from axolotl_weave._pluginmanager import make_plugin_manager

    def run(config: dict[str, Any], name: str, *plugins: Any) -> Any:
        pm = make_plugin_manager()
        for plugin in plugins:
            pm.register(plugin)
        return train(open_session(write_config(tmp_path / name, config), [], pm))

    config = packing_config(base_config, tmp_path, save_steps=2, val_set_size=0)
    whole = run({**config, "output_dir": str(tmp_path / "whole")}, "whole.yml")
    crashed = {**config, "output_dir": str(tmp_path / "crashed")}
    with pytest.raises(KeyboardInterrupt):
        run(crashed, "crash.yml", CrashAt(3))
    resumed = run({**crashed, "resume_from_checkpoint": "auto"}, "resume.yml")
    expected = {r["step"]: r["loss"] for r in whole.log_history if "loss" in r}
    got = {r["step"]: r["loss"] for r in resumed.log_history if "loss" in r}
    assert sorted(got) == sorted(expected) and len(got) > 3
    for step in range(3, max(got) + 1):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_pad_to_sequence_len_pads_packed_micro_batches(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    seen: list[int] = []

    class Widths:
        from axolotl_weave import hookimpl

        @hookimpl(wrapper=True)
        def build_loss(self) -> Any:
            loss = yield

            class Recording:
                count = loss.count

                def __call__(self, model: Any, batch: Any) -> Any:
                    seen.append(batch["input_ids"].shape[1])
                    return loss(model, batch)

            return Recording()

    from axolotl_weave._pluginmanager import make_plugin_manager

    pm = make_plugin_manager()
    pm.register(Widths())
    config = packing_config(base_config, tmp_path, pad_to_sequence_len=True, max_steps=2)
    train(open_session(write_config(tmp_path / "p.yml", config), [], pm))
    assert seen and set(seen) == {256}


# --- refusals ----------------------------------------------------------------------------------


def family_named(name: str) -> Any:
    from axolotl_weave._hooks import Hooks
    from axolotl_weave._pluginmanager import make_plugin_manager

    families = Hooks(make_plugin_manager()).model_families().values()
    return next(f for f in families if f.name == name)


def test_attention_the_cpu_cannot_train_with_is_refused_clearly(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    if HAS_CUDA:
        pytest.skip("the CPU refusal needs a machine without a GPU")
    for key, expected in (
        ("flex_attention", "no CPU backward"),
        ("flash_attention", "flash"),
        ("xformers_attention", "xformers"),
    ):
        config = write_config(tmp_path / f"{key}.yml", {**base_config, key: True, "max_steps": 1})
        result = run_weave("train", str(config), cwd=tmp_path)
        assert result.returncode in (2, 4), result.stderr
        assert "Traceback" not in result.stderr
        assert expected in " ".join(result.stderr.split()), result.stderr


def test_attention_choices_are_checked_against_the_family_and_each_other() -> None:
    with pytest.raises(ValueError, match="choose one"):
        attn_implementation.AttentionSettings(flash_attention=True, sdp_attention=True)
    with pytest.raises(ValueError, match="contradicts"):
        attn_implementation.AttentionSettings(sdp_attention=True, attn_implementation="eager")
    with pytest.raises(ConfigError, match="gpt_oss supports eager, flex_attention"):
        attn_implementation.resolve("sdpa", family_named("gpt_oss"))
    assert attn_implementation.resolve("sdpa", family_named("llama")) == "sdpa"
    if not HAS_CUDA:
        assert attn_implementation.resolve("auto", family_named("llama")) == "sdpa"
        with pytest.raises((ConfigError, MissingDependencyError)):
            attn_implementation.resolve("torch_varlen", family_named("llama"))


@pytest.mark.parametrize("name", ["rwkv", "jamba", "falcon", "mpt", "gpt_oss"])
def test_families_whose_packed_samples_would_mix_refuse_sample_packing(name: str) -> None:
    family = family_named(name)
    assert family.cannot["sample_packing"]


def test_sample_packing_on_an_unpackable_family_is_refused_before_loading(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    from axolotl_weave._run import build_trainer

    session = open_session(
        write_config(tmp_path / "c.yml", {**base_config, "sample_packing": True}), []
    )
    with pytest.raises(ConfigError, match="'rwkv' family cannot be packed.*recurrent"):
        build_trainer(session, family_named("rwkv"), None, None)


def test_eval_sample_packing_false_keeps_eval_unpacked(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = packing_config(base_config, tmp_path, eval_sample_packing=False, max_steps=1)
    state = train(open_session(write_config(tmp_path / "e.yml", config), []))
    packed_eval = packing_config(base_config, tmp_path / "p", max_steps=1)
    state_packed = train(open_session(write_config(tmp_path / "e2.yml", packed_eval), []))
    eval_loss = [r["eval_loss"] for r in state.log_history if "eval_loss" in r]
    eval_packed = [r["eval_loss"] for r in state_packed.log_history if "eval_loss" in r]
    assert eval_loss and eval_packed
    assert eval_loss[0] == pytest.approx(eval_packed[0], rel=1e-4)  # same loss, packed or not
