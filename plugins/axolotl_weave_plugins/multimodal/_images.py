"""Images of multimodal rows: where each is (a reference kept in the prepared rows), how it is
read back, and how `image_size` resizes it.

A reference is a string: an absolute file path, an `http(s)://` URL, or `base64:` followed by
the image's bytes in base64 (for images given inline or as a dataset's image feature).

Not a plugin (no entry point): a helper of `vision_language`.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from axolotl_weave import DataError

INLINE = "base64:"
RESAMPLING = ("bilinear", "bicubic", "lanczos")


def reference(item: Any, folder: Path | None) -> str:
    """The reference of one image as a row gives it: a content item's `path`, `url`,
    `base64` or `image` value, or a dataset image feature (a PIL image or `{bytes, path}`).
    A relative path is looked for next to the dataset file, then in the working folder."""
    if isinstance(item, dict) and item.get("bytes"):
        return INLINE + base64.b64encode(item["bytes"]).decode()
    if isinstance(item, dict) and item.get("path"):
        item = item["path"]
    if hasattr(item, "save"):  # a PIL image
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return INLINE + base64.b64encode(buffer.getvalue()).decode()
    if not isinstance(item, str) or not item:
        raise DataError(f"an image must be a path, a URL or base64 data, not {item!r:.80}")
    if item.startswith(("http://", "https://", INLINE)):
        return item
    if item.startswith("data:") and ";base64," in item:
        return INLINE + item.split(";base64,", 1)[1]
    path = Path(item).expanduser()
    if not path.is_absolute() and folder is not None and (folder / path).is_file():
        path = folder / path
    if not path.is_file():
        raise DataError(f"image file '{item}' does not exist")
    return str(path.resolve())


def load(ref: str, size: int | tuple[int, int] | None, resample: str | None) -> Any:
    """The image a reference names, in RGB, resized as `image_size` says: an int, kept in
    proportion and padded to that square; (width, height), stretched to it."""
    from PIL import Image, ImageOps

    if ref.startswith(INLINE):
        image = Image.open(io.BytesIO(base64.b64decode(ref[len(INLINE) :])))
    elif ref.startswith(("http://", "https://")):
        from transformers.image_utils import load_image

        image = load_image(ref)
    else:
        try:
            image = Image.open(ref)
        except OSError as exc:
            raise DataError(f"cannot read image '{ref}': {exc}") from None
    image = image.convert("RGB")
    if size is None:
        return image
    method = getattr(Image.Resampling, (resample or "bilinear").upper())
    if isinstance(size, int):
        return ImageOps.pad(image, (size, size), method=method)
    return image.resize(tuple(size), method)
