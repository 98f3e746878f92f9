"""Agreement of model-made boxes with human boxes, per item and over a dataset.

Boxes are compared only within the same image of an item. Per item, with
``H`` its human boxes and ``P`` the model's:

``matched``
    the largest one-to-one matching of human to predicted boxes in which
    every pair has IoU >= :data:`IOU_THRESHOLD` (0.5, the PASCAL VOC / COCO
    AP50 criterion); among matchings of that size, the one with the largest
    total IoU (Hungarian assignment, ``scipy.optimize.linear_sum_assignment``).
``recall_50`` = matched / len(H); ``precision_50`` = matched / len(P) (empty when P is).
``mean_best_iou``
    the mean over human boxes of the best IoU any predicted box reaches with it
    (0 for a human box with no predicted box in its image).
``union_iou``
    IoU of the two boxes' unions as pixel areas, summed over the item's images:
    ``sum |U(H) & U(P)| / sum |U(H) | U(P)|``. The evidence measures of the
    collapse stage read the union of an item's regions, so this is the
    agreement they see; it is 0 when the model gave no box.

Over a dataset (:func:`summarise`): ``recall_50`` and ``precision_50`` pool
the boxes of all items (micro averages), ``mean_best_iou`` averages over all
human boxes, ``mean_union_iou`` over items, and ``human_boxes_per_item``,
``predicted_boxes_per_item`` are means over the compared items. Only items
with human boxes are compared; an item the model gave no box counts with
recall 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

IOU_THRESHOLD = 0.5

Box = Sequence[float]


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """IoU of every box of ``a`` with every box of ``b`` (XYXY): float64 ``[len(a), len(b)]``."""
    A = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    B = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(A[:, None, 2], B[None, :, 2]) - np.maximum(A[:, None, 0], B[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(A[:, None, 3], B[None, :, 3]) - np.maximum(A[:, None, 1], B[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (A[:, 2] - A[:, 0]) * (A[:, 3] - A[:, 1])
    area_b = (B[:, 2] - B[:, 0]) * (B[:, 3] - B[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def matched_pairs(iou: np.ndarray, threshold: float = IOU_THRESHOLD) -> list[tuple[int, int]]:
    """The most (row, column) pairs with IoU >= ``threshold``, one-to-one; ties broken by total IoU."""
    if iou.size == 0:
        return []
    from scipy.optimize import linear_sum_assignment

    ok = iou >= threshold
    # a pair above the threshold is worth more than any IoU sum can add, so the count is maximised first
    weight = np.where(ok, 1.0 + iou / (iou.size + 1.0), 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if ok[r, c]]


def overlap_areas(human: Sequence[Box], predicted: Sequence[Box]) -> tuple[float, float]:
    """(area of U(human) & U(predicted), area of U(human) | U(predicted)) of boxes in one image.

    Exact, by coordinate compression: the box edges cut the plane into cells,
    each wholly inside or outside every box.
    """
    boxes = [(np.asarray(b, np.float64), 0) for b in human] + [(np.asarray(b, np.float64), 1) for b in predicted]
    boxes = [(b, side) for b, side in boxes if b[2] > b[0] and b[3] > b[1]]
    if not boxes:
        return 0.0, 0.0
    xs = np.unique(np.concatenate([[b[0], b[2]] for b, _ in boxes]))
    ys = np.unique(np.concatenate([[b[1], b[3]] for b, _ in boxes]))
    cx0, cx1, cy0, cy1 = xs[:-1], xs[1:], ys[:-1], ys[1:]
    cover = np.zeros((2, len(cy0), len(cx0)), dtype=bool)
    for b, side in boxes:
        inside_x = (cx0 >= b[0]) & (cx1 <= b[2])
        inside_y = (cy0 >= b[1]) & (cy1 <= b[3])
        cover[side] |= inside_y[:, None] & inside_x[None, :]
    cell = (cy1 - cy0)[:, None] * (cx1 - cx0)[None, :]
    return float((cell * (cover[0] & cover[1])).sum()), float((cell * (cover[0] | cover[1])).sum())


@dataclass
class ItemAgreement:
    item_id: str
    n_human: int
    n_predicted: int
    n_matched: int
    recall_50: float
    precision_50: float | None
    mean_best_iou: float
    union_iou: float
    sum_best_iou: float  # over human boxes, for the dataset's mean over boxes

    def row(self) -> dict[str, Any]:
        return asdict(self)


def item_agreement(
    item_id: str,
    human: Sequence[tuple[Box, int]],
    predicted: Sequence[tuple[Box, int]],
    threshold: float = IOU_THRESHOLD,
) -> ItemAgreement:
    """Agreement of one item's predicted boxes with its human boxes; each box is (XYXY, image index)."""
    if not human:
        raise ValueError(f"item {item_id}: no human boxes to compare with")
    n_matched, best_sum, inter_sum, union_sum = 0, 0.0, 0.0, 0.0
    for image in sorted({int(k) for _, k in human} | {int(k) for _, k in predicted}):
        h = [list(b) for b, k in human if int(k) == image]
        p = [list(b) for b, k in predicted if int(k) == image]
        iou = iou_matrix(h, p)
        if h and p:
            n_matched += len(matched_pairs(iou, threshold))
            best_sum += float(iou.max(axis=1).sum())
        inter, union = overlap_areas(h, p)
        inter_sum, union_sum = inter_sum + inter, union_sum + union
    n_h, n_p = len(human), len(predicted)
    return ItemAgreement(
        item_id=str(item_id),
        n_human=n_h,
        n_predicted=n_p,
        n_matched=n_matched,
        recall_50=n_matched / n_h,
        precision_50=n_matched / n_p if n_p else None,
        mean_best_iou=best_sum / n_h,
        union_iou=inter_sum / union_sum if union_sum > 0 else 0.0,
        sum_best_iou=best_sum,
    )


SUMMARY_KEYS = ("n_items_compared", "n_human_boxes", "n_predicted_boxes", "n_matched", "recall_50", "precision_50",
                "mean_best_iou", "mean_union_iou", "human_boxes_per_item", "predicted_boxes_per_item",
                "items_without_prediction")


def summarise(items: Iterable[ItemAgreement]) -> dict[str, Any]:
    """The dataset's agreement figures (see the module doc); None where nothing was compared."""
    items = list(items)
    n = len(items)
    n_h = sum(a.n_human for a in items)
    n_p = sum(a.n_predicted for a in items)
    matched = sum(a.n_matched for a in items)
    return {
        "n_items_compared": n,
        "n_human_boxes": n_h,
        "n_predicted_boxes": n_p,
        "n_matched": matched,
        "recall_50": matched / n_h if n_h else None,
        "precision_50": matched / n_p if n_p else None,
        "mean_best_iou": sum(a.sum_best_iou for a in items) / n_h if n_h else None,
        "mean_union_iou": sum(a.union_iou for a in items) / n if n else None,
        "human_boxes_per_item": n_h / n if n else None,
        "predicted_boxes_per_item": n_p / n if n else None,
        "items_without_prediction": sum(a.n_predicted == 0 for a in items),
    }
