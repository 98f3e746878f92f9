"""Step segmentation: the one place that cuts a generated text into reasoning steps (library of the ``steps`` stage).

Segmenters (config ``models.<m>.segmenter``):

- ``markers``: explicit ``Step N:`` markers (also ``**Step N:**``, ``Step N.``);
  text before the first marker is a step of its own when long enough. Without
  any marker it falls back to ``sentences``.
- ``think``: a thinking block ``<think>...</think>`` cut into sentences or
  paragraphs (``steps.think_split``), then everything after ``</think>`` as the
  answer. The opening tag may be missing (chat templates that put it in the
  prompt); without a closing tag (a truncated trace) there is no answer step.
  Without either tag it falls back to ``sentences``, unless the prompt opened
  the block (``thinking_open``): then the text is a chain cut off mid-thought,
  all thinking, with no answer step (whatever the segmenter).
- ``sentences``: lines, then sentences inside each line.
- ``auto``: ``think`` when the text holds a think tag, else ``markers`` when it
  holds a ``Step N`` marker, else ``sentences``; decided per trace.

Outside ``think``, the answer step is the text from the last ``Answer:`` marker
on (``Final Answer:`` and markdown bold included). Every step has kind
``think`` or ``answer``.

Spans: ``char_start:char_end`` is the step's stretch of the trace text, marker
included and surrounding whitespace excluded, so later stages can average any
per-token quantity over it. ``text`` is the step's content with its marker
(``Step 2:``, ``Answer:``) removed: that is what alignment embeds, since a
shared marker would make every pair of steps look alike. Token spans are
half-open ``[token_start, token_end)``: a generated token belongs to the step
holding its first non-space character, so tokens that are pure whitespace
between steps or past the text (end-of-sequence) belong to no step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SEGMENTERS = ("auto", "markers", "think", "sentences")
KINDS = ("think", "answer")

# The last match is the answer; case-sensitive so a mid-sentence "the answer: maybe" is not taken.
ANSWER_RE = re.compile(r"(?:\*\*)?\b(?:[Ff]inal\s+)?Answer(?:\*\*)?\s*:(?:\*\*)?")
MARKER_RE = re.compile(r"(?<![\w*#])(?:\*\*|#{1,6}\s*)?\bStep\s*\d+\s*[:.)](?:\*\*)?")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Sentence ends: punctuation (and closing quotes/brackets) followed by whitespace.
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"')\]]*(?=\s)")
_PARAGRAPH_BREAK_RE = re.compile(r"\n[ \t]*\n")
# A list enumerator ("1.", "a)", "(iv)") is glued to the sentence it introduces.
_ENUMERATOR_RE = re.compile(r"^\(?(?:\d{1,3}|[A-Za-z]|[ivxIVX]{2,4})[.)]$")

@dataclass(frozen=True)
class Step:
    kind: str  # think or answer
    text: str  # content without its marker
    char_start: int  # span in the trace text, marker included
    char_end: int


class SegmentationError(ValueError):
    """A segmenter name or config value is unusable."""


# --- spans -----------------------------------------------------------------


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` shrunk to exclude leading and trailing whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _step(text: str, kind: str, span_start: int, content_start: int, end: int) -> Step | None:
    """A step whose span starts at ``span_start`` (its marker) and whose content starts at ``content_start``."""
    c0, c1 = _strip_span(text, content_start, end)
    s0, s1 = _strip_span(text, span_start, end)
    if c0 >= c1:
        return None
    return Step(kind, text[c0:c1], s0, s1)


def answer_start(text: str) -> tuple[int, int] | None:
    """(start, content start) of the last ``Answer:`` marker, or None."""
    last = None
    for m in ANSWER_RE.finditer(text):
        last = m
    return (last.start(), last.end()) if last else None


# --- segmenters -------------------------------------------------------------


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence spans inside ``text[start:end]``: lines first, then sentence ends inside each line."""
    spans: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        nl = text.find("\n", pos, end)
        line_end = end if nl == -1 else nl
        cut = pos
        for m in _SENTENCE_END_RE.finditer(text, pos, line_end):
            spans.append((cut, m.end()))
            cut = m.end()
        spans.append((cut, line_end))
        pos = line_end + 1
    stripped = [_strip_span(text, a, b) for a, b in spans]
    stripped = [(a, b) for a, b in stripped if a < b]
    merged: list[tuple[int, int]] = []
    pending: int | None = None  # start of an enumerator waiting for its sentence
    for a, b in stripped:
        if pending is not None:
            a, pending = pending, None
        if _ENUMERATOR_RE.match(text[a:b]):
            pending = a
            continue
        merged.append((a, b))
    if pending is not None:
        merged.append(_strip_span(text, pending, end))
    return merged


def _paragraph_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    cut = start
    for m in _PARAGRAPH_BREAK_RE.finditer(text, start, end):
        spans.append(_strip_span(text, cut, m.start()))
        cut = m.end()
    spans.append(_strip_span(text, cut, end))
    return [(a, b) for a, b in spans if a < b]


def _long_enough(step: Step | None, min_chars: int) -> bool:
    return step is not None and len(step.text.strip()) >= min_chars


def _answer_step(text: str) -> tuple[Step | None, int]:
    """The answer step from the last ``Answer:`` marker, and where the body before it ends."""
    found = answer_start(text)
    if found is None:
        return None, len(text)
    marker_start, content_start = found
    return _step(text, "answer", marker_start, content_start, len(text)), marker_start


def segment_sentences(text: str, min_chars: int = 2) -> list[Step]:
    answer, body_end = _answer_step(text)
    steps = [Step("think", text[a:b], a, b) for a, b in _sentence_spans(text, 0, body_end)]
    steps = [s for s in steps if _long_enough(s, min_chars)]
    return steps + ([answer] if answer else [])


def segment_markers(text: str, min_chars: int = 2) -> list[Step]:
    answer, body_end = _answer_step(text)
    marks = list(MARKER_RE.finditer(text, 0, body_end))
    if not marks:
        return segment_sentences(text, min_chars)
    steps: list[Step | None] = [_step(text, "think", 0, 0, marks[0].start())]
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else body_end
        steps.append(_step(text, "think", m.start(), m.end(), end))
    kept = [s for s in steps if _long_enough(s, min_chars)]
    return kept + ([answer] if answer else [])


def segment_think(text: str, split: str = "sentences", min_chars: int = 2, thinking_open: bool = False) -> list[Step]:
    """Steps of a thinking block and the answer after ``</think>``.

    ``thinking_open``: the prompt opened the block, so a text without tags is
    a chain cut off mid-thought: all of it is thinking and it has no answer
    step, whatever "Answer:" it was considering.
    """
    close = text.find(THINK_CLOSE)
    open_ = text.find(THINK_OPEN)
    if close == -1 and open_ == -1 and not thinking_open:
        return segment_sentences(text, min_chars)
    think_start = open_ + len(THINK_OPEN) if open_ != -1 and (close == -1 or open_ < close) else 0
    think_end = close if close != -1 else len(text)
    if split == "paragraphs":
        spans = _paragraph_spans(text, think_start, think_end)
    elif split == "sentences":
        spans = _sentence_spans(text, think_start, think_end)
    else:
        raise SegmentationError(f"steps.think_split: '{split}' is not one of sentences, paragraphs")
    steps = [Step("think", text[a:b], a, b) for a, b in spans]
    steps = [s for s in steps if _long_enough(s, min_chars)]
    if close != -1:
        after = close + len(THINK_CLOSE)
        answer = _step(text, "answer", after, after, len(text))
        if answer:
            steps.append(answer)
    return steps


def resolve_segmenter(text: str, segmenter: str) -> str:
    """The concrete segmenter for one text (``auto`` decides by content)."""
    if segmenter not in SEGMENTERS:
        raise SegmentationError(f"segmenter '{segmenter}' is not one of {', '.join(SEGMENTERS)}")
    if segmenter != "auto":
        return segmenter
    if THINK_CLOSE in text or THINK_OPEN in text:
        return "think"
    if MARKER_RE.search(text):
        return "markers"
    return "sentences"


def segment(text: str | None, segmenter: str = "auto", think_split: str = "sentences", min_chars: int = 2,
            thinking_open: bool = False) -> list[Step]:
    """Cut one generated text into steps (possibly none: empty output).

    ``thinking_open``: the prompt ended inside an open thinking block (the chat
    template wrote ``<think>``); then a text without ``</think>`` is all
    thinking, with no answer step, whatever the segmenter.
    """
    text = text or ""
    if thinking_open and THINK_CLOSE not in text:
        return segment_think(text, think_split, min_chars, thinking_open=True)
    name = resolve_segmenter(text, segmenter)
    if name == "think":
        return segment_think(text, think_split, min_chars)
    if name == "markers":
        return segment_markers(text, min_chars)
    return segment_sentences(text, min_chars)


# --- tokens ------------------------------------------------------------------


def token_positions(text: str, token_char_start: Sequence[int], token_char_end: Sequence[int]) -> np.ndarray:
    """Each token's first non-space character (its start when it is all whitespace or empty)."""
    starts = np.asarray(token_char_start, dtype=np.int64)
    ends = np.asarray(token_char_end, dtype=np.int64)
    if starts.shape != ends.shape:
        raise ValueError(f"token_char_start has {starts.size} entries but token_char_end has {ends.size}")
    pos = starts.copy()
    for t in range(pos.size):
        p, e = int(starts[t]), min(int(ends[t]), len(text))
        while p < e and text[p].isspace():
            p += 1
        pos[t] = p if p < e else starts[t]
    return pos


def token_spans(
    steps: Sequence[Step], text: str, token_char_start: Sequence[int], token_char_end: Sequence[int]
) -> list[tuple[int, int]]:
    """Half-open token span of each step from per-token character offsets into ``text``."""
    pos = token_positions(text, token_char_start, token_char_end)
    if pos.size > 1 and np.any(np.diff(pos) < 0):
        raise ValueError("token character offsets are not in increasing order")
    return [
        (int(np.searchsorted(pos, s.char_start, "left")), int(np.searchsorted(pos, s.char_end, "left")))
        for s in steps
    ]
