"""MathVista (testmini) read from its published formats.

Formats (option ``path``):

- the Hugging Face parquet (``AI4Math/MathVista``, split ``testmini``; one file
  or a folder of shards) with columns ``pid, question, image, decoded_image
  {bytes, path}, choices, unit, precision, answer, question_type, answer_type,
  metadata, query``. Images come from ``decoded_image``; a row without bytes
  falls back to its ``image`` path.
- the GitHub ``data/testmini.json`` (a dict ``pid -> problem``, no ``query``)
  plus the image folder its ``image`` paths (``images/1.jpg``) are relative to.

Options: ``path`` (required), ``images`` (folder the ``image`` paths are
relative to; default the data file's folder), ``prompt`` (``query``: the
published query, built the same way when absent; ``question``: question and
choices only).

Scoring: ``peekaboo.scoring.mathvista`` (the official quick paths and normalisation, a rule
where the official evaluator asks GPT-4 to extract the answer).

Malformed records are rejected with the reason: choices that are not a list,
an integer answer that is not an integer, a float answer that is not a number,
a list answer that is not a list, a precision that is not an integer.

Task type: symbolic by default (the study treats MathVista as symbolic);
``task_type`` / ``task_type_overrides`` in the config change it. MathVista
ships no evidence boxes: supply them with the dataset's ``boxes`` file.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..cells import is_blank
from ._common import (duplicate_reason, image_source, integer, iter_parquet, letters, parquet_count, read_json,
                      text_list)
from .base import Adapter, AdapterError, RawItem, Reject

QUESTION_TYPES = ("multi_choice", "free_form")
FREE_FORM_TYPES = ("integer", "float", "list")  # the free-form answer types the official normalisation knows


def official_hint(question_type: str, answer_type: str, precision: int | None) -> str:
    """The hint line of MathVista's ``build_query.py`` (zero-shot, solution style)."""
    if question_type == "multi_choice":
        return "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
    if answer_type == "integer":
        return (
            "Hint: Please answer the question requiring an integer answer and provide the final value, "
            "e.g., 1, 2, 3, at the end."
        )
    if answer_type == "float" and precision == 1:
        return (
            "Hint: Please answer the question requiring a floating-point number with one decimal place and "
            "provide the final value, e.g., 1.2, 1.3, 1.4, at the end."
        )
    if answer_type == "float" and precision == 2:
        return (
            "Hint: Please answer the question requiring a floating-point number with two decimal places and "
            "provide the final value, e.g., 1.23, 1.34, 1.45, at the end."
        )
    if answer_type == "float":
        return (
            f"Hint: Please answer the question requiring a floating-point number with {precision} decimal places "
            "and provide the final value at the end."
        )
    if answer_type == "list":
        return (
            "Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
            "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end."
        )
    return "Hint: Please answer the question and provide the final answer at the end."


def build_query(question: str, choices: list[str] | None, unit: str | None, hint: str) -> str:
    """The query as the published parquet holds it: hint, question (with unit), choices."""
    text = f"Question: {question}"
    if unit:
        text += f" (Unit: {unit})"
    parts = [hint, text]
    if choices:
        parts.append("Choices:\n" + "\n".join(f"({l}) {c}" for l, c in zip(letters(len(choices)), choices)))
    return "\n".join(parts)


def list_text(text: str) -> str | None:
    """A list answer as ``str(list)`` (``"[1,2]"`` -> ``"[1, 2]"``): the last ``[...]`` that is a Python list literal.

    The gold answers' form, and the form the scorer (``peekaboo.scoring.mathvista``) reads a stated list in.
    """
    for raw in reversed(re.findall(r"\[[^\[\]]*\]", text)):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, tuple)):
            return str(list(value))
    return None


class MathVistaAdapter(Adapter):
    name = "mathvista"
    default_task_type = "symbolic"

    def check(self) -> list[str]:
        problems = self.check_paths(images=True)
        prompt = self.options.get("prompt", "query")
        if prompt not in ("query", "question"):
            problems.append(f"datasets.{self.dataset}.options.prompt: '{prompt}' is not one of query, question")
        return problems

    def _is_json(self) -> bool:
        return self.path().suffix.lower() == ".json"

    def _image_dirs(self) -> list[Path]:
        p = self.path()
        base = p if p.is_dir() else p.parent
        dirs = [self.path("images")] if self.options.get("images") else []
        return dirs + [base]

    def count(self) -> int:
        if self._is_json():
            return len(read_json(self.path()))
        return parquet_count(self.path())

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self._is_json():
            data = read_json(self.path())
            if not isinstance(data, dict):
                raise AdapterError(
                    f"datasets.{self.dataset}.options.path: {self.path()} is not a testmini.json dict (pid -> problem)"
                )
            twice = set(getattr(data, "duplicates", ()))  # a pid the file holds twice: json kept only the last
            for n, (pid, problem) in enumerate(data.items(), 1):
                row = dict(problem) if isinstance(problem, dict) else {"_bad": problem}
                row.setdefault("pid", pid)
                duplicate = f"duplicate key {pid!r}: the file holds this pid twice" if pid in twice \
                    else duplicate_reason(problem)
                if duplicate:
                    row["_duplicate"] = duplicate
                yield n, row
        else:
            yield from iter_parquet(self.path())

    def records(self) -> Iterator[RawItem | Reject]:
        dirs = self._image_dirs()
        for line, row in self._rows():
            try:
                yield self._item(row, line, dirs)
            except (KeyError, TypeError, ValueError) as exc:
                pid = row.get("pid")
                yield Reject(reason=f"mathvista record {pid!r}: {exc}", item_id=None if pid is None else str(pid),
                             source_line=line)

    def _item(self, row: dict[str, Any], line: int, dirs: list[Path]) -> RawItem | Reject:
        pid = row.get("pid")
        if is_blank(pid):
            return Reject(reason="no pid", source_line=line)
        pid = str(pid)
        if "_bad" in row:
            return Reject(reason="problem is not a JSON object", item_id=pid, source_line=line)
        if "_duplicate" in row:
            return Reject(reason=row["_duplicate"], item_id=pid, source_line=line)
        for key in ("question", "answer", "question_type", "answer_type"):
            if is_blank(row.get(key)):
                return Reject(reason=f"missing '{key}'", item_id=pid, source_line=line)
        question_type = str(row["question_type"])
        answer_type = str(row["answer_type"])
        if question_type not in QUESTION_TYPES:
            return Reject(reason=f"question_type {question_type!r} is not one of {', '.join(QUESTION_TYPES)}",
                          item_id=pid, source_line=line)
        choices = text_list(row.get("choices"), "choices")
        precision = _precision(row.get("precision"), row["answer"], answer_type)
        unit = None if is_blank(row.get("unit")) else str(row["unit"])

        if question_type == "multi_choice":
            if not choices:
                return Reject(reason="multi_choice problem without choices", item_id=pid, source_line=line)
            gold = str(row["answer"])
            if gold not in choices:
                return Reject(reason=f"answer {gold!r} is not one of the choices {choices}", item_id=pid,
                              source_line=line)
            our_type = "multi_choice"
        elif answer_type in FREE_FORM_TYPES:
            gold = _free_form_gold(row["answer"], answer_type, precision)
            our_type = answer_type
        else:
            return Reject(reason=f"free-form answer_type {answer_type!r} has no official normalisation "
                                 f"(known: {', '.join(FREE_FORM_TYPES)})", item_id=pid, source_line=line)

        image = image_source(row.get("decoded_image"), dirs)
        if image is None:
            image = image_source(row.get("image"), dirs)
        if image is None:
            return Reject(reason="no image (neither decoded_image bytes nor an image path)", item_id=pid,
                          source_line=line)

        hint = official_hint(question_type, answer_type, precision)
        query = row.get("query")
        if self.options.get("prompt", "query") == "question":
            shown = build_query(str(row["question"]), choices, unit, hint).split("\n", 1)[1]
        elif is_blank(query):
            shown = build_query(str(row["question"]), choices, unit, hint)
        else:
            shown = str(query)

        metadata = row.get("metadata")
        meta = {
            "pid": pid,
            "question_type": question_type,
            "mathvista_answer_type": answer_type,
            "precision": precision,
            "unit": unit,
            "raw_answer": str(row["answer"]),
            "metadata": _jsonable(metadata) if metadata is not None else None,
        }
        return RawItem(
            item_id=pid,
            question=shown,
            answer=gold,
            answer_type=our_type,
            images=[image],
            choices=choices if question_type == "multi_choice" else None,
            meta=meta,
            source_line=line,
        )

def _free_form_gold(answer: Any, answer_type: str, precision: int | None) -> str:
    """A free-form gold answer in the form the official normalisation gives predictions; ValueError if it
    does not fit its type (never read with another meaning: "3.5" is no integer, "2014" no list)."""
    if answer_type == "integer":
        return str(integer(answer, "integer answer"))
    if answer_type == "float":
        try:
            value = None if isinstance(answer, bool) else float(answer)
        except (TypeError, ValueError):
            value = None
        if value is None or not math.isfinite(value):
            raise ValueError(f"float answer {answer!r} is not a number")
        return str(round(value, precision if precision is not None else 0))
    if isinstance(answer, str):
        found = list_text(answer)
        if found is None or not re.fullmatch(r"\s*\[.*\]\s*", answer, re.DOTALL):
            raise ValueError(f"list answer {answer!r} is not a list")
        return found
    if isinstance(answer, (list, tuple)) or hasattr(answer, "tolist"):
        return str(list(answer.tolist() if hasattr(answer, "tolist") else answer))
    raise ValueError(f"list answer {answer!r} is not a list")


def _precision(value: Any, answer: Any, answer_type: str) -> int | None:
    """``int(precision)`` (stored as a float); a float answer without one: the decimals it is written with."""
    if not is_blank(value):
        return integer(value, "precision")
    if answer_type != "float":
        return None
    text = str(answer).strip()
    return len(text.split(".", 1)[1]) if "." in text else 0


def _jsonable(value: Any) -> Any:
    """Parquet structs/lists (numpy arrays included) as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        return [_jsonable(v) for v in items] if isinstance(items, list) else items
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


__all__ = ["FREE_FORM_TYPES", "QUESTION_TYPES", "MathVistaAdapter", "build_query", "list_text", "official_hint"]
