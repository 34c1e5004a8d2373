"""Prompts rendered as in training: the token ids a trained model saw before its answer.

Three ways, picked from the config's first `datasets:` entry:

- a chat format (`type: chat_template`, `sharegpt`): the conversation through the tokenizer's
  chat template with the generation prompt. The tokenizer is loaded through the
  `load_tokenizer` hook, so the `chat_template` plugin has set the config's top-level
  `chat_template` (with `default_system_message`) on it, as in training; the text is tokenized
  without special tokens, as that plugin does.
- an instruction format (`alpaca`, `alpaca_chat`, `oasst`, `jeopardy`, ...): the format's own
  `build` (from the registry) on one row holding the prompt and an empty response. An empty
  response adds no token, so the built row is exactly the training prompt (system text, turn
  template, BOS).
- raw text (`completion`, `pretraining`, a format neither of the above reaches, or `--raw`):
  the text with the tokenizer's special tokens.

Not a plugin (no entry point): a helper of `inference_command` and `serve_command`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from axolotl_weave import WeaveError, rows_table

log = logging.getLogger("axolotl_weave")

CHAT_FORMATS = ("chat_template", "sharegpt")
"""Format names (before any `.variant`) whose rows are conversations in a chat template."""

RAW_FORMATS = ("completion", "pretraining", "pretrain")
"""Format names whose rows are plain text: a prompt is used as it is."""

INSTRUCTION_ROWS: tuple[Callable[[str], dict[str, str]], ...] = (
    lambda text: {"instruction": text, "input": "", "output": ""},
    lambda text: {"INSTRUCTION": text, "RESPONSE": ""},
    lambda text: {"instruction": text, "input": "", "response": ""},
    lambda text: {"prompt": text, "generation": ""},
    lambda text: {"question": text, "category": "", "answer": ""},
)
"""One-row probes for instruction formats: the prompt in the format's instruction column, an
empty response. The first the format builds wins (a format lacking a column refuses the row)."""


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
        base = type_name.split(":")[0].split(".")[0]
        self.build: Callable[..., Any] | None = None
        self.probe: Callable[[str], dict[str, str]] | None = None
        if raw:
            self.mode = "raw"
        elif base in CHAT_FORMATS:
            self.mode = "chat"
            self.check_chat_template(type_name)
        elif base in RAW_FORMATS or not type_name:
            self.mode = "raw"
        else:
            self.mode = self.find_probe(session, type_name)
        self.describe = {
            "chat": "the tokenizer's chat template",
            "format": f"the prompt format of type: {type_name}",
            "raw": "raw text (no template)",
        }[self.mode]

    def check_chat_template(self, type_name: str) -> None:
        """Refuse a chat format whose tokenizer has no template; warn when the entry names a
        template of its own (inference renders with the tokenizer's, the top-level one)."""
        if not isinstance(getattr(self.tokenizer, "chat_template", None), str):
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

    def find_probe(self, session: Any, type_name: str) -> str:
        """'format' when the format builds one of the probe rows, else 'chat' (the tokenizer
        has a template) or 'raw', with a warning that the prompt is not the training one."""
        fmt = session.formats.get(type_name)
        build = getattr(fmt, "build", None)
        if build is not None:
            for probe in INSTRUCTION_ROWS:
                self.build, self.probe = build, probe
                try:
                    self.format_ids("probe")
                except Exception:  # noqa: BLE001 - a format refusing the probe row: try the next
                    continue
                return "format"
        fallback = (
            "chat" if isinstance(getattr(self.tokenizer, "chat_template", None), str) else "raw"
        )
        log.warning(
            "type: %s: weave cannot render its prompt as in training (the format takes no "
            "instruction/response row); prompts are used as %s",
            type_name,
            "chat messages in the tokenizer's template" if fallback == "chat" else "raw text",
        )
        return fallback

    def format_ids(self, text: str) -> list[int]:
        """The instruction format's prompt ids for `text` (its `build` on the probe row, with
        `train_on_inputs: false` and no truncation)."""
        assert self.build is not None and self.probe is not None
        cfg = self.cfg.model_copy(update={"train_on_inputs": False, "sequence_len": 1 << 30})
        rows = list(self.build(self.entry, rows_table([self.probe(text)]), self.tokenizer, cfg))
        if len(rows) != 1 or not rows[0]["input_ids"]:
            raise ValueError("the format built no prompt")
        return list(rows[0]["input_ids"])

    def prompt_ids(self, text: str) -> list[int]:
        """The ids of one prompt: a user turn in the chat or instruction format, or raw text."""
        return self.conversation_ids([Message("user", text)])

    def conversation_ids(self, messages: list[Message]) -> list[int]:
        """The ids of a conversation ending with a user turn, ready for the assistant's answer.

        Chat: the whole conversation through the template. Instruction format: each earlier
        (user, assistant) pair as prompt + answer + EOS, then the last prompt (system
        messages are not part of such formats and are left out). Raw: the texts joined."""
        if self.mode == "chat":
            text = self.tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages],
                tokenize=False,
                add_generation_prompt=True,
                **dict(getattr(self.cfg, "chat_template_kwargs", None) or {}),
            )
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
