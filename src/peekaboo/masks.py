"""The masks stage: for every item, the images the model is shown with evidence hidden.

Variants (``masks.variants`` in the config):

- ``base``: the original image, once per item, fill ``none``;
- ``drop:k`` (``drop``): region k hidden;
- ``drop:all`` (``drop_all``): every region hidden;
- ``keep:evidence`` (``keep_evidence``): everything but the regions hidden;
- ``ctrl:k`` (``control``): a box of region k's size, inside the same image,
  overlapping no region, hidden as a control. Its place is drawn with
  ``seeding.rng(masks_seed, "ctrl", dataset, item_id, k)`` (``control_attempts``
  random tries, then an exact scan of every position); when no place exists
  the variant is skipped and the reason recorded.

Each hidden variant comes in every fill of ``masks.fills``: black, gray, mean
(the image's mean colour), blur (Gaussian, ``blur_radius``) or noise (gray plus
seeded Gaussian noise of ``noise_std``). Boxes are hidden on whole pixels: a
box covers every pixel it touches (floor of the start, ceiling of the end), so
no sliver of the evidence stays visible; the recorded ``hidden_boxes`` are
those pixel boxes. ``area_fraction`` is the hidden pixel count (union of the
boxes) over the pixel count of all the item's images.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageFilter

from . import logs, schema, seeding, tables
from .cells import as_list, parse_meta
from .images import write_png
from .stage import StageCall

log = logs.get_logger("masks")

FILLS = ("black", "gray", "mean", "blur", "noise")
VARIANT_KINDS = ("drop", "drop_all", "keep_evidence", "control")
GRAY = 128

MASKS_SCHEMA = pa.schema(
    [
        ("mask_id", pa.string()),
        ("item_id", pa.string()),
        ("dataset", pa.string()),
        ("variant", pa.string()),
        ("fill", pa.string()),
        ("region", pa.int64()),
        ("hidden_boxes", pa.list_(pa.list_(pa.float64()))),
        ("hidden_images", pa.list_(pa.int32())),
        ("area_fraction", pa.float64()),
        ("image", pa.string()),
        ("images", pa.list_(pa.string())),
    ]
)
SKIPPED_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("variant", pa.string()), ("fill", pa.string()), ("reason", pa.string())]
)
MASK_COLUMNS = MASKS_SCHEMA.names
SKIPPED_COLUMNS = SKIPPED_SCHEMA.names

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 on whole pixels, half-open


def masks_seed(seed: int, masks_cfg: Mapping[str, Any]) -> int:
    """The seed every mask draw derives from: the run's seed combined with ``masks.seed``."""
    return seeding.derive_seed(seed, "masks", int(masks_cfg["seed"]))


def mask_id(item_id: str, variant: str, fill: str) -> str:
    return f"{item_id}|{variant}|{fill}"


# ----------------------------------------------------------------------------
# geometry


def pixel_rect(box: Sequence[float], width: int, height: int) -> Rect:
    """The whole pixels a box touches, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        max(0, min(width, math.floor(x0))),
        max(0, min(height, math.floor(y0))),
        max(0, min(width, math.ceil(x1))),
        max(0, min(height, math.ceil(y1))),
    )


def rects_overlap(a: Rect, b: Rect) -> bool:
    """True when two half-open pixel boxes share at least one pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def rect_mask(rects: Iterable[Rect], width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = True
    return mask


def complement_rects(rects: Sequence[Rect], width: int, height: int) -> list[Rect]:
    """Disjoint boxes covering the image minus the union of ``rects`` (row bands, merged downwards)."""
    xs = sorted({0, width, *(r[0] for r in rects), *(r[2] for r in rects)})
    ys = sorted({0, height, *(r[1] for r in rects), *(r[3] for r in rects)})
    covered = rect_mask(rects, width, height)
    out: list[Rect] = []
    open_runs: dict[tuple[int, int], Rect] = {}  # (x0, x1) -> rect still growing downwards
    for y0, y1 in zip(ys[:-1], ys[1:]):
        if y1 <= y0:
            continue
        runs = []
        start = None
        for x0, x1 in zip(xs[:-1], xs[1:]):
            free = x1 > x0 and not covered[y0, x0]
            if free and start is None:
                start = x0
            if not free and start is not None:
                runs.append((start, x0))
                start = None
        if start is not None:
            runs.append((start, width))
        grown = {}
        for run in runs:
            prev = open_runs.pop(run, None)
            grown[run] = (run[0], prev[1], run[1], y1) if prev else (run[0], y0, run[1], y1)
        out.extend(open_runs.values())  # runs that did not continue into this band are finished
        open_runs = grown
    out.extend(open_runs.values())
    return sorted(out, key=lambda r: (r[1], r[0]))


def find_control_rect(
    size: tuple[int, int],
    evidence: Sequence[Rect],
    image_size: tuple[int, int],
    rng: np.random.Generator,
    attempts: int,
) -> Rect | None:
    """A ``size`` box inside the image sharing no pixel with ``evidence``; None when there is no such place.

    ``attempts`` uniform random placements first; then every position is
    checked at once (summed-area table) and one valid position is drawn, so a
    place is found whenever one exists.
    """
    w, h = size
    width, height = image_size
    if w > width or h > height or w < 1 or h < 1:
        return None
    for _ in range(attempts):
        x = int(rng.integers(0, width - w + 1))
        y = int(rng.integers(0, height - h + 1))
        cand = (x, y, x + w, y + h)
        if not any(rects_overlap(cand, e) for e in evidence):
            return cand
    occupied = rect_mask(evidence, width, height).astype(np.int32)
    sat = np.zeros((height + 1, width + 1), dtype=np.int64)
    sat[1:, 1:] = occupied.cumsum(0).cumsum(1)
    window = sat[h:, w:] - sat[:-h, w:] - sat[h:, :-w] + sat[:-h, :-w]  # evidence pixels under each top-left
    ys, xs = np.nonzero(window == 0)
    if len(ys) == 0:
        return None
    i = int(rng.integers(0, len(ys)))
    x, y = int(xs[i]), int(ys[i])
    return (x, y, x + w, y + h)


# ----------------------------------------------------------------------------
# fills


class _Filler:
    """Fills hidden pixels of one item's images; caches each image's blur and mean."""

    def __init__(self, images: list[Image.Image], masks_cfg: Mapping[str, Any], seed: int, dataset: str, item_id: str):
        self.arrays = [np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images]
        self.images = images
        self.cfg = masks_cfg
        self.seed = seed
        self.dataset = dataset
        self.item_id = item_id
        self._blurred: dict[int, np.ndarray] = {}

    def fill(self, j: int, hidden: np.ndarray, fill: str, variant: str) -> Image.Image:
        out = self.arrays[j].copy()
        if fill == "black":
            out[hidden] = 0
        elif fill == "gray":
            out[hidden] = GRAY
        elif fill == "mean":
            mean = self.arrays[j].reshape(-1, 3).mean(axis=0)
            out[hidden] = np.floor(mean + 0.5).astype(np.uint8)
        elif fill == "blur":
            if j not in self._blurred:
                radius = float(self.cfg["blur_radius"])
                self._blurred[j] = np.asarray(self.images[j].filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8)
            out[hidden] = self._blurred[j][hidden]
        elif fill == "noise":
            std = float(self.cfg["noise_std"])
            rng = seeding.rng(self.seed, "noise", self.dataset, self.item_id, variant, j)
            noise = rng.standard_normal((int(hidden.sum()), 3), dtype=np.float32) * std + GRAY
            out[hidden] = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"masks.fills: unknown fill '{fill}' (known: {', '.join(FILLS)})")
        return Image.fromarray(out, mode="RGB")


# ----------------------------------------------------------------------------
# the stage


@dataclass
class _Variant:
    name: str
    region: int | None
    hidden: dict[int, list[Rect]]  # image index -> pixel boxes hidden there
    skip_reason: str | None = None


def control_candidates(meta: Any) -> list[tuple[int, Rect | Sequence[float]]]:
    """Places an adapter proposes for control masks (``meta.control_candidates``: [{box, image}]).

    ``panels`` proposes its panel boxes, so that a control hides a whole
    non-evidence panel, as a panel is hidden for the evidence, rather than
    parts of two.
    """
    try:
        meta = parse_meta(meta)
    except (ValueError, TypeError):
        return []
    out = []
    for cand in meta.get("control_candidates") or []:
        out.append((int(cand.get("image", 0)), cand["box"]))
    return out


def _plan(
    item_id: str,
    regions: list[dict[str, Any]],
    sizes: list[tuple[int, int]],
    masks_cfg: Mapping[str, Any],
    seed: int,
    dataset: str,
    candidates: Sequence[tuple[int, Sequence[float]]] = (),
) -> list[_Variant]:
    """The hidden variants of one item, in ``masks.variants`` order, with their pixel boxes.

    A control box is drawn among ``candidates`` of the region's size that
    overlap no evidence when there are any, else anywhere in the image.
    """
    rects = [(int(r["image"]), pixel_rect(r["box"], *sizes[int(r["image"])])) for r in regions]
    evidence_by_image: dict[int, list[Rect]] = {}
    for j, rect in rects:
        evidence_by_image.setdefault(j, []).append(rect)
    out: list[_Variant] = []
    for kind in masks_cfg["variants"]:
        if kind == "drop":
            out.extend(_Variant(f"drop:{k}", k, {j: [rect]}) for k, (j, rect) in enumerate(rects))
        elif kind == "drop_all":
            # with one region drop:all is drop:0: skip it rather than generate the same trace twice
            reason = "the item has one region: drop:all would repeat drop:0" if len(rects) == 1 else None
            out.append(_Variant("drop:all", None, {j: list(rs) for j, rs in sorted(evidence_by_image.items())}, reason))
        elif kind == "keep_evidence":
            hidden = {}
            for j, (width, height) in enumerate(sizes):
                comp = complement_rects(evidence_by_image.get(j, []), width, height)
                if comp:
                    hidden[j] = comp
            reason = None if hidden else "the evidence covers every image: nothing to hide"
            out.append(_Variant("keep:evidence", None, hidden, reason))
        elif kind == "control":
            for k, (j, rect) in enumerate(rects):
                size = (rect[2] - rect[0], rect[3] - rect[1])
                rng = seeding.rng(seed, "ctrl", dataset, item_id, k)
                proposed = [
                    rect
                    for cj, box in candidates
                    if cj == j
                    for rect in [pixel_rect(box, *sizes[j])]
                    if (rect[2] - rect[0], rect[3] - rect[1]) == size
                    and not any(rects_overlap(rect, e) for e in evidence_by_image[j])
                ]
                if proposed:
                    found = proposed[int(rng.integers(0, len(proposed)))]
                else:
                    attempts = int(masks_cfg["control_attempts"])
                    found = find_control_rect(size, evidence_by_image[j], sizes[j], rng, attempts)
                if found is None:
                    width, height = sizes[j]
                    reason = (
                        f"no place for a {size[0]}x{size[1]} control box in image {j} ({width}x{height}) "
                        f"that overlaps no evidence region"
                    )
                    out.append(_Variant(f"ctrl:{k}", k, {}, reason))
                else:
                    out.append(_Variant(f"ctrl:{k}", k, {j: [found]}))
        else:
            raise ValueError(f"masks.variants: unknown variant '{kind}' (known: {', '.join(VARIANT_KINDS)})")
    return out


def build_masks(
    items_df: pd.DataFrame,
    masks_cfg: Mapping[str, Any] | None,
    results_dir: str | Path,
    dataset: str,
    seed: int,
    enabled: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Masked images under ``{results_dir}/masks/{dataset}/images/`` (emptied first) and their table.

    ``masks_cfg`` is the config's ``masks`` section (absent keys take the
    schema's defaults); ``seed`` is the run's seed; draws use
    ``masks_seed(seed, masks_cfg)``. ``enabled=False`` (the dataset's
    ``masks: false``) gives only ``base`` rows and reads neither.
    Returns (masks, skipped).
    """
    results_dir = Path(results_dir)
    masks_cfg = schema.section("masks", masks_cfg)  # checks the fills and variants too
    fills = list(masks_cfg["fills"]) if enabled else []
    mseed = masks_seed(seed, masks_cfg)
    out_rel = PurePosixPath("masks") / dataset / "images"
    out_dir = results_dir / out_rel
    if out_dir.exists():
        shutil.rmtree(out_dir)  # only this stage writes here; stale images must not survive
    out_dir.mkdir(parents=True)

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    n_images = 0
    for item in logs.progress(
        items_df.itertuples(index=False), total=len(items_df), desc=f"masks {dataset}", unit="item"
    ):
        item_id = str(item.item_id)
        image_paths = [str(p) for p in as_list(item.images)]
        regions = as_list(item.regions)
        rows.append(
            {
                "mask_id": mask_id(item_id, "base", "none"),
                "item_id": item_id,
                "dataset": dataset,
                "variant": "base",
                "fill": "none",
                "region": None,
                "hidden_boxes": [],
                "hidden_images": [],
                "area_fraction": 0.0,
                "image": item.image if isinstance(item.image, str) else None,
                "images": image_paths,
            }
        )
        if not enabled or not regions or not image_paths:
            continue
        try:
            images = []
            for p in image_paths:
                with Image.open(results_dir / p) as opened:
                    images.append(opened.convert("RGB"))
        except Exception as exc:  # an unreadable item image costs that item's masks, not the stage
            reason = f"cannot read item image: {type(exc).__name__}: {exc}"
            log.warning("item %s: %s", item_id, reason)
            skipped.extend({"item_id": item_id, "variant": "*", "fill": f, "reason": reason} for f in fills)
            continue
        sizes = [img.size for img in images]
        total_pixels = sum(w * h for w, h in sizes)
        variants = _plan(
            item_id, [dict(r) for r in regions], sizes, masks_cfg, mseed, dataset,
            candidates=control_candidates(getattr(item, "meta", None)),
        )
        filler = _Filler(images, masks_cfg, mseed, dataset, item_id)
        for variant in variants:
            if variant.skip_reason:
                skipped.extend(
                    {"item_id": item_id, "variant": variant.name, "fill": f, "reason": variant.skip_reason}
                    for f in fills
                )
                continue
            hidden_masks = {j: rect_mask(rs, *sizes[j]) for j, rs in variant.hidden.items()}
            hidden_pixels = sum(int(m.sum()) for m in hidden_masks.values())
            boxes = [[float(v) for v in r] for j in sorted(variant.hidden) for r in variant.hidden[j]]
            box_images = [j for j in sorted(variant.hidden) for _ in variant.hidden[j]]
            tag = variant.name.replace(":", "-")
            for fill in fills:
                paths = list(image_paths)
                for j, hidden in sorted(hidden_masks.items()):
                    stem = PurePosixPath(image_paths[j]).stem
                    name = f"{stem}__{tag}__{fill}.png"
                    write_png(filler.fill(j, hidden, fill, variant.name), out_dir / name)
                    paths[j] = str(out_rel / name)
                    n_images += 1
                rows.append(
                    {
                        "mask_id": mask_id(item_id, variant.name, fill),
                        "item_id": item_id,
                        "dataset": dataset,
                        "variant": variant.name,
                        "fill": fill,
                        "region": variant.region,
                        "hidden_boxes": boxes,
                        "hidden_images": box_images,
                        "area_fraction": hidden_pixels / total_pixels,
                        "image": paths[min(hidden_masks)],
                        "images": paths,
                    }
                )
    by_reason: dict[str, int] = {}
    for s in skipped:
        kind = s["reason"].split(" in image")[0].split(":")[0]
        by_reason[kind] = by_reason.get(kind, 0) + 1
    log.info(
        "masks %s: %d items, %d mask rows, %d masked images written, %d skipped%s",
        dataset, len(items_df), len(rows), n_images, len(skipped),
        f" ({'; '.join(f'{k}: {n}' for k, n in sorted(by_reason.items()))})" if skipped else "",
    )
    masks_df = pd.DataFrame(rows, columns=MASK_COLUMNS) if rows else tables.empty_frame(MASK_COLUMNS)
    masks_df["region"] = masks_df["region"].astype("Int64")  # nullable: None for base, drop:all, keep:evidence
    skipped_df = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS) if skipped else tables.empty_frame(SKIPPED_COLUMNS)
    return masks_df, skipped_df


def write_masks(
    masks_df: pd.DataFrame,
    skipped_df: pd.DataFrame,
    masks_path: str | Path,
    skipped_path: str | Path,
    provenance_record: Mapping[str, Any] | None = None,
) -> None:
    tables.write_table(masks_df, masks_path, provenance_record, schema=MASKS_SCHEMA)
    tables.write_table(skipped_df, skipped_path, provenance_record, schema=SKIPPED_SCHEMA)


def run_stage(call: StageCall) -> None:
    """The ``masks`` rule: read one dataset's items, build its masked images, write both tables.

    ``config``: ``enabled`` (the dataset's ``masks``) and, only when enabled,
    ``masks`` and ``seed``: a dataset without masks does not re-run when the
    masks section changes.
    """
    dataset = call.wildcards["d"]
    enabled = bool(call.config["enabled"])
    masks_cfg = call.config["masks"] if enabled else None
    seed = call.config["seed"] if enabled else 0
    items_df = tables.read_table(call.path("items_table"))
    masks_df, skipped_df = build_masks(items_df, masks_cfg, call.results_dir, dataset, seed, enabled=enabled)
    record = call.provenance(dataset=dataset, n_masks=len(masks_df), n_skipped=len(skipped_df))
    write_masks(masks_df, skipped_df, call.output("table"), call.output("skipped"), record)
