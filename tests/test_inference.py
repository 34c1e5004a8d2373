"""`weave inference`: the trained adapter loaded through the hooks, prompts rendered exactly as
in training, answers streamed, sampling flags, chat, and each bad input as one message.

One tiny LoRA run (2 steps on alpaca rows) is trained for the module; the commands run in this
process through typer's runner (the same app `weave` builds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from axolotl_weave_testing import (
    chat_template_config,
    greedy,
    train_tiny_lora,
)


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA adapter trained for 2 steps; its config mapping, with `_path` its YAML file."""
    return train_tiny_lora(tiny_llama_dir, tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="module")
def loaded(trained: dict[str, Any]) -> Any:
    """The model `weave inference` loads for the config, in this process."""
    return loaded_model(trained["_path"])


def invoke(*args: str, stdin: str = "") -> Any:
    """Run `weave ARGS` in this process with `stdin`; the click result (stdout, stderr apart)."""
    from axolotl_weave._cli import CliContext, build_app
    from axolotl_weave._pluginmanager import make_plugin_manager
    from typer.testing import CliRunner

    pm = make_plugin_manager()
    return CliRunner().invoke(build_app(pm), list(args), input=stdin, obj=CliContext(pm))


def loaded_model(config_path: Path, **choice: str | None) -> Any:
    """The model `weave inference` loads for the config (an adapter on its base)."""
    from axolotl_weave.commands import open_session
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference

    session = open_session(config_path)
    picked = choose_model(session.cfg, choice.get("lora"), choice.get("base"))
    return load_for_inference(session, picked)


def masked_prefix(row: dict[str, list[int]]) -> list[int]:
    """The ids before the first trained token of a built training row: its prompt."""
    from axolotl_weave import IGNORE_INDEX

    trained = [i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX]
    return list(row["input_ids"][: trained[0]])


def test_the_adapter_is_loaded_through_the_hooks(trained: dict[str, Any], loaded: Any) -> None:
    assert type(loaded.model).__name__ == "PeftModelForCausalLM"
    assert loaded.choice.adapter_dir == Path(trained["output_dir"])
    assert loaded.context_length == 1024
    assert loaded.tokenizer.eos_token_id in loaded.eos_token_ids
    assert not loaded.model.training


def test_the_prompt_is_the_one_training_saw(trained: dict[str, Any], loaded: Any) -> None:
    """The ids of a prompt are the masked prefix of a training row with that instruction."""
    from axolotl_weave import rows_table
    from axolotl_weave.commands import open_session

    session = open_session(trained["_path"])
    entry = session.cfg.datasets[0]
    row = {"instruction": "Reverse the word.", "input": "", "output": "tac"}
    (built,) = list(
        session.formats["alpaca"].build(entry, rows_table([row]), loaded.tokenizer, session.cfg)
    )
    prefix = masked_prefix(built)
    assert loaded.prompter.mode == "format"
    assert loaded.prompter.prompt_ids("Reverse the word.") == prefix
    text = loaded.tokenizer.decode(prefix)
    assert text.endswith("### Instruction:\nReverse the word.\n\n### Response:\n")


def test_inference_streams_greedy_answers_to_each_line(
    trained: dict[str, Any], loaded: Any
) -> None:
    prompts = ["Reverse the word.", "Add the numbers."]
    expected = [greedy(loaded, loaded.prompter.prompt_ids(p), 6) for p in prompts]
    result = invoke(
        "inference",
        str(trained["_path"]),
        "--temperature",
        "0",
        "--max-new-tokens",
        "6",
        stdin="\n".join(prompts) + "\n",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "".join(answer + "\n" for answer in expected)
    assert "prompt format of type: alpaca" in result.stderr


def test_generation_streams_pieces_and_stops_at_stop_strings(
    trained: dict[str, Any], loaded: Any
) -> None:
    from axolotl_weave_plugins.inference._generation import Sampling, generate

    ids = loaded.prompter.prompt_ids("Add the numbers.")
    full = generate(loaded, ids, Sampling(max_new_tokens=24, temperature=0))
    pieces = list(full)
    assert len(pieces) > 1 and "".join(pieces) == full.text == greedy(loaded, ids, 24)
    assert full.completion_tokens <= 24 and full.finish_reason in ("stop", "length")
    assert full.prompt_tokens == len(ids)
    stop = full.text.strip()[len(full.text.strip()) // 2 :][:2]
    cut = generate(loaded, ids, Sampling(max_new_tokens=24, temperature=0, stop=(stop,)))
    assert "".join(cut) == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop"


def test_sampling_flags_seed_and_greedy(trained: dict[str, Any]) -> None:
    args = ("inference", str(trained["_path"]), "--max-new-tokens", "8", "--temperature", "1.5")
    first = invoke(*args, "--seed", "3", "--top-p", "0.9", "--top-k", "20", stdin="Hi\n")
    again = invoke(*args, "--seed", "3", "--top-p", "0.9", "--top-k", "20", stdin="Hi\n")
    assert first.exit_code == again.exit_code == 0, first.stderr
    assert first.stdout == again.stdout
    bad = invoke(*args, "--top-p", "0", stdin="Hi\n")
    assert bad.exit_code != 0 and "top_p must be in (0, 1]" in bad.stderr


def test_whole_input_is_one_prompt(trained: dict[str, Any], loaded: Any) -> None:
    expected = greedy(loaded, loaded.prompter.prompt_ids("line one\nline two"), 5)
    result = invoke(
        "inference",
        str(trained["_path"]),
        "--whole",
        "--temperature",
        "0",
        "--max-new-tokens",
        "5",
        stdin="line one\nline two\n",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_chat_keeps_the_conversation(trained: dict[str, Any], loaded: Any) -> None:
    from axolotl_weave_plugins.inference._prompting import Message

    first = greedy(loaded, loaded.prompter.prompt_ids("Reverse the word."), 4)
    turns = [
        Message("user", "Reverse the word."),
        Message("assistant", first),
        Message("user", "Add the numbers."),
    ]
    history = loaded.prompter.conversation_ids(turns)
    second = greedy(loaded, history, 4)
    result = invoke(
        "inference",
        str(trained["_path"]),
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
        stdin="Reverse the word.\nAdd the numbers.\n",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{first}\n{second}\n"
    one = loaded.prompter.prompt_ids("Reverse the word.")
    assert history[: len(one)] == one and len(history) > 2 * len(one)


def test_chat_template_prompts_match_training(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A chat_template run's prompt: the template's generation prompt, which is the masked
    prefix of the training row (the assistant's content is the first trained token)."""
    from axolotl_weave import rows_table
    from axolotl_weave.commands import load_tokenizer, open_session
    from axolotl_weave_plugins.inference._prompting import Message, Prompter

    path = chat_template_config(tmp_path, tiny_llama_dir)
    session = open_session(path)
    tokenizer = load_tokenizer(session, None)
    prompter = Prompter(session, tokenizer)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Reverse the word."},
        {"role": "assistant", "content": "tac"},
    ]
    entry = session.cfg.datasets[0]
    fmt = session.formats["chat_template"]
    (built,) = list(
        fmt.build(entry, rows_table([{"messages": conversation}]), tokenizer, session.cfg)
    )
    prefix = masked_prefix(built)
    ids = prompter.conversation_ids([Message(m["role"], m["content"]) for m in conversation[:2]])
    assert prompter.mode == "chat"
    assert ids == prefix
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_a_template_refusing_the_conversation_is_one_message(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Gemma's template has no system role: `--system` with it is one message, not a jinja
    traceback."""
    import yaml
    from axolotl_weave_testing import run_weave

    path = chat_template_config(tmp_path, tiny_llama_dir)
    config = yaml.safe_load(path.read_text())
    config["chat_template"] = "gemma"
    path.write_text(yaml.safe_dump(config))
    flags = ["--base-model", str(tiny_llama_dir), "--system", "Be brief.", "--max-new-tokens", "2"]
    result = run_weave("inference", str(path), *flags, stdin="Hi\n")
    assert result.returncode != 0
    assert "refused the conversation: System role not supported" in result.stderr
    assert "leave the system message out" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_instruction_format_renders_its_training_prompt(
    tiny_llama_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each format declaring a prompt row: its prompt ids are the masked prefix of a training row
    that answers the same prompt (one of the row's empty fields is its response); formats that
    declare "chat" or "text" render through the template or as text, the rest fall back."""
    import yaml
    from axolotl_weave import rows_table
    from axolotl_weave._hooks import Hooks
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave.commands import load_tokenizer, open_session
    from axolotl_weave_plugins.inference._prompting import Prompter

    formats = Hooks(make_plugin_manager()).dataset_formats()
    declared = {  # the preference types (rl:) have their own test below
        name for name, fmt in formats.items() if callable(fmt.prompt) and "labels" in fmt.columns
    }
    assert {"alpaca", "alpaca_w_system.load_open_orca", "metharme", "user_defined"} <= declared
    assert formats["chat_template"].prompt == "chat" and formats["completion"].prompt == "text"
    (tmp_path / "rows.jsonl").write_text("{}\n")
    for name in [*sorted(declared), "context_qa"]:
        config = tmp_path / f"{name}.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "base_model": str(tiny_llama_dir),
                    "datasets": [{"path": str(tmp_path / "rows.jsonl"), "type": name}],
                    "output_dir": str(tmp_path / "out"),
                }
            )
        )
        session = open_session(config)
        tokenizer = load_tokenizer(session, None)
        prompter = Prompter(session, tokenizer)
        ids = prompter.prompt_ids("Reverse the word.")
        if name == "context_qa":  # a question about an article: no free prompt, it says so
            assert formats[name].prompt is None and prompter.mode == "raw"
            assert "type: context_qa: weave cannot render its prompt" in caplog.text
            break
        assert prompter.mode == "format", name
        assert "Reverse the word." in tokenizer.decode(ids), name
        entry, fmt = session.cfg.datasets[0], formats[name]
        row = fmt.prompt(entry, "Reverse the word.")
        prefixes = []
        for field in [key for key, value in row.items() if value == ""]:
            answered = rows_table([{**row, field: "tac"}])
            (built,) = list(fmt.build(entry, answered, tokenizer, session.cfg))
            if any(label != -100 for label in built["labels"]):
                prefixes.append(masked_prefix(built))
        assert ids in prefixes, name


def answered(value: Any) -> Any:
    """A prompt row with every empty or placeholder answer replaced by a real one."""
    from axolotl_weave_plugins.rl._prompt_rows import ANSWER

    if isinstance(value, dict):
        return {key: answered(item) for key, item in value.items()}
    if isinstance(value, list):
        return [answered(item) for item in value]
    return "tac" if value in ("", ANSWER) else value


def test_every_preference_format_renders_its_training_prompt(
    tiny_llama_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each preference type (under rl: dpo, and KTO's under rl: kto): inference renders it by
    its own format, and its prompt ids are the masked start of the answer a training row with
    the same question builds (chosen_input_ids; completion_input_ids under KTO). The chatml and
    llama3 types' prompts are their template's text around the question."""
    import yaml
    from axolotl_weave import IGNORE_INDEX, rows_table
    from axolotl_weave._hooks import Hooks
    from axolotl_weave._pluginmanager import make_plugin_manager
    from axolotl_weave.commands import load_tokenizer, open_session
    from axolotl_weave_plugins.inference._prompting import Prompter
    from axolotl_weave_plugins.rl._kto_formats import KTO_TYPES, use_kto_columns

    formats = Hooks(make_plugin_manager()).dataset_formats()
    pairs = sorted(  # a reward model's pairs (bradley_terry) generate nothing
        name
        for name, fmt in formats.items()
        if "chosen_input_ids" in fmt.columns and not name.startswith("bradley_terry")
    )
    assert {"chatml.intel", "llama3.argilla_chat", "chat_template.default", "zephyr.nectar"} <= {
        *pairs
    }
    templates = {
        "chatml": "<|im_start|>user\nReverse the word.<|im_end|>\n<|im_start|>assistant\n",
        "llama3": "<|start_header_id|>user<|end_header_id|>\n\nReverse the word.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    }
    (tmp_path / "rows.jsonl").write_text("{}\n")
    runs = [("dpo", name) for name in pairs] + [("kto", name) for name in sorted(KTO_TYPES)]
    try:
        for rl, name in runs:
            config = tmp_path / f"{rl}-{name}.yml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "base_model": str(tiny_llama_dir),
                        "rl": rl,
                        "micro_batch_size": 2,  # KTO's least
                        "chat_template": "chatml",
                        "datasets": [{"path": str(tmp_path / "rows.jsonl"), "type": name}],
                        "output_dir": str(tmp_path / "out"),
                    }
                )
            )
            session = open_session(config)
            tokenizer = load_tokenizer(session, None)
            prompter = Prompter(session, tokenizer)
            assert prompter.mode == "format", (rl, name)
            assert prompter.describe == f"the prompt format of type: {name}"
            ids = prompter.prompt_ids("Reverse the word.")
            entry, fmt = session.cfg.datasets[0], formats[name]
            row = answered(fmt.prompt(entry, "Reverse the word."))
            (built,) = list(fmt.build(entry, rows_table([row]), tokenizer, session.cfg))
            sequence = "completion" if rl == "kto" else "chosen"
            labels = built[f"{sequence}_labels"]
            start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
            assert ids == list(built[f"{sequence}_input_ids"][:start]), (rl, name)
            assert "Reverse the word." in tokenizer.decode(ids), (rl, name)
            family = name.split(".")[0]
            if family in templates and not name.endswith("argilla_chat"):
                whole = tokenizer(templates[family])["input_ids"]  # at most its last token
                assert whole[: len(ids)] == ids and len(ids) >= len(whole) - 1, (rl, name)
    finally:
        use_kto_columns(False)
    assert "weave cannot render its prompt" not in caplog.text


THINKING = (
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<think>' if thinking else '' }}A:{% endif %}"
)
"""A template with a variable, which GRPO's `trl.chat_template_kwargs` sets over the top-level
`chat_template_kwargs`."""


@pytest.mark.parametrize(
    "template", ["chatml", None, "jinja"], ids=["chat-template", "no-template", "trl-kwargs"]
)
def test_grpo_prompts_render_as_its_training_prompts_were(
    tiny_llama_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    template: str | None,
) -> None:
    """`type: grpo` (prompts that are conversations or strings): with a chat template, a user's
    prompt is the ids a conversation prompt of one user message builds in training, with
    `trl.chat_template_kwargs` over the top-level ones; without one, the ids a string prompt
    builds; no warning either way."""
    import yaml
    from axolotl_weave import rows_table
    from axolotl_weave.commands import load_tokenizer, open_session
    from axolotl_weave_plugins.inference._prompting import Prompter

    (tmp_path / "toy.py").write_text("def zero(completions, **kw):\n    return [0.0]\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    config = {
        "base_model": str(tiny_llama_dir),
        "rl": "grpo",
        "trl": {"num_generations": 2, "reward_funcs": ["toy.zero"]},
        "micro_batch_size": 2,
        "datasets": [{"path": str(tmp_path / "p.jsonl"), "type": "grpo"}],
        "output_dir": str(tmp_path / "out"),
        **({"chat_template": template} if template else {}),
    }
    if template == "jinja":
        config.update(chat_template_jinja=THINKING, chat_template_kwargs={"thinking": False})
        config["trl"]["chat_template_kwargs"] = {"thinking": True}
    path = tmp_path / "grpo.yml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # the reward function is imported from the working directory
    session = open_session(path)
    tokenizer = load_tokenizer(session, None)
    prompter = Prompter(session, tokenizer)
    assert prompter.mode == ("chat" if template else "raw")
    text = "Add 2 and 3."
    prompt = [{"role": "user", "content": text}] if template else text
    entry, fmt = session.cfg.datasets[0], session.formats["grpo"]
    (built,) = list(fmt.build(entry, rows_table([{"prompt": prompt}]), tokenizer, session.cfg))
    assert prompter.prompt_ids(text) == list(built["prompt_input_ids"])
    if template == "jinja":
        assert tokenizer.decode(prompter.prompt_ids(text)).endswith("<think>A:")
    assert "weave cannot render its prompt" not in caplog.text


def test_a_full_model_in_output_dir_is_loaded(trained: dict[str, Any]) -> None:
    """A run without an adapter saves the full model: output_dir is then the model."""
    full = trained["base_model"]
    result = invoke(
        "inference",
        str(trained["_path"]),
        "--output-dir",
        full,
        "--temperature",
        "0",
        "--max-new-tokens",
        "3",
        stdin="Reverse the word.\n",
    )
    assert result.exit_code == 0, result.stderr
    assert f"loaded {full}; prompts rendered" in " ".join(result.stderr.split())


# --- bad input --------------------------------------------------------------------------------


def test_no_trained_model_names_the_folder(trained: dict[str, Any], tmp_path: Path) -> None:
    empty = tmp_path / "never-trained"
    result = invoke("inference", str(trained["_path"]), "--output-dir", str(empty), stdin="hi\n")
    assert result.exit_code != 0
    message = " ".join(result.stderr.split())
    assert f"no trained model in output_dir: {empty} does not exist" in message
    assert "--lora-model-dir DIR" in message and "--base-model DIR" in message
    assert "Traceback" not in result.output
    not_adapter = invoke(
        "inference", str(trained["_path"]), "--lora-model-dir", str(tmp_path), stdin="hi\n"
    )
    assert not_adapter.exit_code != 0
    assert "has no adapter_config.json" in " ".join(not_adapter.stderr.split())
    no_model = invoke("inference", str(trained["_path"]), "--base-model", str(empty), stdin="hi\n")
    assert no_model.exit_code != 0
    assert f"--base-model {empty}: no such folder" in " ".join(no_model.stderr.split())


def test_an_adapter_of_another_model_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    """The adapter on a base of another width: one message naming both."""
    import shutil

    from transformers import AutoConfig, LlamaForCausalLM

    other = tmp_path / "narrow-llama"
    config = AutoConfig.from_pretrained(trained["base_model"])
    config.hidden_size, config.intermediate_size = 32, 64
    LlamaForCausalLM(config).save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(trained["base_model"]) / name, other / name)
    result = invoke(
        "inference",
        str(trained["_path"]),
        "--lora-model-dir",
        trained["output_dir"],
        "--base-model",
        str(other),
        stdin="hi\n",
    )
    assert result.exit_code != 0
    message = " ".join(result.stderr.split())
    assert f"does not fit base_model {other}" in message, message
    assert "Traceback" not in result.output


def test_a_prompt_longer_than_the_context_is_refused(trained: dict[str, Any]) -> None:
    result = invoke(
        "inference",
        str(trained["_path"]),
        "--temperature",
        "0",
        "--max-new-tokens",
        "2",
        stdin="word " * 1500 + "\nReverse the word.\n",
    )
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "the model's context is 1024 tokens" in message and "shorten the prompt" in message
    assert result.stdout.count("\n") >= 1  # the next prompt is still answered
