"""How much a reasoning step's content changed, and whether a step says that part of the image cannot be seen.

CRM compares each base step with its aligned counterpart in a masked trace.
The cosine of sentence embeddings alone cannot tell a paraphrase from a
changed fact ("The top-left shape is red." against "... is green." is as
similar as a rewording), so the change measures here add explicit
comparisons (docs/crm.md, "Step change", has the labelled pairs and how well
each measure separates them):

- ``cosine``: 1 - cosine similarity of the two steps' embeddings;
- ``values``: Jaccard distance between the steps' named values (numbers,
  number words, colours, shapes, positions, yes/no, option letters, proper
  nouns and quoted text); 0 when neither step names any;
- ``acknowledgement``: 1 when exactly one of the two acknowledges that part
  of the image cannot be seen;
- ``cosine_values`` / ``cosine_values_ack``: the largest of those.

An acknowledgement is recognised by a list of regular expressions
(``crm.acknowledgement_phrases``), matched case-insensitively anywhere in
the step. No offline natural-language-inference model was available to
compare against (docs/crm.md).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

MEASURES = ("cosine", "values", "acknowledgement", "cosine_values", "cosine_values_ack")

COLOURS = {
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "grey",
    "cyan", "magenta", "violet", "teal", "gold", "silver", "beige", "maroon", "navy", "turquoise",
}
SHAPES = {
    "circle", "square", "triangle", "diamond", "cross", "star", "rectangle", "hexagon", "pentagon", "oval",
    "heart", "arrow", "ellipse",
}
# synonyms that name the same value: a paraphrase that swaps them keeps the content
_SYNONYMS = {
    "grey": "gray", "upper": "top", "lower": "bottom", "centre": "middle", "center": "middle",
    "couch": "sofa", "°c": "degrees", "ω": "ohms", "°": "degrees",
}
POSITIONS = {"left", "right", "top", "bottom", "middle"}
_NUMBER_WORDS = {
    w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
                      "hundred": 100})
_TOKEN_RE = re.compile(r"-?\d+(?:[.,:]\d+)*|[A-Za-z]+(?:'[a-z]+)?|\([A-H]\)")
_COMPOUND_RE = re.compile(r"\b(twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)-(one|two|three|four|five|six|seven|eight|nine)\b", re.IGNORECASE)
_QUOTED_RE = re.compile(r"(?<!\w)'([^']{2,}?)'(?!\w)|\"([^\"]{2,})\"")
# a sentence opens at the start, after . ! ? : ; or a line break, past list bullets and markdown emphasis
_SENTENCE_START_RE = re.compile(r"(?:^|[.!?:;]\s+|\n)\s*(?:[-*#>]+\s+|\d+[.)]\s+)?[*_\"'(\[]*([A-Z])")



def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and word[:-1] in SHAPES else word


def _values_and_openers(text: str) -> tuple[set[str], set[str]]:
    """The named values of one step, and the capitalised words that open a sentence (proper noun or not)."""
    out: set[str] = set()
    for m in _QUOTED_RE.finditer(text):
        out.add("'" + (m.group(1) or m.group(2)).lower().strip() + "'")
    text = _COMPOUND_RE.sub(lambda m: str(_NUMBER_WORDS[m.group(1).lower()] + _NUMBER_WORDS[m.group(2).lower()]), text)
    sentence_starts = {m.start(1) for m in _SENTENCE_START_RE.finditer(text)}
    short = len(text.split()) <= 3  # a bare answer: "yes" / "no" are its value
    openers: set[str] = set()
    for m in _TOKEN_RE.finditer(text):
        tok = m.group(0)
        if tok.endswith("'s"):
            tok = tok[:-2]
        low = tok.lower()
        low = _SYNONYMS.get(low, low)
        if tok[0].isdigit() or (tok[0] == "-" and len(tok) > 1):
            out.add(tok.replace(",", ""))
        elif tok.startswith("("):
            out.add(tok)
        elif low in _NUMBER_WORDS:
            out.add(str(_NUMBER_WORDS[low]))
        elif low in COLOURS or _singular(low) in SHAPES or low in POSITIONS:
            out.add(_singular(low))
        elif short and low in ("yes", "no", "true", "false"):
            out.add(low)
        elif tok[0].isupper() and tok != "I":
            if m.start() in sentence_starts:
                openers.add(low)
            else:
                out.add(low)  # a proper noun, an acronym or a labelled thing ("bar B")
    return out, openers


def named_values(text: str, other: str | None = None) -> frozenset[str]:
    """The values a step names: numbers (number words as digits), colours, shapes, positions, yes/no of a
    bare answer, option letters, quoted text and proper nouns (capitalised words inside a sentence; a word
    opening a sentence counts when ``other``, the step it is compared with, has it as a proper noun)."""
    values, openers = _values_and_openers(text)
    if other is not None:
        other_values, _ = _values_and_openers(other)
        values |= openers & other_values
    return frozenset(values)


def values_distance(a: str, b: str) -> float:
    """Jaccard distance of the two steps' named values; 0 when neither names any."""
    va, vb = named_values(a, b), named_values(b, a)
    union = va | vb
    return 0.0 if not union else 1.0 - len(va & vb) / len(union)


class Acknowledgement:
    """Recognises a step that says part of the image cannot be seen (hidden, covered, unreadable, ...)."""

    def __init__(self, phrases: Iterable[str] | None = None):
        if phrases is None:  # the schema holds the default list
            from . import schema

            phrases = schema.section("crm", {})["acknowledgement_phrases"]
        self.phrases = tuple(phrases)
        try:
            self._re = re.compile("|".join(f"(?:{p})" for p in self.phrases), re.IGNORECASE) if self.phrases else None
        except re.error as exc:
            raise ValueError(f"crm.acknowledgement_phrases: not a regular expression ({exc})") from exc

    def __call__(self, text: str | None) -> bool:
        return bool(text) and self._re is not None and self._re.search(text) is not None


def step_change(a: str, b: str, similarity: float, measure: str, ack: Acknowledgement) -> float:
    """The change from step ``a`` to step ``b`` in [0, 1]; ``similarity`` is their embeddings' cosine."""
    if measure not in MEASURES:
        raise ValueError(f"crm.change_measure: unknown measure {measure!r} (known: {', '.join(MEASURES)})")
    parts = []
    if "cosine" in measure:
        parts.append(float(np.clip(1.0 - similarity, 0.0, 1.0)))
    if "values" in measure:
        parts.append(values_distance(a, b))
    if measure in ("acknowledgement", "cosine_values_ack"):
        parts.append(float(ack(a) != ack(b)))
    return max(parts)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (ties count half): how often a changed pair scores above a kept one."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
