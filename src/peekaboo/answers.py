"""Answer extraction shared by the dataset adapters.

A model's response is free text, usually a chain of steps that ends with
``Answer: ...``. These helpers find the final answer in it, tell an abstention
("unknown", "I cannot see the panel") from an answer, and read letters, yes/no
and numbers out of it, normalised the same way as the gold answers so that a
plain string comparison decides correctness.
"""

from __future__ import annotations

import math
import re
import string
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

from .scores import ANSWER_TYPES, Score

LETTERS = string.ascii_uppercase

# Phrases that mean "I cannot answer this from what I see". Checked on the
# final answer only: a chain of thought may mention a hidden panel and still
# go on to answer (that is the hallucination CRM looks for).
_ABSTENTION_PATTERNS = [
    r"\bunknown\b",
    r"\bunanswerable\b",
    r"\bnot answerable\b",
    r"\b(?:cannot|can ?not|can't|cant|unable to|could not|couldn't|impossible to|not possible to)\s+"
    r"(?:be\s+)?(?:see|seen|tell|told|determine|determined|know|known|say|read|identify|identified|answer|answered"
    r"|infer|inferred|make out|judge|decide|verify)\b",
    r"\b(?:is|are|was|were|been|being)\s+(?:not\s+)?(?:hidden|masked|covered|obscured|occluded|blocked|blacked out"
    r"|greyed out|grayed out|blurred|not visible|invisible|not shown|illegible|unreadable)\b",
    r"\bnot (?:visible|shown|legible|readable|discernible)\b",
    r"\b(?:no|not enough|insufficient|missing) (?:visual )?(?:information|evidence|data|context)\b",
    r"\b(?:i )?(?:do not|don't|dont) know\b",
    r"\bno way to (?:tell|know|determine|say)\b",
    r"\bcan't be determined\b",
    r"\bindeterminate\b",
    r"\bundeterminable\b",
]
_ABSTENTION_RE = re.compile("|".join(f"(?:{p})" for p in _ABSTENTION_PATTERNS), re.IGNORECASE)

_ANSWER_MARKER_RE = re.compile(r"(?:final\s+)?answer\s*[:：]", re.IGNORECASE)
_THINK_RE = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)

_YES_WORDS = {"yes", "true", "correct", "y"}
_NO_WORDS = {"no", "false", "incorrect", "n"}

# A number as people write it: sign, thousands separators, decimals, exponent,
# a fraction (3/4) or a percentage; the lookarounds keep it from matching
# inside identifiers such as "B2" or "x1".
_NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9_.])"
    r"(?P<num>[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
    r"(?P<pct>\s*%)?"
    r"(?![A-Za-z0-9_])"
)


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


def final_answer_text(text: Any) -> str:
    """The part of a response that holds its final answer.

    The text after the last ``Answer:`` marker (``Final answer:`` too), up to
    the end of that line; without a marker, the last non-empty line outside any
    ``<think>`` block. Empty string for an empty response.
    """
    return _final_answer(text)[0]


def _final_answer(text: Any) -> tuple[str, bool]:
    """(final answer text, whether it followed an ``Answer:`` marker)."""
    if text is None:
        return "", False
    visible = _THINK_RE.sub("\n", str(text))
    close = visible.lower().rfind("</think>")
    if close >= 0:  # the template emitted the opening tag: the thinking is all before the close
        visible = visible[close + len("</think>") :]
    markers = list(_ANSWER_MARKER_RE.finditer(visible))
    if markers:
        rest = visible[markers[-1].end() :].strip()
        return (rest.splitlines()[0].strip() if rest else ""), True
    lines = [line.strip() for line in visible.splitlines() if line.strip()]
    return (lines[-1] if lines else ""), False


def is_abstention(text: Any) -> bool:
    """True when the text declines to answer ("unknown", "cannot see", "is hidden", ...)."""
    if text is None:
        return False
    return bool(_ABSTENTION_RE.search(str(text)))


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


def extract_letter(text: Any, choices: Sequence[str] | None = None, n_choices: int | None = None) -> str | None:
    """The chosen option's letter, upper case, or None.

    Reads ``B``, ``(B)``, ``B.``, ``B)``, ``option B``, ``answer is B``; with
    ``choices`` also the option's own text (``"blue"`` -> ``B`` when that is
    choice B). Letters beyond the number of choices are ignored.
    """
    if text is None:
        return None
    s = str(text).strip()
    n = len(choices) if choices else n_choices
    allowed = LETTERS[: n] if n else LETTERS
    if not s:
        return None
    # the whole answer is one letter, possibly decorated: "B", "(b)", "B.", "**B**"
    bare = s.strip(" \t*_`'\"")
    m = re.fullmatch(r"[\(\[]?([A-Za-z])[\)\]]?[.:]?", bare)
    if m and m.group(1).upper() in allowed:
        return m.group(1).upper()
    # a letter in brackets, or after "option"/"choice"/"answer is", or a leading "B." / "B)"
    patterns = [
        r"[\(\[]([A-Z])[\)\]]",
        r"(?i:\b(?:option|choice))\s*[\(\[]?([A-Za-z])\b",
        r"(?i:\banswer is)\s*[\(\[]?([A-Z])\b",  # capital only: "answer is a red circle" names no letter
        r"^([A-Z])[.:)](?:\s|$)",
    ]
    for pattern in patterns:
        for m in re.finditer(pattern, s):
            if m.group(1).upper() in allowed:
                return m.group(1).upper()
    if choices:
        norm = normalize_text(s)
        normalized = [normalize_text(c) for c in choices]
        exact = [i for i, c in enumerate(normalized) if c and c == norm]
        if len(exact) == 1:
            return LETTERS[exact[0]]
        # the response names exactly one option's text ("the answer is blue")
        contained = [
            i for i, c in enumerate(normalized) if c and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", norm)
        ]
        # drop options contained in a longer named option ("red" inside "dark red")
        contained = [
            i for i in contained if not any(j != i and normalized[i] in normalized[j] for j in contained)
        ]
        if len(contained) == 1:
            return LETTERS[contained[0]]
    # last resort: one capital letter that ends a clause ("I pick C."); "A red circle" is no letter
    trailing = {m.group(1) for m in re.finditer(r"(?<![\w'])([A-Z])(?=\s*(?:$|[.,;!?)]))", s)}
    trailing &= set(allowed)
    if len(trailing) == 1:
        return trailing.pop()
    return None


# ----------------------------------------------------------------------------
# yes / no


def extract_yes_no(text: Any) -> str | None:
    """``"yes"``, ``"no"`` or None: the first word when it is one, else the only one of the two named."""
    if text is None:
        return None
    words = re.findall(r"[a-z]+", str(text).lower())
    if not words:
        return None
    if words[0] in _YES_WORDS:
        return "yes"
    if words[0] in _NO_WORDS:
        return "no"
    has_yes = "yes" in words
    has_no = "no" in words
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    return None


# ----------------------------------------------------------------------------
# numbers


def parse_number(text: Any, which: str = "first") -> float | None:
    """A number in the text as a float (``"1,234.5"``, ``"-3"``, ``"3/4"``, ``"45%"`` -> 45.0), or None.

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
    matches = list(_NUMBER_RE.finditer(str(text)))
    if not matches:
        return None
    m = matches[0] if which == "first" else matches[-1]
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


def decimals_of(text: Any) -> int | None:
    """How many decimals a number is written with (``"3.14"`` -> 2); None when it is not a plain number."""
    m = _NUMBER_RE.search(str(text))
    if not m or m.group("den") or m.group("pct"):
        return None
    num = m.group("num").replace(",", "")
    try:
        exponent = Decimal(num).as_tuple().exponent
    except InvalidOperation:
        return None
    return max(0, -int(exponent)) if isinstance(exponent, int) else None


def numbers_match(predicted: float, gold: float, answer_type: str = "float", gold_text: str | None = None) -> bool:
    """Integers must be equal; floats must agree to the precision the gold answer is written with."""
    if answer_type == "integer":
        return float(predicted).is_integer() and int(predicted) == int(round(gold))
    places = decimals_of(gold_text) if gold_text is not None else None
    if places is not None:
        return abs(predicted - gold) <= 0.5 * 10.0 ** (-places) + 1e-12 * max(1.0, abs(gold))
    return math.isclose(predicted, gold, rel_tol=1e-6, abs_tol=1e-9)


# ----------------------------------------------------------------------------
# gold answers and scoring


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
    """A gold answer in the canonical form ``score_response`` compares against.

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
        if value is None or (isinstance(answer, str) and not _NUMBER_RE.fullmatch(answer.strip())):
            raise AnswerFormatError(f"answer {answer!r} is not a number")
        if answer_type == "integer" and not float(value).is_integer():
            raise AnswerFormatError(f"answer {answer!r} is not an integer")
        if answer_type == "float" and isinstance(answer, str) and not answer.strip().endswith("%") and "/" not in answer:
            # keep the written precision ("3.50"): it sets the tolerance in numbers_match
            return format(Decimal(answer.strip().replace(",", "").replace("−", "-")), "f").lstrip("+")
        return format_number(value, answer_type)
    if answer_type == "yes_no":
        if isinstance(answer, bool):
            return "yes" if answer else "no"
        yn = extract_yes_no(answer)
        if yn is None or normalize_text(answer) not in _YES_WORDS | _NO_WORDS:
            raise AnswerFormatError(f"answer {answer!r} is not yes or no")
        return yn
    if answer_type == "list":
        items = answer if isinstance(answer, (list, tuple)) else re.split(r"\s*[,;]\s*", str(answer))
        return ", ".join(normalize_text(x) for x in items if normalize_text(x))
    return normalize_text(answer)


def extract_answer(text: Any, answer_type: str, choices: Sequence[str] | None = None) -> str | None:
    """The answer a response gives, normalised like ``normalize_answer``; None when none can be read."""
    final, after_marker = _final_answer(text)
    if answer_type == "multi_choice":
        return extract_letter(final, choices=choices)
    if answer_type in ("integer", "float"):
        # "Answer: 12 apples" starts with the number; a last line of working ends with it
        value = parse_number(final, which="first" if after_marker else "last")
        if value is None:
            return None
        # an integer question answered with 3.5 stays 3.5 (and is wrong), never rounded to 4
        return format_number(value, "integer" if answer_type == "integer" and value.is_integer() else "float")
    if answer_type == "yes_no":
        return extract_yes_no(final)
    if answer_type == "list":
        items = [normalize_text(x) for x in re.split(r"\s*[,;]\s*|\s+and\s+", final)]
        items = [x for x in items if x]
        return ", ".join(items) if items else None
    norm = normalize_text(final)
    return norm or None


def score_response(response: Any, gold: str, answer_type: str, choices: Sequence[str] | None = None) -> Score:
    """Score a response against a gold answer already normalised by ``normalize_answer``.

    An abstention counts as wrong, unless the gold answer is itself one
    ("unknown"). Lists compare as sets of normalised items.
    """
    final = final_answer_text(response)
    abstained = is_abstention(final)
    if abstained and is_abstention(gold):
        return Score(answer_text=normalize_text(final), correct=True, abstained=True)
    parsed = extract_answer(response, answer_type, choices)
    if parsed is None:
        return Score(answer_text=None, correct=False, abstained=abstained)
    if abstained:
        return Score(answer_text=parsed, correct=False, abstained=True)
    if answer_type in ("integer", "float"):
        gold_value = parse_number(gold)
        correct = gold_value is not None and numbers_match(float(parsed), gold_value, answer_type, gold_text=gold)
    elif answer_type == "list":
        correct = set(parsed.split(", ")) == set(str(gold).split(", "))
    else:
        correct = parsed == gold
    return Score(answer_text=parsed, correct=bool(correct), abstained=False)
