"""Multimodal conversations: a row's messages put in one shape, and their tokens and labels as
the processor gives them.

Messages are `role`/`content` (or ShareGPT's `from`/`value`); a content is a string or a list
of `{"type": "text", "text": ...}` and `{"type": "image", ...}` items, an image given by `path`,
`url`, `base64` or `image` (Axolotl's multimodal format). A row's `images` (or `image`) column
fills the image items that name none, in order, or else goes before the text of the first
user message.

The labels: the processor turns the rendered conversation into tokens, each image expanded into
its image tokens. A trained turn's tokens are those between the conversation up to that turn
with the generation prompt and the conversation through the turn, each rendered and processed
with the images it holds (so whatever the images expand to, the spans line up); the other
tokens are masked. A template whose rendering of a beginning is not a prefix of the whole is
refused.

Not a plugin (no entry point): a helper of `vision_language`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axolotl_weave import IGNORE_INDEX, DataError

from axolotl_weave_plugins.multimodal import _images

SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
IMAGE_KEYS = ("path", "url", "base64", "image")


@dataclass(frozen=True)
class Conversation:
    """A row made uniform: messages with `{"type": "text"|"image"}` items, and the image
    references in the order the items hold them."""

    messages: list[dict[str, Any]]
    images: list[str]


def read_row(row: dict[str, Any], field_messages: str, folder: Path | None) -> Conversation:
    """The row's conversation, its images resolved to references (`_images.reference`)."""
    raw = row.get(field_messages)
    if not isinstance(raw, list) or not raw:
        raise DataError(f"no conversation: '{field_messages}' must be a non-empty list of messages")
    messages, images = [], []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise DataError(f"{field_messages}[{index}] is not a mapping")
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        role = SHAREGPT_ROLES.get(role, role) if "from" in message else role
        if not isinstance(role, str) or content is None:
            raise DataError(f"{field_messages}[{index}] needs a role and a content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content
        uniform = []
        for item in items:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                uniform.append({"type": "text", "text": str(item.get("text", ""))})
            elif kind == "image":
                given = next((item[k] for k in IMAGE_KEYS if item.get(k) is not None), None)
                images.append(None if given is None else _images.reference(given, folder))
                uniform.append({"type": "image"})
            else:
                raise DataError(
                    f"{field_messages}[{index}]: a content item must be of type text or image, "
                    f"not {item!r:.80}"
                )
        messages.append({"role": role, "content": uniform})
    column = row.get("images", row.get("image"))
    extra = [] if column is None else column if isinstance(column, list) else [column]
    extra = [_images.reference(item, folder) for item in extra]
    holes = [i for i, ref in enumerate(images) if ref is None]
    if holes:
        if len(extra) != len(holes):
            raise DataError(
                f"{len(holes)} image item(s) name no image and the row's images column has "
                f"{len(extra)}"
            )
        for i, ref in zip(holes, extra, strict=True):
            images[i] = ref
    elif extra:
        first = next((m for m in messages if m["role"] == "user"), messages[0])
        first["content"][:0] = [{"type": "image"} for _ in extra]
        images = extra + images  # the first user message's images come before the others
    return Conversation(messages, images)


def image_count(messages: list[dict[str, Any]]) -> int:
    """How many image items the messages hold."""
    return sum(item["type"] == "image" for m in messages for item in m["content"])


@dataclass(frozen=True)
class Encoder:
    """Renders and processes conversations (the processor, its template and the images' size)."""

    processor: Any
    image_size: int | tuple[int, int] | None
    resample: str | None

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        """The conversation as the processor's chat template writes it."""
        from jinja2 import TemplateError

        try:
            return self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except TemplateError as exc:
            raise DataError(f"the chat template refused the conversation: {exc}") from None

    def image_token_ids(self) -> set[int]:
        """The ids standing for images (never trained): the processor's image token, the ones
        it expands it into, the tokenizer's."""
        processor, tokenizer = self.processor, self.processor.tokenizer
        found = {getattr(processor, "image_token_id", None)}
        found |= set(getattr(processor, "image_token_ids", None) or ())
        found |= {getattr(tokenizer, "image_token_id", None)}
        return {token for token in found if isinstance(token, int)}

    def special_tokens(self, text: str) -> bool:
        """Whether the tokenizer should add its special tokens (BOS) to `text`: not when the
        template already wrote them."""
        bos = getattr(self.processor.tokenizer, "bos_token", None)
        return not (bos and text.startswith(bos))

    def load(self, images: list[str]) -> list[Any]:
        """The images the references name, resized as the config says."""
        return [_images.load(ref, self.image_size, self.resample) for ref in images]

    def token_ids(self, text: str, pictures: list[Any]) -> list[int]:
        """The processor's token ids of `text` with `pictures` (each expanded to its tokens)."""
        encoded = self.processor(
            text=[text],
            images=[pictures] if pictures else None,
            add_special_tokens=self.special_tokens(text),
        )
        return list(encoded["input_ids"][0])


def encode(
    encoder: Encoder,
    conversation: Conversation,
    roles_to_train: set[str],
    train_on_inputs: bool,
) -> dict[str, Any]:
    """A row's columns: `input_ids`, `labels` (the trained turns' tokens), `attention_mask`,
    and for the batches `mm_text` (the rendered conversation) and `mm_images`."""
    messages, images = conversation.messages, conversation.images
    pictures = encoder.load(images)  # read once; the prefixes below reuse them
    text = encoder.render(messages)
    ids = encoder.token_ids(text, pictures)
    labels = list(ids) if train_on_inputs else [IGNORE_INDEX] * len(ids)
    if not train_on_inputs:
        for turn, message in enumerate(messages):
            if message["role"] not in roles_to_train:
                continue
            start = span_end(encoder, messages[:turn], pictures, ids, generation_prompt=True)
            end = span_end(encoder, messages[: turn + 1], pictures, ids)
            labels[start:end] = ids[start:end]
    image_tokens = encoder.image_token_ids()
    labels = [
        IGNORE_INDEX if t in image_tokens else label for t, label in zip(ids, labels, strict=True)
    ]
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": [1] * len(ids),
        "mm_text": text,
        "mm_images": images,
    }


def span_end(
    encoder: Encoder,
    messages: list[dict[str, Any]],
    pictures: list[Any],
    ids: list[int],
    *,
    generation_prompt: bool = False,
) -> int:
    """How many of the whole conversation's `ids` the beginning `messages` make up (with the
    conversation's loaded `pictures`, of which the beginning holds the first ones)."""
    if not messages:
        return 0
    prefix = encoder.token_ids(
        encoder.render(messages, generation_prompt), pictures[: image_count(messages)]
    )
    if ids[: len(prefix)] != prefix:
        raise DataError(
            "the chat template renders the conversation's beginning differently from the whole "
            "conversation, so its turns cannot be labelled (choose another chat_template)"
        )
    return len(prefix)
