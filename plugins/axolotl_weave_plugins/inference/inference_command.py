"""`weave inference CONFIG`: talk to the trained model from the terminal.

Prompts come from stdin, one per line (or all of stdin as one prompt with `--whole`), each
rendered as in training (the config's chat template or prompt format, see `_prompting.py`);
the answer's text is written to stdout as the tokens are generated. `--chat` keeps the
conversation: each line is the next user turn. The model is what training saved in
`output_dir` (an adapter on `base_model`, or a full model), or `--lora-model-dir` /
`--base-model`, loaded through the plugin hooks.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from axolotl_weave import hookimpl

PLUGIN_KIND = "command"


def inference_command(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="YAML config file or https URL."),
    lora_model_dir: str | None = typer.Option(
        None, "--lora-model-dir", help="A saved LoRA adapter (default: output_dir's)."
    ),
    base_model: str | None = typer.Option(
        None,
        "--base-model",
        help="A full model folder or hub id to use instead (with --lora-model-dir: the base "
        "the adapter goes on).",
    ),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Most tokens per answer."),
    temperature: float = typer.Option(0.7, "--temperature", help="0 is greedy (deterministic)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling: keep this mass."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the K likeliest tokens (0: off)."),
    repetition_penalty: float = typer.Option(
        1.0, "--repetition-penalty", help="Above 1 discourages repeats."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed the sampling (reproducible)."),
    stop: list[str] = typer.Option([], "--stop", help="End the answer at this text (repeatable)."),
    whole: bool = typer.Option(False, "--whole", help="All of stdin is one prompt."),
    chat: bool = typer.Option(False, "--chat", help="A multi-turn conversation, a line a turn."),
    system: str | None = typer.Option(
        None, "--system", help="A system message opening the conversation (chat templates)."
    ),
    raw: bool = typer.Option(False, "--raw", help="Prompts as raw text, no template or format."),
    gradio: bool = typer.Option(
        False, "--gradio", help="A Gradio chat page instead of stdin (the gradio_* keys)."
    ),
    image: list[str] = typer.Option(
        [],
        "--image",
        help="An image (path or URL) before each prompt's text, for a model trained with "
        "processor_type (repeatable; with --chat, in the first turn).",
    ),
) -> None:
    """Generate answers to prompts read from stdin with the trained model, streamed to stdout.
    Extra `--key value` pairs override the config."""
    from axolotl_weave import WeaveError
    from axolotl_weave.commands import open_session

    from axolotl_weave_plugins.inference._generation import Sampling
    from axolotl_weave_plugins.inference._model import choose_model, load_for_inference

    if whole and chat:
        raise WeaveError("--whole and --chat exclude each other: a chat reads a turn a line")
    if gradio and (whole or chat):
        raise WeaveError("--gradio is a chat page: it reads no stdin (drop --whole / --chat)")
    if image and (gradio or raw):
        raise WeaveError("--image goes in a chat template's prompt: not with --gradio or --raw")
    sampling = Sampling(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=tuple(stop),
    ).check()
    session = open_session(config, ctx.args, ctx.obj.pm)
    if gradio:  # before the model loads: the package, and the port free
        from axolotl_weave_plugins.inference._gradio import check_gradio

        check_gradio(session.cfg)
    choice = choose_model(session.cfg, lora_model_dir, base_model)
    loaded = load_for_inference(session, choice, raw=raw)
    say(f"loaded {choice.described}; prompts rendered with {loaded.prompter.describe}")
    if image and loaded.processor is None:
        raise WeaveError(
            "--image: this model takes no images (train one with processor_type, or drop --image)"
        )
    if gradio:
        from axolotl_weave_plugins.inference._gradio import launch_gradio

        launch_gradio(session.cfg, loaded, sampling, system=system)
        return
    try:
        failures = run_prompts(
            loaded, sampling, whole=whole, chat=chat, system=system, images=image
        )
    except KeyboardInterrupt:  # the end of a session, not a failure
        sys.stdout.write("\n")
        return
    if failures:
        raise typer.Exit(1)


def say(text: str) -> None:
    """A status line on stderr (stdout carries only the answers)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def prompts_of(whole: bool) -> list[str] | None:
    """All of stdin as one prompt (`--whole`), or None to read it line by line."""
    if not whole:
        return None
    text = sys.stdin.read().rstrip("\n")
    return [text] if text.strip() else []


def stdin_lines(interactive: bool) -> Any:
    """Non-empty lines of stdin, without their newline; with a `> ` prompt on a terminal."""
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return
        line = line.rstrip("\n")
        if line.strip():
            yield line


def prompt_inputs(loaded: Any, turn: list[Any], images: list[str]) -> tuple[list[int], dict]:
    """The prompt ids of a conversation (and its images' model inputs): `images` go before the
    text of its first user message, processed by the model's processor."""
    if not images:
        return loaded.prompter.conversation_ids(turn), {}
    from axolotl_weave_plugins.inference._images import vision_inputs

    messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in turn]
    first = next(m for m in messages if m["role"] == "user")
    pictures = [{"type": "image", "image": ref} for ref in images]
    first["content"] = [*pictures, {"type": "text", "text": first["content"]}]
    return vision_inputs(loaded.processor, messages)


def run_prompts(
    loaded: Any,
    sampling: Any,
    *,
    whole: bool,
    chat: bool,
    system: str | None,
    images: list[str] | None = None,
) -> int:
    """Answer every prompt of stdin, streaming each answer to stdout; a prompt the model cannot
    take is reported on stderr and skipped. Returns how many failed."""
    from axolotl_weave_plugins.inference._generation import PromptTooLong, generate
    from axolotl_weave_plugins.inference._prompting import Message

    opening = [Message("system", system)] if system else []
    history: list[Message] = list(opening)
    failures = 0
    lines = prompts_of(whole)
    source = lines if lines is not None else stdin_lines(chat and sys.stdin.isatty())
    for prompt in source:
        if chat and prompt.strip() == "/clear":
            history = list(opening)
            say("(conversation cleared)")
            continue
        turn = [*history, Message("user", prompt)] if chat else [*opening, Message("user", prompt)]
        try:
            ids, extra = prompt_inputs(loaded, turn, images or [])
            generation = generate(loaded, ids, sampling, extra)
            for piece in generation:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except PromptTooLong as exc:
            failures += 1
            sys.stderr.write(f"error: {exc}\n")
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        if chat:
            history = [*turn, Message("assistant", generation.text)]
    return failures


@hookimpl
def add_cli_commands(app: typer.Typer) -> None:
    """`weave inference CONFIG`."""
    from axolotl_weave.commands import OVERRIDES, user_errors

    app.command("inference", context_settings=OVERRIDES)(user_errors(inference_command))
