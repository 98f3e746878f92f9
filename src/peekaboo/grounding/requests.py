"""What the boxes stage asks a source (one item image) and what it gets back, shared by both sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .coords import BoxReject

# an outcome's status: boxes accepted; an answer without usable boxes; nothing to ask (no image, an
# unreadable image, no phrase: the data's doing); the model or processor failed on it
STATUSES = ("ok", "no boxes", "skipped", "failed")


@dataclass
class Request:
    """One image of one item to ground; ``image`` is the RGB image as the items stage reads it."""

    item_id: str
    image_index: int
    n_images: int
    question: str
    image: Any
    source_line: int | None = None


@dataclass
class Outcome:
    """What one request gave: the accepted boxes (original pixels) and every reject with its reason."""

    item_id: str
    image_index: int | None
    n_images: int
    source_line: int | None
    width: int | None = None
    height: int | None = None
    asked: str = ""
    phrases: list[str] | None = None
    answer: str | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)  # {box, image, label?, score?}
    rejects: list[BoxReject] = field(default_factory=list)
    resized: tuple[int, int] | None = None  # the processor's (width, height), VLMs
    coordinates: str | None = None  # the space the model wrote its boxes in
    error: str | None = None  # why a skipped or failed request gave nothing
    skipped: bool = False

    @classmethod
    def of(cls, request: Request, **kwargs: Any) -> "Outcome":
        size = getattr(request.image, "size", None)
        return cls(item_id=request.item_id, image_index=request.image_index, n_images=request.n_images,
                   source_line=request.source_line, width=size[0] if size else None,
                   height=size[1] if size else None, **kwargs)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "skipped" if self.skipped else "failed"
        return "ok" if self.boxes else "no boxes"

    def fail(self, kind: str, reason: str) -> "Outcome":
        """The model or processor failed on the request (``kind`` one of coords.REJECT_KINDS), with the reason."""
        self.error = reason
        self.rejects.append(BoxReject(kind, reason))
        return self

    def skip(self, kind: str, reason: str) -> "Outcome":
        """The data left nothing to ask (no image, an unreadable image, no phrase), with the reason."""
        self.skipped = True
        return self.fail(kind, reason)


def keep_first(outcome: Outcome, candidates: list[tuple[dict[str, Any], str | None, int | None]],
               max_boxes: int) -> None:
    """Accept ``candidates`` (box dict, fragment, number) in order up to ``max_boxes``; reject the rest."""
    for box, fragment, index in candidates:
        if len(outcome.boxes) < max_boxes:
            outcome.boxes.append(box)
        else:
            outcome.rejects.append(BoxReject("over the box limit", f"max_boxes is {max_boxes}", fragment, index))
