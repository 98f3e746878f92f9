"""The items stage: a dataset's adapter -> validated items, rejects, normalised images.

``build_items`` runs the configured adapter, applies the dataset entry's
``limit``, ``task_type``, ``task_type_map`` (per-item types from the
metadata), ``task_type_overrides`` and optional evidence
``boxes`` (a hand-made file, or the boxes stage's ``boxes/{d}.jsonl`` when a
model makes them; read by ``datasets.boxes``; they go to items that have no
regions of their own, and ``boxes_source`` records where each item's regions
came from), reads every image (path, encoded bytes or decoded image),
re-encodes it as an RGB PNG under ``items/{d}/images/`` (same pixels, same
bytes: no timestamps or other metadata), checks every region box against its
image, and sends each record it cannot use to the rejects table with the
reason and the source line. ``write_items`` writes both tables with provenance.
"""

from __future__ import annotations

import hashlib
import json
import itertools
import math
import re
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from . import logs, provenance, tables
from .seeding import rng as seeded_rng
from .datasets.base import ANSWER_TYPES, TASK_TYPES, RawItem, Region, Reject, get_adapter
from .datasets.boxes import MODEL_KINDS, BoxReport, box_kind, file_path, read_boxes
from .images import ItemRejected, load_image, write_png
from .stage import StageCall

log = logs.get_logger("items")

REGION_TYPE = pa.struct([("label", pa.string()), ("box", pa.list_(pa.float64())), ("image", pa.int32())])

ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("dataset", pa.string()),
        ("image", pa.string()),
        ("images", pa.list_(pa.string())),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("question", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("answer_type", pa.string()),
        ("task_type", pa.string()),
        ("regions", pa.list_(REGION_TYPE)),
        ("boxes_source", pa.string()),
        ("meta", pa.string()),
        ("source_line", pa.int64()),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("dataset", pa.string()),
        ("source_line", pa.int64()),
        ("reason", pa.string()),
    ]
)

ITEM_COLUMNS = ITEMS_SCHEMA.names
REJECT_COLUMNS = REJECTS_SCHEMA.names

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_STEM = 80


# ----------------------------------------------------------------------------
# file names


def safe_stem(item_id: str) -> str:
    """A file-name stem for an item id, the same in every run.

    Ids made of letters, digits, ``.``, ``_`` and ``-`` are kept as they are;
    any other id gets its unsafe characters replaced by ``_`` plus a short hash
    of the original id, so ``a/b`` and ``a_b`` cannot share a file.
    """
    stem = _SAFE_CHARS.sub("_", item_id)
    if stem != item_id or not stem or stem.startswith(".") or len(stem) > _MAX_STEM:
        digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=4).hexdigest()
        stem = f"{stem.lstrip('.')[:_MAX_STEM]}-{digest}".lstrip("-")
    return stem


class _NameBook:
    """Hands out unique image file names; case-insensitive, so names survive macOS/Windows file systems."""

    def __init__(self):
        self.used: set[str] = set()

    def name(self, item_id: str, k: int) -> str:
        stem = safe_stem(item_id)
        name = f"{stem}.png" if k == 0 else f"{stem}-{k}.png"
        if name.casefold() in self.used:
            # e.g. item "a-1" (one image) and item "a" (second image): both want a-1.png
            digest = hashlib.blake2b(f"{item_id}\x1f{k}".encode("utf-8"), digest_size=4).hexdigest()
            name = f"{stem}-{k}-{digest}.png"
        self.used.add(name.casefold())
        return name


# ----------------------------------------------------------------------------
# boxes


def check_region(region: Region, k: int, sizes: list[tuple[int, int]]) -> list[float]:
    """The region's box as four floats; ItemRejected when it has no area or leaves its image."""
    if not isinstance(region.image, (int, np.integer)) or not 0 <= int(region.image) < len(sizes):
        raise ItemRejected(f"bad region: region {k} ({region.label}) names image {region.image!r}, the item has {len(sizes)}")
    try:
        box = [float(x) for x in region.box]
    except (TypeError, ValueError):
        raise ItemRejected(f"bad region: region {k} ({region.label}) box {region.box!r} is not four numbers") from None
    if len(box) != 4 or not all(math.isfinite(x) for x in box):
        raise ItemRejected(f"bad region: region {k} ({region.label}) box {region.box!r} is not four finite numbers")
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ItemRejected(f"zero-area box: region {k} ({region.label}) box {box} (need x0 < x1 and y0 < y1)")
    width, height = sizes[int(region.image)]
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ItemRejected(
            f"box outside image: region {k} ({region.label}) box {box} not inside image {int(region.image)} "
            f"of size {width}x{height}"
        )
    return box


# ----------------------------------------------------------------------------
# the stage


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def build_items(
    dataset: str,
    spec: Mapping[str, Any],
    seed: int,
    results_dir: str | Path,
    base_dir: str | Path = ".",
    boxes_path: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run a dataset's adapter and write its normalised images; returns (items, rejects).

    ``spec`` is the dataset's validated config entry. Images go to
    ``{results_dir}/items/{dataset}/images/`` (emptied first); paths in the
    tables are relative to ``results_dir``. ``boxes_path`` is the boxes
    stage's JSONL, needed when the entry's boxes are made by a model (kind
    vlm or detector).
    """
    results_dir = Path(results_dir)
    base_dir = Path(base_dir)
    adapter = get_adapter(dataset, spec, seed=seed, base_dir=base_dir)
    image_rel = PurePosixPath("items") / dataset / "images"
    image_dir = results_dir / image_rel
    if image_dir.exists():
        shutil.rmtree(image_dir)  # only this stage writes here; stale images must not survive
    image_dir.mkdir(parents=True)

    limit = spec.get("limit")
    overrides = dict(spec.get("task_type_overrides") or {})
    forced_type = spec.get("task_type")
    type_map = spec.get("task_type_map")
    extra_boxes = None
    box_report = BoxReport()
    boxes_kind = box_kind(spec["boxes"])
    if boxes_kind == "file":
        boxes_path = Path(file_path(spec["boxes"])).expanduser()
        boxes_path = boxes_path if boxes_path.is_absolute() else base_dir / boxes_path
    elif boxes_kind in MODEL_KINDS and boxes_path is None:
        raise ValueError(f"datasets.{dataset}.boxes: kind {boxes_kind} is made by the boxes stage; "
                         f"give its boxes/{dataset}.jsonl as boxes_path")
    if boxes_kind is not None:
        boxes_path = Path(boxes_path)
        extra_boxes = read_boxes(boxes_path, dataset)
        box_report.errors = [str(e) for e in extra_boxes.errors]
        for error in extra_boxes.errors:
            log.warning("boxes file %s %s: skipped", boxes_path, error)

    names = _NameBook()
    seen: dict[str, int | None] = {}
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    n_records = 0

    def reject(reason: str, item_id: str | None, line: int | None) -> None:
        rejects.append({"item_id": item_id, "dataset": dataset, "source_line": line, "reason": reason})
        where = f" (line {line})" if line is not None else ""
        log.warning("rejected %s%s: %s", item_id if item_id is not None else "record", where, reason)

    total = adapter.count()
    records = adapter.records()
    if limit:
        total = min(total, limit)
        records = itertools.islice(records, limit)  # the first N records, rejects included
    listed: set[str] = set()  # with a sample: every distinct item id, drawn or not

    def process(record: Any, index: int) -> bool:
        """Keep or reject one record; whether it was kept."""
        nonlocal n_records
        n_records += 1
        if isinstance(record, Reject):
            reject(record.reason, record.item_id, record.source_line)
            return False
        if not isinstance(record, RawItem):
            reject(f"bad record: adapter gave a {type(record).__name__}", None, None)
            return False
        item_id = None if record.item_id is None else str(record.item_id)
        line = record.source_line
        if not item_id:
            reject("bad id: empty item id", item_id, line)
            return False
        if item_id in seen:
            first = seen[item_id]
            where = f" (first at line {first})" if first is not None else ""
            reject(f"duplicate item id: {item_id!r} already used{where}", item_id, line)
            return False
        seen[item_id] = line
        regions = list(record.regions or [])
        source = "dataset" if regions else None
        boxes_line = None
        file_regions = extra_boxes.regions_for(item_id) if extra_boxes is not None else None
        if file_regions is not None:
            if regions:
                box_report.kept_own += 1  # the dataset's own regions win
            elif file_regions:
                regions = list(file_regions)
                source = boxes_kind
                boxes_line = extra_boxes.line_of[item_id]
                box_report.attached += 1
        try:
            mapped = mapped_task_type(record.meta, type_map)
            row, images = _check_item(record, item_id, regions, mapped or forced_type, overrides,
                                      adapter.default_task_type, base_dir)
        except ItemRejected as exc:
            reason = str(exc)
            if boxes_line is not None and reason.startswith(("box outside image", "zero-area box", "bad region")):
                reason += f" [box from {boxes_path} line {boxes_line}]"
            reject(reason, item_id, line)
            return False
        paths = []
        for k, img in enumerate(images):
            name = names.name(item_id, k)
            write_png(img, image_dir / name)
            paths.append(str(image_rel / name))
        row.update(
            item_id=item_id,
            dataset=dataset,
            image=paths[0] if paths else None,
            images=paths,
            width=images[0].width if images else None,
            height=images[0].height if images else None,
            boxes_source=source,
            source_line=line,
        )
        box_report.without_boxes += not row["regions"]
        rows.append({**row, "_order": index})
        return True

    sample = spec.get("sample")
    if sample:
        # a seeded random subset of n items: records in a seeded random order until n are kept (a drawn record that
        # is rejected is replaced by the next), then the kept ones in the file's order; limit applies first
        records = list(records)
        first: dict[str, int] = {}
        for k, record in enumerate(records):
            if isinstance(record, RawItem) and record.item_id is not None and str(record.item_id):
                first.setdefault(str(record.item_id), k)
        listed.update(first)
        eligible = np.array(sorted(first.values()), dtype=int)
        order = eligible[seeded_rng(int(sample.get("seed", 0)), "items sample", dataset).permutation(len(eligible))]
        want = int(sample["n"])
        if want > len(eligible):
            log.warning("datasets.%s.sample.n = %d but only %d distinct items: using all", dataset, want, len(eligible))
        kept = 0
        for k in logs.progress(order, total=min(want, len(order)), desc=f"items {dataset} (sample)", unit="item"):
            kept += process(records[int(k)], int(k))
            if kept >= want:
                break
        rows.sort(key=lambda r: r["_order"])
        log.info("items %s: sample of %d of %d distinct items (seed %s)", dataset, kept, len(eligible),
                 sample.get("seed", 0))
    else:
        for k, record in enumerate(logs.progress(records, total=total, desc=f"items {dataset}", unit="item")):
            process(record, k)
    for row in rows:
        del row["_order"]

    if extra_boxes is not None:
        box_report.unknown_ids = sorted(set(extra_boxes.by_item) - set(seen) - listed)
        log.info(
            "boxes file %s (%s): %s; %d line(s) for other datasets",
            boxes_path, boxes_kind, box_report.summary(), extra_boxes.other_datasets,
        )
    unused_overrides = sorted(set(overrides) - {r["item_id"] for r in rows})
    if unused_overrides:
        log.warning(
            "datasets.%s.task_type_overrides: %d ids match no kept item (e.g. %s)",
            dataset, len(unused_overrides), ", ".join(unused_overrides[:5]),
        )

    kinds = Counter(_reason_kind(r["reason"]) for r in rejects)
    detail = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
    log.info(
        "items %s: %d records, %d items kept, %d rejected%s",
        dataset, n_records, len(rows), len(rejects), f" ({detail})" if detail else "",
    )
    items_df = pd.DataFrame(rows, columns=ITEM_COLUMNS) if rows else tables.empty_frame(ITEM_COLUMNS)
    rejects_df = pd.DataFrame(rejects, columns=REJECT_COLUMNS) if rejects else tables.empty_frame(REJECT_COLUMNS)
    return items_df, rejects_df


def mapped_task_type(meta: Mapping[str, Any] | None, type_map: Mapping[str, Any] | None) -> str | None:
    """The task type ``task_type_map`` gives an item's metadata: the value at its dotted ``field`` looked up in
    its ``values`` (a list: the first of its elements named there); None where the map names nothing."""
    if not type_map:
        return None
    value: Any = meta or {}
    for key in str(type_map["field"]).split("."):
        if isinstance(value, str):
            try:  # nested metadata may be kept as JSON text
                value = json.loads(value)
            except ValueError:
                return None
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    values = type_map["values"]
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if str(v) in values:
            return values[str(v)]
    return None


def _check_item(
    record: RawItem,
    item_id: str,
    regions: list[Region],
    forced_type: str | None,
    overrides: Mapping[str, str],
    default_type: str,
    base_dir: Path,
) -> tuple[dict[str, Any], list[Image.Image]]:
    """The item's table fields and decoded images; ItemRejected with the first problem found."""
    if not isinstance(record.question, str) or not record.question.strip():
        raise ItemRejected("bad question: empty")
    if record.answer is None:
        raise ItemRejected("bad answer: missing")
    if record.answer_type not in ANSWER_TYPES:
        raise ItemRejected(f"bad answer_type: {record.answer_type!r} (known: {', '.join(ANSWER_TYPES)})")
    task_type = overrides.get(item_id) or forced_type or record.task_type or default_type
    if task_type not in TASK_TYPES:
        raise ItemRejected(f"bad task_type: {task_type!r} (known: {', '.join(TASK_TYPES)})")
    images = [load_image(src, base_dir) for src in record.images or []]
    if regions and not images:
        raise ItemRejected("bad region: the item has regions but no image")
    sizes = [(img.width, img.height) for img in images]
    checked = [
        {"label": str(r.label), "box": check_region(r, k, sizes), "image": int(r.image)} for k, r in enumerate(regions)
    ]
    try:
        meta = provenance.canonical_json(dict(record.meta or {}))
    except (TypeError, ValueError) as exc:
        raise ItemRejected(f"bad meta: {exc}") from None
    choices = [str(c) for c in record.choices] if record.choices is not None else None
    row = {
        "question": record.question,
        "choices": choices,
        "answer": str(record.answer),
        "answer_type": record.answer_type,
        "task_type": task_type,
        "regions": checked,
        "meta": meta,
    }
    return row, images


def write_items(
    items_df: pd.DataFrame,
    rejects_df: pd.DataFrame,
    items_path: str | Path,
    rejects_path: str | Path,
    provenance_record: Mapping[str, Any] | None = None,
) -> None:
    """Write the items and rejects tables with the stage's provenance."""
    tables.write_table(items_df, items_path, provenance_record, schema=ITEMS_SCHEMA)
    tables.write_table(rejects_df, rejects_path, provenance_record, schema=REJECTS_SCHEMA)


def run_stage(call: StageCall) -> None:
    """The ``items`` rule: build one dataset's items (``config``: ``dataset`` entry, ``seed``) and write both tables.

    Relative paths in the dataset entry resolve against the working directory
    (where Snakemake runs). Boxes made by a model come from input ``boxes``
    (the boxes stage's ``boxes/{d}.jsonl``).
    """
    dataset = call.wildcards["d"]
    spec = call.config["dataset"]
    boxes = call.paths("boxes") if "boxes" in call.inputs else []
    items_df, rejects_df = build_items(dataset, spec, call.config["seed"], call.results_dir, base_dir=Path.cwd(),
                                       boxes_path=boxes[0] if boxes else None)
    record = call.provenance(dataset=dataset, n_items=len(items_df), n_rejects=len(rejects_df))
    write_items(items_df, rejects_df, call.output("table"), call.output("rejects"), record)
