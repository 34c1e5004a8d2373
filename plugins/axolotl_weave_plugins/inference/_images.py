"""Prompts with images for a vision-language model (one trained with `processor_type`): the
processor saved with it, and a conversation whose messages hold images turned into the
model's inputs (its token ids, each image expanded into its image tokens, and the pixels).

Not a plugin (no entry point): a helper of the inference commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl_weave import WeaveError

IMAGE_PARTS = ("image_url", "image")
"""Content part types that carry an image: OpenAI's `image_url` ({"url": ...}) and `image`."""


def load_processor(cfg: Any, folders: list[str | Path | None], tokenizer: Any) -> Any:
    """The processor of a model trained with `processor_type`: the first of `folders` that
    holds one (what training saved beside the model or adapter, then the base), speaking
    through the run's tokenizer; None without `processor_type`."""
    if not getattr(cfg, "processor_type", None):
        return None
    import transformers

    loader = getattr(transformers, cfg.processor_type, transformers.AutoProcessor)
    kwargs = getattr(cfg, "processor_kwargs", None) or {}
    for folder in folders:
        if folder and (Path(folder) / "processor_config.json").is_file():
            where = str(folder)
            break
    else:
        where = str(next(f for f in folders if f))
    processor = loader.from_pretrained(where, **kwargs)
    processor.tokenizer = tokenizer
    if getattr(tokenizer, "chat_template", None) and not getattr(processor, "chat_template", None):
        processor.chat_template = tokenizer.chat_template
    return processor


def has_images(messages: list[dict[str, Any]]) -> bool:
    """Whether any message's content holds an image part."""
    return any(
        isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in m["content"])
        for m in messages
    )


def image_of(part: dict[str, Any]) -> Any:
    """The image an `image_url` / `image` part names (a URL, a `data:` URL, a path)."""
    from transformers.image_utils import load_image

    value = part.get("image_url", part.get("image", part.get("url", part.get("path"))))
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise WeaveError(f"an image part names no image: {part!r:.100}")
    try:
        return load_image(value).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL, requests and base64 each raise their own
        raise WeaveError(f"cannot read the image {value[:60]!r}: {exc}") from None


def vision_inputs(processor: Any, messages: list[dict[str, Any]]) -> tuple[list[int], dict]:
    """The prompt ids of a conversation with images (with the generation prompt) and the
    other inputs the model takes for them (`pixel_values`, ...), as the processor gives them."""
    shaped, images = [], []
    for message in messages:
        content = message.get("content")
        parts = [{"type": "text", "text": content or ""}] if not isinstance(content, list) else []
        for part in content if isinstance(content, list) else []:
            if part.get("type") in IMAGE_PARTS:
                images.append(image_of(part))
                parts.append({"type": "image"})
            elif part.get("type") == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
        shaped.append({"role": message["role"], "content": parts})
    text = processor.apply_chat_template(shaped, add_generation_prompt=True, tokenize=False)
    bos = getattr(processor.tokenizer, "bos_token", None)
    encoded = processor(
        text=[text],
        images=[images],
        return_tensors="pt",
        add_special_tokens=not (bos and text.startswith(bos)),
    )
    ids = encoded["input_ids"][0].tolist()
    extra = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
    return ids, extra
