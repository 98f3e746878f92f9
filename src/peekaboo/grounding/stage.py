"""The boxes stage: evidence boxes for one dataset from a grounding VLM or an open-vocabulary detector.

``run_stage(call)`` (the stage contract, :mod:`peekaboo.stage`) reads the
dataset's records through its adapter as the items stage does (the entry's
``limit``; the first record of a repeated id; the images read by
:func:`peekaboo.images.load_image`, so in the pixels the items stage keeps),
asks the configured source about every image of every item, and writes
(``call.output``):

``boxes``     ``boxes/{d}.jsonl``: the accepted boxes in the box-file format
              (``peekaboo.datasets.boxes``), one line per item with at least one
              box, with ``source``, ``model`` and, for detectors, per-box ``score``;
``answers``   ``boxes/{d}.answers.parquet``: one row per request, what was asked
              and answered (:data:`ANSWERS_SCHEMA`);
``rejects``   ``boxes/{d}.rejects.parquet``: every box or answer that gave no
              evidence box, with its kind and reason (:data:`REJECTS_SCHEMA`);
``agreement`` ``boxes/{d}.agreement.parquet``: per item with boxes of its own
              (VisArgs, panels), the agreement of the source's boxes with them
              (:mod:`peekaboo.grounding.agreement`); empty for box-less datasets;
``summary``   ``boxes/{d}.summary.csv``: one row of counts and the dataset's
              agreement figures.

Items without an image, with an unreadable image, or on which the model
failed are rows of the answers table with the reason (and of the rejects
table); they get no boxes, and the items stage treats them as any item
without boxes. Relative dataset paths resolve against the working directory,
as for the items stage.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd
import pyarrow as pa

from .. import logs, schema, tables
from ..datasets.base import RawItem, Reject, get_adapter
from ..datasets.boxes import MODEL_KINDS, box_kind, box_line
from ..images import ItemRejected, load_image
from ..stage import StageCall
from . import agreement
from .requests import Outcome, Request

log = logs.get_logger("boxes")

ANSWERS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("image", pa.int32()),  # which of the item's images (null: the item has none)
        ("n_images", pa.int32()),
        ("source_line", pa.int64()),
        ("kind", pa.string()),  # vlm or detector
        ("model", pa.string()),
        ("asked", pa.string()),  # the prompt (vlm) or the phrases joined by "; " (detector)
        ("phrases", pa.list_(pa.string())),  # detector
        ("answer", pa.string()),  # the decoded answer with its special tokens (vlm), the detections as JSON
        ("status", pa.string()),  # ok (boxes accepted), no boxes, skipped (no image, unreadable, no phrase), failed
        ("n_boxes", pa.int32()),
        ("n_rejects", pa.int32()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("resized_width", pa.int64()),  # as the VLM's processor resized the image
        ("resized_height", pa.int64()),
        ("coordinates", pa.string()),  # the space the boxes were written in (norm1000, resized pixels, pixels)
        ("error", pa.string()),
    ]
)
REJECTS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("image", pa.int32()),
        ("box", pa.int32()),  # the box's number in the answer (null: the whole answer or request)
        ("kind", pa.string()),  # grounding.coords.REJECT_KINDS
        ("reason", pa.string()),
        ("fragment", pa.string()),  # the part of the answer it was read from
    ]
)
AGREEMENT_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("n_human", pa.int32()),
        ("n_predicted", pa.int32()),
        ("n_matched", pa.int32()),
        ("recall_50", pa.float64()),
        ("precision_50", pa.float64()),
        ("mean_best_iou", pa.float64()),
        ("union_iou", pa.float64()),
    ]
)


def make_source(entry: Mapping[str, Any], where: str, device: str | None = None):
    """The loaded source of a ``boxes`` entry of kind vlm or detector (absent keys take the schema's defaults)."""
    kind = box_kind(entry)
    if kind in MODEL_KINDS:
        entry = schema.definition("evidence_boxes", entry, where=where)
    if kind == "vlm":
        from .vlm import VlmSource

        return VlmSource(entry, where, device)
    if kind == "detector":
        from .detector import DetectorSource

        return DetectorSource(entry, where, device)
    raise ValueError(f"{where}: the boxes stage makes boxes of kind vlm or detector, not {kind!r}")


class _Records:
    """The dataset's items as the stage grounds them, and the human boxes to compare with."""

    def __init__(self, dataset: str, spec: Mapping[str, Any], seed: int, base_dir: Path):
        self.dataset = dataset
        self.adapter = get_adapter(dataset, spec, seed=seed, base_dir=base_dir)
        self.limit = spec["limit"]
        self.base_dir = base_dir
        self.human: dict[str, list[tuple[list[float], int]]] = {}
        self.order: dict[str, int] = {}  # item id -> its place among the grounded items
        self.skipped: list[Outcome] = []  # requests that never reached the model, with the reason
        self.counts = {"records": 0, "rejected records": 0, "repeated ids": 0, "items": 0,
                       "items with a bad own box": 0}

    def total(self) -> int:
        count = self.adapter.count()
        return min(count, self.limit) if self.limit else count

    def requests(self) -> Iterator[Request]:
        records = self.adapter.records()
        if self.limit:
            records = itertools.islice(records, self.limit)  # the first N records, as the items stage takes
        seen: set[str] = set()
        for record in records:
            self.counts["records"] += 1
            if not isinstance(record, RawItem) or not str(record.item_id or "").strip():
                self.counts["rejected records"] += 1  # the items stage rejects these with the reason
                if isinstance(record, Reject):
                    log.info("record %s (line %s) rejected by the adapter: %s", record.item_id, record.source_line,
                             record.reason)
                continue
            item_id = str(record.item_id)
            if item_id in seen:
                self.counts["repeated ids"] += 1
                log.warning("item %s (line %s): repeated id, only its first record is grounded", item_id,
                            record.source_line)
                continue
            seen.add(item_id)
            self.order[item_id] = len(self.order)
            self.counts["items"] += 1
            sources = list(record.images or [])
            if not sources:
                self.skipped.append(Outcome(item_id, None, 0, record.source_line).skip(
                    "no image", "the item has no image to ground"))
                continue
            images = []
            for k, source in enumerate(sources):
                try:
                    images.append(load_image(source, self.base_dir))
                except ItemRejected as exc:  # missing or unreadable: the items stage rejects the item too
                    images.append(None)
                    self.skipped.append(Outcome(item_id, k, len(sources), record.source_line).skip(
                        "unreadable image", str(exc)))
            if all(image is not None for image in images):
                self._keep_human(item_id, record, [image.size for image in images])
            for k, image in enumerate(images):
                if image is not None:
                    yield Request(item_id, k, len(images), record.question, image, record.source_line)

    def _keep_human(self, item_id: str, record: RawItem, sizes: list[tuple[int, int]]) -> None:
        """The item's own boxes for the agreement, when the items stage will keep them (all inside their image)."""
        boxes = []
        for region in record.regions or []:
            try:
                x0, y0, x1, y1 = (float(v) for v in region.box)
                image = int(region.image)
                width, height = sizes[image] if image >= 0 else sizes[len(sizes)]  # no index from the end
            except (TypeError, ValueError, IndexError):
                self.counts["items with a bad own box"] += 1
                return
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                self.counts["items with a bad own box"] += 1  # the items stage rejects the item
                return
            boxes.append(([x0, y0, x1, y1], image))
        if boxes:
            self.human[item_id] = boxes


def _batches(requests: Iterator[Request], size: int) -> Iterator[list[Request]]:
    while True:
        batch = list(itertools.islice(requests, size))
        if not batch:
            return
        yield batch


def answers_frame(outcomes: list[Outcome], kind: str, model: str) -> pd.DataFrame:
    rows = [
        {
            "item_id": o.item_id, "image": o.image_index, "n_images": o.n_images, "source_line": o.source_line,
            "kind": kind, "model": model, "asked": o.asked or None, "phrases": o.phrases, "answer": o.answer,
            "status": o.status, "n_boxes": len(o.boxes), "n_rejects": len(o.rejects), "width": o.width,
            "height": o.height, "resized_width": o.resized[0] if o.resized else None,
            "resized_height": o.resized[1] if o.resized else None, "coordinates": o.coordinates, "error": o.error,
        }
        for o in outcomes
    ]
    return pd.DataFrame(rows, columns=ANSWERS_SCHEMA.names) if rows else tables.empty_frame(ANSWERS_SCHEMA.names)


def rejects_frame(outcomes: list[Outcome]) -> pd.DataFrame:
    rows = [
        {"item_id": o.item_id, "image": o.image_index, "box": r.box, "kind": r.kind, "reason": r.detail,
         "fragment": r.fragment}
        for o in outcomes
        for r in o.rejects
    ]
    return pd.DataFrame(rows, columns=REJECTS_SCHEMA.names) if rows else tables.empty_frame(REJECTS_SCHEMA.names)


def item_boxes(outcomes: list[Outcome]) -> dict[str, list[dict[str, Any]]]:
    """Each item's accepted boxes over its images, items in the order they were asked."""
    out: dict[str, list[dict[str, Any]]] = {}
    for o in outcomes:
        if o.boxes:
            out.setdefault(o.item_id, []).extend(o.boxes)
    return out


def compare(human: Mapping[str, list[tuple[list[float], int]]],
            boxes: Mapping[str, list[dict[str, Any]]]) -> list[agreement.ItemAgreement]:
    """Agreement of the made boxes with every item's human boxes (items in the human boxes' order)."""
    return [
        agreement.item_agreement(item_id, regions, [(b["box"], b["image"]) for b in boxes.get(item_id, [])])
        for item_id, regions in human.items()
    ]


def write_jsonl(path: Path, dataset: str, boxes: Mapping[str, list[dict[str, Any]]], **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for item_id, item_boxes_ in boxes.items():
            fh.write(box_line(dataset, item_id, item_boxes_, **extra) + "\n")
    tmp.replace(path)


def run_stage(call: StageCall) -> None:
    """The boxes stage for one dataset (``call.wildcards['d']``); see the module doc."""
    import torch

    from ..devices import claim_device

    from ..models.identity import identify, resolve_path

    dataset = call.wildcards["d"]
    spec = call.config["dataset"]
    entry = spec["boxes"]
    kind = box_kind(entry)
    where = f"datasets.{dataset}.boxes"
    if kind not in MODEL_KINDS:
        raise ValueError(f"{where}: kind {kind!r} needs no boxes stage (it runs for kind vlm or detector)")
    # the weights actually loaded, whatever the config says, go into the provenance
    identity = identify(resolve_path(entry["model"]["source"], Path.cwd()), entry["model"]["revision"],
                        where=f"{where}.model.source")
    torch.set_num_threads(max(1, int(call.threads)))
    records = _Records(dataset, spec, int(call.config["seed"]), Path.cwd())
    outcomes: list[Outcome] = []
    n_gpus = int(call.resources.get("gpu", 1) or 0)
    # claim the job's GPUs before anything initialises CUDA; released when the job ends, however it ends
    with claim_device(count=n_gpus) as visible:
        log.info("device: %s", f"CUDA_VISIBLE_DEVICES={visible}" if visible else "as found")
        source = make_source(entry, where)
        bar = logs.progress(total=records.total(), desc=f"boxes {dataset}", unit="item")
        done: set[str] = set()
        for batch in _batches(records.requests(), source.batch_size):
            outcomes.extend(source.run(batch))
            new = {r.item_id for r in batch} - done
            done |= new
            bar.update(len(new))
        bar.update(records.counts["items"] - bar.n)  # items with nothing to ask
        bar.close()
    # requests that never reached the model join the others, in record order
    outcomes = sorted(outcomes + records.skipped, key=lambda o: (
        records.order[o.item_id], -1 if o.image_index is None else o.image_index))
    found = item_boxes(outcomes)
    compared = compare(records.human, found)
    figures = agreement.summarise(compared)

    prov = call.provenance(dataset=dataset, kind=kind, model_id=source.model_id, model_revision=identity.revision)
    write_jsonl(call.output("boxes"), dataset, found, source=kind, model=source.model_id)
    tables.write_table(answers_frame(outcomes, kind, source.model_id), call.output("answers"), prov,
                       schema=ANSWERS_SCHEMA)
    rejects = rejects_frame(outcomes)
    tables.write_table(rejects, call.output("rejects"), prov, schema=REJECTS_SCHEMA)
    rows = [a.row() for a in compared]
    frame = pd.DataFrame(rows, columns=AGREEMENT_SCHEMA.names) if rows else tables.empty_frame(AGREEMENT_SCHEMA.names)
    tables.write_table(frame, call.output("agreement"), prov, schema=AGREEMENT_SCHEMA)
    n_asked = len({o.item_id for o in outcomes})
    summary = {
        "dataset": dataset, "kind": kind, "model": source.model_id, "model_revision": identity.revision,
        "n_items": n_asked, "n_requests": len(outcomes), "n_items_with_boxes": len(found),
        "n_boxes": sum(len(v) for v in found.values()),
        "boxes_per_item": sum(len(v) for v in found.values()) / n_asked if n_asked else None,
        "n_rejects": len(rejects), **figures,
    }
    out = call.output("summary")
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([summary]).to_csv(out, index=False, lineterminator="\n")
    kinds = rejects["kind"].value_counts().to_dict() if len(rejects) else {}
    log.info("boxes %s (%s, %s): %d of %d items got %d boxes; %d rejects (%s); records: %s", dataset, kind,
             source.model_id, len(found), n_asked, summary["n_boxes"], len(rejects),
             ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "none",
             ", ".join(f"{k} {v}" for k, v in records.counts.items()))
    if compared:
        log.info("agreement with the dataset's own boxes on %d items: recall@0.5 %.3f, mean best IoU %.3f, "
                 "mean union IoU %.3f, %.2f human and %.2f model boxes per item", figures["n_items_compared"],
                 figures["recall_50"], figures["mean_best_iou"], figures["mean_union_iou"],
                 figures["human_boxes_per_item"], figures["predicted_boxes_per_item"])
