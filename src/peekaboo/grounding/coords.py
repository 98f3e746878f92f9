"""Boxes from a grounding model's coordinates to the original image's pixels, with the checks on the way.

Two coordinate spaces occur in the published answer formats
(:mod:`peekaboo.grounding.formats`):

* ``norm1000``: each value is ``pixel / side * 1000`` (Qwen2-VL, Qwen3-VL,
  GLM); relative coordinates mean the same on the resized and the original
  image, so ``x_orig = x / 1000 * width``;
* ``resized pixels``: absolute pixels of the image as the processor resized it
  (Qwen2.5-VL); the processor resizes the whole image (no crop, no pad) to
  ``grid * patch`` pixels per side (``image_grid_thw``), the geometry the
  traces stage uses for every image token (:mod:`peekaboo.geometry`), so
  ``x_orig = x * width / resized_width``.

A box is checked in the space the model wrote it: a box with no area
(``x2 <= x1`` or ``y2 <= y1``) is ``degenerate box``; a value off the grid
(below 0, above 1000 or above the resized side) is ``box outside image``: the
model answered in another coordinate system, so the box is not clipped.
Detector boxes come from continuous predictions in original pixels and are
clipped to the image instead (:func:`clip_to_image`). Every accepted box is
rounded to :data:`DECIMALS` decimals and checked again after rounding, so the
items stage never rejects an item for a box this stage made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from .. import geometry

NORM_1000 = "norm1000"
RESIZED_PIXELS = "resized pixels"
PIXELS = "pixels"  # original pixels (detectors)
NORM_GRID = 1000.0
DECIMALS = 2

# every reason a box, an answer or a request can be rejected for (the rejects table's ``kind``)
REJECT_KINDS = (
    "no image",  # the item has no image to ground
    "unreadable image",  # the image could not be read
    "failed",  # the model or processor failed on the request (the error says why)
    "no phrases",  # detector: the question gave no phrase to look for
    "no answer",  # the model wrote nothing, or never closed its thinking block
    "cut off",  # the answer reached max_new_tokens before it ended (boxes after the cut are lost)
    "no box",  # an answer without any box
    "unparseable answer",  # a box-like fragment that cannot be read
    "box outside image",
    "degenerate box",
    "suppressed",  # detector: overlaps a higher-scoring box (non-maximum suppression)
    "over the box limit",  # beyond max_boxes
)


@dataclass(frozen=True)
class BoxReject:
    """Why a box (``box`` its number in the answer) or a whole answer (``box`` None) gave no evidence box."""

    kind: str
    detail: str
    fragment: str | None = None
    box: int | None = None


@dataclass(frozen=True)
class ImageFrame:
    """An image as the model saw it: original size, and the processor's resized size where there is one."""

    width: int
    height: int
    resized_width: int | None = None
    resized_height: int | None = None

    def extent(self, space: str) -> tuple[float, float]:
        """The largest x and y a box may reach in ``space``."""
        if space == NORM_1000:
            return NORM_GRID, NORM_GRID
        if space == RESIZED_PIXELS:
            if not self.resized_width or not self.resized_height:
                raise ValueError("absolute coordinates of the resized image need the processor's resized size")
            return float(self.resized_width), float(self.resized_height)
        if space == PIXELS:
            return float(self.width), float(self.height)
        raise ValueError(f"unknown coordinate space '{space}'")


def processed_size(processor: Any, image: Any, family: str | None = None) -> tuple[int, int]:
    """(width, height) of ``image`` as ``processor`` resizes it for the model: its grid times the patch size."""
    grid = geometry.token_grid(processor, family)
    image_processor = getattr(processor, "image_processor", processor)
    out = image_processor(images=[image], return_tensors="np")
    _, h, w = (int(v) for v in out["image_grid_thw"][0])
    return w * grid.patch_size, h * grid.patch_size


def _rounded(box: Sequence[float]) -> tuple[float, float, float, float]:
    return tuple(round(float(v), DECIMALS) + 0.0 for v in box)  # type: ignore[return-value]  # +0.0: no -0.0


def _checked_pixels(box: Sequence[float], frame: ImageFrame, fragment: str | None, index: int | None):
    """The rounded pixel box, or a reject when rounding left it without area or outside the image."""
    out = _rounded(box)
    x0, y0, x1, y1 = out
    if x1 <= x0 or y1 <= y0:
        return BoxReject("degenerate box", f"{list(out)} has no area in original pixels", fragment, index)
    if x0 < 0 or y0 < 0 or x1 > frame.width or y1 > frame.height:
        return BoxReject("box outside image", f"{list(out)} leaves the {frame.width}x{frame.height} image",
                         fragment, index)
    return out


def to_pixels(coords: Sequence[float], space: str, frame: ImageFrame, fragment: str | None = None,
              index: int | None = None):
    """A box written in ``space`` as XYXY original pixels (rounded), or the :class:`BoxReject` saying why not."""
    values = [float(v) for v in coords]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return BoxReject("unparseable answer", f"{coords!r} is not four finite numbers", fragment, index)
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        return BoxReject("degenerate box", f"{values} has no area (need x1 < x2 and y1 < y2)", fragment, index)
    max_x, max_y = frame.extent(space)
    if x0 < 0 or y0 < 0 or x1 > max_x or y1 > max_y:
        where = {NORM_1000: "the 0-1000 grid", RESIZED_PIXELS: f"the resized {max_x:g}x{max_y:g} image",
                 PIXELS: f"the {max_x:g}x{max_y:g} image"}[space]
        return BoxReject("box outside image", f"{values} leaves {where}", fragment, index)
    sx, sy = frame.width / max_x, frame.height / max_y
    return _checked_pixels((x0 * sx, y0 * sy, x1 * sx, y1 * sy), frame, fragment, index)


def clip_to_image(box: Sequence[float], frame: ImageFrame, fragment: str | None = None, index: int | None = None):
    """A detector's box (original pixels) clipped to the image, or the reject when nothing of it is inside."""
    values = [float(v) for v in box]
    if not all(math.isfinite(v) for v in values):
        return BoxReject("unparseable answer", f"{values} is not four finite numbers", fragment, index)
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        return BoxReject("degenerate box", f"{[round(v, DECIMALS) for v in values]} has no area", fragment, index)
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(frame.width)), min(y1, float(frame.height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return BoxReject("box outside image",
                         f"{[round(v, DECIMALS) for v in values]} lies outside the {frame.width}x{frame.height} image",
                         fragment, index)
    return _checked_pixels(clipped, frame, fragment, index)
