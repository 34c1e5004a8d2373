"""`weave inference CONFIG --gradio`: a Gradio chat page on the trained model.

The page is a `gr.ChatInterface`: each message is a user turn of the conversation on the page,
rendered as in training (`Prompter.conversation_ids`: the chat template, or the instruction
format with the earlier turns as prompt + answer pairs), and the answer streams into the page
as the tokens are generated (`_generation.generate`). "Max new tokens" and "Temperature"
(and, with a chat template, a system message) can be changed under "Additional Inputs"; their
defaults are the config's `gradio_max_new_tokens` / `gradio_temperature`, else the command's
`--max-new-tokens` / `--temperature`. One answer is generated at a time (later messages wait in
Gradio's queue); the Stop button ends an answer early.

The `gradio_*` keys (`gradio_settings.py`) say where the page listens: 127.0.0.1 and the first
free port from 7860 by default, and a public share link only with `gradio_share: true`.
Gradio's telemetry and version check are off, and no API page is linked.

Not a plugin (no entry point): a helper of `inference_command` (its `--gradio` flag).
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from axolotl_weave import WeaveError, require

from axolotl_weave_plugins.inference._generation import Sampling, generate
from axolotl_weave_plugins.inference._images import vision_inputs
from axolotl_weave_plugins.inference._model import LoadedModel
from axolotl_weave_plugins.inference._prompting import Message

INSTALL = "'axolotl-weave[gradio]'"
FEATURE = "weave inference --gradio"
PLACEHOLDER = "Type a message and press Enter"
MAX_TEMPERATURE = 2.0
SLIDER_TOKENS = 4096
"""The "Max new tokens" slider's end when the model names no context length."""


@dataclass(frozen=True)
class PageSettings:
    """The page's settings, from the `gradio_*` keys and the command's sampling flags."""

    title: str
    share: bool
    server_name: str
    server_port: int | None
    sampling: Sampling


def page_settings(cfg: Any, sampling: Sampling, model_name: str) -> PageSettings:
    """The page's settings: the `gradio_*` keys of `cfg`, where set, over `sampling` (the
    command's flags); the title defaults to 'Axolotl Weave: MODEL'."""
    page_sampling = sampling.with_overrides(
        max_new_tokens=getattr(cfg, "gradio_max_new_tokens", None),
        temperature=getattr(cfg, "gradio_temperature", None),
    )
    return PageSettings(
        title=getattr(cfg, "gradio_title", None) or f"Axolotl Weave: {model_name}",
        share=getattr(cfg, "gradio_share", False) is True,
        server_name=getattr(cfg, "gradio_server_name", None) or "127.0.0.1",
        server_port=getattr(cfg, "gradio_server_port", None),
        sampling=page_sampling,
    )


def launch_kwargs(page: PageSettings) -> dict[str, Any]:
    """The arguments of Gradio's `launch`: shared only when `gradio_share` is true, no API page
    or MCP server, no server-side rendering (it needs Node), and the server runs in its own
    thread (`launch` returns at once)."""
    return {
        "share": page.share,
        "server_name": page.server_name,
        "server_port": page.server_port,
        "prevent_thread_lock": True,
        "quiet": True,
        "show_error": True,
        "ssr_mode": False,
        "mcp_server": False,
        "footer_links": ["gradio", "settings"],
    }


def text_of(content: Any) -> str:
    """The text of a Gradio chat message's content: a string, or a list of parts of which the
    text parts count (files and other parts are left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list | tuple):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part)
            for part in content
            if not isinstance(part, dict) or part.get("type", "text") == "text"
        )
    return ""


class ExactAnswers:
    """The exact text of the page's recent answers. Gradio hands the conversation back with
    its white space changed (its chatbot applies `inspect.cleandoc`: no spaces opening a line),
    and the next prompt must hold what the model said: an answer that comes back equal but for
    white space is restored. Keyed by the text without white space; the `keep` latest."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self.texts: OrderedDict[str, str] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def key(text: str) -> str:
        """`text` without white space."""
        return "".join(text.split())

    def remember(self, text: str) -> None:
        """Keep `text`, an answer as generated."""
        with self.lock:
            self.texts[self.key(text)] = text
            self.texts.move_to_end(self.key(text))
            while len(self.texts) > self.keep:
                self.texts.popitem(last=False)

    def restore(self, text: str) -> str:
        """The answer as generated that `text` (as the page returns it) shows, else `text`."""
        with self.lock:
            return self.texts.get(self.key(text), text)


def history_messages(
    history: list[Any], restore: Callable[[str], str] | None = None
) -> list[Message]:
    """The conversation on the page (Gradio's `{"role", "content"}` messages) as `Message`s,
    each answer's text through `restore`; messages of other roles and empty ones are left
    out."""
    messages = []
    for item in history or []:
        role = item.get("role") if isinstance(item, dict) else getattr(item, "role", None)
        content = item.get("content") if isinstance(item, dict) else getattr(item, "content", "")
        text = text_of(content)
        if role == "assistant" and restore is not None:
            text = restore(text)
        if role in ("user", "assistant") and text:
            messages.append(Message(role, text))
    return messages


def answer(
    loaded: LoadedModel,
    sampling: Sampling,
    message: Any,
    history: list[Any],
    system: str | None = None,
    answers: ExactAnswers | None = None,
) -> Iterator[str]:
    """The answer to `message` after `history`, as the growing text (what the page shows at
    each step); `answers` restores the earlier answers' exact text and keeps this one's.
    Raises `WeaveError` for a prompt the model cannot take."""
    opening = [Message("system", system)] if system and system.strip() else []
    restore = answers.restore if answers is not None else None
    if loaded.processor is not None and (files_of(message) or any(map(files_of, history))):
        ids, extra = vision_inputs(loaded.processor, page_messages(opening, history, message))
        generation = generate(loaded, ids, sampling, extra)
    else:
        earlier = history_messages(history, restore)
        turns = [*opening, *earlier, Message("user", text_of(message))]
        generation = generate(loaded, loaded.prompter.conversation_ids(turns), sampling)
    pieces = iter(generation)
    text = ""
    try:
        for piece in pieces:
            text += piece
            yield text
    finally:  # also when the page's Stop button (or a closed tab) ends the answer early
        generation.close()
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
        if answers is not None and text:
            answers.remember(text)
    if not text:
        yield ""


def files_of(item: Any) -> list[str]:
    """The files (paths) a page message carries: a new message's `files` (paths or
    `{"path"}`), or the uploads in a history message's content (`{"path"}`, or Gradio's
    `{"type": "file", "file": {"path"}}` parts)."""
    if isinstance(item, dict) and "files" in item:
        entries = list(item.get("files") or [])
    else:
        content = item.get("content") if isinstance(item, dict) else getattr(item, "content", None)
        listed = content if isinstance(content, list | tuple) else [content]
        entries = [entry for entry in listed if not isinstance(entry, str)]
    paths = []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("type") == "file":
            entry = entry.get("file")
        if isinstance(entry, dict):
            path = entry.get("path")
        else:
            path = entry if isinstance(entry, str) else getattr(entry, "path", None)
        if isinstance(path, str) and path:
            paths.append(path)
    return paths


def page_messages(opening: list[Message], history: list[Any], message: Any) -> list[dict]:
    """The page's conversation (uploads as image parts, a turn's uploads and text in one
    message) and the new message, as chat messages for a vision-language model's processor."""
    messages = [{"role": m.role, "content": m.content} for m in opening]
    items = [*(history or []), {"role": "user", **message}]
    for item in items:
        role = item.get("role") if isinstance(item, dict) else getattr(item, "role", None)
        if role not in ("user", "assistant"):
            continue
        parts = [{"type": "image", "path": path} for path in files_of(item)]
        text = text_of(item["text"] if "files" in item else item.get("content"))
        parts += [{"type": "text", "text": text}] if text else []
        if messages and messages[-1]["role"] == role and isinstance(messages[-1]["content"], list):
            messages[-1]["content"] += parts
        else:
            messages.append({"role": role, "content": parts})
    return messages


def require_gradio() -> Any:
    """The `gradio` module, or `MissingDependencyError` naming the extra (call it before the
    model loads, to fail at once)."""
    return require("gradio", feature=FEATURE, install=INSTALL)


def build_demo(loaded: LoadedModel, page: PageSettings, system: str | None = None) -> Any:
    """The chat page (a `gr.ChatInterface`), not launched; `system` is the system message's
    initial text (with a chat template only: instruction formats take none)."""
    gr = require_gradio()
    defaults = page.sampling
    longest = max(loaded.context_length or SLIDER_TOKENS, defaults.max_new_tokens)
    inputs = [
        gr.Slider(1, longest, value=defaults.max_new_tokens, step=1, label="Max new tokens"),
        gr.Slider(
            0,
            max(MAX_TEMPERATURE, defaults.temperature),
            value=defaults.temperature,
            step=0.05,
            label="Temperature (0: greedy)",
        ),
    ]
    chat = loaded.prompter.mode == "chat"
    answers = ExactAnswers()
    if chat:
        inputs.append(gr.Textbox(system or "", label="System message", lines=2))

    def respond(message: Any, history: list[Any], *settings: Any) -> Iterator[str]:
        max_new_tokens, temperature = settings[0], settings[1]
        system = settings[2] if chat and len(settings) > 2 else None
        try:
            sampling = defaults.with_overrides(
                max_new_tokens=None if max_new_tokens is None else int(max_new_tokens),
                temperature=None if temperature is None else float(temperature),
            )
            yield from answer(loaded, sampling, message, history, system, answers)
        except WeaveError as exc:  # shown on the page; the server goes on
            raise gr.Error(str(exc)) from None

    return gr.ChatInterface(
        respond,
        title=page.title,
        description=(
            f"{loaded.choice.described}; prompts rendered with {loaded.prompter.describe}"
        ),
        textbox=(
            gr.MultimodalTextbox(
                placeholder=PLACEHOLDER, show_label=False, scale=7, file_types=["image"]
            )
            if loaded.processor is not None
            else gr.Textbox(placeholder=PLACEHOLDER, show_label=False, scale=7)
        ),
        multimodal=loaded.processor is not None,
        additional_inputs=inputs,
        flagging_mode="never",
        analytics_enabled=False,
        api_visibility="private",
    )


def cannot_listen(server_name: str, port: int | None, reason: str) -> WeaveError:
    """The one message for a page that cannot listen where the keys say."""
    where = f"{server_name}:{port or '7860-7959'}"
    return WeaveError(
        f"cannot start the Gradio page on {where} (gradio_server_name: {server_name}, "
        f"gradio_server_port: {port}): {reason}. Set another gradio_server_port (or "
        "--gradio_server_port N), or free the port"
    )


def check_address(server_name: str, port: int | None) -> None:
    """Refuse at once (before the model loads) a `gradio_server_port` in use, or a
    `gradio_server_name` that is not an address of this machine (no port: the address alone;
    Gradio then searches a free port)."""
    try:
        infos = socket.getaddrinfo(server_name, port or 0, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise cannot_listen(server_name, port, f"unknown address ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        try:
            sock.bind(address)
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            reason = "the port is in use" if in_use else (exc.strerror or str(exc))
            raise cannot_listen(server_name, port, reason) from None


def check_gradio(cfg: Any) -> None:
    """What `--gradio` needs, checked before the model loads: the `gradio` package
    (`MissingDependencyError` naming the extra) and a free `gradio_server_port`."""
    require_gradio()
    check_address(
        getattr(cfg, "gradio_server_name", None) or "127.0.0.1",
        getattr(cfg, "gradio_server_port", None),
    )


def start_gradio(
    cfg: Any, loaded: LoadedModel, sampling: Sampling, system: str | None = None
) -> Any:
    """Build the page and start its server in a thread; returns the running `gr.Blocks`
    (`local_url`, `share_url`; `close()` stops it). A port in use, or an address that is
    not this machine's, is one `WeaveError` naming the keys."""
    require_gradio()
    page = page_settings(cfg, sampling, loaded.choice.name)
    demo = build_demo(loaded, page, system)
    try:
        demo.queue().launch(**launch_kwargs(page))
    except OSError:
        reason = "the port is in use, or the address is not this machine's"
        raise cannot_listen(page.server_name, page.server_port, reason) from None
    return demo


def say(text: str) -> None:
    """A status line on stderr, flushed."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def launch_gradio(
    cfg: Any, loaded: LoadedModel, sampling: Sampling, system: str | None = None
) -> None:
    """`weave inference CONFIG --gradio`: serve the chat page until Ctrl-C. `cfg` gives the
    `gradio_*` keys, `sampling` the page's defaults where they are unset, `system` the
    system message's initial text."""
    demo = start_gradio(cfg, loaded, sampling, system)
    share = getattr(demo, "share_url", None)
    say(f"chat page of {loaded.choice.described} at {demo.local_url}")
    if share:
        say(f"public link (gradio_share: true; anyone with it can use the model): {share}")
    elif getattr(cfg, "gradio_share", False):
        say("gradio_share: true, but Gradio could not make a public link (its message is above)")
    else:
        say("not shared: set gradio_share: true for a public link")
    say("Ctrl-C stops")
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    say("stopped")
