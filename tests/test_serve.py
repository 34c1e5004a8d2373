"""`weave serve`: an OpenAI-compatible server on a trained adapter, checked with the official
`openai` client against a `weave serve` process on 127.0.0.1 (a free port it picks, `--port 0`):
models listed, chat and text completions (streamed too) equal to greedy `generate`, the API
key enforced, errors in OpenAI's shape, a port in use refused, Ctrl-C stopping it."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from axolotl_weave_testing import greedy, start_serve, train_tiny_lora

KEY = "test-key-123"
MODEL = "out"  # the served name: the adapter's folder


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA adapter trained for 2 steps; its config mapping, with `_path` its YAML file."""
    return train_tiny_lora(tiny_llama_dir, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(trained: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`weave serve CONFIG --port 0 --api-key KEY` in a subprocess, as a user starts it; its
    process and base URL (read from the line it prints once listening)."""
    process, url, started = start_serve(trained["_path"], "--api-key", KEY, "--temperature", "0")
    try:
        yield {"process": process, "url": url, "started": started}
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server: dict[str, Any]) -> openai.OpenAI:
    """The official client, with the key."""
    return openai.OpenAI(base_url=server["url"], api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(trained: dict[str, Any]) -> Any:
    """The same model loaded in this process, to compute what greedy `generate` answers."""
    from axolotl_weave.commands import open_session
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference

    session = open_session(trained["_path"])
    return load_for_inference(session, choose_model(session.cfg, None, None))


def test_the_server_says_what_it_serves(server: dict[str, Any], trained: dict[str, Any]) -> None:
    started = " ".join(server["started"].split())
    assert f"serving adapter {trained['output_dir']} on base_model" in started
    assert "prompt format of type: alpaca" in started and "API key required" in started


def test_models_are_listed(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_the_api_key_is_enforced(server: dict[str, Any]) -> None:
    import httpx

    wrong = openai.OpenAI(base_url=server["url"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.models.list()
    assert raised.value.status_code == 401
    assert "API key" in raised.value.message
    bare = httpx.post(
        f"{server['url']}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server["url"].removesuffix("/v1") + "/health").status_code == 200


def test_chat_completions_stream_and_not(client: openai.OpenAI, reference: Any) -> None:
    messages = [{"role": "user", "content": "Reverse the word."}]
    prompt = reference.prompter.prompt_ids("Reverse the word.")
    expected = greedy(reference, prompt, 12)
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0
    )
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens == len(prompt)
    assert 0 < answer.usage.completion_tokens <= 12
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for d in deltas if d) > 1, "the answer came in one piece, not streamed"
    assert "".join(deltas) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_text_completions_take_raw_text(client: openai.OpenAI, reference: Any) -> None:
    text = "The cat sat on the"
    expected = greedy(reference, reference.tokenizer(text)["input_ids"], 8)
    answer = client.completions.create(model=MODEL, prompt=text, max_tokens=8, temperature=0)
    assert answer.choices[0].text == expected
    streamed = client.completions.create(
        model=MODEL, prompt=text, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_stop_strings_cut_the_answer(client: openai.OpenAI, reference: Any) -> None:
    text = "The cat sat on the"
    full = greedy(reference, reference.tokenizer(text)["input_ids"], 16)
    stop = full.strip()[:2]
    cut = client.completions.create(
        model=MODEL, prompt=text, max_tokens=16, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_bad_requests_get_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="word " * 1500, max_tokens=4)
    assert too_long.value.code == "context_length_exceeded"
    assert "the model's context is 1024 tokens" in too_long.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    with pytest.raises(openai.BadRequestError) as invalid:
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2)
    assert "messages" in invalid.value.message


def test_a_port_in_use_is_refused(trained: dict[str, Any]) -> None:
    from axolotl_weave._cli import CliContext, build_app
    from axolotl_weave._pluginmanager import make_plugin_manager
    from typer.testing import CliRunner

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        pm = make_plugin_manager()
        result = CliRunner().invoke(
            build_app(pm), ["serve", str(trained["_path"]), "--port", str(port)], obj=CliContext(pm)
        )
    assert result.exit_code != 0
    message = " ".join(result.stderr.split())
    assert f"--port: {port} on 127.0.0.1 is in use" in message and "choose another port" in message
    assert "Traceback" not in result.output


def test_without_the_serve_extra_the_message_names_it(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from axolotl_weave._cli import CliContext, build_app
    from axolotl_weave._pluginmanager import make_plugin_manager
    from typer.testing import CliRunner

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` fails as if absent
    pm = make_plugin_manager()
    result = CliRunner().invoke(build_app(pm), ["serve", str(trained["_path"])], obj=CliContext(pm))
    assert result.exit_code == 4
    message = " ".join(result.stderr.split())
    assert "weave serve needs the package 'uvicorn'" in message
    assert "pip install 'axolotl-weave[serve]'" in message


def test_an_image_for_a_text_model_is_a_400(client: openai.OpenAI) -> None:
    """OpenAI's image parts sent to a model trained without processor_type: one message."""
    content = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "What is it?"},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert "takes no images (serve a model trained with processor_type)" in str(caught.value)


def test_ctrl_c_stops_the_server(server: dict[str, Any]) -> None:
    process = server["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None and "stopped" in process.stderr.read()
