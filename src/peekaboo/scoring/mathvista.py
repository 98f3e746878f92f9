"""Scoring MathVista (``peekaboo.datasets.mathvista``) like its official ``calculate_score.py``.

MathVista's evaluator lets GPT-4 extract the answer (after a few
rule-based quick paths) and then normalises it (``calculate_score.py``). Here
only what the model finally says is read (``peekaboo.thinking.split_thinking``:
a chain that ended inside its thinking is unparsed and ``truncated``). On that
answer part the official quick paths run first (``official.mathvista_quick_extract``
with the scripts' ``--quick_extract``: a bare choice text, a bare integer or
float, or ``The answer is "X".``, its first match taken as the official regex
takes it), then a rule stands in for GPT: the last stated answer
(``extraction.final_answer``: GLM's answer box, ``\\boxed{}``, "Answer:", "the
answer is", their Chinese, Japanese and European forms, ...), read as a
choice text or an option letter (quoted, bold, bracketed, after "option"),
the number the stated answer gives rather than its working
(``extraction.stated_number``: "Answer: from 1003 subtract 3 to get 1000" is
1000; number words; ordinals where the question asks for a count), else the
result of the last line (``extraction.last_line_number``), or the last ``[...]`` list. Then the official normalisation
(``official.mathvista_normalize_extracted_answer``: a letter becomes its
choice, other text the nearest choice by edit distance; integers
``str(int(float(x)))``; floats rounded to the problem's precision; lists as
their string) and exact match with the gold answer. Departures, all for
responses the official script would hand to GPT or to its fallbacks: an empty
answer is unparsed and wrong (as the scripts' ``--ignore_empty_extractions``
does; by default they map "" to the nearest choice);
an abstention with no choice, number or list in it is unparsed, flagged and
wrong; a free-form answer without a number is unparsed.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ..answers import format_number
from ..cells import parse_meta
from ..datasets._common import text_list
from ..datasets.mathvista import list_text
from ..scores import Score
from ..thinking import split_thinking
from .extraction import (
    asks_for_a_count, extract_letter, final_answer, is_abstention, last_line_number, stated_number,
)
from .official import mathvista_get_most_similar, mathvista_normalize_extracted_answer, mathvista_quick_extract


def nearest_choice(prediction: str, choices: list[str]) -> str:
    """The official ``get_most_similar``: smallest edit distance, first on ties."""
    return mathvista_get_most_similar(prediction, choices)


def normalize_extraction(
    extraction: Any, choices: list[str] | None, question_type: str, answer_type: str, precision: int | None
) -> str | None:
    """MathVista's ``normalize_extracted_answer``; None where the official ``float()``/``int()`` fails.

    A float problem without a precision rounds to whole numbers (the
    official ``int(None)`` would fail and score it wrong).
    """
    return mathvista_normalize_extracted_answer(
        extraction, choices, question_type, answer_type, 0 if precision is None else precision
    )


def _listed_numbers(text: str) -> str | None:
    """A stated list written out ("2007 and 2008", "2007, 2008") as ``str(list)``; None unless all are numbers."""
    parts = [p.strip(" .") for p in re.split(r"\s*(?:,|;|\band\b)\s*", text) if p.strip(" .")]
    if len(parts) < 2 or not all(re.fullmatch(r"[-+]?\d+(?:\.\d+)?", p) for p in parts):
        return None
    return str([int(p) if re.fullmatch(r"[-+]?\d+", p) else float(p) for p in parts])


def extract_answer(
    answer_part: str, choices: list[str] | None, question_type: str, answer_type: str, question: str | None = None
) -> tuple[str | None, bool]:
    """(what ``normalize_extraction`` receives, whether the model abstained) from a response's answer part.

    The rule-based stand-in for MathVista's GPT extraction (module doc).
    None when there is nothing to extract.
    """
    text = answer_part.strip()
    if not text:
        return None, False
    problem = {"question_type": question_type, "answer_type": answer_type, "choices": choices}
    # the official quick paths, 'The answer is "X".' included (the scripts' --quick_extract), exactly as
    # extract_answer runs them: its first match on the answer part wins, whatever follows
    quick = mathvista_quick_extract(text, problem, quick_extract=True)
    if quick is not None:
        return quick, False
    final, stated = final_answer(text)
    if not final:
        return None, False
    if question_type == "multi_choice":
        if final in choices:
            return final, False
        letter = extract_letter(final, choices=choices)
        if letter is not None:
            return f"({letter})", False
        if is_abstention(final):
            return None, True
        # a stated answer that is neither a letter nor a choice goes to the nearest choice, as GPT's
        # extraction would; an unstated last line is too loose to map
        return (final if stated else None), False
    if answer_type in ("integer", "float"):
        # the number the stated answer gives, not its working; number words; ordinals where a count is asked
        ordinals = answer_type == "integer" and asks_for_a_count(question)
        value = stated_number(final, ordinals) if stated else last_line_number(final, ordinals)
        if value is None:
            return None, is_abstention(final)
        return format_number(value), False
    if answer_type == "list":
        found = list_text(final) or (_listed_numbers(final) if stated else None)
        return (found, False) if found is not None else (None, is_abstention(final))
    return None, False


def score(item: Mapping[str, Any], response: str, *, thinking_open: bool = False) -> Score:
    meta = parse_meta(item.get("meta"))
    choices = text_list(item.get("choices"), "choices")
    question_type = meta.get("question_type") or ("multi_choice" if choices else "free_form")
    answer_type = meta.get("mathvista_answer_type") or item.get("answer_type")
    answer_part, truncated = split_thinking(response, thinking_open)
    if truncated:
        return Score(answer_text=None, correct=False, truncated=True)
    extraction, abstained = extract_answer(answer_part, choices, question_type, answer_type, item.get("question"))
    if extraction is None:
        return Score(answer_text=None, correct=False, abstained=abstained)
    prediction = normalize_extraction(extraction, choices, question_type, answer_type, meta.get("precision"))
    if prediction is None:
        return Score(answer_text=None, correct=False)
    return Score(answer_text=prediction, correct=prediction == str(item["answer"]))
