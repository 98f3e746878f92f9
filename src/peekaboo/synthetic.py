"""The synthetic ``panels`` benchmark: seeded images, questions and gold solutions whose evidence is known by construction.

Each image is a grid of panels (by default 2 x 2 quadrants of a 128 x 128
image); each panel holds one coloured shape on a plain background. The
evidence regions of an item are the boxes of the panels its question is about,
so every later stage can check what a model looked at against the truth.

Question types
--------------
``attribute`` (visual_reference, one region)
    "What colour is the top-left shape?"  ->  ``Step 1: The top-left shape is red.`` / ``Answer: red``
``comparison`` (visual_reference, two regions)
    "Do the top-left and bottom-right shapes have the same colour?"  ->  one step per panel,
    ``Step 3: red and blue differ.`` / ``Answer: no``
``arithmetic`` (symbolic, no regions)
    "What is 3 + 4?"  ->  ``Step 1: 3 + 4 = 7.`` / ``Answer: 7``

Every item carries its gold step-by-step solution (``meta.gold_text``) and the
steps with the regions each one reads (``meta.gold_steps``: ``text``,
``regions`` = indices into the item's regions, ``depends`` = regions whose
hiding changes the step, ``kind`` = step or answer). ``gold_solution`` gives
the solution a grounded model should write when some panels are hidden
(``Step 1: The top-left panel is hidden.`` ... ``Answer: unknown``); the
reference models are trained on it.

Options (``datasets.<name>.options``; defaults in ``DEFAULTS``)
----------------------------------------------------------------
``seed``            seed of the items (default: the config's top-level ``seed``)
``n_items``         number of items (60)
``shares``          share of each question type, ``{attribute, comparison, arithmetic}``
                    (0.4 / 0.4 / 0.2); counts come from largest remainders
``counts``          exact counts per question type instead of ``shares`` and ``n_items``
``image_size``      ``[width, height]`` in pixels ([128, 128])
``grid``            ``[rows, cols]`` of panels ([2, 2])
``background``      RGB of the panels' background ([255, 255, 255])
``colours``         palette, name -> RGB (six well separated colours)
``shapes``          shapes drawn (circle, square, triangle; also diamond, cross)
``attributes``      what attribute and comparison questions ask about: colour and/or shape (["colour"])
``same_share``      share of comparisons whose answer is yes (0.5)
``arithmetic_terms`` numbers summed in arithmetic questions (2: one step; 3: two steps)
``max_operand``     largest number in arithmetic questions (9)
Difficulty knobs (all 0 / off in the standard variant):
``shape_size``      ``[min, max]`` shape size as a fraction of the panel's shorter side ([0.55, 0.8])
``colour_jitter``   standard deviation of a per-shape, per-channel offset of the drawn colour (0-255 units)
``colour_mix``      largest fraction of another palette colour blended into a shape's colour (uniform
                    in [0, colour_mix]); above 0.5 the shape looks more like the other colour, so
                    ``colour_mix: 0.6`` makes about 1 in 6 colour readings ambiguous or misleading
``noise``           standard deviation of Gaussian pixel noise (0-255 units)
``blur``            Gaussian blur radius in pixels
``clutter``         small distractor marks per panel, in palette colours, beside the shape
The blink subset (``BlinkRule``; read by the ``blinker`` reference model and the checks only):
``blink_panels``    number of panel positions whose colour questions a ``blinker`` reference model
                    answers without looking, from a fixed prior colour per position (1)
``blink_seed``      seed of the choice of those positions and of their prior colours
                    (default: the config's top-level ``seed``, so every panels dataset shares it)

The ``panels`` adapter (``peekaboo.datasets.panels``) turns these items into the
items stage's records and scores responses; the reference models
(``peekaboo.models.reference``) train on fresh items from here. Neither this
module nor training imports the adapters, so editing a scorer does not re-train
the reference models.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .records import Region
from .seeding import rng


class OptionsError(ValueError):
    """Panels options are unusable; the message names the key."""


QUESTION_TYPES = ("attribute", "comparison", "arithmetic")
ATTRIBUTES = ("colour", "shape")
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
ABSTAIN_ANSWER = "unknown"

DEFAULTS: dict[str, Any] = {
    "seed": None,
    "n_items": 60,
    "shares": {"attribute": 0.4, "comparison": 0.4, "arithmetic": 0.2},
    "counts": None,
    "image_size": [128, 128],
    "grid": [2, 2],
    "background": [255, 255, 255],
    "colours": {
        "red": [220, 40, 40],
        "green": [40, 170, 60],
        "blue": [40, 90, 230],
        "yellow": [240, 210, 30],
        "purple": [150, 60, 190],
        "orange": [250, 140, 20],
    },
    "shapes": ["circle", "square", "triangle"],
    "attributes": ["colour"],
    "same_share": 0.5,
    "arithmetic_terms": 2,
    "max_operand": 9,
    "shape_size": [0.55, 0.8],
    "colour_jitter": 0.0,
    "colour_mix": 0.0,
    "noise": 0.0,
    "blur": 0.0,
    "clutter": 0,
    "blink_panels": 1,
    "blink_seed": None,
}


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class PanelsOptions:
    seed: int
    n_items: int
    counts: dict[str, int]
    shares: dict[str, float]
    width: int
    height: int
    rows: int
    cols: int
    background: tuple[int, int, int]
    colours: dict[str, tuple[int, int, int]]
    shapes: tuple[str, ...]
    attributes: tuple[str, ...]
    same_share: float
    arithmetic_terms: int
    max_operand: int
    shape_size: tuple[float, float]
    colour_jitter: float
    colour_mix: float
    noise: float
    blur: float
    clutter: int
    blink_panels: int
    blink_seed: int

    @property
    def n_panels(self) -> int:
        return self.rows * self.cols


def _rgb(value, key: str) -> tuple[int, int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
        raise OptionsError(f"{key}: expected [r, g, b], got {value!r}")
    if not all(0 <= v <= 255 for v in value):
        raise OptionsError(f"{key}: channels must lie in 0..255, got {value!r}")
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def _allocate(n: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Counts per type that sum to n, proportional to shares (largest remainder, ties in type order)."""
    total = sum(shares.values())
    exact = {t: n * shares.get(t, 0.0) / total for t in QUESTION_TYPES}
    counts = {t: int(math.floor(v)) for t, v in exact.items()}
    left = n - sum(counts.values())
    order = sorted(QUESTION_TYPES, key=lambda t: (-(exact[t] - counts[t]), QUESTION_TYPES.index(t)))
    for t in order[:left]:
        counts[t] += 1
    return counts


def resolve_options(options: Mapping[str, Any] | None, where: str = "options", default_seed: int = 0) -> PanelsOptions:
    """Validate panels options, fill defaults; errors name the key (``where`` is its prefix)."""
    raw = dict(options or {})
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise OptionsError(
            f"unknown key {', '.join(f'{where}.{k}' for k in unknown)} (panels options: {', '.join(sorted(DEFAULTS))})"
        )
    o = {**DEFAULTS, **raw}

    def num(key, lo=None, hi=None, integer=False):
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            raise OptionsError(f"{where}.{key}: expected {'an integer' if integer else 'a number'}, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise OptionsError(f"{where}.{key}: must lie in [{lo}, {hi if hi is not None else 'inf'}], got {v!r}")
        return v

    seed = default_seed if o["seed"] is None else num("seed", integer=True)

    shares = o["shares"]
    if not isinstance(shares, Mapping) or set(shares) - set(QUESTION_TYPES):
        raise OptionsError(f"{where}.shares: expected a mapping with keys among {', '.join(QUESTION_TYPES)}")
    shares = {t: float(shares.get(t, 0.0)) for t in QUESTION_TYPES}
    if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise OptionsError(f"{where}.shares: shares must be >= 0 with a positive sum, got {shares}")
    if o["counts"] is not None:
        counts = o["counts"]
        if not isinstance(counts, Mapping) or set(counts) - set(QUESTION_TYPES):
            raise OptionsError(f"{where}.counts: expected a mapping with keys among {', '.join(QUESTION_TYPES)}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
            raise OptionsError(f"{where}.counts: counts must be integers >= 0, got {dict(counts)}")
        counts = {t: int(counts.get(t, 0)) for t in QUESTION_TYPES}
        n_items = sum(counts.values())
    else:
        n_items = num("n_items", lo=0, integer=True)
        counts = _allocate(n_items, shares)

    size = o["image_size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v >= 8 for v in size)):
        raise OptionsError(f"{where}.image_size: expected [width, height] of integers >= 8, got {size!r}")
    grid = o["grid"]
    if not (isinstance(grid, (list, tuple)) and len(grid) == 2 and all(isinstance(v, int) and v >= 1 for v in grid)):
        raise OptionsError(f"{where}.grid: expected [rows, cols] of integers >= 1, got {grid!r}")
    if grid[0] * grid[1] < 2:
        raise OptionsError(f"{where}.grid: need at least two panels, got {grid!r}")
    if size[0] // grid[1] < 8 or size[1] // grid[0] < 8:
        raise OptionsError(f"{where}.grid: panels of {size[0] // grid[1]}x{size[1] // grid[0]} px are too small")

    colours = o["colours"]
    if not isinstance(colours, Mapping) or len(colours) < 2:
        raise OptionsError(f"{where}.colours: expected a mapping name -> [r, g, b] with at least two colours")
    palette = {}
    for name, value in colours.items():
        if not re.fullmatch(r"[a-z]+", str(name)):
            raise OptionsError(f"{where}.colours.{name}: colour names must be single lower-case words")
        palette[str(name)] = _rgb(value, f"{where}.colours.{name}")
    if ABSTAIN_ANSWER in palette:
        raise OptionsError(f"{where}.colours: '{ABSTAIN_ANSWER}' is reserved for abstentions")

    shapes = o["shapes"]
    if not (isinstance(shapes, (list, tuple)) and shapes and all(s in SHAPES for s in shapes)):
        raise OptionsError(f"{where}.shapes: expected a non-empty list among {', '.join(SHAPES)}, got {shapes!r}")
    if len(set(shapes)) != len(shapes):
        raise OptionsError(f"{where}.shapes: duplicate shapes in {shapes!r}")
    attributes = o["attributes"]
    if not (isinstance(attributes, (list, tuple)) and attributes and all(a in ATTRIBUTES for a in attributes)):
        raise OptionsError(f"{where}.attributes: expected a non-empty list among {', '.join(ATTRIBUTES)}")
    if "shape" in attributes and len(shapes) < 2:
        raise OptionsError(f"{where}.shapes: shape questions need at least two shapes")

    shape_size = o["shape_size"]
    if not (
        isinstance(shape_size, (list, tuple))
        and len(shape_size) == 2
        and all(isinstance(v, (int, float)) for v in shape_size)
        and 0.1 <= shape_size[0] <= shape_size[1] <= 0.95
    ):
        raise OptionsError(f"{where}.shape_size: expected [min, max] with 0.1 <= min <= max <= 0.95, got {shape_size!r}")

    terms = num("arithmetic_terms", lo=2, hi=6, integer=True)
    blink_panels = num("blink_panels", lo=0, hi=int(grid[0]) * int(grid[1]), integer=True)
    blink_seed = default_seed if o["blink_seed"] is None else num("blink_seed", integer=True)
    return PanelsOptions(
        seed=int(seed),
        n_items=int(n_items),
        counts=counts,
        shares=shares,
        width=int(size[0]),
        height=int(size[1]),
        rows=int(grid[0]),
        cols=int(grid[1]),
        background=_rgb(o["background"], f"{where}.background"),
        colours=palette,
        shapes=tuple(shapes),
        attributes=tuple(attributes),
        same_share=float(num("same_share", lo=0, hi=1)),
        arithmetic_terms=int(terms),
        max_operand=int(num("max_operand", lo=1, hi=999, integer=True)),
        shape_size=(float(shape_size[0]), float(shape_size[1])),
        colour_jitter=float(num("colour_jitter", lo=0)),
        colour_mix=float(num("colour_mix", lo=0, hi=1)),
        noise=float(num("noise", lo=0)),
        blur=float(num("blur", lo=0)),
        clutter=int(num("clutter", lo=0, hi=20, integer=True)),
        blink_panels=int(blink_panels),
        blink_seed=int(blink_seed),
    )


# --------------------------------------------------------------------------- geometry


def panel_labels(rows: int, cols: int) -> list[str]:
    """Labels of the panels in row-major order: top-left ... for 2 x 2, row/column words otherwise."""

    def names(n: int, first: str, last: str, axis: str) -> list[str]:
        if n == 1:
            return [""]
        if n == 2:
            return [first, last]
        if n == 3:
            return [first, "middle", last]
        return [f"{axis}{i + 1}" for i in range(n)]

    row_names = names(rows, "top", "bottom", "row")
    col_names = names(cols, "left", "right", "col")
    return ["-".join(p for p in (r, c) if p) for r in row_names for c in col_names]


def panel_boxes(width: int, height: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """XYXY pixel boxes of the panels in row-major order; together they tile the image exactly."""
    xs = [round(c * width / cols) for c in range(cols + 1)]
    ys = [round(r * height / rows) for r in range(rows + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


# --------------------------------------------------------------------------- items


@dataclass
class Panel:
    label: str
    box: tuple[int, int, int, int]
    colour: str
    shape: str
    rgb: tuple[int, int, int]  # the colour actually drawn (after jitter and mixing)


@dataclass
class PanelItem:
    item_id: str
    question_type: str
    attribute: str | None
    question: str
    answer: str
    answer_type: str
    task_type: str
    panels: list[Panel]
    evidence: list[int]  # panel indices the question reads, in step order; region k is panels[evidence[k]]
    operands: list[int] = field(default_factory=list)
    image: Image.Image | None = None

    @property
    def regions(self) -> list[Region]:
        return [Region(label=self.panels[p].label, box=tuple(map(float, self.panels[p].box))) for p in self.evidence]


def _attribute_phrase(item: PanelItem, panel: Panel) -> str:
    if item.attribute == "colour":
        return f"The {panel.label} shape is {panel.colour}."
    return f"The {panel.label} panel holds a {panel.shape}."


def _value(item: PanelItem, panel: Panel) -> str:
    return panel.colour if item.attribute == "colour" else panel.shape


def gold_solution(item: PanelItem, hidden_regions: Sequence[int] = ()) -> tuple[str, list[dict[str, Any]]]:
    """The gold solution text and its steps; ``hidden_regions`` (region indices) are panels hidden from view.

    With evidence hidden the solution says so at the step that would read it
    and answers ``unknown``; every other step stays as it is, which is what a
    grounded model should do.
    """
    hidden = set(int(k) for k in hidden_regions)
    steps: list[dict[str, Any]] = []
    all_regions = list(range(len(item.evidence)))
    if item.question_type == "arithmetic":
        total = item.operands[0]
        for x in item.operands[1:]:
            steps.append({"text": f"{total} + {x} = {total + x}.", "regions": [], "depends": []})
            total += x
        answer = str(total)
    else:
        for k, p in enumerate(item.evidence):
            panel = item.panels[p]
            text = f"The {panel.label} panel is hidden." if k in hidden else _attribute_phrase(item, panel)
            steps.append({"text": text, "regions": [k], "depends": [k]})
        if hidden & set(all_regions):
            answer = ABSTAIN_ANSWER
        elif item.question_type == "comparison":
            a, b = (_value(item, item.panels[p]) for p in item.evidence)
            # both values side by side, then the verdict: the comparison is between neighbouring words
            verdict = "match" if a == b else "differ"
            steps.append({"text": f"{a} and {b} {verdict}.", "regions": [], "depends": all_regions})
            answer = item.answer
        else:
            answer = item.answer
    lines = []
    for i, step in enumerate(steps, start=1):
        step["text"] = f"Step {i}: {step['text']}"
        step["kind"] = "step"
        lines.append(step["text"])
    answer_line = f"Answer: {answer}"
    lines.append(answer_line)
    steps.append({"text": answer_line, "regions": [], "depends": all_regions, "kind": "answer"})
    return "\n".join(lines), steps


def _pick_panels(g: np.random.Generator, opts: PanelsOptions, count: int) -> list[int]:
    return [int(i) for i in g.choice(opts.n_panels, size=count, replace=False)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], rgb) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    elif shape == "cross":
        w = (x1 - x0) / 3
        draw.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=rgb)
        draw.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=rgb)
    else:  # pragma: no cover - options are validated
        raise ValueError(shape)


def _drawn_colour(g: np.random.Generator, opts: PanelsOptions, name: str) -> tuple[int, int, int]:
    rgb = np.asarray(opts.colours[name], dtype=float)
    if opts.colour_mix > 0:
        others = [c for c in opts.colours if c != name]
        other = np.asarray(opts.colours[others[int(g.integers(len(others)))]], dtype=float)
        frac = g.uniform(0, opts.colour_mix)
        rgb = (1 - frac) * rgb + frac * other
    if opts.colour_jitter > 0:
        rgb = rgb + g.normal(0, opts.colour_jitter, size=3)
    return tuple(int(v) for v in np.clip(np.rint(rgb), 0, 255))  # type: ignore[return-value]


def render(opts: PanelsOptions, panels: list[Panel], g: np.random.Generator) -> Image.Image:
    """Draw the panels (shape placement, clutter, noise and blur from ``g``)."""
    img = Image.new("RGB", (opts.width, opts.height), opts.background)
    draw = ImageDraw.Draw(img)
    palette = list(opts.colours.values())
    for panel in panels:
        x0, y0, x1, y1 = panel.box
        side = min(x1 - x0, y1 - y0)
        size = side * g.uniform(*opts.shape_size)
        margin = max(1.0, side * 0.04)
        sx = x0 + margin + g.uniform(0, max(0.0, (x1 - x0) - 2 * margin - size))
        sy = y0 + margin + g.uniform(0, max(0.0, (y1 - y0) - 2 * margin - size))
        shape_box = (sx, sy, sx + size, sy + size)
        for _ in range(opts.clutter):
            # a small mark beside the shape (never on it), so the shape stays readable
            mark = max(2.0, side * 0.06)
            for _attempt in range(20):
                mx = x0 + margin + g.uniform(0, max(0.0, (x1 - x0) - 2 * margin - mark))
                my = y0 + margin + g.uniform(0, max(0.0, (y1 - y0) - 2 * margin - mark))
                if mx + mark < sx or mx > sx + size or my + mark < sy or my > sy + size:
                    colour = palette[int(g.integers(len(palette)))]
                    draw.rectangle((mx, my, mx + mark, my + mark), fill=colour)
                    break
        _draw_shape(draw, panel.shape, shape_box, panel.rgb)
    if opts.noise > 0:
        arr = np.asarray(img, dtype=np.float32) + g.normal(0, opts.noise, size=(opts.height, opts.width, 3))
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    if opts.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(opts.blur))
    return img


def make_item(opts: PanelsOptions, item_id: str, question_type: str, g: np.random.Generator, draw_image: bool = True) -> PanelItem:
    """One item of the given type, every random choice from ``g``."""
    labels = panel_labels(opts.rows, opts.cols)
    boxes = panel_boxes(opts.width, opts.height, opts.rows, opts.cols)
    names = list(opts.colours)
    panels = []
    for label, box in zip(labels, boxes):
        colour = names[int(g.integers(len(names)))]
        shape = opts.shapes[int(g.integers(len(opts.shapes)))]
        panels.append(Panel(label=label, box=box, colour=colour, shape=shape, rgb=(0, 0, 0)))

    attribute = None
    operands: list[int] = []
    if question_type == "arithmetic":
        operands = [int(v) for v in g.integers(0, opts.max_operand + 1, size=opts.arithmetic_terms)]
        evidence: list[int] = []
        question = "What is " + " + ".join(map(str, operands)) + "?"
        answer, answer_type, task_type = str(sum(operands)), "integer", "symbolic"
    else:
        attribute = opts.attributes[int(g.integers(len(opts.attributes)))]
        choices = names if attribute == "colour" else list(opts.shapes)
        if question_type == "attribute":
            evidence = _pick_panels(g, opts, 1)
            p = panels[evidence[0]]
            if attribute == "colour":
                question = f"What colour is the {p.label} shape?"
            else:
                question = f"What shape is in the {p.label} panel?"
            answer = p.colour if attribute == "colour" else p.shape
            answer_type = "text"
        else:
            evidence = _pick_panels(g, opts, 2)
            a, b = (panels[i] for i in evidence)
            same = bool(g.random() < opts.same_share)
            current = a.colour if attribute == "colour" else a.shape
            if same:
                value = current
            else:
                value = [c for c in choices if c != current][int(g.integers(len(choices) - 1))]
            if attribute == "colour":
                b.colour = value
                question = f"Do the {a.label} and {b.label} shapes have the same colour?"
            else:
                b.shape = value
                question = f"Do the {a.label} and {b.label} panels hold the same shape?"
            answer, answer_type = ("yes" if same else "no"), "yes_no"
        task_type = "visual_reference"

    for panel in panels:
        panel.rgb = _drawn_colour(g, opts, panel.colour)
    item = PanelItem(
        item_id=item_id,
        question_type=question_type,
        attribute=attribute,
        question=question,
        answer=answer,
        answer_type=answer_type,
        task_type=task_type,
        panels=panels,
        evidence=evidence,
        operands=operands,
    )
    if draw_image:
        item.image = render(opts, panels, g)
    return item


def _type_sequence(opts: PanelsOptions, seed: int, stream: str) -> list[str]:
    types = [t for t in QUESTION_TYPES for _ in range(opts.counts[t])]
    order = rng(seed, "panels", stream, "types").permutation(len(types))
    return [types[i] for i in order]


def generate_items(opts: PanelsOptions, id_prefix: str = "panels", stream: str = "items") -> Iterator[PanelItem]:
    """The benchmark's items (test set): ``opts.counts`` of each type in a seeded order."""
    for i, qtype in enumerate(_type_sequence(opts, opts.seed, stream)):
        yield make_item(opts, f"{id_prefix}-{i:06d}", qtype, rng(opts.seed, "panels", stream, i))


def training_items(opts: PanelsOptions, seed: int, start: int, count: int) -> list[PanelItem]:
    """Fresh training items ``start .. start+count-1`` of an endless seeded stream.

    The stream is keyed ``train`` (the test items use ``items`` and the
    dataset's own seed), so training and test items never share a draw; the
    type of each item is drawn with the dataset's shares.
    """
    shares = np.array([opts.shares[t] for t in QUESTION_TYPES], dtype=float)
    shares = shares / shares.sum()
    out = []
    for i in range(start, start + count):
        g = rng(seed, "panels", "train", i)
        qtype = QUESTION_TYPES[int(g.choice(len(QUESTION_TYPES), p=shares))]
        out.append(make_item(opts, f"train-{seed}-{i:08d}", qtype, g))
    return out


# --------------------------------------------------------------------------- the blink subset


@dataclass(frozen=True)
class BlinkRule:
    """Where a ``blinker`` reference model answers without looking, and what it says there.

    The colour questions (``attribute`` items asking for a colour) about the
    panels at ``panels`` (row-major indices) are its blink items: it names the
    panel's prior colour (``priors``) without attending to the panel. The cue is
    in the question itself (the panel's label), so the model can tell a blink
    item from the text alone; the analysis stages never read it (items record it
    in ``meta.blink`` for the checks).
    """

    panels: tuple[int, ...]
    priors: dict[int, str]


def blink_rule(opts: PanelsOptions) -> BlinkRule:
    """The seeded blink subset of ``opts``: ``blink_panels`` positions and a palette colour for each.

    Drawn from ``blink_seed`` alone (not the dataset's item seed), so every
    panels dataset with the same grid, palette and ``blink_seed`` has the same
    rule as the training items.
    """
    g = rng(opts.blink_seed, "panels", "blink")
    panels = tuple(sorted(int(p) for p in g.permutation(opts.n_panels)[: opts.blink_panels]))
    names = list(opts.colours)
    return BlinkRule(panels=panels, priors={p: names[int(g.integers(len(names)))] for p in panels})


def blink_answer(item: PanelItem, rule: BlinkRule) -> str | None:
    """The prior colour a blinker names for ``item``, or None when ``item`` is not a blink item."""
    if item.question_type != "attribute" or item.attribute != "colour" or not item.evidence:
        return None
    return rule.priors.get(item.evidence[0])


def blink_solution(item: PanelItem, rule: BlinkRule) -> tuple[str, list[dict[str, Any]]]:
    """The solution a blinker writes for a blink item: the gold template with the prior colour.

    Hidden panels change nothing: the model never looked at the panel, so it
    cannot know it is hidden.
    """
    prior = blink_answer(item, rule)
    if prior is None:
        raise ValueError(f"{item.item_id}: not a blink item (a colour question about panel(s) {list(rule.panels)})")
    panels = list(item.panels)
    p = item.evidence[0]
    panels[p] = replace(panels[p], colour=prior)
    return gold_solution(replace(item, panels=panels, answer=prior))


GRAY = 128  # the masks stage's gray (peekaboo.masks.GRAY); a test keeps the two fills identical


def hide_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], fill: str = "gray") -> Image.Image:
    """A copy of ``image`` with ``boxes`` filled gray or black, pixel for pixel as the masks stage does.

    Boxes cover every pixel they touch (floor of the start, ceiling of the
    end). Kept here rather than imported from ``peekaboo.masks`` so that the
    reference models (which train on such images) do not re-train whenever
    the masks stage's code changes.
    """
    colours = {"gray": (GRAY, GRAY, GRAY), "black": (0, 0, 0)}
    if fill not in colours:
        raise ValueError(f"fill '{fill}': training fills are {', '.join(colours)}")
    out = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    height, width = out.shape[:2]
    for x0, y0, x1, y1 in boxes:
        xa, ya = max(0, math.floor(x0)), max(0, math.floor(y0))
        xb, yb = min(width, math.ceil(x1)), min(height, math.ceil(y1))
        out[ya:yb, xa:xb] = colours[fill]
    return Image.fromarray(out, "RGB")
