"""`weave inference CONFIG --gradio`: the chat page on the trained model, driven in a real
headless Chromium (Debian's `chromium`, through playwright): the page loads, a prompt is typed,
the answer appears and is the model's greedy answer; a second turn answers the conversation.
Also: the `gradio_*` keys (never shared unless `gradio_share: true`), the streamed answer, and
each bad input as one message.

One tiny LoRA run (2 steps on alpaca rows) is trained for the module and loaded once; the page's
server runs in this process, in Gradio's thread."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from axolotl_weave_testing import (
    chat_template_config,
    greedy,
    train_tiny_lora,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ANSWER_TOKENS = 8


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter trained for 2 steps; the path of its config."""
    return train_tiny_lora(tiny_llama_dir, tmp_path_factory.mktemp("gradio"))["_path"]


@pytest.fixture(scope="module")
def loaded(trained: Path) -> Any:
    """The model `weave inference` loads for the config, in this process."""
    from axolotl_weave.commands import open_session
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference

    session = open_session(trained)
    return load_for_inference(session, choose_model(session.cfg, None, None))


def config_with(trained: Path, **keys: Any) -> Any:
    """The validated config with `--key value` overrides, as `weave inference` reads it."""
    from axolotl_weave.commands import open_session

    overrides = [item for key, value in keys.items() for item in (f"--{key}", str(value))]
    return open_session(trained, overrides).cfg


def free_port() -> int:
    """A port nothing listens on (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_page_is_private_by_default(trained: Path) -> None:
    """No gradio_* keys: launch(share=False) on 127.0.0.1, Gradio's port search, and the
    command's sampling flags as the page's defaults."""
    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._gradio import launch_kwargs, page_settings

    cfg = config_with(trained)
    assert cfg.gradio_share is False
    page = page_settings(cfg, Sampling(max_new_tokens=99, temperature=0.3), "lora-out")
    kwargs = launch_kwargs(page)
    assert kwargs["share"] is False
    assert kwargs["server_name"] == "127.0.0.1"
    assert kwargs["server_port"] is None
    assert kwargs["mcp_server"] is False and kwargs["ssr_mode"] is False
    assert "api" not in kwargs["footer_links"]
    assert page.title == "Axolotl Weave: lora-out"
    assert (page.sampling.max_new_tokens, page.sampling.temperature) == (99, 0.3)


def test_the_gradio_keys_set_the_page(trained: Path) -> None:
    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._gradio import launch_kwargs, page_settings

    cfg = config_with(
        trained,
        gradio_share="true",
        gradio_server_name="0.0.0.0",
        gradio_server_port=7999,
        gradio_title="My model",
        gradio_max_new_tokens=5,
        gradio_temperature=0,
    )
    page = page_settings(cfg, Sampling(max_new_tokens=99, temperature=0.3), "lora-out")
    kwargs = launch_kwargs(page)
    assert (kwargs["share"], kwargs["server_name"], kwargs["server_port"]) == (
        True,
        "0.0.0.0",
        7999,
    )
    assert page.title == "My model"
    assert (page.sampling.max_new_tokens, page.sampling.temperature) == (5, 0)
    assert config_with(trained, gradio_share="null").gradio_share is False


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("gradio_server_port", 70000, "less than or equal to 65535"),
        ("gradio_temperature", -1, "greater than or equal to 0"),
        ("gradio_max_new_tokens", 0, "greater than or equal to 1"),
        ("gradio_share", "maybe", "valid boolean"),
    ],
)
def test_bad_gradio_keys_are_refused(trained: Path, key: str, value: Any, valid: str) -> None:
    from axolotl_weave import ConfigError

    with pytest.raises(ConfigError) as caught:
        config_with(trained, **{key: value})
    assert key in str(caught.value) and valid in str(caught.value)


def test_the_answer_streams_and_is_the_greedy_answer(loaded: Any) -> None:
    """The page's answer function yields the growing text; its end is the greedy answer; a
    second turn is answered on the whole conversation, rendered as in training, with the first
    answer as generated although the page hands it back with its white space changed."""
    import inspect

    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._gradio import ExactAnswers, answer
    from axolotl_weave_plugins.inference._prompting import Message

    sampling = Sampling(max_new_tokens=ANSWER_TOKENS, temperature=0)
    answers = ExactAnswers()
    steps = list(answer(loaded, sampling, "Reverse the word.", [], answers=answers))
    first = greedy(loaded, loaded.prompter.prompt_ids("Reverse the word."), ANSWER_TOKENS)
    assert first and steps[-1] == first
    assert len(steps) > 1
    assert all(steps[i + 1].startswith(steps[i]) for i in range(len(steps) - 1))
    shown = inspect.cleandoc(first)  # what Gradio's chatbot hands back
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Reverse the word."}]},
        {"role": "assistant", "content": [{"type": "text", "text": shown}]},
    ]
    *_, second = answer(loaded, sampling, "Add the numbers.", history, answers=answers)
    turns = [
        Message("user", "Reverse the word."),
        Message("assistant", first),
        Message("user", "Add the numbers."),
    ]
    assert second == greedy(loaded, loaded.prompter.conversation_ids(turns), ANSWER_TOKENS)
    assert answers.restore(shown) == first and answers.restore("other") == "other"


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no Chromium: apt-get install -y chromium (Debian's package; the test drives it)",
)
def test_the_page_answers_in_chromium(trained: Path, loaded: Any) -> None:
    """The page loads in headless Chromium; a typed prompt is answered with the greedy answer;
    a second prompt is answered on the conversation."""
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api")
    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._gradio import PLACEHOLDER, start_gradio
    from axolotl_weave_plugins.inference._prompting import Message

    port = free_port()
    cfg = config_with(
        trained,
        gradio_server_port=port,
        gradio_title="Weave test page",
        gradio_temperature=0,
        gradio_max_new_tokens=ANSWER_TOKENS,
    )
    first = greedy(loaded, loaded.prompter.prompt_ids("Reverse the word."), ANSWER_TOKENS)
    turns = [
        Message("user", "Reverse the word."),
        Message("assistant", first),
        Message("user", "Add the numbers."),
    ]
    second = greedy(loaded, loaded.prompter.conversation_ids(turns), ANSWER_TOKENS)
    assert squeezed(first) and squeezed(second)
    demo = start_gradio(cfg, loaded, Sampling(temperature=0.9))
    try:
        assert demo.local_url == f"http://127.0.0.1:{port}/"
        assert not getattr(demo, "share_url", None)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(demo.local_url)
                expect = sync_api.expect
                expect(page.get_by_role("heading", name="Weave test page")).to_be_visible(
                    timeout=30_000
                )
                expect(page.get_by_placeholder(PLACEHOLDER)).to_be_editable()
                box = page.get_by_test_id("textbox").first  # the placeholder goes after a turn
                bot = page.get_by_test_id("bot")
                box.fill("Reverse the word.")
                box.press("Enter")
                expect(bot).to_have_count(1, timeout=30_000)
                assert shown_answer(bot.first, first) == squeezed(first)
                box.fill("Add the numbers.")
                box.press("Enter")
                expect(bot).to_have_count(2, timeout=30_000)
                assert shown_answer(bot.nth(1), second) == squeezed(second)
            finally:
                browser.close()
    finally:
        demo.close()


def squeezed(text: str) -> str:
    """`text` without white space: the page renders the answer as Markdown, which drops the
    spaces that open a line and turns line breaks into its own; every other character shows."""
    return "".join(text.split())


def shown_answer(message: Any, expected: str, timeout: float = 30.0) -> str:
    """The text of the page's answer `message` once it shows `expected` (it streams in), or
    as it is after `timeout` seconds; squeezed."""
    deadline = time.monotonic() + timeout
    shown = squeezed(message.inner_text())
    while shown != squeezed(expected) and time.monotonic() < deadline:
        time.sleep(0.1)
        shown = squeezed(message.inner_text())
    return shown


def test_with_a_chat_template_the_page_takes_a_system_message(
    tiny_llama_dir: Path, tmp_path: Path, loaded: Any
) -> None:
    """A chat_template config: the page has a system message (its initial text the command's
    `--system`), and the answer is the greedy one to system + user through the template; an
    instruction format's page has none."""
    gr = pytest.importorskip("gradio")
    from axolotl_weave.commands import open_session
    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._gradio import build_demo, page_settings
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference
    from axolotl_weave_plugins.inference._prompting import Message

    path = chat_template_config(tmp_path, tiny_llama_dir)
    session = open_session(path)
    chat = load_for_inference(session, choose_model(session.cfg, None, str(tiny_llama_dir)))
    page = page_settings(session.cfg, Sampling(max_new_tokens=ANSWER_TOKENS, temperature=0), "m")
    demo = build_demo(chat, page, system="Be brief.")
    labels = [component.label for component in demo.additional_inputs]
    assert labels == ["Max new tokens", "Temperature (0: greedy)", "System message"]
    assert isinstance(demo.additional_inputs[2], gr.Textbox)
    assert demo.additional_inputs[2].value == "Be brief."
    *_, shown = demo.fn("Reverse the word.", [], ANSWER_TOKENS, 0, "Be brief.")
    turns = [Message("system", "Be brief."), Message("user", "Reverse the word.")]
    ids = chat.prompter.conversation_ids(turns)
    assert chat.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert shown == greedy(chat, ids, ANSWER_TOKENS)
    formats_page = build_demo(loaded, page, system="Be brief.")
    assert len(formats_page.additional_inputs) == 2


def test_a_prompt_too_long_is_a_message_on_the_page(trained: Path, loaded: Any) -> None:
    gr = pytest.importorskip("gradio")
    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._gradio import build_demo, page_settings

    page = page_settings(config_with(trained), Sampling(temperature=0), "m")
    demo = build_demo(loaded, page)
    with pytest.raises(gr.Error) as caught:
        list(demo.fn("word " * 2000, [], 8, 0))
    assert "context is 1024 tokens" in str(caught.value)


def test_a_port_in_use_is_one_message(trained: Path, loaded: Any) -> None:
    """Checked before the model loads (`check_gradio`), and again when the page starts."""
    pytest.importorskip("gradio")
    from axolotl_weave import WeaveError
    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._gradio import check_gradio, start_gradio

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = config_with(trained, gradio_server_port=port)
        with pytest.raises(WeaveError) as early:
            check_gradio(cfg)
        with pytest.raises(WeaveError) as late:
            start_gradio(cfg, loaded, Sampling())
    for caught in (early, late):
        message = str(caught.value)
        assert f"gradio_server_port: {port}" in message and "in use" in message
    check_gradio(cfg)  # free again
    with pytest.raises(WeaveError, match="gradio_server_name: no.such.host.invalid"):
        check_gradio(config_with(trained, gradio_server_name="no.such.host.invalid"))


def test_without_gradio_the_message_names_the_extra(
    trained: Path, loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from axolotl_weave import MissingDependencyError
    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._gradio import check_gradio, start_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` fails as if absent
    for call in (
        lambda: check_gradio(config_with(trained)),
        lambda: start_gradio(config_with(trained), loaded, Sampling()),
    ):
        with pytest.raises(MissingDependencyError) as caught:
            call()
        assert "pip install 'axolotl-weave[gradio]'" in str(caught.value)


def test_the_flag_checks_before_the_model_loads(trained: Path) -> None:
    """`weave inference CONFIG --gradio`: a port in use and `--chat` are one message each, with
    a non-zero exit, before any model loads."""
    pytest.importorskip("gradio")
    from axolotl_weave._cli import CliContext, build_app
    from axolotl_weave._pluginmanager import make_plugin_manager
    from typer.testing import CliRunner

    def weave(*args: str) -> Any:
        pm = make_plugin_manager()
        return CliRunner().invoke(build_app(pm), list(args), obj=CliContext(pm))

    mixed = weave("inference", str(trained), "--gradio", "--chat")
    assert mixed.exit_code == 1 and "--gradio is a chat page" in mixed.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        busy = weave("inference", str(trained), "--gradio", "--gradio_server_port", port)
    assert busy.exit_code == 1 and "in use" in busy.stderr
    assert "loaded" not in busy.stderr  # refused before the model loaded
