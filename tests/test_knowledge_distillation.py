"""Knowledge distillation from a teacher's top-k log-probabilities (`kd_trainer: true`,
`type: axolotl.integrations.kd.chat_template`): the loss and its gradients against the
definition written out position by position, a row's teacher entries turned into target columns
aligned with the tokens they describe, runs (distillation trains; `kd_alpha: 0` with
`kd_ce_alpha: 1` trains exactly as supervised fine-tuning on the same rows), and the configs
refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from axolotl_weave import IGNORE_INDEX, ConfigError, DataError, collate, hookimpl
from axolotl_weave._run import open_session
from axolotl_weave_plugins.losses.sft import CrossEntropy
from axolotl_weave_plugins.methods._kd_format import FORMAT_NAME
from axolotl_weave_plugins.methods.knowledge_distillation import TopKDistillation
from axolotl_weave_testing import build_rows, train_with, write_config, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def reference_loss(
    logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    kd_alpha: float,
    ce_alpha: float,
    temperature: float,
    normalize_topk: bool,
    beta: float = 0.0,
) -> torch.Tensor:
    """The objective from its definition, one position at a time: the prediction at t against
    label t + 1 (cross-entropy) and against the teacher's entry of token t + 1 (the teacher's
    top-k and the student's log-softmax at the temperature gathered at those ids, compared as
    Axolotl's `distillation_loss_fn` does for `beta`: forward KL, reverse KL, or the
    Jensen-Shannon mix), `kd_alpha * T**2 * KL + ce_alpha * CE`, divided by the labelled
    targets."""
    labels = batch["labels"]
    ce = kl = torch.zeros((), dtype=torch.float32)
    targets = 0
    for row in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            label = int(labels[row, t + 1])
            if label == IGNORE_INDEX:
                continue
            targets += 1
            ce = ce - logits[row, t].float().log_softmax(-1)[label]
            keep = batch["target_mask"][row, t + 1].bool()
            if not keep.any():
                continue
            ids = batch["target_token_ids"][row, t + 1][keep]
            teacher = batch["target_logprobs"][row, t + 1][keep]
            student = (logits[row, t].float() / temperature).log_softmax(-1)[ids]
            if normalize_topk:
                student = student - torch.logsumexp(student, dim=-1)
            if beta == 0.0:
                kl = kl + (teacher.exp() * (teacher - student)).sum()
            elif beta == 1.0:
                kl = kl + (student.exp() * (student - teacher)).sum()
            else:
                mean = ((1 - beta) * student.exp() + beta * teacher.exp()).log()
                teacher_kl = torch.nn.functional.kl_div(
                    mean, teacher, reduction="sum", log_target=True
                )
                student_kl = torch.nn.functional.kl_div(
                    mean, student, reduction="sum", log_target=True
                )
                kl = kl + beta * teacher_kl + (1 - beta) * student_kl
    return (kd_alpha * temperature**2 * kl + ce_alpha * ce) / targets


@pytest.fixture
def model_and_batch(tiny_llama_dir: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The tiny llama and a batch of two rows with a random teacher's top-4 per token: masked
    prompt tokens, one trained token without a teacher entry, one row's k cut to 3."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    vocab, k = model.config.vocab_size, 4
    ids = torch.randint(3, vocab, (2, 12))
    labels = ids.clone()
    labels[0, :4] = IGNORE_INDEX
    labels[1, 9:] = IGNORE_INDEX
    target_ids = torch.stack([torch.randperm(vocab)[:k] for _ in range(24)]).reshape(2, 12, k)
    teacher = torch.randn(2, 12, k).log_softmax(-1)
    mask = (labels != IGNORE_INDEX).long()[..., None].expand(2, 12, k).clone()
    mask[0, 7] = 0  # a trained token the teacher gave nothing for
    mask[1, :, 3] = 0  # this row's teacher gave 3 ids
    teacher[1, :, :3] = teacher[1, :, :3].log_softmax(-1)
    return model, {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": torch.ones_like(ids),
        "target_token_ids": target_ids,
        "target_logprobs": teacher,
        "target_mask": mask,
    }


@pytest.mark.parametrize(
    ("kd_alpha", "ce_alpha", "temperature", "normalize", "beta"),
    [
        (1.0, 0.0, 1.0, False, 0.0),
        (0.9, 0.1, 2.0, False, 0.0),
        (0.5, 0.5, 0.7, True, 0.0),
        (1.0, 0.0, 1.0, False, 1.0),
        (0.9, 0.1, 2.0, True, 0.5),
        (1.0, 0.0, 0.7, False, 0.2),
    ],
)
def test_loss_and_gradients_equal_the_definition(
    model_and_batch,
    kd_alpha: float,
    ce_alpha: float,
    temperature: float,
    normalize: bool,
    beta: float,
) -> None:
    model, batch = model_and_batch
    objective = TopKDistillation(kd_alpha, ce_alpha, temperature, normalize, beta)
    assert int(objective.count(batch)) == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    ours = objective(model, batch) / objective.count(batch)
    grads = torch.autograd.grad(ours, list(model.parameters()))
    logits = model(input_ids=batch["input_ids"]).logits
    expected = reference_loss(logits, batch, kd_alpha, ce_alpha, temperature, normalize, beta)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    if beta == 0 or normalize:  # a divergence (the student's k not renormalised: only forward)
        assert ours.item() > 0


def test_kd_alpha_zero_is_the_supervised_loss(model_and_batch) -> None:
    model, batch = model_and_batch
    plain = CrossEntropy()
    distil = TopKDistillation(0.0, 1.0, 2.0, False)
    assert torch.equal(distil(model, batch), plain(model, batch))
    assert torch.equal(distil.count(batch), plain.count(batch))


def test_measures_report_both_terms(model_and_batch) -> None:
    """For held-out rows, the KL and the cross-entropy are reported unweighted, and the loss is
    their weighted sum."""
    model, batch = model_and_batch
    objective = TopKDistillation(0.25, 0.75, 2.0, False)
    with torch.no_grad():
        loss, metrics = objective.measures(model, batch, None)
        kl_only = TopKDistillation(1.0, 0.0, 1.0, False)(model, batch)
        ce_only = CrossEntropy()(model, batch)
    torch.testing.assert_close(metrics["ce"], ce_only)
    torch.testing.assert_close(loss, 0.25 * 4.0 * metrics["kl"] + 0.75 * metrics["ce"])
    assert not torch.allclose(metrics["kl"], kl_only)  # at temperature 2, not 1


def conversation(number: int) -> list[dict[str, str]]:
    """A short conversation: a system prompt, a question and an answer."""
    return [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": f"What is {number} plus {number}?"},
        {"role": "assistant", "content": f"It is {2 * number}."},
    ]


def token_count(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """How many tokens the conversation renders to (as the format tokenizes it)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def teacher_row(
    tokenizer: Any, number: int, k: int = 3, legacy: bool = False, seed: int = 0
) -> dict[str, Any]:
    """A raw row: the conversation and a random teacher's top-k for all its tokens but the
    first (as vLLM's prompt log-probabilities, whose first is null), in Axolotl's current layout
    (`logprobs` floats and `target_token_ids`) or its legacy one (`token_id:ID` entries)."""
    messages = conversation(number)
    generator = torch.Generator().manual_seed(seed + number)
    length = token_count(tokenizer, messages)
    ids = [torch.randperm(len(tokenizer), generator=generator)[:k].tolist() for _ in range(length)]
    values = [torch.randn(k, generator=generator).log_softmax(-1).tolist() for _ in range(length)]
    ids[0], values[0] = None, None
    if legacy:
        entries = [
            None
            if v is None
            else [{"token": f"token_id:{i}", "logprob": x} for i, x in zip(t, v, strict=True)]
            for t, v in zip(ids, values, strict=True)
        ]
        return {"messages": messages, "logprobs": entries}
    return {"messages": messages, "logprobs": values, "target_token_ids": ids}


@pytest.fixture
def chat_tokenizer(tiny_tokenizer: Any) -> Any:
    """The tiny tokenizer with a ChatML template."""
    tiny_tokenizer.chat_template = CHATML
    return tiny_tokenizer


@pytest.mark.parametrize("legacy", [False, True])
def test_a_row_becomes_aligned_target_columns(weave_hooks, chat_tokenizer, legacy: bool) -> None:
    """Entry p of the teacher's list (right-aligned on the tokens) describes token p: its ids,
    its log-probabilities renormalised at kd_temperature (here the teacher's 2 / kd 1: doubled,
    then log-softmax), and a mask that is 1 where the token is labelled; the loss then pairs it
    with the prediction at p - 1. The labels train the answer and its `<|im_end|>`."""
    raw = teacher_row(chat_tokenizer, 7, k=3, legacy=legacy)
    raw["logprobs"] = [None, *raw["logprobs"][2:]]  # fewer entries than tokens: right-aligned
    if not legacy:
        raw["target_token_ids"] = [None, *raw["target_token_ids"][2:]]
    cfg = type("Cfg", (), {"train_on_inputs": False, "sequence_len": 2048, "kd_temperature": 1.0})
    row = build_rows(weave_hooks, chat_tokenizer, [raw], cfg, type=FORMAT_NAME, temperature=2.0)[0]
    length = len(row["input_ids"])
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label >= 0]
    assert chat_tokenizer.decode(trained) == "It is 14.<|im_end|>"
    for name in ("target_token_ids", "target_logprobs", "target_mask"):
        assert len(row[name]) == length and all(len(entry) == 3 for entry in row[name])
    offset = length - len(raw["logprobs"])
    assert offset == 1 and row["target_mask"][1] == [0, 0, 0]  # the teacher's null entry
    for position in range(length):
        entry = raw["logprobs"][position - offset] if position >= offset else None
        if entry is None:
            assert row["target_mask"][position] == [0, 0, 0]
            continue
        if legacy:
            ids = [int(item["token"].split(":")[1]) for item in entry]
            values = torch.tensor([item["logprob"] for item in entry])
        else:
            ids, values = raw["target_token_ids"][position - offset], torch.tensor(entry)
        assert row["target_token_ids"][position] == ids
        expected = (2.0 * values).log_softmax(-1)
        torch.testing.assert_close(torch.tensor(row["target_logprobs"][position]), expected)
        labelled = row["labels"][position] != IGNORE_INDEX
        assert row["target_mask"][position] == [int(labelled)] * 3
    assert sum(mask[0] for mask in row["target_mask"]) == len(trained)


def test_collated_targets_follow_the_tokens(weave_hooks, chat_tokenizer) -> None:
    """Rows of different lengths and k are padded with a zero mask, aligned with input_ids."""
    raws = [teacher_row(chat_tokenizer, 3, k=2), teacher_row(chat_tokenizer, 123456, k=4)]
    cfg = type("Cfg", (), {"train_on_inputs": False, "sequence_len": 2048, "kd_temperature": 1.0})
    rows = build_rows(weave_hooks, chat_tokenizer, raws, cfg, type=FORMAT_NAME)
    columns = weave_hooks.dataset_formats()[FORMAT_NAME].columns
    batch = collate(rows, chat_tokenizer.pad_token_id or 0, None, columns)
    width = batch["input_ids"].shape[1]
    assert batch["target_token_ids"].shape == (2, width, 4)
    assert batch["target_logprobs"].dtype == torch.float32
    short = len(rows[0]["input_ids"])
    assert short < width
    assert batch["target_mask"][0, short:].sum() == 0 and batch["target_mask"][0, :, 2:].sum() == 0
    assert batch["target_token_ids"][0, :short, :2].tolist() == rows[0]["target_token_ids"]


def test_more_teacher_entries_than_tokens_is_refused(weave_hooks, chat_tokenizer) -> None:
    raw = teacher_row(chat_tokenizer, 5)
    raw["logprobs"] = [[-0.1, -2.0, -3.0], *raw["logprobs"]]
    raw["target_token_ids"] = [[1, 2, 3], *raw["target_token_ids"]]
    cfg = type("Cfg", (), {"train_on_inputs": False, "sequence_len": 2048, "kd_temperature": 1.0})
    with pytest.raises(DataError, match="more than the .* tokens"):
        build_rows(weave_hooks, chat_tokenizer, [raw], cfg, type=FORMAT_NAME)


def step_losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [record["loss"] for record in state["log_history"] if "loss" in record]


@pytest.fixture
def kd_file(chat_tokenizer, tmp_path: Path) -> Path:
    """Eight conversations with a random teacher's top-3 per token."""
    rows = [teacher_row(chat_tokenizer, n, k=3) for n in range(8)]
    return write_jsonl(tmp_path / "kd.jsonl", rows)


def kd_config(base_config: dict, kd_file: Path, out: Path, **keys: Any) -> dict[str, Any]:
    """The base config distilling from `kd_file` into `out`."""
    return {
        **base_config,
        "datasets": [{"path": str(kd_file), "type": FORMAT_NAME}],
        "chat_template": "chatml",
        "kd_trainer": True,
        "max_steps": 3,
        "logging_steps": 1,
        "output_dir": str(out),
        "dataset_prepared_path": str(out.parent / f"{out.name}-prepared"),
        **keys,
    }


class Recorder:
    """Records the run's objective and training plan (wrapping what the plugins return)."""

    objective: Any = None
    plan: Any = None

    @hookimpl(wrapper=True)
    def build_loss(self, cfg: Any, model: Any) -> Any:
        self.objective = yield
        return self.objective

    @hookimpl(wrapper=True)
    def plan_batches(self, cfg: Any, dataset: Any, evaluation: bool) -> Any:
        plan = yield
        if not evaluation:
            self.plan = plan
        return plan


def test_a_distillation_run_trains_and_saves(
    base_config: dict, kd_file: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """A run distils (the objective is the distillation's, its batches carry the teacher's
    columns), logs finite losses, the first the objective of the first micro-batch on the
    starting model (the columns reach the loss as the format made them), and saves the model."""
    out, recorder = tmp_path / "kd", Recorder()
    config = kd_config(base_config, kd_file, out, kd_alpha=0.9, kd_ce_alpha=0.1, kd_temperature=2)
    train_with({**config, "val_set_size": 2, "eval_steps": 3}, tmp_path / "kd.yml", recorder)
    losses = step_losses(out)
    state = json.loads((out / "trainer_state.json").read_text())
    evaluated = [record for record in state["log_history"] if "eval_loss" in record]
    assert evaluated and {"eval_kl", "eval_ce"} <= set(evaluated[-1])
    assert all(math.isfinite(evaluated[-1][key]) for key in ("eval_loss", "eval_kl", "eval_ce"))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert (out / "model.safetensors").is_file()
    assert isinstance(recorder.objective, TopKDistillation)
    first = next(iter(recorder.plan.micro_batches(0)))
    assert first["target_token_ids"].shape[:2] == first["input_ids"].shape
    assert first["target_mask"].sum() > 0
    start = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.no_grad():
        expected = recorder.objective(start, first) / recorder.objective.count(first)
    assert losses[0] == pytest.approx(expected.item(), rel=1e-4)


def test_kd_alpha_zero_trains_as_supervised_fine_tuning(
    base_config: dict, kd_file: Path, chat_tokenizer, weave_hooks, tmp_path: Path
) -> None:
    """`kd_alpha: 0, kd_ce_alpha: 1` against a plain run on the same tokenized rows (the
    format's tokens and labels, given pre-tokenized): the same losses and the same weights."""
    raws = [json.loads(line) for line in kd_file.read_text().splitlines()]
    cfg = type("Cfg", (), {"train_on_inputs": False, "sequence_len": 2048, "kd_temperature": 1.0})
    built = build_rows(weave_hooks, chat_tokenizer, raws, cfg, type=FORMAT_NAME)
    plain_rows = [{k: row[k] for k in ("input_ids", "labels", "attention_mask")} for row in built]
    plain_file = write_jsonl(tmp_path / "plain.jsonl", plain_rows)
    distil = tmp_path / "distil"
    train_with(
        kd_config(base_config, kd_file, distil, kd_alpha=0, kd_ce_alpha=1), tmp_path / "a.yml"
    )
    plain = tmp_path / "plain"
    plain_config = {
        **kd_config(base_config, kd_file, plain),
        "datasets": [{"path": str(plain_file)}],
        "kd_trainer": False,
    }
    train_with(plain_config, tmp_path / "b.yml")
    assert step_losses(distil) == step_losses(plain)
    ours, theirs = load_file(distil / "model.safetensors"), load_file(plain / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"rl": "dpo"}, "kd_trainer: true cannot be combined with rl"),
        ({"use_eaft": True}, "cannot be combined with use_eaft"),
        ({"sample_packing": True}, "sample_packing: true cannot be used with kd_trainer"),
        ({"kd_beta": 1.5}, "kd_beta"),
        ({"kd_online_server_base_url": "http://x"}, "kd_online_server_base_url"),
        ({"kd_top_k_before_softmax": True}, "kd_top_k_before_softmax"),
        ({"kd_zscore_base_temp": 1.0}, "kd_zscore_base_temp"),
        ({"kd_temperature": 0}, "kd_temperature"),
        ({"kd_alpha": -1}, "kd_alpha"),
        ({"kd_trainer": False}, f"type: {FORMAT_NAME} needs kd_trainer: true"),
    ],
)
def test_distillation_configs_refused(
    base_config: dict, kd_file: Path, tmp_path: Path, keys: dict, message: str
) -> None:
    config = kd_config(base_config, kd_file, tmp_path / "out", **keys)
    with pytest.raises(ConfigError, match=message):
        open_session(write_config(tmp_path / "c.yml", config), [])


def test_an_axolotl_distillation_config_validates(
    base_config: dict, kd_file: Path, tmp_path: Path
) -> None:
    """Axolotl's README config: its plugin path names this plugin, its keys are read."""
    config = kd_config(base_config, kd_file, tmp_path / "out", kd_ce_alpha=0.1, kd_alpha=0.9)
    config["plugins"] = ["axolotl.integrations.kd.KDPlugin"]
    config["kd_temperature"] = 1.0
    config["datasets"][0].update(field_messages="messages", logprobs_field="logprobs")
    session = open_session(write_config(tmp_path / "c.yml", config), [])
    assert (session.cfg.kd_trainer, session.cfg.kd_alpha, session.cfg.kd_ce_alpha) == (
        True,
        0.9,
        0.1,
    )


def test_kd_trainer_on_other_rows_is_refused(base_config: dict, tmp_path: Path) -> None:
    config = {**base_config, "kd_trainer": True}
    with pytest.raises(ConfigError, match=f"trains on type: {FORMAT_NAME} rows only"):
        open_session(write_config(tmp_path / "c.yml", config), [])
