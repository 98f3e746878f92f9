"""HallusionBench read from its published formats.

Formats (option ``path``):

- the GitHub ``HallusionBench.json`` list (``category, subcategory,
  visual_input, set_id, figure_id, sample_note, question_id, question,
  gt_answer_details, gt_answer, filename``) plus the unzipped image folder
  (``hallusion_bench/``); ``filename`` is ``./hallusion_bench/VD/illusion/0_0.png``.
  Records with ``visual_input == "0"`` have no ``filename`` and no image.
- the parquet (Hugging Face copies; one file or a folder of shards) with the
  same columns and an ``image`` column of ``{bytes, path}`` structs (null for
  questions without an image).

Options: ``path`` (required), ``images`` (folder the ``filename`` paths are
relative to: the one holding ``hallusion_bench/``; default the JSON's folder;
``{category}/{subcategory}/{set_id}_{figure_id}.png`` under it is tried too,
as the official ``get_image_file_location`` builds it), ``instruction`` (text
appended to each question; default asks for a final ``Answer: yes/no`` line so
that the answer can be read by rule; set it to ``""`` for the bare question).

Item ids: ``{category}_{subcategory}_{set_id}_{figure_id}_{question_id}``, the
key the official ``get_eval_all`` asserts unique.

Scoring and the official leaderboard accuracies: ``peekaboo.scoring.hallusionbench``.

Malformed records are rejected with the reason: ``set_id``, ``figure_id`` or
``question_id`` that is not an integer, a ``visual_input`` other than 0, 1 or
2, a ``category`` other than VD or VS, a ``gt_answer`` other than "0" or "1".

Task type: items without an image are symbolic, the others visual_reference
(a ``task_type`` in the config overrides both). No evidence boxes are shipped;
supply them with the dataset's ``boxes`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from ..cells import is_blank
from ._common import duplicate_reason, image_source, integer, iter_parquet, parquet_count, read_json
from .base import Adapter, AdapterError, RawItem, Reject

DEFAULT_INSTRUCTION = (
    "Answer the question with yes or no. The last line of your response should be of the following "
    "format: 'Answer: yes' or 'Answer: no'."
)
# the official per-question key (the scorer's leaderboard groups questions by these too)
KEY_FIELDS = ("category", "subcategory", "set_id", "figure_id", "question_id")
_INTEGER_KEYS = ("set_id", "figure_id", "question_id", "visual_input")


def item_key(record: Mapping[str, Any]) -> str:
    """The official per-question key, used as the item id."""
    return "_".join(str(record[k]) for k in KEY_FIELDS)


def _official_id(value: Any, field: str) -> str:
    """An integer field as the official code keys records (``str(value)``): digits as written, a number as its
    integer (a parquet copy may store 0 as 0.0); ValueError naming the field for anything else."""
    if isinstance(value, str) and value.strip().isdigit():
        return value.strip()
    return str(integer(value, field))


class HallusionBenchAdapter(Adapter):
    name = "hallusionbench"
    default_task_type = "visual_reference"

    def check(self) -> list[str]:
        return self.check_paths(images=True)

    def _is_json(self) -> bool:
        return self.path().suffix.lower() == ".json"

    def count(self) -> int:
        return len(read_json(self.path())) if self._is_json() else parquet_count(self.path())

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self._is_json():
            data = read_json(self.path())
            if not isinstance(data, list):
                raise AdapterError(f"datasets.{self.dataset}.options.path: {self.path()} is not a list of questions")
            for n, rec in enumerate(data, 1):
                yield n, rec if isinstance(rec, dict) else {"_bad": rec}
        else:
            yield from iter_parquet(self.path())

    def _image_dirs(self) -> list[Path]:
        p = self.path()
        base = p if p.is_dir() else p.parent
        return ([self.path("images")] if self.options.get("images") else []) + [base]

    def records(self) -> Iterator[RawItem | Reject]:
        dirs = self._image_dirs()
        instruction = self.options.get("instruction", DEFAULT_INSTRUCTION)
        for line, rec in self._rows():
            if "_bad" in rec:
                yield Reject(reason="record is not a JSON object", source_line=line)
                continue
            missing = [k for k in (*KEY_FIELDS, "visual_input", "question", "gt_answer") if is_blank(rec.get(k))]
            duplicate = duplicate_reason(rec)
            if duplicate:
                yield Reject(reason=duplicate, item_id=None if any(k in missing for k in KEY_FIELDS) else item_key(rec),
                             source_line=line)
                continue
            if missing:
                item_id = None if any(k in missing for k in KEY_FIELDS) else item_key(rec)
                yield Reject(reason=f"missing {', '.join(missing)}", item_id=item_id, source_line=line)
                continue
            try:
                rec = {**rec, **{k: _official_id(rec[k], k) for k in _INTEGER_KEYS}}
            except ValueError as exc:
                yield Reject(reason=str(exc), item_id=item_key(rec), source_line=line)
                continue
            item_id = item_key(rec)
            problem = _record_problem(rec)
            if problem:
                yield Reject(reason=problem, item_id=item_id, source_line=line)
                continue
            gold = str(rec["gt_answer"]).strip()
            visual = rec["visual_input"]
            images: list[Any] = []
            if visual != "0":
                image = image_source(rec.get("image"), dirs)
                if image is None:
                    image = self._image_file(rec, dirs)
                if image is None:
                    yield Reject(reason=f"visual_input {visual} but no image or filename", item_id=item_id,
                                 source_line=line)
                    continue
                images = [image]
            question = str(rec["question"]).strip()
            if instruction:
                question = f"{question}\n{instruction}"
            meta = {k: str(rec[k]) for k in KEY_FIELDS}
            meta.update(
                # the questions of one set share its original and edited figures (the official figure and
                # question-pair accuracies group by them): the analyses treat the set as one cluster
                cluster=f"{rec['category']}_{rec['subcategory']}_{rec['set_id']}",
                visual_input=visual,
                sample_note=None if is_blank(rec.get("sample_note")) else str(rec["sample_note"]),
                gt_answer_details=None if is_blank(rec.get("gt_answer_details")) else str(rec["gt_answer_details"]),
                filename=None if is_blank(rec.get("filename")) else str(rec["filename"]),
            )
            yield RawItem(
                item_id=item_id,
                question=question,
                answer="yes" if gold == "1" else "no",
                answer_type="yes_no",
                images=images,
                task_type="symbolic" if not images else None,
                meta=meta,
                source_line=line,
            )

    def _image_file(self, rec: Mapping[str, Any], dirs: list[Path]) -> Path | None:
        filename = rec.get("filename")
        if not is_blank(filename):
            found = image_source(filename, dirs)
            if isinstance(found, Path) and found.is_file():
                return found
        # the official get_image_file_location layout: {root}/{category}/{subcategory}/{set}_{figure}.png
        rel = Path(str(rec["category"]), str(rec["subcategory"]), f"{rec['set_id']}_{rec['figure_id']}.png")
        for d in dirs:
            for root in (d, d / "hallusion_bench"):
                if (root / rel).is_file():
                    return root / rel
        if not is_blank(filename):
            return image_source(filename, dirs)  # missing: the items stage rejects it by name
        return None


def _record_problem(rec: Mapping[str, Any]) -> str | None:
    """Why a record (integer fields already read) cannot be scored as the official code scores it; None if fine."""
    if str(rec["category"]) not in ("VD", "VS"):
        return f"category {rec['category']!r} is neither VD nor VS"
    if rec["visual_input"] not in ("0", "1", "2"):
        return f"visual_input {rec['visual_input']} is not 0 (no figure), 1 (original) or 2 (edited)"
    gold = str(rec["gt_answer"]).strip()
    if gold not in ("0", "1"):
        return f"gt_answer {gold!r} is neither '1' (yes) nor '0' (no)"
    return None
