"""Reading a model's answer out of its response: what only the scorers need.

A model's response is free text: a thinking model's reasoning block, then
what it finally says, usually ending with a stated answer (``Answer: ...``,
``\\boxed{...}``, GLM's answer box). These helpers find the final stated
answer in what the model finally says (``peekaboo.thinking.split_thinking``
splits off the thinking; the last stated answer wins), tell an abstention
("unknown", "I cannot see the panel") from an answer, and read letters,
yes/no and numbers out of it, normalised the same way as the gold answers
(``peekaboo.answers.normalize_answer``) so that a plain string comparison
decides correctness. ``score_response`` scores by answer type (the ``jsonl``
scorer); ``read_option_letter`` reads a chosen option as MMMU-Pro and VisArgs
are scored.
"""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

from ..answers import LETTERS, NUMBER_RE, format_number, normalize_text, number_value, parse_number
from ..scores import Score
from ..thinking import split_thinking
from .official import mmmu_get_multi_choice_info, mmmu_parse_multi_choice_response

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

# Where a stated answer starts. The last one in the answer part wins, as the
# official parsers take the last "Answer:" or the last-mentioned option.
_GLM_BOX_RE = re.compile(r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>", re.DOTALL)
_MARKER_RE = re.compile(
    r"(?:\b(?:(?:final|correct|right|best)\s+)?answer|\b(?:final|correct|right|best)\s+(?:option|choice))"
    r"\s*(?:\*\*|__)?\s*"
    r"(?:(?:is|would\s+be|should\s+be|will\s+be)\b\s*(?:\*\*|__)?\s*[:：]?|[:：])"
    # the same in the other languages thinking models answer in: Chinese, Japanese, Spanish, French, German,
    # Portuguese, Italian, Russian, Korean ("答案是 C", "Respuesta: 4", "la réponse est B", "Ответ: 5")
    r"|(?:最终|最終)?(?:答案|答え|解答)\s*(?:\*\*|__)?\s*(?:是|为|為|は|[:：])\s*[:：]?"
    r"|\b(?:respuesta|r[ée]ponse|antwort|resposta|risposta|ответ|정답)(?:\s+(?:final|finale|finale))?"
    r"\s*(?:\*\*|__)?\s*(?:(?:es|est|ist|é|è)\b\s*[:：]?|[:：])",
    re.IGNORECASE,
)
_BOXED_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# tags and special tokens that wrap an answer without being part of it (GLM: <answer>, an unclosed box)
_WRAPPER_RE = re.compile(r"</?answer>|<\|(?:begin|end)_of_box\|>", re.IGNORECASE)
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_DECORATION = " \t\r\n*_`"

# around a letter that is the whole answer: spaces, markdown emphasis, quotes of any kind
_QUOTES = "'\"“”‘’「」『』"
_LETTER_DECORATION = " \t*_`" + _QUOTES

# a response's yes or no (its first word); "y"/"n" alone are too easily something else ("N/A")
_YES_WORDS = {"yes", "true", "yep", "yeah", "yup"}
_NO_WORDS = {"no", "false", "nope", "nah"}


# ----------------------------------------------------------------------------
# the final answer


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
    # the whole answer is one letter, possibly decorated: "B", "(b)", "B.", "**B**", '"B".', "“B”"
    bare = s.strip(_LETTER_DECORATION)
    if bare[1:2] in _QUOTES:  # a quoted letter with punctuation after its closing quote: '"C".' -> 'C'
        bare = bare.rstrip(".,;:!。，；：！").strip(_LETTER_DECORATION)
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
        r"(?i:\b(?:option|choice))\s*[\(\[\"'“‘*]*([A-Za-z])\b",
        r"(?i:\banswer is)\s*[\(\[\"'“‘*]*([A-Z])\b",  # capital only: "answer is a red circle" names no letter
        r"(?:选项|选择|选)\s*[\(\[（\"“]?([A-Za-z])\b",  # Chinese "option C", "choose C"
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
        named = option_named(s, choices)
        if named is not None:
            return named
    # last resort: one capital letter that ends a clause ("I pick C."); "A red circle" is no letter
    trailing = {m.group(1) for m in re.finditer(r"(?<![\w'])([A-Z])(?=\s*(?:$|[.,;!?)]))", s)}
    trailing &= set(allowed)
    if len(trailing) == 1:
        return trailing.pop()
    return None


def option_named(text: Any, choices: Sequence[str]) -> str | None:
    """The letter of the one option whose text the text names ("the answer is blue"), or None.

    Options contained in a longer named option are dropped ("red" inside
    "dark red"); two named options give None.
    """
    normalized = [normalize_text(c) for c in choices]
    norm = normalize_text(text)
    contained = [i for i, c in enumerate(normalized) if c and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", norm)]
    contained = [i for i in contained if not any(j != i and normalized[i] in normalized[j] for j in contained)]
    return LETTERS[contained[0]] if len(contained) == 1 else None


# ----------------------------------------------------------------------------
# yes / no


def extract_yes_no(text: Any) -> str | None:
    """``"yes"``, ``"no"`` or None: the first word when it is one (or true/false, yep/yeah/yup, nope/nah), else
    the only one of the two named."""
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

    The final answer's first word when it is yes or no (true or false, yep, yeah,
    yup, nope, nah) and
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


def decimals_of(text: Any) -> int | None:
    """How many decimals a number is written with (``"3.14"`` -> 2); None when it is not a plain number."""
    m = NUMBER_RE.search(str(text))
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


# A number in a stated answer: NUMBER_RE's forms, but a unit may follow without a space ("12cm", "3.5kg");
# letters before it still make it part of a name ("B2", "x1").
_ANSWER_NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9_.])"
    r"(?P<num>[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
    r"(?P<pct>\s*%)?"
    r"(?![0-9_])"
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_DIGIT_ORDINAL_RE = re.compile(r"(?<![A-Za-z0-9_.])(\d+)(?:st|nd|rd|th)\b", re.IGNORECASE)

# Where a stated answer's own text ends and its working begins ("Answer: 12 because 3 x 4 = 12"): a
# semicolon or sentence end followed by more text, a bracket, a dash or a word that introduces a reason (not a
# comma: "adding 1 to 6 gives 7, so the value is 6" is one statement).
_WORKING_START_RE = re.compile(
    r";\s*|\.\s+(?=\S)|\s+\(|\s+(?:because|since|as|given that|due to)\b|\s+(?:[—–]|--)\s+", re.IGNORECASE
)
# words a number can be prefixed with and still be the leading number ("approximately 3.5", "$12")
_NUMBER_PREFIX_RE = re.compile(
    r"^[\s$€£¥≈~∼(\[{*_`'\"“”]*"
    r"(?:(?:about|approximately|approx\.?|around|roughly|nearly|almost|exactly|only|just|some)\s+)?"
    r"[\s$€£¥≈~∼]*",
    re.IGNORECASE,
)
# an arithmetic operator after the leading number: the statement is an expression ("3 + 4 = 7")
_OPERATOR_AFTER_RE = re.compile(
    r"^\s*(?:[-+−×*/÷^·]|x\s|\\times|\\cdot|\\div|plus\b|minus\b|times\b|divided\b|multiplied\b"
    r"|over\b|subtract|add\b)",
    re.IGNORECASE,
)
_EQUALS_RE = re.compile(r"=|≈|\\approx|→|=>")
# words that introduce a result ("from 1003 subtract 3 to get 1000", "the total is 12")
_RESULT_WORD_RE = re.compile(
    r"\b(?:to get|we get|get|gets|getting|gives?|giving|equals?|is|are|was|were|makes?|leaves?|leaving"
    r"|results? in|resulting in|yields?|totals?|comes? to|so|therefore|thus|hence)\b",
    re.IGNORECASE,
)

# number words (zero to twenty, the tens and their compounds, hundreds, "half"); ordinals only on request
_UNIT_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS_WORDS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_ORDINAL_UNIT_WORDS = {w: i for i, w in enumerate(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth".split())}
_ORDINAL_TENS_WORDS = {w: 10 * i for i, w in enumerate(
    "twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split(), 2)}


def _below_hundred(t: list[str], j: int, ordinal: bool) -> tuple[int | None, int]:
    """(a number below 100 written in words at token j, the next token), or (None, j)."""
    units = _ORDINAL_UNIT_WORDS if ordinal else _UNIT_WORDS
    if j < len(t) and t[j] in _TENS_WORDS:
        if j + 1 < len(t) and 1 <= units.get(t[j + 1], 0) <= 9:
            return _TENS_WORDS[t[j]] + units[t[j + 1]], j + 2
        if not ordinal:
            return _TENS_WORDS[t[j]], j + 1
    if ordinal and j < len(t) and t[j] in _ORDINAL_TENS_WORDS:
        return _ORDINAL_TENS_WORDS[t[j]], j + 1
    if j < len(t) and t[j] in units:
        return units[t[j]], j + 1
    return None, j


def _words_number_at(t: list[str], i: int, ordinal: bool) -> float | None:
    """The number written in words starting at token i, or None."""
    hundreds = None
    if i + 1 < len(t) and t[i + 1] in ("hundred", "hundredth"):
        if t[i] == "a" or t[i] == "one":
            hundreds = 1
        elif 1 <= _UNIT_WORDS.get(t[i], 0) <= 9:
            hundreds = _UNIT_WORDS[t[i]]
    if hundreds is not None:
        if t[i + 1] == "hundredth":
            return float(100 * hundreds) if ordinal else None
        k = i + 2 + (i + 2 < len(t) and t[i + 2] == "and")
        rest, _ = _below_hundred(t, k, ordinal)
        if rest:
            return float(100 * hundreds + rest)
        return None if ordinal else float(100 * hundreds)
    if not ordinal:
        if t[i] == "half":
            return 0.5
        if t[i] in ("a", "one") and i + 1 < len(t) and t[i + 1] == "half":
            return 0.5
    value, _ = _below_hundred(t, i, ordinal)
    return None if value is None else float(value)


def number_in_words(text: Any, ordinals: bool = False) -> float | None:
    """The first number written in words: "four" -> 4, "twenty-one" -> 21, "a hundred and five" -> 105,
    "half" -> 0.5; with ``ordinals`` also "third" -> 3, "twenty-first" -> 21, "3rd" -> 3. None without one."""
    if text is None:
        return None
    s = str(text)
    if ordinals:
        m = _DIGIT_ORDINAL_RE.search(s)
        if m:
            return float(m.group(1))
    t = re.findall(r"[a-z]+", s.lower())
    for i in range(len(t)):
        # an ordinal first where asked: "twenty-first" is 21, not the cardinal "twenty" before it
        for ordinal in ((True, False) if ordinals else (False,)):
            value = _words_number_at(t, i, ordinal)
            if value is not None:
                return value
    return None


_COUNT_QUESTION_RE = re.compile(
    r"\bhow many\b|\bnumber of\b|\bcount\b|\bposition\b|(?<!decimal )\bplace\b|\brank(?:ed|ing)?\b|\bwhich (?:row|column|one)\b",
    re.IGNORECASE,
)


def asks_for_a_count(question: Any) -> bool:
    """Whether a question asks for a count or a position, where an ordinal answer ("the third") means a number."""
    return bool(question) and bool(_COUNT_QUESTION_RE.search(str(question)))


def _numbers(text: str) -> list[re.Match]:
    return list(_ANSWER_NUMBER_RE.finditer(text))


def _result_number(text: str) -> float | None:
    """The number a piece of working arrives at: the first after its last "=" or result word that a number follows."""
    numbers = _numbers(text)
    links = sorted([*_EQUALS_RE.finditer(text), *_RESULT_WORD_RE.finditer(text)], key=lambda m: m.end())
    for m in reversed(links):
        after = [n for n in numbers if n.start() >= m.end()]
        if after:
            return number_value(after[0])
    return None


def _plain_digits(text: Any) -> str:
    """Full-width digits and signs as ASCII (NFKC), a unit's exponent dropped ("cm^2", "m^{3}"), LaTeX fractions
    as a/b: what the number readers read."""
    s = unicodedata.normalize("NFKC", str(text))
    s = re.sub(r"(?<=[A-Za-z])\^\{?\d+\}?", "", s)
    return _LATEX_FRAC_RE.sub(r"\1/\2", s)


def stated_number(statement: Any, ordinals: bool = False) -> float | None:
    """The number a stated answer gives ("Answer: ..."'s text), read as the answer it states, not its working.

    The statement's own text ends where working begins (a semicolon or
    sentence end followed by more, "because", "since", a bracket, a dash:
    ``12 because 3 x 4 = 12`` -> 12). In it: a leading number that no
    operator follows (``12 apples``, ``12, because ...``, ``approximately
    3.5``); else the first number after the last "=" or result word ("to
    get", "gives", "is", "equals", "so", ...) that a number follows (``3 x 4
    = 12`` -> 12, ``from 1003 subtract 3 to get 1000`` -> 1000, ``adding 1
    to 6 gives 7, so the value is 6`` -> 6); else its first number. Without any number there, the same on the
    whole statement; without digits at all, a number written in words
    (``number_in_words``; ordinals only with ``ordinals``). Fooled by a
    result word before a second number ("the larger is 7 and the smaller is
    5" -> 5) and by working without a result ("from 1003 subtract 3" -> 1003).
    """
    if statement is None:
        return None
    text = _plain_digits(statement)
    cut = _WORKING_START_RE.search(text)
    head = text[: cut.start()] if cut else text
    for part in (head, text):
        numbers = _numbers(part)
        if not numbers:
            continue
        lead = _NUMBER_PREFIX_RE.match(part)
        first = numbers[0]
        if lead and first.start() == lead.end() and not _OPERATOR_AFTER_RE.match(part[first.end():]):
            return number_value(first)
        result = _result_number(part)
        return result if result is not None else number_value(first)
    # no digits (a digit ordinal, "3rd", was read as its number above)
    value = number_in_words(head, ordinals)
    return value if value is not None else number_in_words(text, ordinals)


def last_line_number(line: Any, ordinals: bool = False) -> float | None:
    """The number an unstated last line gives: the first after its last "=" or result word that a number
    follows ("There are 2 blocks that have exactly 36 houses" -> 2, "so 3 + 4 = 7" -> 7), else its last
    number, else one in words."""
    if line is None:
        return None
    text = _plain_digits(line)
    value = _result_number(text)
    if value is not None:
        return value
    value = parse_number(text, which="last")
    if value is not None:
        return value
    numbers = _numbers(text)
    if numbers:
        return number_value(numbers[-1])
    return number_in_words(line, ordinals)


# ----------------------------------------------------------------------------
# by answer type


def _extract(final: str, stated: bool, answer_type: str, choices: Sequence[str] | None) -> str | None:
    """The answer in a final answer (``final_answer``'s text), normalised like ``answers.normalize_answer``."""
    if answer_type == "multi_choice":
        return extract_letter(final, choices=choices)
    if answer_type in ("integer", "float"):
        # a stated answer's own number, not its working ("Answer: 12, because ..."); a last line of working
        # ends with it
        value = stated_number(final) if stated else last_line_number(final)
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
    """The answer a response gives, normalised like ``answers.normalize_answer``; None when none can be read.

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
    """Score a response against a gold answer already normalised by ``answers.normalize_answer``.

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


# ----------------------------------------------------------------------------
# option letters (MMMU-Pro, VisArgs)


def read_option_letter(answer_part: str, options: Sequence[str]) -> tuple[str | None, bool]:
    """(the chosen option's letter or None, whether the model abstained) from a response's answer part.

    The last stated answer (``final_answer``) when it names
    an option (its letter or its text); else an abstention when the final
    answer is one and names no option; else MMMU's official
    ``parse_multi_choice_response`` over the whole answer part, without its
    random fallback: where it would draw, the final line read as a letter or
    an option's text, else the last line that is a lone letter, else None
    (unparsed).
    """
    final, stated = final_answer(answer_part)
    if stated:
        letter = extract_letter(final, choices=options)
        if letter is not None:
            return letter, False
    if is_abstention(final) and extract_letter(final, choices=options) is None:
        return None, True
    if not answer_part.strip():
        return None, False
    index2ans, all_choices = mmmu_get_multi_choice_info(options)
    letter = mmmu_parse_multi_choice_response(answer_part, all_choices, index2ans, fallback=unparsed_fallback)
    if letter is None:
        # where the official parser would draw a random letter: the final line read as a letter or an option's
        # text ("g", "It is Mature teratoma", "$2,822"), else the last line that is a lone letter ("B\nThat is my pick")
        # (a lone letter first, as extract_letter reads one; then an option's text: "It is Rate = $k[A]$" names
        # option B, not a letter A in brackets)
        letter = _lone_letter(final, options) or option_named(final, options) or extract_letter(final, choices=options)
    if letter is None:
        for line in reversed(answer_part.splitlines()):
            letter = _lone_letter(line, options)
            if letter is not None:
                break
    return letter, False


def _lone_letter(line: str, options: Sequence[str]) -> str | None:
    """The option letter a line consists of ("e", "(B)", "**C.**"), or None."""
    m = re.fullmatch(r"[\(\[]?([A-Za-z])[\)\]]?[.:]?", line.strip(_LETTER_DECORATION))
    return m.group(1).upper() if m and m.group(1).upper() in LETTERS[: len(options)] else None


def unparsed_fallback(all_choices: Sequence[str]) -> None:
    """Where MMMU's parser draws a random letter, the project leaves the response unparsed."""
    return None

