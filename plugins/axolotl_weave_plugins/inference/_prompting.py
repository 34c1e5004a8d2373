"""Prompts rendered as in training: the token ids a trained model saw before its answer.

The format of the config's first `datasets:` entry says how (its `DatasetFormat.prompt`):

- `"chat"` (`chat_template`, `sharegpt`): the conversation through the tokenizer's chat template
  with the generation prompt. The tokenizer is loaded through the `load_tokenizer` hook, so the
  `chat_template` plugin has set the config's top-level `chat_template` (with
  `default_system_message`) on it, as in training; the text is tokenized without special
  tokens, as that plugin does.
- a function (`alpaca`, `alpaca_chat`, `oasst`, `jeopardy`, ...): the format's own `build` on
  the one row the function gives, holding the prompt and an empty response, with
  `train_on_inputs: false`. The built row's untrained tokens are exactly the training prompt
  (system text, turn template, BOS); what a format adds to every response (jeopardy's
  "what is ", an EOS) is trained, so it is left to the model. The preference types (`rl:`)
  work the same way: their rows build pairs, and the masked start of `chosen_input_ids` is
  the training prompt.
- `"text"` (`completion`, `pretraining`), no `type:`, or `--raw`: the text with the tokenizer's
  special tokens.
- `"auto"` (`grpo`, whose prompts are conversations or strings): `"chat"` when the tokenizer has
  a chat template, else `"text"` (`--raw` for string prompts under a template).

A format that says nothing falls back to the tokenizer's chat template (or the text), with a
warning. Not a plugin (no entry point): a helper of `inference_command` and `serve_command`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from axolotl_weave import IGNORE_INDEX, WeaveError, chat_text, rows_table

log = logging.getLogger("axolotl_weave")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation: `role` (system, user, assistant) and its text."""

    role: str
    content: str


class Prompter:
    """Turns a prompt (or a conversation) into the token ids the model saw in training."""

    def __init__(self, session: Any, tokenizer: Any, raw: bool = False) -> None:
        self.tokenizer = tokenizer
        self.cfg = session.cfg
        entries = list(session.cfg.datasets or [])
        self.entry = entries[0] if entries else None
        type_name = (self.entry.type if self.entry is not None else None) or ""
        fmt = session.formats.get(type_name) if type_name else None
        way = getattr(fmt, "prompt", None)
        self.build: Callable[..., Any] | None = None
        self.prompt_row: Callable[[Any, str], dict[str, Any]] | None = None
        if raw or not type_name or way == "text":
            self.mode = "raw"
        elif way == "chat":
            self.mode = "chat"
            self.check_chat_template(type_name)
        elif callable(way) and fmt.build is not None:
            self.mode = "format"
            self.build, self.prompt_row = fmt.build, way
        elif way == "auto":
            self.mode = "chat" if self.has_chat_template() else "raw"
        else:
            self.mode = self.fallback(type_name)
        self.describe = {
            "chat": "the tokenizer's chat template",
            "format": f"the prompt format of type: {type_name}",
            "raw": "raw text (no template)",
        }[self.mode]

    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template."""
        return isinstance(getattr(self.tokenizer, "chat_template", None), str)

    def check_chat_template(self, type_name: str) -> None:
        """Refuse a chat format whose tokenizer has no template; warn when the entry names a
        template of its own (inference renders with the tokenizer's, the top-level one)."""
        if not self.has_chat_template():
            raise WeaveError(
                f"type: {type_name}: the tokenizer has no chat template to render prompts with; "
                "set chat_template: at the top level of the config (e.g. chatml)"
            )
        own = self.entry.option("chat_template") if self.entry is not None else None
        if own and own != getattr(self.cfg, "chat_template", None):
            log.warning(
                "datasets.0 names its own chat_template (%s); prompts are rendered with the "
                "top-level one the tokenizer carries: set chat_template: %s at the top level to "
                "match training",
                own,
                own,
            )

    def fallback(self, type_name: str) -> str:
        """'chat' (the tokenizer has a template) or 'raw' for a format that does not say how
        its prompts are rendered, with a warning that the prompt is not the training one."""
        fallback = "chat" if self.has_chat_template() else "raw"
        log.warning(
            "type: %s: weave cannot render its prompt as in training (the format does not say "
            "how: a question about other fields, not a free prompt); prompts are used as %s",
            type_name,
            "chat messages in the tokenizer's template" if fallback == "chat" else "raw text",
        )
        return fallback

    def format_ids(self, text: str) -> list[int]:
        """The instruction format's prompt ids for `text` (its `build` on its `prompt_row`, with
        `train_on_inputs: false` and no truncation)."""
        assert self.build is not None and self.prompt_row is not None
        cfg = self.cfg.model_copy(update={"train_on_inputs": False, "sequence_len": 1 << 30})
        row = self.prompt_row(self.entry, text)
        try:
            rows = list(self.build(self.entry, rows_table([row]), self.tokenizer, cfg))
        except WeaveError as exc:
            raise WeaveError(f"type: {self.entry.type}: its prompt row {row!r}: {exc}") from None
        ids, labels = first_sequence(rows[0]) if len(rows) == 1 else ([], [])
        # the prompt ends where training starts: a fixed response opening ("what is " in
        # jeopardy) and its EOS are what the model learnt to write, not part of the prompt
        start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
        if not ids[:start]:
            raise WeaveError(f"type: {self.entry.type}: its prompt row {row!r} built no prompt")
        return list(ids[:start])

    def prompt_ids(self, text: str) -> list[int]:
        """The ids of one prompt: a user turn in the chat or instruction format, or raw text."""
        return self.conversation_ids([Message("user", text)])

    def conversation_ids(self, messages: list[Message]) -> list[int]:
        """The ids of a conversation ending with a user turn, ready for the assistant's answer.

        Chat: the whole conversation through the template. Instruction format: each earlier
        (user, assistant) pair as prompt + answer + EOS, then the last prompt (system
        messages are not part of such formats and are left out). Raw: the texts joined."""
        if self.mode == "chat":
            try:
                text = chat_text(
                    self.tokenizer,
                    [{"role": m.role, "content": m.content} for m in messages],
                    system_fix="leave the system message out",
                    add_generation_prompt=True,
                    **template_kwargs(self.cfg),
                )
            except ValueError as exc:  # the template refused the conversation
                raise WeaveError(str(exc)) from None
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.mode == "raw":
            text = "\n".join(m.content for m in messages if m.role != "system")
            return list(self.tokenizer(text)["input_ids"])
        ids: list[int] = []
        for message in messages:
            if message.role == "user":
                turn = self.format_ids(message.content)
                bos = self.tokenizer.bos_token_id
                if ids and bos is not None and turn and turn[0] == bos:
                    turn = turn[1:]
                ids += turn
            elif message.role == "assistant":
                ids += self.tokenizer(message.content, add_special_tokens=False)["input_ids"]
                ids.append(self.tokenizer.eos_token_id)
        return ids


def template_kwargs(cfg: Any) -> dict[str, Any]:
    """The chat template's variables as training rendered the prompts: `chat_template_kwargs`,
    updated by `trl.chat_template_kwargs` (GRPO's, as TRL passes them)."""
    trl = getattr(cfg, "trl", None)
    return {
        **(getattr(cfg, "chat_template_kwargs", None) or {}),
        **(getattr(trl, "chat_template_kwargs", None) or {}),
    }


def first_sequence(row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """The ids and labels of a built row's first labelled sequence: `input_ids` and `labels`,
    or a preference pair's `chosen_input_ids` and `chosen_labels` (any `X_input_ids` beside an
    `X_labels`); none, two empty lists."""
    for column in row:
        if column.endswith("input_ids") and column.removesuffix("input_ids") + "labels" in row:
            return list(row[column]), list(row[column.removesuffix("input_ids") + "labels"])
    return [], []
