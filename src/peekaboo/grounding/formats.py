"""Grounding answers in each VLM family's published format: text -> boxes as written, or reasons.

What each family writes (from the families' own documentation; the
coordinates are those of the image the model saw, mapped to the original
image's pixels by :mod:`peekaboo.grounding.coords`):

``qwen2_5_vl``
    JSON objects ``{"bbox_2d": [x1, y1, x2, y2], "label": "..."}`` (usually a
    list in a ```` ```json ```` fence), in **absolute pixels of the resized
    image** the processor made (Qwen2.5-VL README and its spatial
    understanding cookbook: "absolute position coordinates"; the cookbook maps
    ``x / input_width * width`` with ``input_width = image_grid_thw[2] * 14``).
``qwen3_vl``
    the same JSON objects, on a **0-1000 grid** relative to the image's width
    and height (Qwen3-VL README, 2D grounding cookbook: "relative position
    coordinates").
``qwen2_vl``
    ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
    on a 0-1000 grid (Qwen2-VL's grounding format; the box tokens are special
    tokens, so the answer must be decoded with them).
``glm`` (GLM-4.1V, GLM-4.5V, GLM-4.6V)
    ``<|begin_of_box|>[[x1,y1,x2,y2], ...]<|end_of_box|>``, each value
    "normalized by the image width (for x) or height (for y) and scaled by
    1000"; "the bracket style may vary ([], [[]], (), <>, etc.)" (GLM-V
    README, Grounding). GLM also writes its final answers between the same
    tokens, so a box token pair holding text or a lone number is not a box.
    GLM's grounding tools also read ``bbox_2d`` JSON on the same grid, so that
    is read too.

Only the answer is read: the text after a thinking block (``</think>``), as
for scoring (:func:`peekaboo.thinking.split_thinking`; ``thinking_open`` when
the chat template opened the block in the prompt). Each box comes
with the fragment it was read from; a fragment that looks like a box but
cannot be read (bad JSON, not four numbers, cut off at the end of the
generation) is a reject with its reason, never dropped.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field

from ..thinking import split_thinking
from .coords import NORM_1000, RESIZED_PIXELS, BoxReject

FORMATS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm")

# format -> the coordinate space its numbers are in
SPACES = {"qwen2_vl": NORM_1000, "qwen2_5_vl": RESIZED_PIXELS, "qwen3_vl": NORM_1000, "glm": NORM_1000}

# geometry family (peekaboo.geometry) -> answer format
_FAMILY_FORMAT = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "glm4v": "glm",
    "glm46v": "glm",
    "glm4v_moe": "glm",
}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_FLAT_OBJECT_RE = re.compile(r"\{[^{}]*\}")
_BBOX_KEY_RE = re.compile(r"""["']bbox_2d["']""")
_OPEN_OBJECT_RE = re.compile(r"""\{\s*(?:["'][^{}]*)?$""")
_POINT_KEY_RE = re.compile(r"""["']point_2d["']""")
_QWEN2_BOX_RE = re.compile(r"<\|box_start\|>(.*?)<\|box_end\|>", re.DOTALL)
_QWEN2_REF_RE = re.compile(r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>", re.DOTALL)
_QWEN2_PAIR_RE = re.compile(rf"^\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*,\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*$")
_GLM_BOX_RE = re.compile(r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>", re.DOTALL)
_GLM_COORDS_RE = re.compile(r"^[\s\[\]()<>,;\d.+\-eE]*$")
_BRACKETS = set("[]()<>")
_FRAGMENT_CHARS = 300


class FormatError(ValueError):
    """An unknown answer format or family (the message names it and the known ones)."""


@dataclass(frozen=True)
class AnswerBox:
    """One box as the answer wrote it, in its format's coordinate space."""

    coords: tuple[float, float, float, float]
    label: str | None
    fragment: str  # the text it was read from
    index: int  # number among the answer's box fragments in reading order (0-based; rejects share it)


@dataclass
class ParsedAnswer:
    boxes: list[AnswerBox] = field(default_factory=list)
    rejects: list[BoxReject] = field(default_factory=list)
    space: str = NORM_1000


def format_for(family: str) -> str:
    """The answer format of a geometry family (``qwen2_5_vl`` -> ``qwen2_5_vl``, ``glm46v`` -> ``glm``)."""
    try:
        return _FAMILY_FORMAT[family]
    except KeyError:
        raise FormatError(f"no grounding format known for family '{family}' (known: {', '.join(_FAMILY_FORMAT)})")


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _FRAGMENT_CHARS else text[: _FRAGMENT_CHARS - 3] + "..."


def _four_numbers(values) -> tuple[float, float, float, float] | None:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        return None
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return None
    out = tuple(float(v) for v in values)
    return out if all(math.isfinite(v) for v in out) else None  # type: ignore[return-value]


def _read_object(text: str):
    """A flat JSON object, or the Python-literal dict the Qwen cookbooks also accept; None when neither."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    return value


class _Collector:
    """Boxes and rejects in the order their fragments appear in the answer."""

    def __init__(self, space: str):
        self.out = ParsedAnswer(space=space)
        self.n = 0

    def box(self, coords, label, fragment: str) -> None:
        label = label.strip() if isinstance(label, str) and label.strip() else None
        self.out.boxes.append(AnswerBox(coords, label, _short(fragment), self.n))
        self.n += 1

    def reject(self, kind: str, detail: str, fragment: str, whole: bool = False) -> None:
        """A fragment that is not a usable box; ``whole``: the answer as a whole (no box number)."""
        self.out.rejects.append(BoxReject(kind, detail, _short(fragment), box=None if whole else self.n))
        self.n += 0 if whole else 1


def _json_boxes(body: str, collect: _Collector) -> int:
    """``bbox_2d`` objects of ``body`` into ``collect``; returns how many box fragments were seen."""
    seen = 0
    covered: list[tuple[int, int]] = []
    for match in _FLAT_OBJECT_RE.finditer(body):
        text = match.group(0)
        if not _BBOX_KEY_RE.search(text):
            if _POINT_KEY_RE.search(text):
                collect.reject("no box", "a point (point_2d), not a box", text)
                seen += 1
            continue
        covered.append(match.span())
        seen += 1
        obj = _read_object(text)
        if not isinstance(obj, dict):
            collect.reject("unparseable answer", "a bbox_2d object that is not valid JSON", text)
            continue
        coords = _four_numbers(obj.get("bbox_2d"))
        if coords is None:
            collect.reject("unparseable answer", f"bbox_2d is not four numbers: {obj.get('bbox_2d')!r}", text)
            continue
        collect.box(coords, obj.get("label"), text)
    # a bbox_2d key outside every complete object: the generation was cut inside it (or it nests)
    for key in _BBOX_KEY_RE.finditer(body):
        if not any(a <= key.start() < b for a, b in covered):
            start = body.rfind("{", 0, key.start())
            collect.reject("unparseable answer", "a bbox_2d object that is not closed (cut off?)",
                           body[start if start >= 0 else key.start():])
            seen += 1
            return seen
    # an object opened after the last box and never closed, cut before its key was complete
    if covered:
        tail = _OPEN_OBJECT_RE.search(body, covered[-1][1])
        if tail:
            collect.reject("unparseable answer", "an object that is not closed (cut off?)", tail.group(0))
            seen += 1
    return seen


def _qwen2_boxes(body: str, collect: _Collector) -> int:
    seen = 0
    refs = [(m.end(), m.group(1)) for m in _QWEN2_REF_RE.finditer(body)]
    last_end = 0
    for match in _QWEN2_BOX_RE.finditer(body):
        seen += 1
        # the box's label is the object reference written since the previous box, if any
        label = next((text for end, text in reversed(refs) if last_end <= end <= match.start()), None)
        last_end = match.end()
        pair = _QWEN2_PAIR_RE.match(match.group(1))
        if not pair:
            collect.reject("unparseable answer", "box tokens not holding (x1,y1),(x2,y2)", match.group(0))
            continue
        collect.box(tuple(float(v) for v in pair.groups()), label, match.group(0))
    tail = body[last_end:]
    if "<|box_start|>" in tail:
        collect.reject("unparseable answer", "<|box_start|> without <|box_end|> (cut off?)",
                       tail[tail.index("<|box_start|>"):])
        seen += 1
    return seen


def _glm_boxes(body: str, collect: _Collector) -> int:
    seen = 0
    last_end = 0
    for match in _GLM_BOX_RE.finditer(body):
        last_end = match.end()
        content = match.group(1)
        numbers = [float(v) for v in _NUMBER_RE.findall(content)]
        bracketed = any(c in _BRACKETS for c in content)
        if not _GLM_COORDS_RE.match(content) or (not bracketed and len(numbers) < 4):
            continue  # a final answer between the box tokens ("B", "3.5"), not coordinates
        seen += 1
        if not numbers or len(numbers) % 4:
            collect.reject("unparseable answer", f"{len(numbers)} numbers between the box tokens, not groups of four",
                           match.group(0))
            continue
        if not all(math.isfinite(v) for v in numbers):
            collect.reject("unparseable answer", "a coordinate that is not a finite number", match.group(0))
            continue
        for k in range(0, len(numbers), 4):
            collect.box(tuple(numbers[k:k + 4]), None, match.group(0))
    tail = body[last_end:]
    if "<|begin_of_box|>" in tail:
        collect.reject("unparseable answer", "<|begin_of_box|> without <|end_of_box|> (cut off?)",
                       tail[tail.index("<|begin_of_box|>"):])
        seen += 1
    return seen + _json_boxes(body, collect)


_PARSERS = {"qwen2_vl": _qwen2_boxes, "qwen2_5_vl": _json_boxes, "qwen3_vl": _json_boxes, "glm": _glm_boxes}
_EXPECTED = {
    "qwen2_vl": "<|box_start|>(x1,y1),(x2,y2)<|box_end|>",
    "qwen2_5_vl": '{"bbox_2d": [x1, y1, x2, y2]} objects',
    "qwen3_vl": '{"bbox_2d": [x1, y1, x2, y2]} objects',
    "glm": "<|begin_of_box|>[[x1,y1,x2,y2]]<|end_of_box|> or bbox_2d objects",
}


def parse_answer(text: str | None, fmt: str, thinking_open: bool = False) -> ParsedAnswer:
    """The boxes of a grounding answer written in format ``fmt`` (see the module doc), with every reject.

    ``thinking_open``: the prompt ended inside an open thinking block
    (:func:`peekaboo.prompting.thinking_open`), so an answer without ``</think>``
    is all reasoning.
    """
    if fmt not in _PARSERS:
        raise FormatError(f"unknown grounding format '{fmt}' (known: {', '.join(FORMATS)})")
    collect = _Collector(SPACES[fmt])
    raw = "" if text is None else str(text)
    body, in_thinking = split_thinking(raw, thinking_open)
    body = body.strip()
    if not body:
        detail = ("the thinking block was never closed (cut off at max_new_tokens?)" if in_thinking
                  else "the model answered nothing")
        collect.reject("no answer", detail, raw, whole=True)
        return collect.out
    if not _PARSERS[fmt](body, collect):
        collect.reject("no box", f"no box in the answer (expected {_EXPECTED[fmt]})", body, whole=True)
    return collect.out
