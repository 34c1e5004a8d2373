"""`weave serve CONFIG [--host H] [--port P] [--api-key K]`: the trained model (or adapter)
behind an OpenAI-compatible HTTP API (`/v1/models`, `/v1/chat/completions`, `/v1/completions`,
streaming included; see `_openai_api.py`), with FastAPI and uvicorn (the `serve` extra).

The port is bound before the model loads, so a port in use fails at once. Generation is
Hugging Face `generate`; when vLLM is installed and a GPU is present, the command says that
vLLM is not used (this server has no vLLM engine yet).
"""

from __future__ import annotations

import errno
import importlib.util
import socket
import sys

import typer
from axolotl_weave import hookimpl

PLUGIN_KIND = "command"
INSTALL = "'axolotl-weave[serve]'"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (port 0: a free one), or one message saying why
    not (the port in use, no permission, an unknown host)."""
    from axolotl_weave import WeaveError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WeaveError(f"--host: '{host}' is not an address of this machine: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise WeaveError(
                f"--port: {port} on {host} is in use (another server?): stop it, or choose "
                "another port with --port (0 picks a free one)"
            ) from None
        raise WeaveError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def vllm_note() -> str | None:
    """What to say when vLLM could serve (installed, with a GPU) but is not used."""
    if importlib.util.find_spec("vllm") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return (
        "vLLM is installed and a GPU is present, but weave serve has no vLLM engine yet: "
        "serving with Hugging Face generate"
    )


def serve_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: a free one)."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="WEAVE_API_KEY",
        help="Require 'Authorization: Bearer KEY' (or set WEAVE_API_KEY).",
        show_envvar=True,
    ),
    lora_model_dir: str | None = typer.Option(
        None, "--lora-model-dir", help="A saved LoRA adapter (default: output_dir's)."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="A full model folder or hub id to serve instead."
    ),
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="The model's id in the API (default: its folder)."
    ),
    max_new_tokens: int = typer.Option(
        256, "--max-new-tokens", help="Default answer length (a request's max_tokens wins)."
    ),
    temperature: float = typer.Option(1.0, "--temperature", help="Default temperature."),
    top_p: float = typer.Option(1.0, "--top-p", help="Default nucleus sampling mass."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the K likeliest tokens (0: off)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="Above 1: fewer."),
    raw: bool = typer.Option(False, "--raw", help="Chat messages as raw text, no template."),
) -> None:
    """Serve the trained model with an OpenAI-compatible API. Extra `--key value` pairs
    override the config."""
    from axolotl_weave import require
    from axolotl_weave.commands import open_session

    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference

    defaults = Sampling(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
    ).check()
    require("fastapi", feature="weave serve", install=INSTALL)
    uvicorn = require("uvicorn", feature="weave serve", install=INSTALL)
    session = open_session(config, ctx.args, ctx.obj.pm)
    choice = choose_model(session.cfg, lora_model_dir, base_model)
    sock = bind(host, port)
    try:
        note = vllm_note()
        if note:
            say(note)
        loaded = load_for_inference(session, choice, raw=raw)
        from axolotl_weave_plugins.inference._openai_api import build_app

        name = served_model_name or choice.name
        app = build_app(loaded, name, defaults, api_key)
        where = sock.getsockname()
        shown = f"[{where[0]}]" if sock.family == socket.AF_INET6 else where[0]
        say(
            f"serving {choice.described} as '{name}' at http://{shown}:{where[1]}/v1 "
            f"(prompts rendered with {loaded.prompter.describe}; "
            f"{'API key required' if api_key else 'no API key'}); Ctrl-C stops"
        )
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        )
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the signal
            pass
        say("stopped")
    finally:
        sock.close()


def say(text: str) -> None:
    """A status line on stderr, flushed (a supervising process reads it)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave serve CONFIG`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("serve", context_settings=OVERRIDES)(user_errors(serve_command))
