"""Evidence boxes for datasets that ship none (MathVista, HallusionBench, MMMU-Pro).

A box file is JSONL (a dataset's ``boxes`` in the config), one item per line::

    {"dataset": "mathvista", "item_id": "5", "boxes": [{"label": "angle H", "box": [12, 30, 80, 95]}]}

``box`` is XYXY in the original image's pixels; ``image`` (optional, default
0) says which of the item's images the box lies in; ``label`` is optional
(default ``box{k}``). ``dataset`` is optional: a line naming another dataset
is skipped (one file can serve several datasets). Other keys (the boxes
stage writes ``source``, ``model`` and per-box ``score``) are ignored. The
file is read with :func:`peekaboo.jsonlines.read_lines`: a line that is not
valid UTF-8 or not JSON, or lacks ``item_id`` or valid ``boxes``, is an error
naming its line; a second line for the same item is an error too. Errors
never stop the other lines.

Where a dataset's boxes come from is its config entry's ``boxes``: null (none),
a path (a hand-made file), or an object whose ``kind`` is ``file`` (with
``path``), ``vlm`` or ``detector`` (made by the boxes stage,
``peekaboo.grounding``, into ``boxes/{d}.jsonl`` of the results folder, in
this same format). :func:`box_kind` and :func:`file_path` read that entry.

Boxes go to items that have no regions of their own (``attach_boxes``); items
without boxes still count for entropy, correctness and selective risk, and
the collapse and CRM stages leave them out. Checking boxes against the image
(inside it, positive area) is the items stage's job, as for any region.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..jsonlines import read_lines
from .base import RawItem, Region, Reject

# where an item's regions came from: the items table's ``boxes_source`` column
BOX_SOURCES = ("dataset", "file", "vlm", "detector")
# the kinds of a dataset's ``boxes`` entry that the boxes stage makes with a model
MODEL_KINDS = ("vlm", "detector")


def box_kind(entry: Any) -> str | None:
    """The kind of a dataset's ``boxes`` config entry: None, ``file``, ``vlm`` or ``detector``."""
    if entry is None or (isinstance(entry, str) and not entry.strip()):
        return None
    if isinstance(entry, (str, Path)):
        return "file"
    if isinstance(entry, Mapping) and entry.get("kind") in ("file", *MODEL_KINDS):
        return str(entry["kind"])
    raise ValueError(f"a boxes entry is null, a path or an object with kind file, vlm or detector; got {entry!r}")


def file_path(entry: Any) -> str | None:
    """The hand-made box file of a dataset's ``boxes`` entry (plain path or kind ``file``); None otherwise."""
    kind = box_kind(entry)
    if kind != "file":
        return None
    return str(entry) if isinstance(entry, (str, Path)) else str(entry["path"])


@dataclass
class BoxLineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class EvidenceBoxes:
    """The boxes of one dataset read from a box file, with what could not be read."""

    path: Path
    dataset: str | None
    by_item: dict[str, list[Region]] = field(default_factory=dict)
    line_of: dict[str, int] = field(default_factory=dict)
    errors: list[BoxLineError] = field(default_factory=list)
    other_datasets: int = 0  # lines for another dataset, skipped

    def regions_for(self, item_id: str) -> list[Region] | None:
        return self.by_item.get(str(item_id))


@dataclass
class BoxReport:
    """What ``attach_boxes`` did, for the items stage's log and table metadata."""

    attached: int = 0  # items that got regions from the file
    kept_own: int = 0  # items with regions of their own (file boxes ignored)
    without_boxes: int = 0  # items with no regions at all afterwards
    unknown_ids: list[str] = field(default_factory=list)  # file item ids no record had
    errors: list[str] = field(default_factory=list)  # unreadable lines of the file

    def summary(self) -> str:
        parts = [
            f"{self.attached} item(s) got evidence boxes",
            f"{self.without_boxes} have none (left out of collapse and CRM)",
        ]
        if self.kept_own:
            parts.append(f"{self.kept_own} kept their own regions")
        if self.unknown_ids:
            shown = ", ".join(self.unknown_ids[:5]) + (" ..." if len(self.unknown_ids) > 5 else "")
            parts.append(f"{len(self.unknown_ids)} box-file item id(s) match no item ({shown})")
        if self.errors:
            parts.append(f"{len(self.errors)} unreadable line(s): {'; '.join(self.errors[:5])}")
        return "; ".join(parts)


def _parse_box(entry: Any, k: int) -> Region:
    if not isinstance(entry, dict):
        raise ValueError(f"boxes[{k}] is not an object")
    box = entry.get("box")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"boxes[{k}].box must be [x0, y0, x1, y1]")
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"boxes[{k}].box holds a value that is not a number: {box!r}") from None
    if any(isinstance(v, bool) for v in box) or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"boxes[{k}].box holds a value that is not a finite number: {box!r}")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"boxes[{k}].box {box!r} is not [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
    label = entry.get("label", f"box{k + 1}")
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"boxes[{k}].label must be a non-empty string")
    image = entry.get("image", 0)
    if isinstance(image, bool) or not isinstance(image, int) or image < 0:
        raise ValueError(f"boxes[{k}].image must be an image index >= 0, got {image!r}")
    return Region(label=label.strip(), box=(x0, y0, x1, y1), image=image)


def read_boxes(path: str | Path, dataset: str | None = None) -> EvidenceBoxes:
    """Read a box file, keeping the lines for ``dataset`` (all lines when None or when a line names none)."""
    path = Path(path)
    out = EvidenceBoxes(path=path, dataset=dataset)
    for line in read_lines(path):
        n, rec = line.number, line.value
        if not line.ok:
            out.errors.append(BoxLineError(n, line.error))
            continue
        if not isinstance(rec, dict):
            out.errors.append(BoxLineError(n, "not a JSON object"))
            continue
        line_dataset = rec.get("dataset")
        if dataset is not None and line_dataset not in (None, "") and str(line_dataset) != dataset:
            out.other_datasets += 1
            continue
        item_id = rec.get("item_id")
        if item_id is None or (isinstance(item_id, str) and not item_id.strip()):
            out.errors.append(BoxLineError(n, "missing item_id"))
            continue
        item_id = str(item_id)
        boxes = rec.get("boxes")
        if not isinstance(boxes, list):
            out.errors.append(BoxLineError(n, f"item {item_id!r}: 'boxes' must be a list"))
            continue
        try:
            regions = [_parse_box(b, k) for k, b in enumerate(boxes)]
        except ValueError as exc:
            out.errors.append(BoxLineError(n, f"item {item_id!r}: {exc}"))
            continue
        if item_id in out.by_item:
            out.errors.append(BoxLineError(n, f"item {item_id!r} already has boxes on line {out.line_of[item_id]}"))
            continue
        out.by_item[item_id] = regions
        out.line_of[item_id] = n
    return out


def box_line(dataset: str, item_id: str, boxes: Sequence[Mapping[str, Any]], **extra: Any) -> str:
    """One line of a box file (no newline): ``boxes`` are ``{box, image, label?, ...}`` dicts.

    Keys are sorted and coordinates written as given, so the same boxes give
    the same bytes; ``extra`` keys (``source``, ``model``) are kept for the
    reader of the file and ignored by :func:`read_boxes`.
    """
    record = {"dataset": dataset, "item_id": str(item_id), "boxes": [dict(b) for b in boxes], **extra}
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def attach_boxes(
    records: Iterable[RawItem | Reject], boxes: EvidenceBoxes | None, report: BoxReport | None = None
) -> Iterator[RawItem | Reject]:
    """Give each item without regions the file's boxes for it; pass rejects through unchanged.

    ``report`` (filled while iterating; complete once the iterator is exhausted)
    counts attached items, items left without boxes and file ids that matched
    no record. With ``boxes`` None, items pass through and are only counted.
    """
    report = report if report is not None else BoxReport()
    if boxes is not None:
        report.errors = [str(e) for e in boxes.errors]
    seen: set[str] = set()
    for rec in records:
        if isinstance(rec, RawItem):
            seen.add(str(rec.item_id))
            file_regions = boxes.regions_for(rec.item_id) if boxes is not None else None
            if rec.regions:
                report.kept_own += file_regions is not None
            elif file_regions:
                rec.regions = [Region(r.label, tuple(r.box), r.image) for r in file_regions]
                report.attached += 1
            if not rec.regions:
                report.without_boxes += 1
        yield rec
    if boxes is not None:
        report.unknown_ids = sorted(set(boxes.by_item) - seen)
