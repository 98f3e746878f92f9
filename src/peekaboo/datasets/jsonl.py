"""A user's own data: one JSON object per line.

Each line::

    {"id": "q1", "image": "imgs/a.png", "question": "What colour is the cup?",
     "answer": "red", "choices": ["red", "blue"], "answer_type": "multi_choice",
     "task_type": "visual_reference",
     "regions": [{"label": "cup", "box": [10, 20, 60, 90]}], "meta": {...}}

``question`` and ``answer`` are required. ``id`` defaults to the line number;
``image`` may be a list, or ``images`` a list (multi-image questions; a
region's ``image`` is its 0-based index), or both may be absent (a text-only
item). Image paths resolve against the JSONL file's directory (or the
``image_root`` option). ``answer_type`` defaults to a guess from the answer
and choices. The file is read with ``peekaboo.jsonlines.read_lines``: a line
that is not valid UTF-8 or not JSON, lacks a required key or holds a value of
the wrong kind (choices that are not a list, an integer answer that is not an
integer, a list answer that is not a JSON array) becomes a Reject with its
line number and the reason; a UTF-8 byte-order mark at the start is read as
such. The items stage checks the images and boxes.

Scoring: ``peekaboo.scoring.jsonl`` (by the item's answer type).

Options: ``path`` (required), ``image_root`` (default: the file's directory),
``add_choices`` (default true: list the choices under the question as
``(A) ...`` lines, the form the scorer's ``extraction.extract_letter`` reads back).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Mapping

from .. import answers
from ..jsonlines import count_lines, read_lines
from .base import ANSWER_TYPES, TASK_TYPES, Adapter, RawItem, Region, Reject

_KNOWN_KEYS = {"id", "image", "images", "question", "answer", "choices", "answer_type", "task_type", "regions", "meta"}


class JsonlAdapter(Adapter):
    name = "jsonl"

    def check(self) -> list[str]:
        p = self.path()
        if not p.is_file():
            given = self.options["path"]
            hint = "" if Path(given).expanduser().is_absolute() else f" (resolved against {self.base_dir.resolve()})"
            return [f"datasets.{self.dataset}.options.path: no such file {given}{hint}"]
        root = self.options.get("image_root")
        if root is not None and not self.image_root().is_dir():
            return [f"datasets.{self.dataset}.options.image_root: no such directory {self.image_root()}"]
        return []

    def image_root(self) -> Path:
        root = self.options.get("image_root")
        if root is None:
            return self.path().parent
        p = Path(root).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def count(self) -> int:
        return count_lines(self.path())

    def records(self) -> Iterator[RawItem | Reject]:
        for line in read_lines(self.path()):
            if not line.ok:
                yield Reject(reason=line.error, source_line=line.number)
                continue
            try:
                yield self._parse(line.value, line.number)
            except _BadRecord as exc:
                yield Reject(reason=str(exc), item_id=exc.item_id, source_line=line.number)

    def _parse(self, rec: Any, line_no: int) -> RawItem:
        if not isinstance(rec, dict):
            raise _BadRecord(f"not JSON: expected an object, got {type(rec).__name__}")
        raw_id = rec.get("id", line_no)
        if raw_id is None or isinstance(raw_id, (dict, list, bool)) or str(raw_id).strip() == "":
            raise _BadRecord(f"bad id: {raw_id!r} (a non-empty string or number)")
        item_id = str(raw_id)
        missing = [k for k in ("question", "answer") if k not in rec or rec[k] is None]
        if missing:
            raise _BadRecord(f"missing key: {', '.join(missing)}", item_id)
        if not isinstance(rec["question"], str) or not rec["question"].strip():
            raise _BadRecord("bad question: must be a non-empty string", item_id)

        choices = rec.get("choices")
        if choices is not None:
            if not isinstance(choices, list) or not choices or not all(isinstance(c, (str, int, float)) for c in choices):
                raise _BadRecord("bad choices: must be a non-empty list of strings", item_id)
            if len(choices) > len(answers.LETTERS):
                raise _BadRecord(f"bad choices: at most {len(answers.LETTERS)} supported", item_id)
            choices = [str(c) for c in choices]

        answer_type = rec.get("answer_type") or answers.infer_answer_type(rec["answer"], choices)
        if answer_type not in ANSWER_TYPES:
            raise _BadRecord(f"bad answer_type: {answer_type!r} (known: {', '.join(ANSWER_TYPES)})", item_id)
        if answer_type == "list" and not isinstance(rec["answer"], list):
            raise _BadRecord(f"bad answer: a list answer must be a JSON array, got {rec['answer']!r}", item_id)
        if answer_type == "list" and not all(
            isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in rec["answer"]
        ):
            raise _BadRecord("bad answer: a list answer holds text or numbers only", item_id)
        try:
            answer = answers.normalize_answer(rec["answer"], answer_type, choices)
        except answers.AnswerFormatError as exc:
            raise _BadRecord(f"bad answer: {exc}", item_id) from None

        task_type = rec.get("task_type")
        if task_type is not None and task_type not in TASK_TYPES:
            raise _BadRecord(f"bad task_type: {task_type!r} (known: {', '.join(TASK_TYPES)})", item_id)

        images = self._images(rec, item_id)
        regions = self._regions(rec.get("regions"), len(images), item_id)

        meta = rec.get("meta", {})
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise _BadRecord("bad meta: must be an object", item_id)
        extra = {k: v for k, v in rec.items() if k not in _KNOWN_KEYS}
        if extra:
            meta = {**meta, "extra": extra}  # unknown keys are kept, not lost

        question = rec["question"]
        if choices and self.options.get("add_choices", True):
            question = answers.question_with_choices(question, choices)
        return RawItem(
            item_id=item_id,
            question=question,
            answer=answer,
            answer_type=answer_type,
            images=images,
            choices=choices,
            task_type=task_type,
            regions=regions,
            meta=meta,
            source_line=line_no,
        )

    def _images(self, rec: Mapping[str, Any], item_id: str) -> list[Path]:
        if "image" in rec and "images" in rec:
            raise _BadRecord("give either image or images, not both", item_id)
        value = rec.get("images", rec.get("image"))
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise _BadRecord("bad image: paths must be non-empty strings", item_id)
        root = self.image_root()
        out = []
        for v in values:
            p = Path(v).expanduser()
            out.append(p if p.is_absolute() else root / p)
        return out

    def _regions(self, value: Any, n_images: int, item_id: str) -> list[Region]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise _BadRecord("bad regions: must be a list of {label, box}", item_id)
        if value and n_images == 0:
            raise _BadRecord("bad regions: the item has no image", item_id)
        regions = []
        for k, r in enumerate(value):
            if not isinstance(r, dict) or "box" not in r:
                raise _BadRecord(f"bad region {k}: must be an object with a box", item_id)
            box = r["box"]
            if (
                not isinstance(box, list)
                or len(box) != 4
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in box)
                or not all(math.isfinite(x) for x in box)
            ):
                raise _BadRecord(f"bad region {k}: box must be four numbers [x0, y0, x1, y1], got {box!r}", item_id)
            image = r.get("image", 0)
            if not isinstance(image, int) or isinstance(image, bool) or not 0 <= image < n_images:
                raise _BadRecord(f"bad region {k}: image index {image!r} not in 0..{n_images - 1}", item_id)
            label = r.get("label")
            regions.append(Region(label=str(label) if label is not None else f"region {k}", box=tuple(float(x) for x in box), image=image))
        return regions


class _BadRecord(ValueError):
    def __init__(self, reason: str, item_id: str | None = None):
        super().__init__(reason)
        self.item_id = item_id
