"""Axolotl compatibility is a plugin (`axolotl_compat`): with it, Axolotl keys nothing here
implements are dropped with a warning and its aliases apply; blocked, an Axolotl-only key is an
unknown key like any other, and a key that changes what is trained gets no special reason."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave._errors import ConfigError
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import Session, open_session
from axolotl_weave_testing import run_weave, write_config

COMPAT = "axolotl_compat"


def session(tmp_path: Path, config: dict[str, Any], block: tuple[str, ...] = ()) -> Session:
    path = write_config(tmp_path / "config.yml", config)
    return open_session(path, [], make_plugin_manager(block=block))


def error(tmp_path: Path, config: dict[str, Any], block: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        session(tmp_path, config, block)
    return str(info.value)


def test_the_core_names_no_axolotl_key() -> None:
    import axolotl_weave

    core = Path(axolotl_weave.__file__).parent
    assert not (core / "_axolotl_keys.py").exists()
    for path in core.glob("*.py"):
        text = path.read_text()
        for name in ("grokfast_alpha", "AXOLOTL_TOP_LEVEL_KEYS", "AXOLOTL_DECISIVE_KEYS"):
            assert name not in text, (path.name, name)


def test_with_the_plugin_axolotl_keys_are_dropped_with_a_warning(
    tmp_path: Path, base_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    entry = {**base_config["datasets"][0], "roles_to_train": ["gpt"]}
    # (neftune_noise_alpha was the example here: it changes what is trained, and is implemented)
    config = {**base_config, "gc_steps": 5, "datasets": [entry]}
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        cfg = session(tmp_path, config).cfg
    assert "config key 'gc_steps' is an Axolotl option" in caplog.text
    assert "(Python garbage collection cadence: memory)" in caplog.text  # why it may be ignored
    assert "'datasets[].roles_to_train'" in caplog.text
    assert "gc_steps" not in cfg.model_dump()


@pytest.mark.parametrize("key", ["use_onebitllms", "dense_mixer"])
def test_blocked_an_axolotl_only_key_is_an_unknown_key(
    tmp_path: Path, base_config: dict[str, Any], key: str
) -> None:
    message = error(tmp_path, {**base_config, key: 5}, block=(COMPAT,))
    assert f"  - {key}: unknown key" in message
    assert "IGNORED" not in message and "Axolotl option" not in message


def test_blocked_an_axolotl_dataset_key_is_an_unknown_key(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    entry = {**base_config["datasets"][0], "roles_to_train": ["gpt"]}
    message = error(tmp_path, {**base_config, "datasets": [entry]}, block=(COMPAT,))
    assert "unknown key 'roles_to_train'" in message


def test_blocked_a_key_changing_what_is_trained_gets_no_axolotl_reason(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    # (rl: dpo, grokfast_alpha, scaling_softmax were the example; plugins implement them now)
    with_plugin = error(tmp_path, {**base_config, "use_onebitllms": True})
    assert "use_onebitllms: an Axolotl option that no installed plugin" in with_plugin
    blocked = error(tmp_path, {**base_config, "use_onebitllms": True}, block=(COMPAT,))
    assert "  - use_onebitllms: unknown key" in blocked


def test_a_parallelism_key_is_refused_for_where_the_run_fits(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    """Tensor and context parallelism split the model over GPUs: refused, saying so (not that
    they would change what is trained)."""
    message = error(tmp_path, {**base_config, "context_parallel_size": 2})
    assert "context_parallel_size: an Axolotl option that no installed plugin" in message
    assert "a way of splitting the model or its sequences over GPUs" in message
    assert "changes what is trained" not in message


@pytest.mark.parametrize("key", ["s2_attention", "landmark_attention", "xpos_rope"])
def test_a_key_axolotl_itself_dropped_says_so(
    tmp_path: Path, base_config: dict[str, Any], key: str
) -> None:
    message = " ".join(error(tmp_path, {**base_config, key: True}).split())
    assert f"{key}: " in message and "Axolotl" in message and "remove it" in message
    assert "not yet in Axolotl Weave" not in message


def test_the_train_on_split_alias_is_the_plugins(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    entry = {**base_config["datasets"][0], "train_on_split": "validation"}
    config = {**base_config, "datasets": [entry]}
    assert session(tmp_path, config).cfg.datasets[0].split == "validation"
    assert "unknown key 'train_on_split'" in error(tmp_path, config, block=(COMPAT,))


def test_a_format_option_is_not_taken_for_an_axolotl_key(
    tmp_path: Path, base_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """`field_messages` is an Axolotl dataset key and chat_template's option: it is kept."""
    entry = {"path": base_config["datasets"][0]["path"], "type": "chat_template"}
    entry["field_messages"] = "conversation"
    with caplog.at_level(logging.WARNING, logger="axolotl_weave"):
        cfg = session(tmp_path, {**base_config, "datasets": [entry]}).cfg
    assert cfg.datasets[0].option("field_messages") == "conversation"
    assert "IGNORED" not in caplog.text


def test_cli_with_the_plugin_blocked(tmp_path: Path, base_config: dict[str, Any]) -> None:
    path = write_config(tmp_path / "config.yml", {**base_config, "use_onebitllms": True})
    result = run_weave("-p", f"no:{COMPAT}", "validate", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "use_onebitllms" in result.stderr and "unknown key" in result.stderr
    assert "IGNORED" not in result.stderr


AXOLOTL_EXAMPLE = """
base_model: {base_model}
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer
load_in_8bit:
load_in_4bit: false
strict: false
datasets:
  - path: {data}
    type: alpaca
dataset_prepared_path:
val_set_size: 0.05
output_dir: {out}
sequence_len: 128
sample_packing: false
pad_to_sequence_len:
adapter: lora
lora_model_dir:
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
relora: true
jagged_restart_steps: 20
jagged_restart_warmup_steps: 2
jagged_restart_anneal_steps: 1
model_config:
  attention_dropout: 0.0
wandb_project:
wandb_entity:
wandb_watch:
wandb_name:
wandb_log_model:
gradient_accumulation_steps: 1
micro_batch_size: 2
num_epochs: 1
max_steps: 40
optimizer: adamw_torch_fused
lr_scheduler: cosine
cosine_min_lr_ratio: 0.1
learning_rate: 0.0002
train_on_inputs: false
group_by_length: true
bf16: auto
fp16:
tf32: false
gradient_checkpointing: true
early_stopping_patience:
resume_from_checkpoint:
local_rank:
logging_steps: 1
xformers_attention:
flash_attention:
warmup_steps: 2
evals_per_epoch: 0
saves_per_epoch: 1
save_strategy: steps
save_only_model: false
debug:
deepspeed:
weight_decay: 0.0
fsdp:
fsdp_config:
special_tokens:
"""


def test_an_axolotl_example_config_validates_with_its_current_names(
    tiny_llama_dir: Path, alpaca_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = AXOLOTL_EXAMPLE.format(base_model=tiny_llama_dir, data=alpaca_file, out=tmp_path / "o")
    path = tmp_path / "axolotl.yml"
    path.write_text(text)
    with caplog.at_level("WARNING", logger="axolotl_weave"):
        cfg = open_session(path).cfg
    assert (cfg.relora_steps, cfg.relora_warmup_steps, cfg.relora_anneal_steps) == (20, 2, 1)
    assert cfg.overrides_of_model_config == {"attention_dropout": 0.0}
    assert cfg.evals_per_epoch is None and cfg.cosine_min_lr_ratio == 0.1
    assert cfg.lora_r == 8 and cfg.special_tokens in (None, {})
    assert "'group_by_length'" in caplog.text and "padding, not which rows" in caplog.text

    path.write_text(text + "use_onebitllms: true\n")  # (use_pose, scaling_softmax were examples)
    with pytest.raises(ConfigError, match="use_onebitllms: an Axolotl option that no installed"):
        open_session(path)


def test_a_key_axolotls_examples_carry_but_never_read_names_the_key_meant(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    message = error(tmp_path, {**base_config, "lr_scheduler": "cosine", "eta_min": 7e-7})
    assert "eta_min: not an Axolotl key" in message
    assert "cosine_min_lr_ratio (eta_min / learning_rate)" in message
