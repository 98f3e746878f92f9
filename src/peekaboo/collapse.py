"""Evidence collapse: how much of a step's image attention rests on the evidence.

Per (trace, step), from the trace store's per-token arrays:

- ``image_share``: attention on image tokens, head mean, averaged over the
  configured ``collapse.layers`` and the step's tokens;
- ``evidence_share``: the part of that image attention that falls on the
  item's evidence regions (``region_mass`` already weights each image token by
  the fraction of its box inside a region; several regions are combined as
  their union);
- ``lift``: evidence share over the evidence's share of the image area (1 is
  what attention spread evenly over the image would give);
- ``topk_overlap``: of the ``collapse.top_k`` most attended image tokens (the
  per-patch map ``image_attn``), the mean fraction of their boxes inside the
  evidence.

Per trace: the first and last step's value, the relative drop
``(first - last) / first`` and the area under the curve over normalised step
position, for each measure; and for the two vision measures (``image_share``,
``evidence_share``) the same over the reasoning steps alone, with the answer
step kept apart (``*_reasoning_first``, ``*_reasoning_last``,
``*_reasoning_drop``, ``*_answer``): the loss of evidence over the reasoning
that the collapse findings summarise. Attention sinks (image tokens that soak up
attention whatever the content) are detected from the per-patch maps and can be
excluded; every table says whether they were. See docs/analysis.md for the
exact definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import features as feats
from . import schema
from .cells import is_missing, json_list
from .logs import get_logger, progress
from .seeding import rng as seeded_rng
from .stage import StageCall
from .tables import read_table, write_table
from .tracestore import open_traces, read_sidecars

log = get_logger("collapse")

MEASURES = ("image_share", "evidence_share", "lift", "topk_overlap")
TRAJECTORY_STATS = ("first", "last", "drop", "auc")
# the two vision measures whose loss over the reasoning is a finding: first and last reasoning step, the relative
# drop between them (reasoning steps only: the answer step is kept apart) and the answer step's own value
REASONING_MEASURES = ("image_share", "evidence_share", "evidence_mass", "focus")
REASONING_STATS = ("reasoning_first", "reasoning_last", "reasoning_drop", "answer")
# the nulls of the reasoning measures (per-trace {null}_reasoning_first/_last/_drop): what a drop is judged against
#   image_share_null: the position-matched image share (other traces' image share at the same token positions)
#   evidence_share_null / evidence_mass_null: a same-area random region outside the evidence
#   evidence_share_map: the evidence share read from the same per-patch map as the random-region null
NULL_MEASURES = ("image_share_null", "evidence_share_null", "evidence_mass_null", "evidence_share_map")
NULL_STATS = ("reasoning_first", "reasoning_last", "reasoning_drop")

STEP_COLUMNS = [
    "trace_id", "model", "dataset", "item_id", "mask_id", "variant", "fill", "task_type",
    "step", "step_index", "n_steps", "position", "kind", "token_start", "token_end", "n_step_tokens",
    "image_share", "evidence_mass", "evidence_share", "evidence_area_fraction", "lift", "focus", "topk_overlap",
    "evidence_share_map", "evidence_share_null", "image_share_null",
    "sink_share", "sinks_excluded", "note",
]
SINK_COLUMNS = [
    "model", "dataset", "patch", "n_steps", "step_fraction", "n_traces", "trace_fraction",
    "mean_share", "mean_ratio_to_median", "is_sink", "excluded", "ratio", "min_fraction",
]
MAP_COLUMNS = [
    "model", "dataset", "item_id", "trace_id", "variant", "image", "width", "height",
    "step", "step_index", "kind", "step_text", "patch", "x0", "y0", "x1", "y1",
    "share", "evidence_weight", "is_sink", "sinks_excluded", "evidence_boxes",
]

# How many traces are read from the store at a time (a block of Zarr chunks).
READ_BLOCK = 16


class CollapseError(ValueError):
    """The collapse inputs or configuration are unusable; the message names the key or item."""


# ----------------------------------------------------------------------------- geometry


def union_area(boxes: Sequence[Sequence[float]]) -> float:
    """Area of the union of axis-aligned boxes ``[x0, y0, x1, y1]`` (coordinate compression)."""
    boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    if not boxes:
        return 0.0
    xs = sorted({b[0] for b in boxes} | {b[2] for b in boxes})
    ys = sorted({b[1] for b in boxes} | {b[3] for b in boxes})
    area = 0.0
    for xa, xb in zip(xs[:-1], xs[1:]):
        for ya, yb in zip(ys[:-1], ys[1:]):
            if any(b[0] <= xa and b[2] >= xb and b[1] <= ya and b[3] >= yb for b in boxes):
                area += (xb - xa) * (yb - ya)
    return area


def boxes_overlap(boxes: Sequence[Sequence[float]]) -> bool:
    """Whether any two boxes share a positive area."""
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                return True
    return False


@dataclass
class Evidence:
    """An item's evidence: region boxes (pixels of image ``images[k]``) and derived patch weights."""

    boxes: list[tuple[float, float, float, float]]
    images: list[int]
    area_fraction: float = float("nan")
    overlapping: bool = False
    union_weight: np.ndarray | None = None  # per patch: fraction of its box inside the evidence union
    sum_weight: np.ndarray | None = None  # per patch: sum over regions of the fraction inside each
    null_weights: np.ndarray | None = None  # [draw, patch]: fraction of each patch inside a random same-area region

    @property
    def empty(self) -> bool:
        return not self.boxes


def item_evidence(regions: Any) -> Evidence:
    """The evidence regions of an item: every annotated region (``items.regions``)."""
    boxes, images = [], []
    for region in json_list(regions):
        box = region.get("box") if isinstance(region, Mapping) else None
        if box is None or len(box) != 4:
            continue
        boxes.append(tuple(float(v) for v in box))
        image = region.get("image")
        images.append(0 if is_missing(image) else int(image))
    return Evidence(boxes=boxes, images=images)


def attach_patch_weights(
    evidence: Evidence,
    patch_boxes: np.ndarray,
    patch_image: np.ndarray | None,
    width: float | None = None,
    height: float | None = None,
) -> Evidence:
    """Fill in per-patch evidence weights and the evidence area fraction.

    A patch only counts for regions of its own image. The area fraction is the
    union area of the evidence over the total area of the item's images; image
    areas come from the items table for the primary image and from the extent
    of the patch boxes otherwise (they tile the image in original pixels).
    """
    from .geometry import region_weights

    n = len(patch_boxes)
    patch_image = np.zeros(n, dtype=int) if patch_image is None else np.asarray(patch_image, dtype=int)
    evidence.overlapping = False
    if evidence.empty or n == 0:
        evidence.union_weight = np.zeros(n)
        evidence.sum_weight = np.zeros(n)
        evidence.area_fraction = float("nan") if evidence.empty else evidence.area_fraction
        return evidence
    per_region = []
    for box, image in zip(evidence.boxes, evidence.images):
        w = np.asarray(region_weights(patch_boxes, box), dtype=float)
        per_region.append(np.where(patch_image == image, w, 0.0))
    sum_weight = np.sum(per_region, axis=0)
    union_weight = np.clip(sum_weight, 0.0, 1.0)
    for image in sorted(set(evidence.images)):
        boxes = [b for b, i in zip(evidence.boxes, evidence.images) if i == image]
        if boxes_overlap(boxes):
            evidence.overlapping = True
            # exact union per patch where boxes overlap: area of the clipped boxes' union
            for p in np.flatnonzero((patch_image == image) & (sum_weight > 0)):
                px0, py0, px1, py1 = (float(v) for v in patch_boxes[p])
                area = (px1 - px0) * (py1 - py0)
                if area <= 0:
                    continue
                clipped = [(max(b[0], px0), max(b[1], py0), min(b[2], px1), min(b[3], py1)) for b in boxes]
                union_weight[p] = union_area(clipped) / area
    evidence.sum_weight = sum_weight
    evidence.union_weight = union_weight

    areas = {}
    for image in sorted(set(patch_image.tolist()) | set(evidence.images)):
        sel = patch_boxes[patch_image == image]
        if image == 0 and width and height and not is_missing(width) and not is_missing(height):
            areas[image] = float(width) * float(height)
        elif len(sel):
            areas[image] = float((sel[:, 2].max() - sel[:, 0].min()) * (sel[:, 3].max() - sel[:, 1].min()))
    total = sum(areas.values())
    covered = sum(
        union_area([b for b, i in zip(evidence.boxes, evidence.images) if i == image]) for image in areas
    )
    evidence.area_fraction = covered / total if total > 0 else float("nan")
    return evidence


def null_region_weights(evidence: Evidence, patch_boxes: np.ndarray, patch_image: np.ndarray | None, n_draws: int,
                        rng: np.random.Generator) -> np.ndarray | None:
    """``[draw, patch]`` weights of ``n_draws`` random regions with the evidence's area, outside the evidence.

    Each draw moves every evidence box, same width and height, to a random
    place on its own image (the extent of that image's patch boxes) where it
    overlaps neither the evidence nor the draw's boxes placed before it, so a
    draw's union has the evidence's area. Places lie on a grid of half the
    median patch side (and the image's far edge), chosen uniformly among those
    free, so an evidence box that leaves room only at the image's edge still
    gets a null. A draw that finds no free place is dropped; None when none
    succeeds (or no draw is asked).
    """
    from .geometry import region_weights

    n = len(patch_boxes)
    if evidence.empty or n == 0 or n_draws <= 0:
        return None
    patch_image = np.zeros(n, dtype=int) if patch_image is None else np.asarray(patch_image, dtype=int)
    sides = np.concatenate([patch_boxes[:, 2] - patch_boxes[:, 0], patch_boxes[:, 3] - patch_boxes[:, 1]])
    step = max(float(np.median(sides[sides > 0])) / 2 if (sides > 0).any() else 1.0, 1e-6)
    extents = {}
    for image in set(evidence.images):
        sel = patch_boxes[patch_image == image]
        if len(sel):
            extents[image] = (sel[:, 0].min(), sel[:, 1].min(), sel[:, 2].max(), sel[:, 3].max())

    def grid(lo: float, hi: float) -> np.ndarray:
        return np.unique(np.append(np.arange(lo, hi, step), hi)) if hi >= lo else np.array([])

    def clear_of(gx: np.ndarray, gy: np.ndarray, w: float, h: float, boxes) -> np.ndarray:
        ok = np.ones(len(gx), dtype=bool)
        for t in boxes:  # a positive-area overlap with any of the boxes rules a place out
            ok &= ~((np.minimum(gx + w, t[2]) > np.maximum(gx, t[0])) & (np.minimum(gy + h, t[3]) > np.maximum(gy, t[1])))
        return ok

    # each box's candidate places clear of the evidence, once; a draw only checks its own earlier boxes
    places = []
    for box, image in zip(evidence.boxes, evidence.images):
        if image not in extents:
            return None
        ex0, ey0, ex1, ey1 = extents[image]
        w, h = box[2] - box[0], box[3] - box[1]
        gx, gy = (a.ravel() for a in np.meshgrid(grid(ex0, ex1 - w), grid(ey0, ey1 - h), indexing="ij"))
        ok = clear_of(gx, gy, w, h, [b for b, i in zip(evidence.boxes, evidence.images) if i == image])
        places.append((gx[ok], gy[ok], w, h))
    draws = []
    for _ in range(n_draws):
        placed: list[tuple[tuple[float, float, float, float], int]] = []
        for (gx, gy, w, h), image in zip(places, evidence.images):
            free = np.flatnonzero(clear_of(gx, gy, w, h, [b for b, i in placed if i == image]))
            if not len(free):
                break
            k = free[int(rng.integers(len(free)))]
            x, y = float(gx[k]), float(gy[k])
            placed.append(((x, y, x + w, y + h), image))
        if len(placed) != len(evidence.boxes):
            continue
        weights = np.zeros(n)
        for cand, image in placed:
            weights += np.where(patch_image == image, np.asarray(region_weights(patch_boxes, cand), dtype=float), 0.0)
        draws.append(np.clip(weights, 0.0, 1.0))
    return np.vstack(draws) if draws else None


def evidence_area_fraction(regions: Any, width: float, height: float) -> float:
    """Union area of an item's evidence over its (single) image's area."""
    evidence = item_evidence(regions)
    if evidence.empty or not width or not height:
        return float("nan")
    return union_area(evidence.boxes) / (float(width) * float(height))


# ----------------------------------------------------------------------------- layers


def resolve_layers(layers: Any, n_layers: int) -> np.ndarray:
    """Indices of the configured ``collapse.layers`` (``all`` or a list, negative from the end; ``select`` is chosen
    by ``select_layer`` first and counts as all here)."""
    if layers in (None, "all", "select"):
        return np.arange(n_layers)
    out = []
    for v in layers:
        i = int(v)
        if not -n_layers <= i < n_layers:
            raise CollapseError(f"collapse.layers: layer {i} does not exist (the traces have {n_layers} layers)")
        out.append(i % n_layers)
    return np.array(sorted(set(out)), dtype=int)


# ----------------------------------------------------------------------------- one trace


@dataclass
class TraceData:
    """The per-token arrays of one trace, padding removed."""

    trace_id: str
    entropy: np.ndarray  # [token]
    image_mass: np.ndarray  # [token, layer, head]
    region_mass: np.ndarray  # [token, layer, region]
    image_attn: np.ndarray | None  # [token, map_layer, patch]
    patch_box: np.ndarray  # [patch, 4]
    patch_image: np.ndarray | None  # [patch]
    n_tokens: int


@dataclass
class StepRaw:
    """Per-step reductions read once from the store; sink exclusion and corrections come later."""

    step: int
    kind: str
    token_start: int
    token_end: int
    n_tokens: int
    image_mass: float  # head mean, layer mean, token mean
    evidence_mass_sum: float  # region_mass summed over evidence regions, layer mean, token mean
    patch_map: np.ndarray | None  # [patch] token and map-layer mean of image_attn
    note: str = ""
    image_null: float = float("nan")  # position-matched image share: other traces' at the same token positions


def token_image_share(data: TraceData, layers: np.ndarray) -> np.ndarray:
    """Each generated token's image share (head and layer mean over ``layers``); NaN without image tokens."""
    img = data.image_mass.astype(np.float64)
    if not img.shape[1] or not len(data.patch_box):
        return np.full(len(img), np.nan)
    return img[:, layers, :].mean(axis=(1, 2))


def step_reductions(data: TraceData, spans: Sequence[tuple[int, str, int, int]], layers: np.ndarray,
                    evidence_regions: int) -> list[StepRaw]:
    """Average the per-token arrays over each step's tokens (spans are half-open token ranges).

    A trace without image tokens (a text-only question) has no attention on
    an image to measure: its image share is undefined (NaN), not zero, so that
    it never reads as a visually disengaged answer.
    """
    img_tok = token_image_share(data, layers)
    if evidence_regions > 0:
        reg = data.region_mass[:, layers, :evidence_regions].astype(np.float64)
        ev_tok = reg.mean(axis=1).sum(axis=1)
    else:
        ev_tok = np.full(len(img_tok), np.nan)
    attn = data.image_attn.astype(np.float64).mean(axis=1) if data.image_attn is not None else None
    out = []
    for step, kind, start, end in spans:
        s, e = max(0, int(start)), min(int(end), data.n_tokens)
        note = ""
        if start < 0 or end < 0:
            out.append(StepRaw(step, kind, int(start), int(end), 0, np.nan, np.nan, None, "no token span"))
            continue
        if e <= s:
            note = f"empty token span [{start}, {end}) within {data.n_tokens} tokens"
            out.append(StepRaw(step, kind, int(start), int(end), 0, np.nan, np.nan, None, note))
            continue
        if e < int(end):
            note = f"token span clipped to the trace's {data.n_tokens} tokens"
        pmap = np.nanmean(attn[s:e], axis=0) if attn is not None else None
        out.append(StepRaw(step, kind, int(start), int(end), e - s, float(np.nanmean(img_tok[s:e])),
                           float(np.nanmean(ev_tok[s:e])) if evidence_regions > 0 else np.nan, pmap, note))
    return out


def step_measures(raw: StepRaw, evidence: Evidence, top_k: int, sinks: np.ndarray | None) -> dict[str, float]:
    """The four measures of one step; ``sinks`` (patch indices) are taken out when given.

    Corrections use the per-patch map's *shares* (not its absolute values), so they
    stay valid when the map's layers differ from ``collapse.layers``.
    """
    image_mass, ev_sum = raw.image_mass, raw.evidence_mass_sum
    pmap = raw.patch_map
    total = float(np.nansum(pmap)) if pmap is not None else 0.0
    shares = pmap / total if pmap is not None and total > 0 else None
    w_union = evidence.union_weight
    evidence_mass = ev_sum
    if not evidence.empty and evidence.overlapping:
        # region_mass counts overlap twice; rescale by the map's union/sum ratio
        if shares is not None:
            denom = float(np.dot(shares, evidence.sum_weight))
            factor = float(np.dot(shares, w_union)) / denom if denom > 0 else 1.0
        else:
            denom = float(evidence.sum_weight.sum())
            factor = float(w_union.sum()) / denom if denom > 0 else 1.0
        evidence_mass = ev_sum * factor
    sink_share = 0.0
    if sinks is not None and len(sinks) and shares is not None:
        valid = sinks[sinks < len(shares)]
        sink_share = float(shares[valid].sum())
        sink_evidence = float(np.dot(shares[valid], w_union[valid])) if not evidence.empty else 0.0
        evidence_mass = evidence_mass - image_mass * sink_evidence
        image_mass = image_mass * (1.0 - sink_share)
    with np.errstate(divide="ignore", invalid="ignore"):
        evidence_share = evidence_mass / image_mass if image_mass > 0 else np.nan
    if evidence.empty:
        evidence_share = np.nan
        evidence_mass = np.nan
    af = evidence.area_fraction
    lift = evidence_share / af if af and af > 0 and np.isfinite(evidence_share) else np.nan
    focus = chance_corrected(evidence_share, af)
    # the evidence share and the random-region null read off the same per-patch map (sinks taken out when excluded)
    share_map = null_share = np.nan
    if shares is not None and not evidence.empty:
        kept = shares
        if sinks is not None and len(sinks):
            kept = shares.copy()
            kept[sinks[sinks < len(kept)]] = 0.0
            kept = kept / kept.sum() if kept.sum() > 0 else kept * np.nan
        share_map = float(np.dot(kept, w_union))
        if evidence.null_weights is not None:
            null_share = float(np.mean(evidence.null_weights @ kept))
    topk = np.nan
    if shares is not None and not evidence.empty:
        order = np.argsort(-shares, kind="stable")
        if sinks is not None and len(sinks):
            order = order[~np.isin(order, sinks)]
        chosen = order[: min(top_k, len(order))]
        if len(chosen):
            topk = float(w_union[chosen].mean())
    return {
        "image_share": float(image_mass),
        "evidence_mass": float(evidence_mass),
        "evidence_share": float(evidence_share),
        "lift": float(lift),
        "focus": float(focus),
        "topk_overlap": topk,
        "evidence_share_map": share_map,
        "evidence_share_null": null_share,
        "sink_share": sink_share,
    }


def chance_corrected(share: float, area: float) -> float:
    """Focus ``(share - area) / (1 - area)``: 0 is attention spread evenly over the image, 1 all of it on the evidence.

    Undefined (NaN) without a share or when the evidence covers no or all of the image.
    """
    if not (np.isfinite(share) and np.isfinite(area) and 0 < area < 1):
        return float("nan")
    return float((share - area) / (1 - area))


def trajectory(values: Sequence[float], positions: Sequence[float]) -> dict[str, float]:
    """First, last, relative drop and normalised AUC of a per-step curve (finite steps only).

    The AUC is the trapezoid area over normalised step position divided by the
    span of the positions used (1 when every step is finite), so it reads as the
    curve's average height; with one finite step it is that step's value.
    """
    v = np.asarray(values, dtype=float)
    x = np.asarray(positions, dtype=float)
    ok = np.isfinite(v)
    v, x = v[ok], x[ok]
    if not len(v):
        return {"first": np.nan, "last": np.nan, "drop": np.nan, "auc": np.nan}
    first, last = float(v[0]), float(v[-1])
    drop = (first - last) / first if first != 0 else np.nan
    span = float(x[-1] - x[0])
    auc = float(np.trapezoid(v, x) / span) if span > 0 else float(v.mean())
    return {"first": first, "last": last, "drop": drop, "auc": auc}


def window_weights(n_tokens: Sequence[int], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Each reasoning step's weight in the first and in the last window of the reasoning.

    The reasoning's ``R`` tokens (the steps' tokens in order) are cut into a
    first window ``[0, fraction R)`` and a last window ``[R - fraction R, R)``;
    a step weighs the number of its tokens inside a window (fractions of a
    token at the edge count as such). ``fraction = 0``: the first and the last
    step alone, whatever their length.
    """
    n = np.asarray(n_tokens, dtype=float)
    first, last = np.zeros(len(n)), np.zeros(len(n))
    if not len(n):
        return first, last
    if fraction <= 0:
        first[0], last[-1] = 1.0, 1.0
        return first, last
    edges = np.concatenate([[0.0], np.cumsum(n)])
    total = edges[-1]
    width = fraction * total
    lo, hi = edges[:-1], edges[1:]
    first = np.clip(np.minimum(hi, width) - lo, 0, None)
    last = np.clip(hi - np.maximum(lo, total - width), 0, None)
    return first, last


WINDOW_COLUMNS = ("image_share", "evidence_mass", "evidence_share_null", "image_share_null", "evidence_share_map")


def window_values(steps: Mapping[str, np.ndarray], weights: np.ndarray, area: float) -> dict[str, float]:
    """The reasoning measures and their nulls over one window (step values by column, and their token weights).

    Token-weighted means of the step values, so a long step weighs more than a
    two-character one; the evidence share is the window's evidence mass over
    its image share (a ratio of means, as for a step), and the map-based shares
    weigh each step by its image share for the same reason.
    """
    w = np.asarray(weights, dtype=float)

    def col(name):
        return steps[name] if name in steps else np.full(len(w), np.nan)

    img, mass = col("image_share"), col("evidence_mass")

    def mean(values, extra=None):
        ww = w * (extra if extra is not None else 1.0)
        ok = np.isfinite(values) & np.isfinite(ww) & (ww > 0)
        return float(np.sum(ww[ok] * values[ok]) / np.sum(ww[ok])) if ok.any() and np.sum(ww[ok]) > 0 else np.nan

    both = np.isfinite(img) & np.isfinite(mass)
    image_share = mean(img)
    share = mean(np.where(both, mass, np.nan)) / mean(np.where(both, img, np.nan)) if both.any() else np.nan
    share = share if np.isfinite(share) else np.nan
    null_share = mean(col("evidence_share_null"), np.where(np.isfinite(img), img, np.nan))
    return {
        "image_share": image_share,
        "evidence_share": share,
        "evidence_mass": mean(mass),
        "focus": chance_corrected(share, area),
        "image_share_null": mean(col("image_share_null")),
        "evidence_share_null": null_share,
        "evidence_mass_null": mean(col("evidence_share_null") * img),
        "evidence_share_map": mean(col("evidence_share_map"), np.where(np.isfinite(img), img, np.nan)),
    }


def relative_drop(first: float, last: float) -> float:
    """``(first - last) / first``; NaN unless the first value is positive (nothing to lose otherwise)."""
    return float((first - last) / first) if np.isfinite(first) and np.isfinite(last) and first > 0 else np.nan


def reasoning_windows(sub: pd.DataFrame, area: float, fraction: float) -> dict[str, float]:
    """Per trace: each reasoning measure (and null) over the first and last window of the reasoning, their drop,
    and the answer step(s)' value (module doc; docs/analysis.md).

    Only reasoning (``think``) steps with tokens and a finite image share count;
    the drops need two of them (one step has one value throughout).
    """
    sub = sub.sort_values("step_index", kind="stable") if "step_index" in sub else sub
    values = {c: sub[c].to_numpy(dtype=float) for c in WINDOW_COLUMNS if c in sub}
    img = values["image_share"]
    tokens = (np.nan_to_num(sub["n_step_tokens"].to_numpy(dtype=float)) if "n_step_tokens" in sub
              else np.ones(len(sub)))
    kind = sub["kind"].to_numpy()
    think = (kind == "think") & np.isfinite(img) & (tokens > 0)
    answer = (kind == "answer") & np.isfinite(img) & (tokens > 0)
    out: dict[str, float] = {}
    names = (*REASONING_MEASURES, *NULL_MEASURES)
    if think.any():
        part = {c: v[think] for c, v in values.items()}
        w_first, w_last = window_weights(tokens[think], fraction)
        first, last = window_values(part, w_first, area), window_values(part, w_last, area)
    else:
        first = last = dict.fromkeys(names, np.nan)
    ans = (window_values({c: v[answer] for c, v in values.items()}, tokens[answer], area) if answer.any()
           else dict.fromkeys(names, np.nan))
    for name in names:
        out[f"{name}_reasoning_first"] = first[name]
        out[f"{name}_reasoning_last"] = last[name]
        out[f"{name}_reasoning_drop"] = relative_drop(first[name], last[name]) if think.sum() >= 2 else np.nan
        if name in REASONING_MEASURES:
            out[f"{name}_answer"] = ans[name]
    return out


def normalised_positions(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)


LOCALISATION_COLUMNS = ["model", "dataset", "n_reasoning_steps", "step", "n", "evidence_share",
                        "evidence_area_fraction", "lift"]


def localisation_by_step(steps: pd.DataFrame, variant: str = "base") -> pd.DataFrame:
    """Where attention sits at each step: mean evidence share per step of traces of one shape.

    Over the ``variant`` traces (default: unmasked) of items with evidence, one
    row per (model, dataset, number of reasoning steps, step), where ``step`` is
    ``step N`` for the N-th ``think`` step and ``answer`` for the answer step.
    Traces are grouped by their number of reasoning steps so that steps of the
    same role are averaged together (on panels: one step for a colour question,
    two panel reads and a verdict for a comparison). ``lift`` is the mean
    evidence share over the mean area fraction: 1 is what a model that looks
    everywhere alike would get.
    """
    df = steps[(steps["variant"] == variant) & (steps["evidence_area_fraction"].astype(float) > 0)].copy()
    df = df[np.isfinite(df["evidence_share"].astype(float))]
    if df.empty:
        return pd.DataFrame(columns=LOCALISATION_COLUMNS)
    think = df["kind"].eq("think")
    df["n_reasoning_steps"] = think.groupby(df["trace_id"]).transform("sum").astype(int)
    rank = think.astype(int).groupby(df["trace_id"]).cumsum()
    df["step_label"] = np.where(think, "step " + rank.astype(str), df["kind"])
    rows = []
    keys = ["model", "dataset", "n_reasoning_steps", "step_label"]
    for (m, d, n_think, label), sub in df.groupby(keys, sort=False):
        share = float(sub["evidence_share"].astype(float).mean())
        area = float(sub["evidence_area_fraction"].astype(float).mean())
        rows.append({"model": m, "dataset": d, "n_reasoning_steps": int(n_think), "step": label, "n": len(sub),
                     "evidence_share": share, "evidence_area_fraction": area,
                     "lift": share / area if area > 0 else np.nan})
    out = pd.DataFrame(rows, columns=LOCALISATION_COLUMNS)
    order = out["step"].map(lambda s: (1, 0) if s == "answer" else (0, int(s.split()[-1])) if s.startswith("step ")
                            else (2, 0))
    return (out.assign(_o=order).sort_values(["model", "dataset", "n_reasoning_steps", "_o"], kind="stable")
            .drop(columns="_o").reset_index(drop=True))


# ----------------------------------------------------------------------------- layers and heads

LAYER_COLUMNS = [
    "model", "dataset", "kind", "measure", "layer", "head", "bin", "position", "n_traces", "mean",
    "mean_first", "mean_last", "drop_of_means", "mean_lift", "selected", "layers_config", "note",
]


@dataclass
class LayerTrace:
    """One base trace's reasoning, per layer (and head): step values, positions, window weights, evidence area."""

    image: np.ndarray  # [step, layer, head] image share of each think step
    evidence: np.ndarray | None  # [step, layer] evidence mass (region_mass summed over the evidence, uncorrected)
    bins: np.ndarray  # [step] reasoning-position bin
    w_first: np.ndarray  # [step] token weights of the first and last windows
    w_last: np.ndarray
    area: float


def layer_trace(data: TraceData, spans: Sequence[tuple[int, str, int, int]], n_evidence: int, area: float,
                n_bins: int, fraction: float) -> LayerTrace | None:
    """Per-layer and per-head reductions of a trace's think steps (two or more, with tokens and an image), or None.

    Sinks are not taken out and overlapping evidence regions are not
    corrected here: per layer and head the per-patch map that both need is
    not stored.
    """
    if not len(data.patch_box) or not data.image_mass.shape[1]:
        return None
    think = [(max(0, int(s)), min(int(e), data.n_tokens)) for _, kind, s, e in spans
             if kind == "think" and s >= 0 and min(int(e), data.n_tokens) > max(0, int(s))]
    if len(think) < 2:
        return None
    img = data.image_mass.astype(np.float64)
    image = np.stack([img[s:e].mean(axis=0) for s, e in think])  # [step, layer, head]
    evidence = None
    if n_evidence > 0:
        reg = data.region_mass[:, :, :n_evidence].astype(np.float64).sum(axis=2)  # [token, layer]
        evidence = np.stack([reg[s:e].mean(axis=0) for s, e in think])
    k = len(think)
    position = np.arange(k) / (k - 1)
    bins = np.minimum(np.floor(position * n_bins + 1e-9), n_bins - 1).astype(int)
    w_first, w_last = window_weights([e - s for s, e in think], fraction)
    return LayerTrace(image, evidence, bins, w_first, w_last, area)


@dataclass
class LayerCounter:
    """Running sums over base traces of the per-layer and per-head curves and windows (nothing kept per trace)."""

    n_bins: int
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)

    def _add(self, name: str, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=float)
        ok = np.isfinite(values)
        if name not in self.sums:
            self.sums[name], self.counts[name] = np.zeros(values.shape), np.zeros(values.shape)
        self.sums[name] += np.where(ok, values, 0.0)
        self.counts[name] += ok

    def mean(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums[name] / self.counts[name], self.counts[name]

    def add(self, t: LayerTrace) -> None:
        image_l = t.image.mean(axis=2)  # [step, layer]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = t.evidence / image_l if t.evidence is not None else None
        for name, values in (("image_head", t.image), ("image", image_l), ("evidence", share)):
            if values is None:
                continue
            per_bin = np.full((self.n_bins, *values.shape[1:]), np.nan)
            for b in range(self.n_bins):
                sel = t.bins == b
                if sel.any():
                    per_bin[b] = values[sel].mean(axis=0)
            self._add(f"{name}:curve", per_bin)
        for window, w in (("first", t.w_first), ("last", t.w_last)):
            ww = w / w.sum()
            self._add(f"image_head:{window}", np.tensordot(ww, t.image, axes=1))
            self._add(f"image:{window}", ww @ image_l)
            if t.evidence is not None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    self._add(f"evidence:{window}", (w @ t.evidence) / (w @ image_l))
        if share is not None and np.isfinite(t.area) and t.area > 0:
            self._add("evidence:lift", np.nanmean(share, axis=0) / t.area)

    def table(self, model: str, dataset: str, selected: int | None, layers_config: str) -> pd.DataFrame:
        rows = []
        for measure, key, per_head in (("image_share", "image_head", True), ("image_share", "image", False),
                                       ("evidence_share", "evidence", False)):
            if f"{key}:curve" not in self.sums:
                continue
            curve, n = self.mean(f"{key}:curve")
            first, _ = self.mean(f"{key}:first")
            last, n_traces = self.mean(f"{key}:last")
            lift = self.mean("evidence:lift")[0] if measure == "evidence_share" and "evidence:lift" in self.sums else None
            for index in np.ndindex(*curve.shape[1:]):
                layer, head = int(index[0]), (int(index[1]) if per_head else -1)
                common = {"model": model, "dataset": dataset, "measure": measure, "layer": layer, "head": head,
                          "selected": selected == layer, "layers_config": layers_config}
                for b in range(self.n_bins):
                    rows.append({**common, "kind": "curve", "bin": b, "position": (b + 0.5) / self.n_bins,
                                 "n_traces": int(n[(b, *index)]), "mean": float(curve[(b, *index)])})
                f, la = float(first[index]), float(last[index])
                rows.append({**common, "kind": "summary", "n_traces": int(n_traces[index]), "mean_first": f,
                             "mean_last": la, "drop_of_means": (f - la) / f if f > 0 else np.nan,
                             "mean_lift": float(lift[index[0]]) if lift is not None else np.nan})
        out = pd.DataFrame(rows, columns=LAYER_COLUMNS)
        for c in ("layer", "head", "bin", "n_traces"):
            out[c] = out[c].astype("Int64")
        return out


def selection_items(item_rows: Mapping[str, Mapping], fraction: float, seed: int, dataset: str) -> set[str]:
    """The held-out items on which ``collapse.layers: select`` chooses the layer: a seeded ``fraction`` of the
    items with evidence regions (sorted ids, permuted from the seed and the dataset)."""
    ids = sorted(i for i, row in item_rows.items() if not item_evidence(row.get("regions")).empty)
    order = seeded_rng(seed, "collapse layer selection", dataset).permutation(len(ids))
    return {ids[k] for k in order[: int(round(fraction * len(ids)))]}


def select_layer(lifts: np.ndarray, counts: np.ndarray) -> int | None:
    """The layer with the highest mean evidence lift (ties: the lowest index); None without any."""
    ok = counts > 0
    if not ok.any():
        return None
    return int(np.argmax(np.where(ok, np.nan_to_num(lifts, nan=-np.inf), -np.inf)))


# ----------------------------------------------------------------------------- sinks


@dataclass
class SinkCounter:
    """Counts, per patch index, the steps and traces in which a patch's share is far above the median."""

    ratio: float
    min_fraction: float
    step_hits: dict[int, int] = field(default_factory=dict)
    step_seen: dict[int, int] = field(default_factory=dict)
    trace_hits: dict[int, int] = field(default_factory=dict)
    trace_seen: dict[int, int] = field(default_factory=dict)
    share_sum: dict[int, float] = field(default_factory=dict)
    ratio_sum: dict[int, float] = field(default_factory=dict)

    def add_trace(self, maps: Iterable[np.ndarray | None]) -> None:
        hits_t: np.ndarray | None = None
        seen_t = 0
        for pmap in maps:
            if pmap is None or not len(pmap):
                continue
            total = float(np.nansum(pmap))
            if total <= 0:
                continue
            share = np.nan_to_num(pmap / total)
            median = float(np.median(share))
            ref = median if median > 0 else 1.0 / len(share)
            hit = share > self.ratio * ref
            hits_t = hit.astype(int) if hits_t is None else _add_padded(hits_t, hit.astype(int))
            seen_t += 1
            for p in range(len(share)):
                self.step_seen[p] = self.step_seen.get(p, 0) + 1
                self.share_sum[p] = self.share_sum.get(p, 0.0) + float(share[p])
                self.ratio_sum[p] = self.ratio_sum.get(p, 0.0) + float(share[p] / ref)
            for p in np.flatnonzero(hit):
                self.step_hits[int(p)] = self.step_hits.get(int(p), 0) + 1
        if hits_t is None:
            return
        for p in range(len(hits_t)):
            self.trace_seen[p] = self.trace_seen.get(p, 0) + 1
            if hits_t[p] >= self.min_fraction * seen_t:
                self.trace_hits[p] = self.trace_hits.get(p, 0) + 1

    def table(self, model: str, dataset: str, exclude: bool) -> pd.DataFrame:
        rows = []
        for p in sorted(self.step_seen):
            n_steps = self.step_seen[p]
            step_fraction = self.step_hits.get(p, 0) / n_steps
            n_traces = self.trace_seen.get(p, 0)
            trace_fraction = self.trace_hits.get(p, 0) / n_traces if n_traces else 0.0
            is_sink = step_fraction >= self.min_fraction and trace_fraction >= self.min_fraction
            # report sinks and near-misses (half the threshold), not every patch
            if not is_sink and step_fraction < self.min_fraction / 2:
                continue
            rows.append({
                "model": model, "dataset": dataset, "patch": int(p), "n_steps": int(n_steps),
                "step_fraction": step_fraction, "n_traces": int(n_traces), "trace_fraction": trace_fraction,
                "mean_share": self.share_sum[p] / n_steps, "mean_ratio_to_median": self.ratio_sum[p] / n_steps,
                "is_sink": bool(is_sink), "excluded": bool(is_sink and exclude),
                "ratio": float(self.ratio), "min_fraction": float(self.min_fraction),
            })
        return pd.DataFrame(rows, columns=SINK_COLUMNS)


def _add_padded(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = max(len(a), len(b))
    out = np.zeros(n, dtype=int)
    out[: len(a)] += a
    out[: len(b)] += b
    return out


def detect_sinks(maps_per_trace: Iterable[Iterable[np.ndarray | None]], ratio: float, min_fraction: float,
                 model: str = "", dataset: str = "", exclude: bool = False) -> pd.DataFrame:
    """Sink patches from per-step patch maps: far above the median share in most steps and traces."""
    counter = SinkCounter(ratio=ratio, min_fraction=min_fraction)
    for maps in maps_per_trace:
        counter.add_trace(maps)
    return counter.table(model, dataset, exclude)


# ----------------------------------------------------------------------------- the stage


@dataclass
class CollapseTables:
    steps: pd.DataFrame
    traces: pd.DataFrame
    sinks: pd.DataFrame
    maps: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    layers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LAYER_COLUMNS))


def _read_block(ds, start: int, stop: int, has_attn: bool, has_image: bool) -> dict[str, np.ndarray]:
    block = ds.isel(trace=slice(start, stop))
    names = ["entropy", "image_mass", "region_mass", "patch_box", "n_tokens", "n_patches", "n_regions"]
    if has_attn:
        names.append("image_attn")
    if has_image:
        names.append("patch_image")
    return {n: np.asarray(block[n].values) for n in names}


def _trace_data(block: dict[str, np.ndarray], j: int, trace_id: str) -> TraceData:
    n_tok = int(block["n_tokens"][j])
    n_patch = int(block["n_patches"][j])
    n_reg = int(block["n_regions"][j])
    attn = block.get("image_attn")
    pimg = block.get("patch_image")
    return TraceData(
        trace_id=trace_id,
        entropy=block["entropy"][j, :n_tok].astype(np.float64),
        image_mass=block["image_mass"][j, :n_tok],
        region_mass=block["region_mass"][j, :n_tok, :, :n_reg],
        image_attn=attn[j, :n_tok, :, :n_patch] if attn is not None else None,
        patch_box=block["patch_box"][j, :n_patch].astype(np.float64),
        patch_image=pimg[j, :n_patch].astype(int) if pimg is not None else None,
        n_tokens=n_tok,
    )


@dataclass
class TraceRecord:
    """Everything collapse learns about one trace of the sidecar, phase by phase.

    ``meta`` is the sidecar row; ``spans`` the steps table's (step, kind,
    token_start, token_end) of the trace; ``location`` where the trace sits in
    the stores ((store, index), None when it is not measured: failed, missing).
    ``evidence``, ``raws``, ``entropy`` and the patch geometry are filled when
    the store is read; ``notes`` collect why something is undefined.
    """

    trace_id: str
    meta: dict[str, Any]
    spans: list[tuple[int, str, int, int]] = field(default_factory=list)
    step_text: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    location: tuple[int, int] | None = None
    evidence: Evidence | None = None
    raws: list[StepRaw] | None = None
    entropy: dict[str, Any] | None = None
    patch_box: np.ndarray | None = None
    patch_image: np.ndarray | None = None
    image_tok: np.ndarray | None = None  # per generated token: image share (for the position-matched null)

    @property
    def measured(self) -> bool:
        return self.raws is not None


def _steps_by_trace(steps: pd.DataFrame) -> dict[str, list[tuple[int, str, int, int, str]]]:
    """Per trace id, its steps as (step, kind, token_start, token_end, text); a null span becomes -1 (reported later)."""
    out: dict[str, list[tuple[int, str, int, int, str]]] = {}
    ordered = steps.assign(trace_id=steps["trace_id"].astype(str)).sort_values(["trace_id", "step"], kind="stable")
    for r in ordered.itertuples(index=False):
        start = int(r.token_start) if pd.notna(r.token_start) else -1
        end = int(r.token_end) if pd.notna(r.token_end) else -1
        out.setdefault(r.trace_id, []).append((int(r.step), str(r.kind), start, end, str(getattr(r, "text", ""))))
    return out


def _store_index(stores: Sequence[Any], where: str) -> tuple[dict[str, tuple[int, int]], list[str], int]:
    """(trace id -> (store, index)), every trace id in the stores, and their number of layers."""
    index: dict[str, tuple[int, int]] = {}
    ids: list[str] = []
    for k, ds in enumerate(stores):
        store_ids = [str(t) for t in np.asarray(ds["trace_id"].values)] if "trace_id" in ds else []
        for i, t in enumerate(store_ids):
            index.setdefault(t, (k, i))
        ids += store_ids
    layer_counts = {int(ds.sizes["layer"]) for ds in stores if "layer" in ds.sizes and ds.sizes.get("trace", 0)}
    if len(layer_counts) > 1:
        raise CollapseError(f"{where}: shards disagree on the number of layers ({sorted(layer_counts)})")
    return index, ids, (layer_counts.pop() if layer_counts else 0)


def trace_records(sidecar: pd.DataFrame, steps_by_trace: Mapping[str, list], store_index: Mapping[str, tuple[int, int]],
                  counts: dict[str, int], where: str) -> list[TraceRecord]:
    """One record per sidecar trace (a duplicate id is reported and left out), located in the stores when measurable."""
    records: list[TraceRecord] = []
    seen: set[str] = set()
    for row in sidecar.to_dict("records"):
        tid = str(row["trace_id"])
        if tid in seen:  # an upstream bug; one row per trace id keeps the tables joinable
            counts["duplicate"] = counts.get("duplicate", 0) + 1
            log.error("%s: trace_id %s appears twice in the sidecars: the later row is left out", where, tid)
            continue
        seen.add(tid)
        steps = steps_by_trace.get(tid, [])
        rec = TraceRecord(tid, {**row, "trace_id": tid}, spans=[s[:4] for s in steps],
                          step_text={s[0]: s[4] for s in steps})
        records.append(rec)
        status = str(row.get("status", "ok") or "ok")
        if status != "ok":
            counts["failed"] += 1
            err = row.get("error")
            rec.notes.append(f"trace failed: {err}" if err else "trace failed")
            continue
        if tid not in store_index:
            counts["missing_in_store"] += 1
            rec.notes.append("trace not found in the trace store")
            continue
        if tid not in steps_by_trace:
            counts["no_steps"] += 1
            rec.notes.append("no steps in the steps table")
        rec.location = store_index[tid]
    return records


def measure_traces(records: Sequence[TraceRecord], stores: Sequence[Any], item_rows: Mapping[str, Mapping],
                   layers: np.ndarray, counter: SinkCounter | None, counts: dict[str, int], where: str,
                   null_draws: int = 0, seed: int = 0, dataset: str = "", layer_counter: LayerCounter | None = None,
                   fraction: float = 0.25) -> None:
    """Read the located traces from the stores, a block at a time, and fill their evidence, step reductions and entropy."""
    for rec, data in read_traces(records, stores, f"collapse {where}"):
        _measure(rec, data, item_rows, layers, counts, null_draws, seed, dataset)
        if counter is not None:
            counter.add_trace(r.patch_map for r in rec.raws)
        if layer_counter is not None and rec.meta.get("variant") == "base":
            lt = layer_trace(data, rec.spans, len(rec.evidence.boxes), rec.evidence.area_fraction,
                             layer_counter.n_bins, fraction)
            if lt is not None:
                layer_counter.add(lt)


def read_traces(records: Sequence[TraceRecord], stores: Sequence[Any], desc: str):
    """(record, its per-token arrays) for every located record, read from the stores a block of traces at a time."""
    blocks: dict[tuple[int, int], list[tuple[int, TraceRecord]]] = {}
    located = sorted((r for r in records if r.location is not None), key=lambda r: r.location)
    for rec in located:
        k, i = rec.location
        blocks.setdefault((k, i // READ_BLOCK), []).append((i, rec))
    bar = progress(total=len(located), desc=desc, unit="trace")
    for (k, b), members in sorted(blocks.items(), key=lambda kv: kv[0]):
        ds = stores[k]
        start = b * READ_BLOCK
        block = _read_block(ds, start, min(start + READ_BLOCK, int(ds.sizes["trace"])),
                            "image_attn" in ds, "patch_image" in ds)
        for i, rec in members:
            yield rec, _trace_data(block, i - start, rec.trace_id)
            bar.update(1)
    bar.close()


def trace_evidence(rec: TraceRecord, data: TraceData, item_rows: Mapping[str, Mapping]) -> Evidence:
    """The item's evidence cut to the regions the store holds, with its patch weights and area fraction."""
    item = item_rows.get(str(rec.meta["item_id"]))
    evidence = item_evidence(item.get("regions")) if item is not None else Evidence(boxes=[], images=[])
    n_store = data.region_mass.shape[2]
    evidence.boxes, evidence.images = evidence.boxes[:n_store], evidence.images[:n_store]
    return attach_patch_weights(evidence, data.patch_box, data.patch_image,
                                item.get("width") if item else None, item.get("height") if item else None)


def choose_layer(records: Sequence[TraceRecord], stores: Sequence[Any], item_rows: Mapping[str, Mapping],
                 split: set[str], n_bins: int, fraction: float, where: str) -> tuple[int | None, np.ndarray]:
    """``collapse.layers: select``: the layer of highest mean evidence lift over the base traces of the held-out
    ``split`` items (and every layer's mean lift there)."""
    counter = LayerCounter(n_bins)
    chosen = [r for r in records if r.location is not None and r.meta.get("variant") == "base"
              and str(r.meta.get("item_id")) in split]
    for rec, data in read_traces(chosen, stores, f"collapse layer selection {where}"):
        evidence = trace_evidence(rec, data, item_rows)
        lt = layer_trace(data, rec.spans, len(evidence.boxes), evidence.area_fraction, n_bins, fraction)
        if lt is not None:
            counter.add(lt)
    if "evidence:lift" not in counter.sums:
        return None, np.array([])
    lifts, counts = counter.mean("evidence:lift")
    return select_layer(lifts, counts), lifts


_NULL_CACHE: dict[tuple, np.ndarray | None] = {}


def _measure(rec: TraceRecord, data: TraceData, item_rows: Mapping[str, Mapping], layers: np.ndarray,
             counts: dict[str, int], null_draws: int = 0, seed: int = 0, dataset: str = "") -> None:
    item = item_rows.get(str(rec.meta["item_id"]))
    if item is None:
        counts["no_item"] += 1
        rec.notes.append(f"item {rec.meta['item_id']} not in the items table")
        evidence = Evidence(boxes=[], images=[])
    else:
        evidence = item_evidence(item.get("regions"))
    n_item_regions, n_store_regions = len(evidence.boxes), data.region_mass.shape[2]
    if n_item_regions != n_store_regions and not evidence.empty:
        rec.notes.append(f"store has {n_store_regions} regions, item has {n_item_regions}: "
                         f"using the first {min(n_item_regions, n_store_regions)}")
        evidence.boxes = evidence.boxes[:n_store_regions]
        evidence.images = evidence.images[:n_store_regions]
    if not len(data.patch_box):
        counts["no_image"] = counts.get("no_image", 0) + 1
        rec.notes.append("no image tokens (a question without an image): vision measures undefined")
    elif evidence.empty and item is not None:
        counts["no_evidence"] += 1
        rec.notes.append("item has no evidence regions: evidence measures undefined")
    attach_patch_weights(evidence, data.patch_box, data.patch_image,
                         item.get("width") if item else None, item.get("height") if item else None)
    # the same random regions for every trace of an item (every model and variant), whatever the read order;
    # drawn once per item and patch layout
    key = (seed, dataset, null_draws, str(rec.meta["item_id"]), tuple(evidence.boxes), tuple(evidence.images),
           data.patch_box.tobytes(), None if data.patch_image is None else data.patch_image.tobytes())
    if key not in _NULL_CACHE:
        if len(_NULL_CACHE) > 4096:
            _NULL_CACHE.clear()
        _NULL_CACHE[key] = null_region_weights(evidence, data.patch_box, data.patch_image, null_draws,
                                               seeded_rng(seed, "collapse null regions", dataset, rec.meta["item_id"]))
    evidence.null_weights = _NULL_CACHE[key]
    if null_draws and not evidence.empty and len(data.patch_box) and evidence.null_weights is None:
        rec.notes.append("no room for a same-area random region outside the evidence: random-region null undefined")
    rec.evidence = evidence
    rec.patch_box, rec.patch_image = data.patch_box, data.patch_image
    rec.image_tok = token_image_share(data, layers)
    rec.raws = step_reductions(data, rec.spans, layers, len(evidence.boxes))
    answer_spans = [(s, e) for _, k, s, e in rec.spans if k == "answer"]
    tokens, why = feats.answer_tokens(rec.meta.get("text"), rec.meta.get("answer_text"),
                                      rec.meta.get("token_char_start"), rec.meta.get("token_char_end"), answer_spans)
    rec.entropy = feats.entropy_features(data.entropy, data.n_tokens, answer_spans, tokens, why)


def position_null(records: Sequence[TraceRecord]) -> None:
    """Fill each step's position-matched image share (``StepRaw.image_null``).

    The reference is the mean image share at each generated-token index over
    the other measured traces of the (model, dataset) (the trace itself left
    out): how the image share falls with position in the traces whatever the
    evidence, since it is normalised over every key and the context grows. A
    step's null is that reference averaged over its tokens (NaN where no other
    trace is that long).
    """
    curves = [r.image_tok for r in records if r.measured and r.image_tok is not None and np.isfinite(r.image_tok).any()]
    if not curves:
        return
    n = max(len(c) for c in curves)
    total, count = np.zeros(n), np.zeros(n)
    for c in curves:
        ok = np.isfinite(c)
        total[: len(c)] += np.where(ok, c, 0.0)
        count[: len(c)] += ok
    for rec in records:
        if not rec.measured or rec.image_tok is None:
            continue
        own = rec.image_tok
        ok = np.isfinite(own)
        t, k = total.copy(), count.copy()
        t[: len(own)] -= np.where(ok, own, 0.0)
        k[: len(own)] -= ok
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = np.where(k > 0, t / np.where(k > 0, k, 1), np.nan)
        for raw in rec.raws:
            s, e = max(0, raw.token_start), min(raw.token_end, len(own))
            if raw.n_tokens and e > s and np.isfinite(ref[s:e]).any():
                raw.image_null = float(np.nanmean(ref[s:e]))


def step_rows(records: Sequence[TraceRecord], item_rows: Mapping[str, Mapping], top_k: int, sinks: np.ndarray | None,
              sinks_excluded: bool, model: str, dataset: str) -> pd.DataFrame:
    """The per-step table: the four measures of every step of every measured trace."""
    rows = []
    for rec in records:
        if not rec.measured:
            continue
        meta, evidence = rec.meta, rec.evidence
        n = len(rec.raws)
        positions = normalised_positions(n)
        task_type = _item_value(item_rows, meta, "task_type")
        for k, raw in enumerate(rec.raws):
            if raw.n_tokens == 0:
                m = dict.fromkeys(("image_share", "evidence_mass", "evidence_share", "lift", "focus", "topk_overlap",
                                   "evidence_share_map", "evidence_share_null"), np.nan)
                m["sink_share"] = np.nan
            else:
                m = step_measures(raw, evidence, top_k, sinks if sinks_excluded else None)
            note = [raw.note] if raw.note else []
            if raw.n_tokens and raw.patch_map is None:
                note.append("no per-patch map: top-k overlap undefined")
            rows.append({
                "trace_id": rec.trace_id, "model": model, "dataset": dataset, "item_id": str(meta.get("item_id")),
                "mask_id": meta.get("mask_id"), "variant": meta.get("variant"), "fill": meta.get("fill"),
                "task_type": task_type, "step": raw.step, "step_index": k, "n_steps": n,
                "position": float(positions[k]), "kind": raw.kind, "token_start": raw.token_start,
                "token_end": raw.token_end, "n_step_tokens": raw.n_tokens,
                "image_share": m["image_share"], "evidence_mass": m["evidence_mass"],
                "evidence_share": m["evidence_share"], "evidence_area_fraction": evidence.area_fraction,
                "lift": m["lift"], "focus": m["focus"], "topk_overlap": m["topk_overlap"],
                "evidence_share_map": m["evidence_share_map"], "evidence_share_null": m["evidence_share_null"],
                "image_share_null": raw.image_null, "sink_share": m["sink_share"],
                "sinks_excluded": sinks_excluded, "note": "; ".join(note),
            })
    return _typed_steps(pd.DataFrame(rows, columns=STEP_COLUMNS))


def trajectory_rows(records: Sequence[TraceRecord], steps_df: pd.DataFrame, fraction: float = 0.0) -> pd.DataFrame:
    """Per trace: step counts, the evidence's size, every measure's first, last, drop and AUC, and the reasoning
    measures over the first and last ``fraction`` of the reasoning's tokens (``reasoning_windows``)."""
    by_trace = {tid: sub for tid, sub in steps_df.groupby("trace_id", sort=False)}
    empty = steps_df.iloc[0:0]
    rows = []
    for rec in records:
        sub = by_trace.get(rec.trace_id, empty)
        row: dict[str, Any] = {"trace_id": rec.trace_id, "n_steps": int(len(sub)),
                               "n_think_steps": int((sub["kind"] == "think").sum())}
        ev = rec.evidence
        row["evidence_area_fraction"] = ev.area_fraction if ev is not None else np.nan
        row["n_evidence_regions"] = len(ev.boxes) if ev is not None else 0
        for measure in MEASURES:
            stats = trajectory(sub[measure].to_numpy(dtype=float), sub["position"].to_numpy(dtype=float))
            for s in TRAJECTORY_STATS:
                row[f"{measure}_{s}"] = stats[s]
        row.update(reasoning_windows(sub, row["evidence_area_fraction"], fraction))
        rows.append(row)
    return pd.DataFrame(rows)


def compute(
    traces,
    sidecar: pd.DataFrame,
    steps: pd.DataFrame,
    items: pd.DataFrame,
    collapse_cfg: Mapping[str, Any] | None,
    features_cfg: Mapping[str, Any] | None,
    model: str,
    dataset: str,
    map_items: int | None = None,
    seed: int = 0,
) -> CollapseTables:
    """All collapse tables for one (model, dataset) from an opened trace store and its tables.

    ``traces`` is an xarray Dataset with the documented arrays (``open_traces``)
    or a list of them (one per shard); each is read a block of traces at a
    time. Failed traces, traces without steps and items without evidence are
    kept as rows with a note, never dropped. ``collapse_cfg`` and
    ``features_cfg`` are the config's sections (absent keys take the schema's
    defaults).
    """
    collapse_cfg = schema.section("collapse", collapse_cfg)
    features_cfg = schema.section("features", features_cfg)
    sink_cfg = collapse_cfg["sinks"]
    detect, exclude = bool(sink_cfg["detect"]), bool(sink_cfg["exclude"])
    if exclude and not detect:
        log.warning("collapse.sinks.exclude is true but detect is false: nothing to exclude")
    map_items = int(collapse_cfg["map_items"] if map_items is None else map_items)
    where = f"{model}/{dataset}"

    items = items.assign(item_id=items["item_id"].astype(str))
    item_rows = {r["item_id"]: r for r in items.to_dict("records")}
    # one Dataset per shard (read lazily, a block at a time) or one already concatenated
    stores = [] if traces is None else ([traces] if hasattr(traces, "data_vars") else [t for t in traces if t is not None])
    store_index, store_ids, n_layers = _store_index(stores, where)
    layers = resolve_layers(collapse_cfg["layers"], n_layers) if n_layers else np.arange(0)
    fraction, n_bins = float(collapse_cfg["endpoint_fraction"]), int(collapse_cfg["position_bins"])
    select = collapse_cfg["layers"] == "select"
    split = selection_items(item_rows, float(collapse_cfg["selection_fraction"]), seed, dataset) if select else set()

    counts = {"traces": len(sidecar), "failed": 0, "missing_in_store": 0, "no_steps": 0, "no_evidence": 0, "no_item": 0}
    records = trace_records(sidecar.reset_index(drop=True), _steps_by_trace(steps), store_index, counts, where)
    in_sidecar = {r.trace_id for r in records}
    stray = [t for t in store_ids if t not in in_sidecar]
    if stray:
        log.warning("%d traces in the store have no sidecar row and are not measured (first: %s)", len(stray), stray[0])

    selected = None
    if select and n_layers:
        selected, lifts = choose_layer(records, stores, item_rows, split, n_bins, fraction, where)
        if selected is None:
            log.warning("%s: collapse.layers is select but no base trace of the %d held-out items has an evidence "
                        "lift: every layer is averaged", where, len(split))
        else:
            layers = np.array([selected])
            log.info("%s: grounding layer %d chosen on %d held-out items by evidence lift (%s)", where, selected,
                     len(split), ", ".join(f"{k}: {v:.3f}" for k, v in enumerate(lifts)))
    counter = SinkCounter(ratio=float(sink_cfg["ratio"]), min_fraction=float(sink_cfg["min_fraction"])) if detect else None
    layer_counter = LayerCounter(n_bins)
    measure_traces(records, stores, item_rows, layers, counter, counts, where,
                   null_draws=int(collapse_cfg["null_regions"]), seed=seed, dataset=dataset,
                   layer_counter=layer_counter, fraction=fraction)
    position_null(records)

    sinks_table = counter.table(model, dataset, exclude) if detect else pd.DataFrame(columns=SINK_COLUMNS)
    sink_patches = (
        sinks_table.loc[sinks_table["is_sink"], "patch"].to_numpy(dtype=int)
        if detect and exclude and len(sinks_table) else np.array([], dtype=int)
    )
    sinks_excluded = bool(detect and exclude)
    if detect:
        log.info("%s: %d attention sink patches detected (%s)", where,
                 int(sinks_table["is_sink"].sum()) if len(sinks_table) else 0, "excluded" if sinks_excluded else "kept")

    steps_df = step_rows(records, item_rows, int(collapse_cfg["top_k"]), sink_patches, sinks_excluded, model, dataset)
    meta_df = pd.DataFrame([r.meta for r in records])
    traces_df = feats.build_trace_table(
        meta=meta_df, items=items, trajectories=trajectory_rows(records, steps_df, float(collapse_cfg["endpoint_fraction"])),
        collapse_steps=steps_df,
        entropy={r.trace_id: r.entropy for r in records if r.entropy is not None},
        notes={r.trace_id: r.notes for r in records}, features_cfg=features_cfg,
        model=model, dataset=dataset, sinks_excluded=sinks_excluded,
    )
    # with a selected layer, the items it was chosen on are marked: the collapse findings leave them out
    traces_df["layer_split"] = (traces_df["item_id"].astype(str).map(lambda i: "selection" if i in split else "analysis")
                                if select and selected is not None else None)
    layers_df = layer_counter.table(model, dataset, selected, json_layers(collapse_cfg["layers"]))
    maps_df = example_maps(records, item_rows, sink_patches, sinks_excluded, model, dataset, map_items)
    for key, value in counts.items():
        if value and key != "traces":
            log.info("%s: %d traces: %s", where, value, key.replace("_", " "))
    return CollapseTables(steps=steps_df, traces=traces_df, sinks=sinks_table, maps=maps_df, counts=counts,
                          layers=layers_df)


def json_layers(value: Any) -> str:
    """``collapse.layers`` as text for the layers table (all, select or the list)."""
    return value if isinstance(value, str) else ",".join(str(int(v)) for v in value)


def _item_value(item_rows: Mapping[str, Mapping], meta: Mapping, key: str):
    item = item_rows.get(str(meta.get("item_id")))
    return item.get(key) if item is not None else None


def _typed_steps(df: pd.DataFrame) -> pd.DataFrame:
    for c in ("step", "step_index", "n_steps", "token_start", "token_end", "n_step_tokens"):
        df[c] = df[c].astype("int64")
    for c in ("position", "image_share", "evidence_mass", "evidence_share", "evidence_area_fraction", "lift", "focus",
              "topk_overlap", "evidence_share_map", "evidence_share_null", "image_share_null", "sink_share"):
        df[c] = df[c].astype("float64")
    df["sinks_excluded"] = df["sinks_excluded"].astype(bool)
    for c in ("trace_id", "model", "dataset", "item_id", "mask_id", "variant", "fill", "task_type", "kind", "note"):
        df[c] = df[c].astype("object")
    return df


def example_maps(records: Sequence[TraceRecord], item_rows: Mapping[str, Mapping], sink_patches: np.ndarray,
                 sinks_excluded: bool, model: str, dataset: str, n_items: int) -> pd.DataFrame:
    """Per-step attention maps of the base traces of the first ``n_items`` items with evidence (for the figures).

    Items are taken in items-table order, so every model shows the same items.
    """
    if n_items <= 0:
        return pd.DataFrame(columns=MAP_COLUMNS)
    first_base: dict[str, TraceRecord] = {}
    for rec in records:
        if rec.measured and rec.meta.get("variant") == "base":
            first_base.setdefault(str(rec.meta.get("item_id")), rec)
    chosen = []
    for item_id in item_rows:
        rec = first_base.get(item_id)
        if rec is None or rec.evidence.empty or not rec.raws or all(r.patch_map is None for r in rec.raws):
            continue
        chosen.append((item_id, rec))
        if len(chosen) >= n_items:
            break
    rows = []
    sink_set = set(int(p) for p in sink_patches)
    for item_id, rec in chosen:
        item = item_rows[item_id]
        boxes, ev = rec.patch_box, rec.evidence
        ev_boxes = [list(b) for b in ev.boxes]
        for k, raw in enumerate(rec.raws):
            if raw.patch_map is None:
                continue
            total = float(np.nansum(raw.patch_map))
            share = raw.patch_map / total if total > 0 else np.zeros_like(raw.patch_map)
            for p in range(len(share)):
                rows.append({
                    "model": model, "dataset": dataset, "item_id": item_id, "trace_id": rec.trace_id, "variant": "base",
                    "image": item.get("image"), "width": _num(item.get("width")), "height": _num(item.get("height")),
                    "step": raw.step, "step_index": k, "kind": raw.kind, "step_text": rec.step_text.get(raw.step, ""),
                    "patch": p, "x0": float(boxes[p, 0]), "y0": float(boxes[p, 1]), "x1": float(boxes[p, 2]),
                    "y1": float(boxes[p, 3]), "share": float(share[p]), "evidence_weight": float(ev.union_weight[p]),
                    "is_sink": p in sink_set, "sinks_excluded": sinks_excluded, "evidence_boxes": ev_boxes,
                })
    return pd.DataFrame(rows, columns=MAP_COLUMNS)


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------- files


def run_stage(call: StageCall) -> None:
    """The ``collapse`` rule: read one (model, dataset)'s traces and tables, write steps, traces, sinks and maps.

    ``config``: ``collapse`` and ``features`` (the sections). Shards are
    opened one at a time (``open_traces`` concatenates several in memory); an
    empty or unreadable shard is logged and its traces reported as missing from
    the store.
    """
    model, dataset = call.wildcards["m"], call.wildcards["d"]
    stores = []
    for path in call.paths("stores"):
        try:
            ds = open_traces([str(path)])
        except Exception as exc:
            log.warning("cannot open trace store %s: %s", path, exc)
            continue
        if int(ds.sizes.get("trace", 0)):
            stores.append(ds)
    tables = compute(stores, read_sidecars(call.paths("sidecars")), read_table(call.path("steps")),
                     read_table(call.path("items_table")), call.config["collapse"], call.config["features"],
                     model, dataset, seed=int(call.config.get("seed", 0)))
    prov = call.provenance(model=model, dataset=dataset, counts=tables.counts)
    for name in ("steps", "traces", "sinks", "maps", "layers"):
        if name in call.outputs:
            write_table(getattr(tables, name), call.output(name), prov)
