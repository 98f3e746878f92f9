"""Reading an adapter's image (a path, encoded bytes or a decoded image) as plain RGB pixels.

The items stage normalises every image with :func:`load_image`, and the boxes
stage (``peekaboo.grounding``), which grounds an adapter's records before the
items stage runs, reads them the same way, so a grounding model sees the
pixels the traced models see and its boxes are in those pixels.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class UnreadableImage(ValueError):
    """An image is missing or cannot be decoded; the message says which and why."""


def load_image(source: Any, base_dir: str | Path = ".") -> Image.Image:
    """An adapter's image (path, bytes or PIL image) decoded as RGB; UnreadableImage when it cannot be.

    A relative path resolves against ``base_dir``. The message is the reason a stage records
    (``missing image: ...`` or ``unreadable image: ...``).
    """
    if isinstance(source, Image.Image):
        img, where = source, "in-memory image"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        where = "image bytes"
        try:
            img = Image.open(io.BytesIO(bytes(source)))
            img.load()
        except Exception as exc:  # PIL raises many types for corrupt data
            raise UnreadableImage(f"unreadable image: {where} ({type(exc).__name__}: {exc})") from None
    elif isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        where = str(path)
        if not path.is_file():
            raise UnreadableImage(f"missing image: {where}")
        try:
            with Image.open(path) as opened:
                opened.load()
                img = opened.copy()
        except Exception as exc:
            raise UnreadableImage(f"unreadable image: {where} ({type(exc).__name__}: {exc})") from None
    else:
        raise UnreadableImage(f"unreadable image: unsupported source type {type(source).__name__}")
    if img.width < 1 or img.height < 1:
        raise UnreadableImage(f"unreadable image: {where} has no pixels")
    try:
        return to_rgb(img)
    except Exception as exc:
        raise UnreadableImage(f"unreadable image: {where} ({type(exc).__name__}: {exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels with nothing else attached; transparent pixels composited onto white."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    # a fresh image from the pixel array carries no info dict (ICC, EXIF, dpi, dates)
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
