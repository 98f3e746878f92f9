"""Answers as both the dataset readers and the scorers read them.

A gold answer is stored normalised (``normalize_answer``: a letter, a
canonical number, yes/no, normalised text or a list of normalised items), so
that a scorer (``peekaboo.scoring``) reading a model's answer the same way
decides correctness with a plain string comparison. Here: the answer types'
normal forms, choice letters and the question with its choices listed, and
reading and writing numbers. What only scoring needs (the final stated answer,
abstentions, reading letters, yes/no and numbers out of a response) is in
``peekaboo.scoring.extraction``: the items stage imports this module, so an
edit there re-runs no items, masks or generation.
"""

from __future__ import annotations

import math
import re
import string
from decimal import Decimal
from typing import Any, Sequence

from .scores import ANSWER_TYPES

LETTERS = string.ascii_uppercase

# a gold answer's yes or no, as datasets write them
_GOLD_YES_NO = {"yes": "yes", "y": "yes", "true": "yes", "no": "no", "n": "no", "false": "no"}

# A number as people write it: sign, thousands separators, decimals, exponent,
# a fraction (3/4) or a percentage; the lookarounds keep it from matching
# inside identifiers such as "B2" or "x1".
NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9_.])"
    r"(?P<num>[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
    r"(?P<pct>\s*%)?"
    r"(?![A-Za-z0-9_])"
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")


# ----------------------------------------------------------------------------
# text


def normalize_text(text: Any) -> str:
    """Lower case, single spaces, no surrounding quotes, brackets or end punctuation.

    ``"  The Red  Circle. "`` -> ``"the red circle"``. Inner punctuation stays
    (``"u.s.a"``) because it can carry meaning.
    """
    if text is None:
        return ""
    s = str(text).strip().lower()
    s = re.sub(r"\s+", " ", s)
    strip_chars = " \t\n\"'`*_.,;:!?()[]{}"
    prev = None
    while prev != s:
        prev = s
        s = s.strip(strip_chars)
        for article in ("the ", "a ", "an "):
            if s.startswith(article) and len(s) > len(article):
                s = s[len(article) :]
    return s


# ----------------------------------------------------------------------------
# letters (multiple choice)


def choice_letters(n_choices: int) -> list[str]:
    if n_choices > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} choices are supported, got {n_choices}")
    return list(LETTERS[:n_choices])


def question_with_choices(question: str, choices: Sequence[str] | None) -> str:
    """The question as shown to the model, choices listed as ``(A) ...`` lines."""
    if not choices:
        return question
    lines = [f"({letter}) {choice}" for letter, choice in zip(choice_letters(len(choices)), choices)]
    return question.rstrip() + "\nChoices:\n" + "\n".join(lines)


# ----------------------------------------------------------------------------
# numbers


def parse_number(text: Any, which: str = "first") -> float | None:
    """A number in the text as a float (``"1,234.5"``, ``"-3"``, ``"3/4"``, ``"\\frac{3}{4}"``, ``"45%"`` -> 45.0), or None.

    ``which`` picks the first or the last number when there are several. The
    final answer usually starts with the number ("Answer: 12 apples"), a last
    line of working usually ends with it ("so 3 + 4 = 7").
    """
    if text is None:
        return None
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(text) else None
    matches = list(NUMBER_RE.finditer(_LATEX_FRAC_RE.sub(r"\1/\2", str(text))))
    if not matches:
        return None
    return number_value(matches[0] if which == "first" else matches[-1])


def number_value(m: re.Match) -> float | None:
    """The value of a match with groups ``num`` and ``den`` (``NUMBER_RE``, the scorers' answer pattern), a
    fraction divided out; None where it is not a finite number."""
    num = m.group("num").replace(",", "").replace("−", "-")
    try:
        value = float(num)
        if m.group("den"):
            den = float(m.group("den"))
            if den == 0:
                return None
            value /= den
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def format_number(value: float, answer_type: str = "float") -> str:
    """The canonical text of a number: ``12``, ``-0.5``, ``3.25`` (no exponent, no trailing zeros)."""
    if answer_type == "integer" or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(round(value)))
    d = Decimal(repr(float(value))).normalize()
    text = format(d, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# ----------------------------------------------------------------------------
# gold answers


class AnswerFormatError(ValueError):
    """A gold answer that does not fit its answer type."""


def infer_answer_type(answer: Any, choices: Sequence[str] | None = None) -> str:
    """A best guess at the answer type when a dataset does not give one."""
    if choices:
        return "multi_choice"
    if isinstance(answer, bool):
        return "yes_no"
    if isinstance(answer, (list, tuple)):
        return "list"
    if isinstance(answer, int):
        return "integer"
    if isinstance(answer, float):
        return "float"
    s = str(answer).strip()
    if s.lower() in ("yes", "no"):
        return "yes_no"
    if re.fullmatch(r"[-+]?\d+", s):
        return "integer"
    if re.fullmatch(r"[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+", s):
        return "float"
    return "text"


def normalize_answer(answer: Any, answer_type: str, choices: Sequence[str] | None = None) -> str:
    """A gold answer in the canonical form the scorers compare against (``scoring.extraction.score_response``).

    multi_choice -> the letter (the answer may be given as letter, 0-based index
    or the choice's text); integer/float -> ``format_number``; yes_no -> yes/no;
    text -> ``normalize_text``; list -> normalised items joined by ``", "``.
    Raises AnswerFormatError when the answer does not fit the type.
    """
    if answer_type not in ANSWER_TYPES:
        raise AnswerFormatError(f"unknown answer type '{answer_type}' (known: {', '.join(ANSWER_TYPES)})")
    if answer is None:
        raise AnswerFormatError("answer is missing")
    if answer_type == "multi_choice":
        if not choices:
            raise AnswerFormatError("a multi_choice answer needs choices")
        if isinstance(answer, int) and not isinstance(answer, bool):
            if 0 <= answer < len(choices):
                return LETTERS[answer]
            raise AnswerFormatError(f"choice index {answer} out of range for {len(choices)} choices")
        s = str(answer).strip()
        bare = s.strip("()[]. ")
        if len(bare) == 1 and bare.upper() in LETTERS[: len(choices)]:
            return bare.upper()
        normalized = [normalize_text(c) for c in choices]
        if normalize_text(s) in normalized:
            return LETTERS[normalized.index(normalize_text(s))]
        raise AnswerFormatError(f"answer {s!r} is neither a choice letter nor one of the choices")
    if answer_type in ("integer", "float"):
        value = parse_number(answer)
        if value is None or (isinstance(answer, str) and not NUMBER_RE.fullmatch(answer.strip())):
            raise AnswerFormatError(f"answer {answer!r} is not a number")
        if answer_type == "integer" and not float(value).is_integer():
            raise AnswerFormatError(f"answer {answer!r} is not an integer")
        if answer_type == "float" and isinstance(answer, str) and not answer.strip().endswith("%") and "/" not in answer:
            # keep the written precision ("3.50"): it sets the scorers' tolerance (scoring.extraction.numbers_match)
            return format(Decimal(answer.strip().replace(",", "").replace("−", "-")), "f").lstrip("+")
        return format_number(value, answer_type)
    if answer_type == "yes_no":
        if isinstance(answer, bool):
            return "yes" if answer else "no"
        yn = _GOLD_YES_NO.get(normalize_text(answer))
        if yn is None:
            raise AnswerFormatError(f"answer {answer!r} is not yes or no")
        return yn
    if answer_type == "list":
        items = answer if isinstance(answer, (list, tuple)) else re.split(r"\s*[,;]\s*", str(answer))
        return ", ".join(normalize_text(x) for x in items if normalize_text(x))
    return normalize_text(answer)
