"""MathVista (testmini) in its published formats, scored like its official ``calculate_score.py``.

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

Scoring: MathVista's evaluator first lets GPT-4 extract the answer and then
normalises it. Here the extraction is by rule (``final_answer``: GLM's answer
box, ``\\boxed{}``, the text after the last ``Answer:``, else the last line),
and the normalisation is the official one: a multiple-choice answer given as a
letter (``(B)`` or ``B``) becomes that choice's text, any other text the
nearest choice by edit distance; integers ``str(int(float(x)))``; floats
``str(round(float(x), int(precision)))``; lists as their string; then exact
match with the gold answer (normalised the same way). Differences from the
official script, all for responses it never sees after GPT extraction: an
empty answer (a chain cut off before it answered) is unparsed and wrong rather
than mapped to the nearest choice; a free-form answer without a number is
unparsed (None), as the official ``float()`` failure gives.

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

from ..answers import extract_letter, is_abstention
from ._common import (
    final_answer,
    image_source,
    is_missing,
    item_meta,
    iter_parquet,
    letters,
    levenshtein,
    parquet_count,
    read_json,
)
from .base import Adapter, AdapterError, RawItem, Reject, Score

_ANSWER_TYPES = {"integer": "integer", "float": "float", "list": "list", "text": "text"}

_NUMBER_TEXT_RE = re.compile(r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+")


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


def nearest_choice(prediction: str, choices: list[str]) -> str:
    """The official ``get_most_similar``: smallest edit distance, first on ties."""
    distances = [levenshtein(prediction, c) for c in choices]
    return choices[distances.index(min(distances))]


def normalize_extraction(
    extraction: Any, choices: list[str] | None, question_type: str, answer_type: str, precision: int | None
) -> str | None:
    """MathVista's ``normalize_extracted_answer``; None where the official ``float()``/``int()`` fails."""
    if question_type == "multi_choice":
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letter = re.findall(r"\(([a-zA-Z])\)", text)
        if letter:
            text = letter[0].upper()
        options = letters(len(choices))
        if text in options:
            return choices[options.index(text)]
        return nearest_choice(text, choices)
    if answer_type == "integer":
        try:
            return str(int(float(extraction)))
        except (TypeError, ValueError, OverflowError):
            return None
    if answer_type == "float":
        try:
            return str(round(float(extraction), int(precision if precision is not None else 0)))
        except (TypeError, ValueError, OverflowError):
            return None
    if answer_type == "list":
        return None if extraction is None else str(extraction)
    return None if extraction is None else str(extraction).strip()


def _list_text(text: str) -> str | None:
    """A list answer as ``str(list)`` (``"[1,2]"`` -> ``"[1, 2]"``); the bracketed text itself when not a literal."""
    found = re.findall(r"\[[^\[\]]*\]", text)
    if not found:
        return None
    raw = found[-1]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw.strip()
    return str(list(value)) if isinstance(value, (list, tuple)) else raw.strip()


def _number_text(text: str, marked: bool) -> str | None:
    """The number an answer gives, as text for ``float()``: the first after a marker, else the last."""
    found = _NUMBER_TEXT_RE.findall(text)
    if not found:
        return None
    raw = (found[0] if marked else found[-1]).replace(",", "").replace("−", "-")
    return raw


def extract_answer(response: Any, choices: list[str] | None, question_type: str, answer_type: str) -> str | None:
    """The rule-based stand-in for MathVista's GPT extraction: what ``normalize_extraction`` receives.

    None when the response gives nothing to extract (empty, or cut off inside its reasoning).
    """
    final, marked = final_answer(response)
    if not final:
        return None
    if question_type == "multi_choice":
        if final in choices:
            return final
        letter = extract_letter(final, choices=choices)
        return f"({letter})" if letter else final
    if answer_type in ("integer", "float"):
        return _number_text(final, marked)
    if answer_type == "list":
        return _list_text(final)
    return final


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
            for n, (pid, problem) in enumerate(data.items(), 1):
                row = dict(problem) if isinstance(problem, dict) else {"_bad": problem}
                row.setdefault("pid", pid)
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
        if is_missing(pid):
            return Reject(reason="no pid", source_line=line)
        pid = str(pid)
        if "_bad" in row:
            return Reject(reason="problem is not a JSON object", item_id=pid, source_line=line)
        for key in ("question", "answer", "question_type", "answer_type"):
            if is_missing(row.get(key)):
                return Reject(reason=f"missing '{key}'", item_id=pid, source_line=line)
        question_type = str(row["question_type"])
        answer_type = str(row["answer_type"])
        choices = row.get("choices")
        choices = None if choices is None else [str(c) for c in list(choices)]
        precision = _precision(row.get("precision"), row["answer"], answer_type)
        unit = None if is_missing(row.get("unit")) else str(row["unit"])

        if question_type == "multi_choice":
            if not choices:
                return Reject(reason="multi_choice problem without choices", item_id=pid, source_line=line)
            gold = str(row["answer"])
            if gold not in choices:
                return Reject(reason=f"answer {gold!r} is not one of the choices {choices}", item_id=pid,
                              source_line=line)
            our_type = "multi_choice"
        elif answer_type in _ANSWER_TYPES:
            gold = normalize_extraction(row["answer"], choices, question_type, answer_type, precision)
            if answer_type == "list":
                gold = _list_text(str(row["answer"])) or str(row["answer"]).strip()
            if gold is None:
                return Reject(reason=f"answer {row['answer']!r} is not a valid {answer_type}", item_id=pid,
                              source_line=line)
            our_type = _ANSWER_TYPES[answer_type]
        else:
            return Reject(reason=f"unknown answer_type {answer_type!r}", item_id=pid, source_line=line)

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
        elif is_missing(query):
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

    def score(self, item: Mapping[str, Any], response: str) -> Score:
        meta = item_meta(item)
        has_choices = item.get("choices") is not None
        question_type = meta.get("question_type") or ("multi_choice" if has_choices else "free_form")
        answer_type = meta.get("mathvista_answer_type") or item.get("answer_type")
        choices = item.get("choices")
        choices = None if choices is None else [str(c) for c in list(choices)]
        final, _ = final_answer(response)
        abstained = is_abstention(final)
        extraction = extract_answer(response, choices, question_type, answer_type)
        if extraction is None:
            return Score(answer_text=None, correct=False, abstained=abstained)
        prediction = normalize_extraction(extraction, choices, question_type, answer_type, meta.get("precision"))
        if prediction is None:
            return Score(answer_text=None, correct=False, abstained=abstained)
        return Score(answer_text=prediction, correct=prediction == str(item["answer"]), abstained=abstained)


def _precision(value: Any, answer: Any, answer_type: str) -> int | None:
    """``int(precision)`` (stored as a float); a float answer without one: the decimals it is written with."""
    if not is_missing(value):
        return int(float(value))
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


__all__ = [
    "MathVistaAdapter",
    "build_query",
    "extract_answer",
    "nearest_choice",
    "normalize_extraction",
    "official_hint",
]
