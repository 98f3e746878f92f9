"""What an adapter hands the items stage: raw items with their regions, and rejects.

Kept on the ground floor (below ``peekaboo.datasets``) so that code producing
items without being an adapter (the synthetic panels generator, which the
reference models train on) needs none of the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

# An image as an adapter hands it over: a file path, encoded bytes, or a decoded image.
ImageSource = Union[str, Path, bytes, Image.Image]


@dataclass
class Region:
    label: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the original image's pixels
    image: int = 0  # which of the item's images the box lies in


@dataclass
class RawItem:
    item_id: str
    question: str
    answer: str
    answer_type: str
    images: list[ImageSource] = field(default_factory=list)
    choices: list[str] | None = None
    task_type: str | None = None  # None: the dataset's configured or default type
    regions: list[Region] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    source_line: int | None = None


@dataclass
class Reject:
    reason: str
    item_id: str | None = None
    source_line: int | None = None
