"""Scoring the ``panels`` benchmark (``peekaboo.datasets.panels``, ``peekaboo.synthetic``).

The text after the last ``Answer:`` is compared with the gold answer (case
and surrounding punctuation ignored; numbers compared as integers); "unknown"
and other abstention phrases count as abstentions, never as correct. A
thinking block is skipped, as for the real benchmarks.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ..scores import Score
from ..thinking import split_thinking
from .extraction import is_abstention as _shared_is_abstention

_ANSWER_RE = re.compile(r"answer\s*:", re.IGNORECASE)


def final_answer(response: str) -> str | None:
    """The text after the last ``Answer:`` (its first line, stripped); None when there is no ``Answer:``.

    The gold template always ends with ``Answer:``, so a response without it
    (a chain cut off or gone astray) is unparsed rather than read from its last line.
    """
    matches = list(_ANSWER_RE.finditer(response or ""))
    if not matches:
        return None
    tail = response[matches[-1].end() :].strip()
    return tail.splitlines()[0].strip() if tail else ""


def is_abstention(text: str | None) -> bool:
    """The shared abstention phrases ("unknown", "cannot see", ...) of ``peekaboo.scoring.extraction``."""
    return bool(_shared_is_abstention(text))


def normalise(text: str, answer_type: str) -> str | None:
    t = text.strip().lower().strip(" .,!;:\"'`*")
    if answer_type == "integer":
        m = re.fullmatch(r"[-+]?\d+", t.replace(",", ""))
        return str(int(m.group())) if m else None
    if answer_type == "yes_no":
        return t if t in ("yes", "no") else None
    return t or None


def score(item: Mapping[str, Any], response: str, *, thinking_open: bool = False) -> Score:
    """Score a response to a panels item (module doc)."""
    answer_part, truncated = split_thinking(response, thinking_open)
    if truncated:
        return Score(answer_text=None, correct=False, truncated=True)
    answer = final_answer(answer_part)
    if answer is None:
        return Score(answer_text=None, correct=False, abstained=False)
    if is_abstention(answer):
        return Score(answer_text=answer.strip().lower().strip(" .") or None, correct=False, abstained=True)
    parsed = normalise(answer, item["answer_type"])
    gold = normalise(str(item["answer"]), item["answer_type"])
    return Score(answer_text=parsed, correct=parsed is not None and parsed == gold, abstained=False)
