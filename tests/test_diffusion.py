"""Diffusion language-model training (`diffusion:`, LLaDA style): the objective against its
definition (the mask drawn with the same generator, loss and gradients), what may be masked,
the bidirectional attention without padding nor another packed sequence, packed batches equal
to the same rows unpacked, runs with a given and with an added mask token, the sampler, and the
configs refused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from axolotl_weave import ConfigError, collate
from axolotl_weave._run import open_session
from axolotl_weave_plugins.batching._multipack import collate_packed
from axolotl_weave_plugins.methods._diffusion_sampling import diffusion_sample
from axolotl_weave_plugins.methods.diffusion import (
    DiffusionGenerate,
    DiffusionLoss,
    bidirectional_mask,
    noise_batch,
    segment_ids,
)
from axolotl_weave_testing import train_with, write_config
from transformers import AutoModelForCausalLM, AutoTokenizer

MASK = 5
SPECIAL = [1, 2]  # the tiny llama's BOS and EOS (pad is EOS in a run)


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


def padded_batch() -> dict[str, torch.Tensor]:
    """Two rows: a prompt then an answer, the second row shorter (right padding)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 400, (2, 20), generator=gen)
    ids[:, 0] = 1  # BOS
    ids[0, 19] = 2  # EOS (labelled, never masked)
    ids[1, 14] = 2
    ids[1, 15:] = 2  # padding (pad = EOS)
    labels = ids.clone()
    labels[0, :6] = -100
    labels[1, :4] = -100
    labels[1, 15:] = -100
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def reference_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], seed: int, eps: float):
    """Axolotl's definition, row by row: t ~ U(0,1) per row, p = (1-eps)t + eps, mask each
    labelled, real, non-BOS/EOS token when rand < p; full attention within the row's real
    tokens; logits shifted so that position i predicts token i; per row the masked tokens'
    cross-entropy / p summed, over the row's labelled tokens; summed over rows. Also the
    masked positions."""
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    torch.manual_seed(seed)
    t = torch.rand(ids.shape[0])
    draws = torch.rand(ids.shape)
    total, masked_all = 0.0, torch.zeros_like(ids, dtype=torch.bool)
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        p = (1 - eps) * t[row] + eps
        row_ids, row_labels = ids[row, :n], labels[row, :n]
        masked = (
            (draws[row, :n] < p)
            & (row_labels != -100)
            & (row_ids != SPECIAL[0])
            & (row_ids != SPECIAL[1])
        )
        masked_all[row, :n] = masked
        noised = torch.where(masked, torch.full_like(row_ids, MASK), row_ids)
        full = torch.ones(1, 1, n, n, dtype=torch.bool)
        logits = model(input_ids=noised[None], attention_mask=full).logits[0]
        logits = torch.cat([logits[:1], logits[:-1]])  # position i predicts token i
        token_loss = F.cross_entropy(logits[masked].float(), row_ids[masked], reduction="none")
        total = total + (token_loss / p).sum() / (row_labels != -100).sum()
    return total, masked_all


def test_loss_and_gradients_equal_the_definition(model: torch.nn.Module) -> None:
    batch = padded_batch()
    objective = DiffusionLoss(MASK, SPECIAL, eps=1e-3)
    assert int(objective.count(batch)) == 2
    torch.manual_seed(7)
    ours = objective(model, batch)
    grads = torch.autograd.grad(ours, list(model.parameters()))
    expected, masked = reference_loss(model, batch, 7, 1e-3)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    assert masked.any()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # without importance weighting the same draws give another (smaller) loss
    torch.manual_seed(7)
    plain = DiffusionLoss(MASK, SPECIAL, eps=1e-3, importance_weighting=False)(model, batch)
    assert plain.item() < ours.item()


def test_only_labelled_real_non_special_tokens_are_masked() -> None:
    batch = padded_batch()
    ids, labels = batch["input_ids"], batch["labels"]
    segments = segment_ids(batch)
    seen = torch.zeros_like(ids, dtype=torch.bool)
    for seed in range(30):
        torch.manual_seed(seed)
        noised, masked, p = noise_batch(ids, labels, segments, MASK, SPECIAL, eps=0.5)
        assert torch.equal(noised[masked], torch.full_like(noised[masked], MASK))
        assert torch.equal(noised[~masked], ids[~masked])
        assert (p >= 0.5).all()
        seen |= masked
    eligible = (
        (labels != -100) & (batch["attention_mask"] == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    )
    assert torch.equal(seen, eligible)  # every eligible token is masked sometimes, no other


def logits_under_mask(model, ids, segments, position_ids=None):
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    return model(input_ids=ids, attention_mask=bidirectional_mask(segments), **kwargs).logits


def test_attention_is_bidirectional_within_the_row_and_ignores_padding(model) -> None:
    batch = padded_batch()
    ids, segments = batch["input_ids"], segment_ids(batch)
    with torch.no_grad():
        before = logits_under_mask(model, ids, segments)
        later = ids.clone()
        later[0, 15] = 77  # a later token of row 0
        after = logits_under_mask(model, later, segments)
        assert (before[0, 3] - after[0, 3]).abs().max() > 1e-4  # an earlier position sees it
        causal_before = model(input_ids=ids).logits
        causal_after = model(input_ids=later).logits
        torch.testing.assert_close(causal_before[0, 3], causal_after[0, 3])  # causal would not
        padding = ids.clone()
        padding[1, 15:] = 99  # row 1's padding changed
        padded = logits_under_mask(model, padding, segments)
    torch.testing.assert_close(before[1, :15], padded[1, :15], rtol=1e-5, atol=1e-5)


def test_eager_attention_takes_the_mask_as_an_additive_bias(tiny_llama_dir: Path) -> None:
    batch = padded_batch()
    eager = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, dtype=torch.float32, attn_implementation="eager"
    )
    sdpa = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    with torch.no_grad():
        torch.manual_seed(4)
        with_eager = DiffusionLoss(MASK, SPECIAL, eager_dtype=torch.float32)(eager, batch)
        torch.manual_seed(4)
        with_sdpa = DiffusionLoss(MASK, SPECIAL)(sdpa, batch)
    torch.testing.assert_close(with_eager, with_sdpa, rtol=1e-5, atol=1e-5)


def test_an_attention_without_4d_masks_is_refused(base_config: dict, model) -> None:
    from types import SimpleNamespace

    from axolotl_weave_plugins.methods.diffusion import DiffusionRun, DiffusionSettings

    run = DiffusionRun(SimpleNamespace(diffusion=DiffusionSettings(mask_token_id=MASK), seed=0))
    previous = model.config._attn_implementation
    model.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ConfigError, match="diffusion with attn_implementation"):
            run.build_loss(model)
    finally:
        model.config._attn_implementation = previous


def packed_rows() -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(3)
    rows = []
    for length, prompt in ((9, 3), (12, 5), (7, 2)):
        ids = [1, *torch.randint(10, 400, (length - 1,), generator=gen).tolist()]
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def test_packed_sequences_attend_only_to_themselves(model) -> None:
    rows = packed_rows()
    packed = collate_packed([rows], pad_token_id=2, pad_to=32)
    segments = segment_ids(packed)
    assert segments[0].tolist() == [1] * 9 + [2] * 12 + [3] * 7 + [4] * 4
    with torch.no_grad():
        together = logits_under_mask(model, packed["input_ids"], segments, packed["position_ids"])
        start = 0
        for row in rows:
            n = len(row["input_ids"])
            alone = model(
                input_ids=torch.tensor([row["input_ids"]]),
                attention_mask=torch.ones(1, 1, n, n, dtype=torch.bool),
            ).logits
            torch.testing.assert_close(together[0, start : start + n], alone[0], atol=1e-5, rtol=0)
            start += n


def test_a_packed_batch_counts_and_weighs_each_sequence(model) -> None:
    """One sequence per packed sample: the count, and the loss with every eligible token
    masked (eps = 1: p = 1) equals the sum of the rows' losses unpacked."""
    rows = packed_rows()
    objective = DiffusionLoss(MASK, SPECIAL, eps=1.0)
    packed = collate_packed([rows], pad_token_id=2, pad_to=32)
    assert int(objective.count(packed)) == 3
    # collate_packed masks each sample's first label (here the unlabelled BOS anyway)
    with torch.no_grad():
        together = objective(model, packed)
        alone = sum(objective(model, collate([row], 2)) for row in rows)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_the_sampler_fills_every_mask_deterministically_at_temperature_zero(model) -> None:
    prompt = torch.tensor([1, 40, 41, 42])
    model.eval()
    first = diffusion_sample(model, prompt, MASK, length=6, steps=4)
    again = diffusion_sample(model, prompt, MASK, length=6, steps=4)
    assert first.shape == (10,)
    assert torch.equal(first[:4], prompt)
    assert not (first == MASK).any()
    assert torch.equal(first, again)
    hot = diffusion_sample(
        model, prompt, MASK, 6, 3, temperature=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert not (hot == MASK).any()


def step_losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [record["loss"] for record in state["log_history"] if "loss" in record]


def trained(losses: list[float]) -> bool:
    """Every step's loss finite (0 when no token happened to be masked), some above 0."""
    return all(0 <= loss < 1e4 for loss in losses) and any(loss > 0 for loss in losses)


def diffusion_config(base_config: dict, out: Path, **diffusion: Any) -> dict[str, Any]:
    return {
        **base_config,
        "max_steps": 3,
        "logging_steps": 1,
        "output_dir": str(out),
        "diffusion": {"generation_interval": 2, "generation_steps": 4, **diffusion},
        "seed": 3,
    }


def test_a_run_with_mask_token_id_trains_and_samples(
    base_config: dict, tmp_path: Path, tiny_llama_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "given"
    config = diffusion_config(
        base_config, out, mask_token_id=MASK, generation_max_length=5, num_generation_samples=2
    )
    config["val_set_size"] = 0.25
    with caplog.at_level(logging.INFO, logger="axolotl_weave"):
        train_with(config, tmp_path / "given.yml")
    losses = step_losses(out)
    assert len(losses) == 3 and trained(losses)
    assert (out / "model.safetensors").is_file()
    assert len(AutoTokenizer.from_pretrained(out)) == len(
        AutoTokenizer.from_pretrained(tiny_llama_dir)
    )
    samples = [r.getMessage() for r in caplog.records if "diffusion sample" in r.getMessage()]
    assert len(samples) == 2 and all("at step 2" in s for s in samples)
    state = json.loads((out / "trainer_state.json").read_text())
    evaluated = [r for r in state["log_history"] if "eval_loss" in r]
    assert evaluated and all(0 <= r["eval_loss"] < 1e4 for r in evaluated)


def test_a_resumed_run_draws_the_same_masks(base_config: dict, tmp_path: Path) -> None:
    """Checkpoint at step 2, resume there: the same losses as the run never stopped (the
    masks come from the RNG the checkpoint restores; sampling at every step leaves it alone)."""
    straight_out = tmp_path / "straight"
    config = diffusion_config(base_config, straight_out, mask_token_id=MASK, generation_interval=1)
    config.update(
        max_steps=4, save_steps=2, diffusion={**config["diffusion"], "generation_max_length": 3}
    )
    train_with(config, tmp_path / "a.yml")
    out = tmp_path / "stopped"
    shutil.copytree(straight_out, out)
    shutil.rmtree(out / "checkpoint-4", ignore_errors=True)
    for name in ("model.safetensors", "metrics.jsonl", "trainer_state.json"):
        (out / name).unlink(missing_ok=True)
    resumed = {
        **config,
        "output_dir": str(out),
        "resume_from_checkpoint": str(out / "checkpoint-2"),
    }
    state = train_with(resumed, tmp_path / "b.yml")
    losses = [r["loss"] for r in state.log_history if "loss" in r]
    assert trained(losses)
    assert losses == pytest.approx(step_losses(straight_out), rel=1e-5, abs=1e-6)


def test_a_run_adds_the_mask_token_when_none_is_given(base_config: dict, tmp_path: Path) -> None:
    out = tmp_path / "added"
    train_with(diffusion_config(base_config, out, generate_samples=False), tmp_path / "a.yml")
    assert trained(step_losses(out))
    tokenizer = AutoTokenizer.from_pretrained(out)
    token_id = tokenizer.convert_tokens_to_ids("<|diffusion_mask|>")
    assert token_id == len(tokenizer) - 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_a_packed_run_trains(base_config: dict, tmp_path: Path) -> None:
    out = tmp_path / "packed"
    config = diffusion_config(base_config, out, mask_token_id=MASK, generate_samples=False)
    config["sample_packing"] = True
    train_with(config, tmp_path / "p.yml")
    assert trained(step_losses(out))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"diffusion": {"mask_token_id": 5}, "rl": "dpo"}, "diffusion with rl: dpo"),
        ({"diffusion": {}, "use_eaft": True}, "diffusion with use_eaft"),
        ({"diffusion": {"mask_tokn_id": 5}}, "mask_tokn_id"),
        ({"diffusion": {"eps": 2}}, "eps"),
        ({"diffusion": {"min_mask_ratio": 0.8, "max_mask_ratio": 0.2}}, "min_mask_ratio"),
        ({"diffusion": {"noise_schedule": "square"}}, "noise_schedule"),
    ],
)
def test_diffusion_configs_refused(base_config: dict, tmp_path: Path, keys: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", {**base_config, **keys}), [])


def test_a_mask_token_id_beyond_the_vocabulary_is_refused(base_config: dict, tmp_path: Path):
    config = diffusion_config(base_config, tmp_path / "o", mask_token_id=100_000)
    with pytest.raises(ConfigError, match="diffusion.mask_token_id: 100000 is beyond"):
        train_with(config, tmp_path / "c.yml")


def test_axolotls_plugin_path_names_this_plugin(
    base_config: dict, tmp_path: Path, weave_log: pytest.LogCaptureFixture
) -> None:
    """Axolotl's examples list `axolotl.integrations.diffusion.DiffusionPlugin` under
    `plugins:`: it names this plugin, with no warning that it is ignored."""
    config = {
        **base_config,
        "plugins": ["axolotl.integrations.diffusion.DiffusionPlugin"],
        "diffusion": {"eps": 0.01},
    }
    session = open_session(write_config(tmp_path / "c.yml", config))
    assert session.cfg.diffusion.eps == 0.01
    assert not [r for r in weave_log.records if r.levelno >= logging.WARNING]


def test_inference_samples_the_trained_model_llada_style(base_config: dict, tmp_path: Path) -> None:
    """`weave inference` on a diffusion run's config: the model generates by LLaDA sampling
    (the mask token the run added, found in the saved tokenizer), streamed to the console."""
    from axolotl_weave._cli import CliContext, build_app
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference
    from axolotl_weave_testing import greedy
    from typer.testing import CliRunner

    out = tmp_path / "run"
    config = diffusion_config(base_config, out, generate_samples=False, generation_steps=4)
    path = write_config(tmp_path / "c.yml", config)
    train_with(config, path)
    session = open_session(path)
    loaded = load_for_inference(session, choose_model(session.cfg, None, None))
    mask = loaded.tokenizer.convert_tokens_to_ids("<|diffusion_mask|>")
    prompt = loaded.prompter.prompt_ids("Reverse the word.")
    torch.manual_seed(0)
    sampled = diffusion_sample(loaded.model, torch.tensor(prompt), mask, 6, 4)[len(prompt) :]
    eos = [i for i, t in enumerate(sampled.tolist()) if t in loaded.eos_token_ids]
    expected = loaded.tokenizer.decode(
        sampled[: eos[0] + 1] if eos else sampled, skip_special_tokens=True
    )
    assert greedy(loaded, prompt, 6) == expected  # generate is the diffusion sampler
    assert isinstance(loaded.model.generate, DiffusionGenerate)
    pm = make_plugin_manager()
    flags = ["--temperature", "0", "--max-new-tokens", "6"]
    result = CliRunner().invoke(
        build_app(pm),
        ["inference", str(path), *flags],
        input="Reverse the word.\n",
        obj=CliContext(pm),
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected + "\n"
