"""VisArgs (visual arguments) from its ``annotation.json`` and a local image folder.

Format (option ``path``): the ``annotation.json`` list of the ``jiwan-chung/visargs``
``annotations`` config, one record per image::

    {"url": "https://i.pinimg.com/originals/5e/7f/10/5e7f1087....jpg",
     "visual_premises": ["A small plant is growing inside a plastic bag.", ...],
     "b_box": [{"h": 41, "startX": 302, "startY": 554, "w": 72}, ...],
     "commonsense_premises": ["Plants require soil, water, light, and air to grow.", ...],
     "reasoning_steps": ["(VP1, VP2, CP1 -> IC1): The small plant is growing, ...", ...,
                         "(IC1, IC2 -> C): The image represents ..."],
     "conclusion": "The image represents the struggle of nature ..."}

The dataset ships no images, only their URLs. Options: ``images`` (the folder
holding the downloaded images; default ``images/`` beside the annotation file),
``image_map`` (optional JSON object ``{url: file}`` or CSV with columns
``url,file``; files relative to ``images``). Without a map an image is found by
the URL's file name (``5e7f1087....jpg``), or failing that by the same name
with another extension; an image not found is handed over by its expected path
so that the items stage rejects it, naming the file.

Regions: ``b_box[i]`` is the box of ``visual_premises[i]`` (absolute pixels,
top-left origin, XYWH), converted to XYXY and labelled ``VP{i+1}``; the items
stage checks them against the image and rejects boxes outside it. The premise
texts are in ``meta.premises`` (``{"VP1": ..., "CP1": ...}``). A record without
``b_box`` (missing, null or empty) becomes an item without regions (counted in
the log and marked ``meta.regions_missing``): it still has a question and a
gold answer, and only CRM and collapse leave it out. A record whose ``b_box``
cannot be matched by index (a different count from ``visual_premises``) or
holds a box without numeric ``startX, startY, w, h`` is rejected, since a
mismatched box would plant a wrong dependency.

Expected dependencies: ``reasoning_steps`` are parsed into
``meta.expected_dependencies`` = ``[{"step": "IC1", "uses": ["VP1", "VP2",
"CP1"], "text": ..., "visual": [...], "regions": [...]}]``, where ``visual``
holds the visual premises the step rests on directly or through earlier
intermediate conclusions and ``regions`` their indices in the item's regions.
A step that does not parse is kept with ``uses: []`` and listed in
``meta.unparsed_steps``.

Question: VisArgs' own conclusion task is generative and scored with
BLEU/CIDEr/BERTScore against the reference (no exact-match rule exists).
Here, so that correctness is decided by rule: with ``choices: k`` (default 4)
the model picks the image's conclusion among k candidates, the gold one and
k-1 conclusions of other images drawn with the config seed (a construct of
this tool in the spirit of VisArgs' "identification of premises" task, not
an official task). The prompt asks for step-by-step reasoning through the
premises (see ``QUESTION_TEMPLATE``) and a final ``Answer: $LETTER`` line.
With ``choices: 0`` the model states the conclusion in its own words; the
item's ``answer`` is the reference conclusion. Scoring:
``peekaboo.scoring.visargs``.

Malformed records are rejected with the reason: ``visual_premises``,
``commonsense_premises`` or ``reasoning_steps`` that is not a list (a string
would be read as its characters), a ``conclusion`` or ``url`` that is not
text.

Task type: visual_reference. Masked variants: VisArgs is the CRM dataset
(``masks: true`` in the paper's config).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import unquote, urlparse

from ..cells import is_blank
from ..logs import get_logger
from ..seeding import rng
from ..jsonlines import duplicate_key
from ._common import duplicate_reason, letters, read_json, text_list
from .base import Adapter, AdapterError, RawItem, Region, Reject

log = get_logger("datasets.visargs")

QUESTION_TEMPLATE = (
    "This image makes an argument: it uses what it shows to convey a message.\n"
    "Reason step by step. First describe the visual premises, the things the image shows that carry its "
    "message. Then state the commonsense premises they call on. Then draw the intermediate conclusions "
    "they lead to. Finally, state what the image wants to convey.\n"
)
CHOICE_TEMPLATE = (
    "Which of the following is the conclusion of the image?\n{options}\n"
    "The last line of your response should be of the following format: 'Answer: $LETTER' (without quotes) "
    "where LETTER is one of options."
)
FREE_TEMPLATE = (
    "The last line of your response should be of the following format: 'Answer: <the message of the image "
    "in one sentence>'."
)

_STEP_RE = re.compile(r"^\s*\(\s*(?P<uses>[^()]*?)\s*(?:->|→)\s*(?P<step>[^()]*?)\s*\)\s*:?\s*(?P<text>.*)$", re.DOTALL)


def parse_reasoning_step(step: str) -> dict[str, Any] | None:
    """``"(VP1, CP1 -> IC1): text"`` -> ``{"step": "IC1", "uses": ["VP1", "CP1"], "text": "text"}``.

    None when the step does not have the ``(uses -> step): text`` form.
    """
    m = _STEP_RE.match(str(step))
    if not m or not m.group("step"):
        return None
    uses = [u.strip() for u in re.split(r"[,;&]|\band\b", m.group("uses")) if u.strip()]
    return {"step": m.group("step").strip(), "uses": uses, "text": m.group("text").strip()}


def expected_dependencies(steps: list[Any], region_labels: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Parsed steps with the visual premises each rests on (directly or through earlier steps).

    Returns (dependencies, unparsed step texts).
    """
    deps: list[dict[str, Any]] = []
    unparsed: list[str] = []
    visual_of: dict[str, list[str]] = {}
    for raw in steps or []:
        parsed = parse_reasoning_step(raw)
        if parsed is None:
            unparsed.append(str(raw))
            deps.append({"step": None, "uses": [], "text": str(raw), "visual": [], "regions": []})
            continue
        visual: list[str] = []
        for u in parsed["uses"]:
            for v in [u] if u.upper().startswith("VP") else visual_of.get(u, []):
                if v.upper().startswith("VP") and v not in visual:
                    visual.append(v)
        visual_of[parsed["step"]] = visual
        parsed["visual"] = visual
        parsed["regions"] = [region_labels.index(v) for v in visual if v in region_labels]
        deps.append(parsed)
    return deps, unparsed


def xywh_to_xyxy(box: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """A VisArgs box ``{startX, startY, w, h}`` as (x0, y0, x1, y1)."""
    x, y, w, h = (float(box[k]) for k in ("startX", "startY", "w", "h"))
    return (x, y, x + w, y + h)


def url_file_name(url: str) -> str:
    return Path(unquote(urlparse(str(url)).path)).name


class VisArgsAdapter(Adapter):
    name = "visargs"
    default_task_type = "visual_reference"

    def check(self) -> list[str]:
        try:
            p = self.path()
        except AdapterError as exc:
            return [str(exc)]
        problems = []
        if not p.is_file():
            problems.append(f"datasets.{self.dataset}.options.path: no such file {p}")
        if not self._images_dir().is_dir():
            key = "images" if self.options.get("images") else "images (default: images/ beside the annotation file)"
            problems.append(f"datasets.{self.dataset}.options.{key}: no such folder {self._images_dir()}")
        if self.options.get("image_map") and not self.path("image_map").is_file():
            problems.append(f"datasets.{self.dataset}.options.image_map: no such file {self.path('image_map')}")
        k = self.options.get("choices", 4)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0 or k == 1 or k > 26:
            problems.append(f"datasets.{self.dataset}.options.choices: {k!r} is not 0 (free form) or 2 to 26")
        return problems

    def _images_dir(self) -> Path:
        return self.path("images") if self.options.get("images") else self.path().parent / "images"

    def count(self) -> int:
        return len(self._load())

    def _load(self) -> list[Any]:
        data = read_json(self.path())
        if not isinstance(data, list):
            raise AdapterError(f"datasets.{self.dataset}.options.path: {self.path()} is not a list of records")
        return data

    def _image_map(self) -> dict[str, str]:
        if not self.options.get("image_map"):
            return {}
        p = self.path("image_map")
        if p.suffix.lower() == ".json":
            data = read_json(p)
            if not isinstance(data, dict):
                raise AdapterError(f"datasets.{self.dataset}.options.image_map: {p} is not a JSON object url -> file")
            twice = duplicate_key(data)
            if twice is not None:  # json keeps the last file silently: which image was meant cannot be told
                raise AdapterError(f"datasets.{self.dataset}.options.image_map: {p} maps the url {twice!r} twice")
            return {str(k): str(v) for k, v in data.items()}
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if rows and not {"url", "file"} <= set(rows[0]):
            raise AdapterError(f"datasets.{self.dataset}.options.image_map: {p} needs columns url,file")
        return {r["url"]: r["file"] for r in rows}

    def _find_image(self, url: str, mapping: dict[str, str], by_stem: dict[str, Path]) -> Path:
        images = self._images_dir()
        if url in mapping:
            p = Path(mapping[url]).expanduser()
            return p if p.is_absolute() else images / p
        name = url_file_name(url)
        exact = images / name
        if exact.is_file():
            return exact
        return by_stem.get(Path(name).stem, exact)

    def records(self) -> Iterator[RawItem | Reject]:
        data = self._load()
        mapping = self._image_map()
        images = self._images_dir()
        by_stem = {p.stem: p for p in sorted(images.iterdir()) if p.is_file()} if images.is_dir() else {}
        n_choices = int(self.options.get("choices", 4))
        pool = []  # distinct conclusions in file order: the distractor pool
        for rec in data:
            c = rec.get("conclusion") if isinstance(rec, dict) else None
            if isinstance(c, str) and c.strip() and c.strip() not in pool:
                pool.append(str(c).strip())
        ids = _item_ids(data)
        without_boxes = 0
        for line, (rec, item_id) in enumerate(zip(data, ids), 1):
            if not isinstance(rec, dict):
                yield Reject(reason="record is not a JSON object", source_line=line)
                continue
            duplicate = duplicate_reason(rec)
            if duplicate:
                yield Reject(reason=duplicate, item_id=None if is_blank(rec.get("url")) else item_id,
                             source_line=line)
                continue
            if is_blank(rec.get("url")):
                yield Reject(reason="missing 'url'", source_line=line)
                continue
            if is_blank(rec.get("conclusion")):
                yield Reject(reason="missing 'conclusion'", item_id=item_id, source_line=line)
                continue
            try:
                premises, commonsense, steps = (
                    text_list(rec.get(k), k) or [] for k in ("visual_premises", "commonsense_premises", "reasoning_steps")
                )
                for key in ("url", "conclusion"):
                    if not isinstance(rec[key], str):
                        raise ValueError(f"{key} is a {type(rec[key]).__name__}, not text")
            except ValueError as exc:
                yield Reject(reason=str(exc), item_id=item_id, source_line=line)
                continue
            boxes = rec.get("b_box")
            regions: list[Region] = []
            if boxes:
                if not isinstance(boxes, list) or len(boxes) != len(premises):
                    n = len(boxes) if isinstance(boxes, list) else type(boxes).__name__
                    reason = f"b_box has {n} boxes for {len(premises)} visual_premises: cannot match by index"
                    yield Reject(reason=reason, item_id=item_id, source_line=line)
                    continue
                try:
                    regions = [Region(label=f"VP{i + 1}", box=xywh_to_xyxy(b)) for i, b in enumerate(boxes)]
                except (KeyError, TypeError, ValueError) as exc:
                    bad = next(i for i, b in enumerate(boxes) if not _box_ok(b))
                    yield Reject(reason=f"b_box[{bad}] is not {{startX, startY, w, h}} numbers ({exc!r})",
                                 item_id=item_id, source_line=line)
                    continue
            else:
                without_boxes += 1
            yield self._item(rec, item_id, line, premises, commonsense, steps, regions, pool, n_choices,
                             self._find_image(str(rec["url"]), mapping, by_stem))
        if without_boxes:
            log.info("%s: %d record(s) without b_box: items without regions (left out of CRM and collapse)",
                     self.dataset, without_boxes)

    def _item(self, rec, item_id, line, premises, commonsense, steps, regions, pool, n_choices, image) -> RawItem:
        gold = str(rec["conclusion"]).strip()
        labels = [r.label for r in regions]
        deps, unparsed = expected_dependencies(steps, labels)
        meta: dict[str, Any] = {
            "url": str(rec["url"]),
            "premises": {**{f"VP{i + 1}": p for i, p in enumerate(premises)},
                         **{f"CP{i + 1}": p for i, p in enumerate(commonsense)}},
            "reasoning_steps": steps,
            "expected_dependencies": deps,
            "conclusion": gold,
        }
        if unparsed:
            meta["unparsed_steps"] = unparsed
        if not regions:
            meta["regions_missing"] = "no b_box"
        others = [c for c in pool if c != gold]
        k = min(n_choices, len(others) + 1)
        if n_choices and k >= 2:
            draw = rng(self.seed, "visargs", "choices", item_id)
            picked = [others[i] for i in sorted(draw.choice(len(others), size=k - 1, replace=False))]
            position = int(draw.integers(0, k))
            choices = picked[:position] + [gold] + picked[position:]
            options = "\n".join(f"({l}) {c}" for l, c in zip(letters(k), choices))
            question = QUESTION_TEMPLATE + CHOICE_TEMPLATE.format(options=options)
            answer, answer_type = letters(k)[position], "multi_choice"
            meta["choice_source"] = f"gold conclusion and {k - 1} conclusion(s) of other images (seed {self.seed})"
        else:
            choices, question, answer, answer_type = None, QUESTION_TEMPLATE + FREE_TEMPLATE, gold, "text"
        return RawItem(
            item_id=item_id,
            question=question,
            answer=answer,
            answer_type=answer_type,
            images=[image],
            choices=choices,
            regions=regions,
            meta=meta,
            source_line=line,
        )


def _box_ok(box: Any) -> bool:
    try:
        xywh_to_xyxy(box)
        return True
    except (KeyError, TypeError, ValueError):
        return False


def _item_ids(data: list[Any]) -> list[str]:
    """The URL's file stem; the n-th repeat of a stem gets ``-n`` (n >= 2). Stable for a given file."""
    ids, seen = [], {}
    for n, rec in enumerate(data, 1):
        url = rec.get("url") if isinstance(rec, dict) else None
        stem = Path(url_file_name(url)).stem if not is_blank(url) else ""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or f"record-{n}"
        seen[stem] = seen.get(stem, 0) + 1
        ids.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return ids
