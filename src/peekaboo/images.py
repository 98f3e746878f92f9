"""Images as the stages store them: decoded to plain RGB, written as PNG with the same bytes for the same pixels."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class ItemRejected(ValueError):
    """One record cannot be used; the message is the reason stored in the rejects table."""


def load_image(source: Any, base_dir: str | Path = ".") -> Image.Image:
    """An adapter's image (path, bytes or PIL image) decoded as RGB; ItemRejected when it cannot be."""
    if isinstance(source, Image.Image):
        img, where = source, "in-memory image"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        where = "image bytes"
        try:
            img = Image.open(io.BytesIO(bytes(source)))
            img.load()
        except Exception as exc:  # PIL raises many types for corrupt data
            raise ItemRejected(f"unreadable image: {where} ({type(exc).__name__}: {exc})") from None
    elif isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        where = str(path)
        if not path.is_file():
            raise ItemRejected(f"missing image: {where}")
        try:
            with Image.open(path) as opened:
                opened.load()
                img = opened.copy()
        except Exception as exc:
            raise ItemRejected(f"unreadable image: {where} ({type(exc).__name__}: {exc})") from None
    else:
        raise ItemRejected(f"unreadable image: unsupported source type {type(source).__name__}")
    if img.width < 1 or img.height < 1:
        raise ItemRejected(f"unreadable image: {where} has no pixels")
    try:
        return to_rgb(img)
    except Exception as exc:
        raise ItemRejected(f"unreadable image: {where} ({type(exc).__name__}: {exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels with nothing else attached; transparent pixels composited onto white."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    # a fresh image from the pixel array carries no info dict (ICC, EXIF, dpi, dates)
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding of an RGB image; the same pixels always give the same bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img.convert("RGB"), dtype=np.uint8), mode="RGB").save(
        buf, format="PNG", compress_level=6, optimize=False
    )
    return buf.getvalue()


def write_png(img: Image.Image, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(img))


