"""Answer extraction shared by the dataset adapters.

A model's response is free text: a thinking model's reasoning block, then
what it finally says, usually ending with a stated answer (``Answer: ...``,
``\\boxed{...}``, GLM's answer box). These helpers split off the thinking,
find the final stated answer (the last one wins), tell an abstention
("unknown", "I cannot see the panel") from an answer, and read letters,
yes/no and numbers out of it, normalised the same way as the gold answers so
that a plain string comparison decides correctness.
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

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"

# Where a stated answer starts. The last one in the answer part wins, as the
# official parsers take the last "Answer:" or the last-mentioned option.
_GLM_BOX_RE = re.compile(r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>", re.DOTALL)
_MARKER_RE = re.compile(
    r"(?:\b(?:(?:final|correct|right|best)\s+)?answer|\b(?:final|correct|right|best)\s+(?:option|choice))"
    r"\s*(?:\*\*|__)?\s*"
    r"(?:(?:is|would\s+be|should\s+be|will\s+be)\b\s*(?:\*\*|__)?\s*[:：]?|[:：])",
    re.IGNORECASE,
)
_BOXED_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# tags and special tokens that wrap an answer without being part of it (GLM: <answer>, an unclosed box)
_WRAPPER_RE = re.compile(r"</?answer>|<\|(?:begin|end)_of_box\|>", re.IGNORECASE)
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_DECORATION = " \t\r\n*_`"

# a response's yes or no (its first word); "y"/"n" alone are too easily something else ("N/A")
_YES_WORDS = {"yes", "true"}
_NO_WORDS = {"no", "false"}
# a gold answer's yes or no, as datasets write them
_GOLD_YES_NO = {"yes": "yes", "y": "yes", "true": "yes", "no": "no", "n": "no", "false": "no"}

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
# thinking and the final answer


def split_thinking(response: Any, thinking_open: bool = False) -> tuple[str, bool]:
    """(what the model finally says, whether the response ended inside its thinking block).

    Thinking models write ``<think>reasoning</think>answer``; some chat
    templates write the opening tag into the prompt (``thinking_open``: the
    rendered prompt ended inside an open block), so the response holds only
    ``reasoning</think>answer``. The answer part is the text after the last
    ``</think>``. A response that ends inside a thinking block has no answer
    part: a ``<think>`` after the last ``</think>`` (a block opened and never
    closed), or no tag at all when the prompt opened the block. Without
    ``thinking_open`` a response without tags is all answer (a model that
    does not think).
    """
    if response is None:
        return "", bool(thinking_open)
    s = str(response)
    low = s.lower()
    close = low.rfind(_THINK_CLOSE)
    opened = low.rfind(_THINK_OPEN)
    if opened > close:
        return "", True
    if close >= 0:
        return s[close + len(_THINK_CLOSE) :], False
    if thinking_open:
        return "", True
    return s, False


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    r"""(start, end, content) of every ``\boxed{...}`` whose braces close (they may nest)."""
    spans = []
    for m in _BOXED_OPEN_RE.finditer(text):
        depth = 1
        for j in range(m.end(), len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    spans.append((m.start(), j + 1, text[m.end() : j]))
                    break
    return spans


def _line_after(text: str, pos: int) -> str:
    """The rest of the line from ``pos``; the next non-empty line when that is empty ("Answer:\\n\\nC")."""
    rest = text[pos:]
    lines = rest.split("\n")
    for line in lines:
        if line.strip(_DECORATION):
            return line
    return ""


def clean_statement(text: str) -> str:
    r"""A stated answer without markdown, math delimiters or ``\text{}`` wrappers: ``**$\text{C}$**`` -> ``C``."""
    s = _WRAPPER_RE.sub(" ", text)
    prev = None
    while prev != s:
        prev = s
        s = _LATEX_TEXT_RE.sub(r"\1", s)
    s = s.strip(_DECORATION)
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip(_DECORATION)
    return s.strip()


def final_answer(answer_part: Any) -> tuple[str, bool]:
    r"""(the final answer, whether it was stated as one) in the answer part of a response.

    Stated answers are GLM's ``<|begin_of_box|>...<|end_of_box|>``,
    ``\boxed{...}`` (nested braces; ``\text{}`` inside unwrapped) and the
    text after a marker ("Answer:", "Final answer:", "the answer is", "the
    correct option is", ...; to the end of its line). The last one stated
    wins. Without any, the last non-empty line (not stated). Empty string
    for an empty answer part. Call it on ``split_thinking``'s answer part.
    """
    if answer_part is None:
        return "", False
    text = str(answer_part)
    boxes = [(m.start(), m.end(), m.group(1)) for m in _GLM_BOX_RE.finditer(text)] + _boxed_spans(text)
    statements = [(start, content) for start, _, content in boxes]
    # a marker inside a box ("\boxed{\text{Answer: C}}") is part of that box's answer
    statements += [
        (m.start(), _line_after(text, m.end()))
        for m in _MARKER_RE.finditer(text)
        if not any(start <= m.start() < end for start, end, _ in boxes)
    ]
    if statements:
        _, stated = max(statements, key=lambda s: s[0])
        return clean_statement(stated), True
    lines = [clean_statement(line) for line in _WRAPPER_RE.sub(" ", text).splitlines()]
    lines = [line for line in lines if line]
    return (lines[-1] if lines else ""), False


def final_answer_text(text: Any, thinking_open: bool = False) -> str:
    """The final answer of a whole response (see ``split_thinking`` and ``final_answer``); "" when it has none."""
    return final_answer(split_thinking(text, thinking_open)[0])[0]


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

    Reads ``B``, ``(B)``, ``B.``, ``B) 42``, ``C because ...``, ``option B``,
    ``answer is B``; with ``choices`` also the option's own text (``"blue"``
    -> ``B`` when that is choice B). Letters beyond the number of choices are
    ignored. Meant for a final answer, not a whole chain of reasoning.
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
    normalized = [normalize_text(c) for c in choices] if choices else []
    if choices:
        exact = [i for i, c in enumerate(normalized) if c and c == normalize_text(s)]
        if len(exact) == 1:
            return LETTERS[exact[0]]
    # a leading "(B) ...", "B. ...", "B) ...", "B: ..."
    m = re.match(r"[\(\[]?([A-Z])(?:[\)\]][.:,;]?|[.:,;])(?=\s|$)", bare)
    if m and m.group(1) in allowed:
        return m.group(1)
    # a letter in brackets, or after "option"/"choice"/"answer is"
    patterns = [
        r"[\(\[]([A-Z])[\)\]]",
        r"(?i:\b(?:option|choice))\s*[\(\[]?([A-Za-z])\b",
        r"(?i:\banswer is)\s*[\(\[]?([A-Z])\b",  # capital only: "answer is a red circle" names no letter
    ]
    for pattern in patterns:
        for m in re.finditer(pattern, s):
            if m.group(1).upper() in allowed:
                return m.group(1).upper()
    # a leading capital letter and a word ("C because ..."); not A or I, which are words themselves,
    # and not when an option's text starts with that word ("D major")
    m = re.match(r"([B-HJ-Z])\s+\S", bare)
    if m and m.group(1) in allowed and not any(c.split(" ")[0] == m.group(1).lower() for c in normalized if c):
        return m.group(1)
    if choices:
        norm = normalize_text(s)
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
    """``"yes"``, ``"no"`` or None: the first word when it is one (or true/false), else the only one of the two named."""
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


def read_yes_no(answer_part: Any) -> tuple[str | None, bool]:
    """(``"yes"``, ``"no"`` or None, whether the model abstained) from a response's answer part.

    The final answer's first word when it is yes or no (true or false) and
    the model commits to it ("No, I cannot tell" says no; "No way to tell"
    abstains) and does not name the other ("Yes and no": none); else an abstention when the final answer is one; else the only
    one of "yes" and "no" named in the stated answer, or, with no stated
    answer, in the whole answer part (as VLMEvalKit's ``YOrN_Extraction``
    reads a whole response).
    """
    final, stated = final_answer(answer_part)
    words = re.findall(r"[a-z]+", final.lower())
    abstained = is_abstention(final)
    if words and words[0] in _YES_WORDS | _NO_WORDS:
        said = "yes" if words[0] in _YES_WORDS else "no"
        if ("no" if said == "yes" else "yes") in words:  # "Yes and no", "Yes, but no, I cannot tell"
            return None, abstained
        # "No, I cannot tell" commits to no; "No way to tell" abstains
        committed = re.match(r"\W*[a-z]+\s*(?:[,.;:!?)\u2014\u2013-]|$)", final.lower())
        if committed or not abstained:
            return said, False
    if abstained:
        return None, True
    named = set(re.findall(r"[a-z]+", (final if stated else str(answer_part or "")).lower())) & {"yes", "no"}
    return (named.pop() if len(named) == 1 else None), False


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
    matches = list(_NUMBER_RE.finditer(_LATEX_FRAC_RE.sub(r"\1/\2", str(text))))
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
        yn = _GOLD_YES_NO.get(normalize_text(answer))
        if yn is None:
            raise AnswerFormatError(f"answer {answer!r} is not yes or no")
        return yn
    if answer_type == "list":
        items = answer if isinstance(answer, (list, tuple)) else re.split(r"\s*[,;]\s*", str(answer))
        return ", ".join(normalize_text(x) for x in items if normalize_text(x))
    return normalize_text(answer)


def _extract(final: str, stated: bool, answer_type: str, choices: Sequence[str] | None) -> str | None:
    """The answer in a final answer (``final_answer``'s text), normalised like ``normalize_answer``."""
    if answer_type == "multi_choice":
        return extract_letter(final, choices=choices)
    if answer_type in ("integer", "float"):
        # "Answer: 12 apples" starts with the number; a last line of working ends with it
        value = parse_number(final, which="first" if stated else "last")
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


def extract_answer(
    text: Any, answer_type: str, choices: Sequence[str] | None = None, *, thinking_open: bool = False
) -> str | None:
    """The answer a response gives, normalised like ``normalize_answer``; None when none can be read.

    Only what the model finally says counts (``split_thinking``): a response
    that ended inside its thinking block gives None.
    """
    body, truncated = split_thinking(text, thinking_open)
    if truncated:
        return None
    return _extract(*final_answer(body), answer_type, choices)


def score_response(
    response: Any, gold: str, answer_type: str, choices: Sequence[str] | None = None, *, thinking_open: bool = False
) -> Score:
    """Score a response against a gold answer already normalised by ``normalize_answer``.

    A response that ended inside its thinking block is unparsed, wrong and
    ``truncated``. An abstention counts as wrong, unless the gold answer is
    itself one ("unknown"). Lists compare as sets of normalised items.
    """
    body, truncated = split_thinking(response, thinking_open)
    if truncated:
        return Score(answer_text=None, correct=False, truncated=True)
    final, stated = final_answer(body)
    abstained = is_abstention(final)
    if abstained and is_abstention(gold):
        return Score(answer_text=normalize_text(final), correct=True, abstained=True)
    parsed = _extract(final, stated, answer_type, choices)
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
