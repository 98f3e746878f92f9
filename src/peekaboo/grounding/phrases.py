"""The text queries an open-vocabulary detector gets for an item: phrases from its question.

A detector finds what it is told to look for, so the phrases decide what the
boxes can be. Two ways (``boxes.phrases``):

``keywords`` (default)
    The question stem (:func:`question_stem`) is cut at punctuation, numbers
    and stopwords; every remaining run of content words is a candidate phrase
    (the candidate selection of RAKE, Rose et al. 2010, "Automatic keyword
    extraction from individual documents"). Phrases keep their order of first
    appearance, lower-cased, duplicates dropped, at most ``max_phrases``; a run
    longer than :data:`MAX_WORDS` words keeps its last ones (an English noun
    phrase ends with its head noun). The stopwords are English function words,
    question words, common verbs of questions, and words that name the image
    itself ("image", "figure", "picture", ...), which would box the whole image.
``question``
    The question stem as one query (OWL-ViT and OWLv2 read at most 16 text
    tokens and cut the rest; Grounding DINO reads 256).

The stem drops what the adapters add around the question: answer choices
(``(A) ...``, ``A. ...`` lines), lines of instructions (``Hint:``,
``Choices:``, ``Answer ...``, ``The last line of your response ...``,
``Please ...``), a ``Question:`` prefix, image tokens (``[image 2]``,
``<image 2>``), LaTeX markup and the full stops Grounding DINO uses to separate
phrases.
"""

from __future__ import annotations

import re

MAX_WORDS = 4

STOPWORDS = frozenset(
    """
    a about above according across after again against all along also am among an and another any are as at
    be because been before being below beside besides between both but by can could did do does doing done
    down during each either else enough etc even ever every for from further had has have having here how
    however i if in into is it its itself just least less like may me might more most much must my near
    neither no nor not of off on once one only onto or other otherwise our out over own per rather same
    shall she should since so some such than that the their them then there these they this those though
    through thus to too toward towards under until up upon us very via was we were what whatever when where
    whereas whether which while who whom whose why will with within without would yes you your
    answer answers approximately best calculate choose choice choices compare compared correct describe
    described determine estimate find following give given identify indicate indicated list mean measure
    option options please provide question questions select show shows state tell true false
    use used using value write
    image images picture pictures figure figures photo photograph photos diagram shown depicted displayed
    """.split()
)

_CHOICE_LINE_RE = re.compile(r"^\s*(?:\(\s*[A-Z]\s*\)|[A-Z]\s*[.)])\s+")
_INSTRUCTION_LINE_RE = re.compile(
    r"^\s*(?:hint\s*:|choices\s*:|options\s*:|answer\b|the last line of your response|please\b)", re.IGNORECASE
)
_QUESTION_PREFIX_RE = re.compile(r"^\s*question\s*:\s*", re.IGNORECASE)
_IMAGE_TOKEN_RE = re.compile(r"[\[<]\s*image\s*\d+\s*[\]>]", re.IGNORECASE)
_LATEX_RE = re.compile(r"\\[A-Za-z]+|[$^_{}\\]")
_SPLIT_RE = re.compile(r"[^A-Za-z0-9'\- ]+")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d+(?:\.\d+)?")


def question_stem(question: str) -> str:
    """The question without choices, instruction lines, image tokens and markup (see the module doc)."""
    kept = []
    for line in str(question or "").splitlines():
        if _CHOICE_LINE_RE.match(line) or _INSTRUCTION_LINE_RE.match(line):
            continue
        line = _QUESTION_PREFIX_RE.sub("", line)
        line = _IMAGE_TOKEN_RE.sub(" ", line)
        line = _LATEX_RE.sub(" ", line)
        if line.strip():
            kept.append(line.strip())
    return re.sub(r"\s+", " ", " ".join(kept)).strip()


def keyword_phrases(question: str, max_phrases: int) -> list[str]:
    """Runs of content words of the question stem, in order (see the module doc)."""
    phrases: list[str] = []
    for chunk in _SPLIT_RE.split(question_stem(question)):
        run: list[str] = []
        for word in _WORD_RE.findall(chunk) + [""]:
            low = word.lower().strip("'-")
            stop = not low or low[0].isdigit() or low in STOPWORDS or len(low) < 2
            if not stop:
                run.append(low)
                continue
            if run:
                phrase = " ".join(run[-MAX_WORDS:])
                if phrase not in phrases:
                    phrases.append(phrase)
                run = []
    return phrases[:max_phrases]


def detector_phrases(question: str, mode: str, max_phrases: int) -> list[str]:
    """The text queries for an item (``mode``: ``keywords`` or ``question``); [] when the question gives none."""
    if mode == "keywords":
        return keyword_phrases(question, max_phrases)
    if mode == "question":
        stem = question_stem(question).replace(".", " ").strip()
        return [re.sub(r"\s+", " ", stem)] if stem else []
    raise ValueError(f"unknown phrase mode '{mode}' (keywords or question)")
