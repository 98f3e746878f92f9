"""Agreement metrics on known values, and on a file of recorded answers replayed through the parsers."""

import json

import numpy as np
import pytest

from peekaboo.grounding import agreement
from peekaboo.grounding.coords import ImageFrame
from peekaboo.grounding.requests import Outcome
from peekaboo.grounding.stage import compare, item_boxes
from peekaboo.grounding.vlm import read_answer


def test_iou_matrix_on_known_boxes():
    iou = agreement.iou_matrix([[0, 0, 10, 10], [0, 0, 20, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [30, 30, 40, 40]])
    assert iou == pytest.approx(np.array([[1.0, 50 / 150, 0.0], [0.5, 0.5, 0.0]]))
    assert agreement.iou_matrix([], [[0, 0, 1, 1]]).shape == (0, 1)


def test_matching_maximises_the_number_of_pairs_above_the_threshold():
    # greedy by best IoU would pair h0 with p0 (0.9) and leave h1 without a partner
    iou = np.array([[0.9, 0.6], [0.55, 0.0]])
    assert sorted(agreement.matched_pairs(iou)) == [(0, 1), (1, 0)]
    assert agreement.matched_pairs(np.array([[0.49]])) == []
    assert agreement.matched_pairs(np.array([[0.5]])) == [(0, 0)]  # IoU 0.5 counts (>=)
    # same number of pairs: the larger total IoU wins
    assert sorted(agreement.matched_pairs(np.array([[0.9, 0.6], [0.6, 0.55]]))) == [(0, 0), (1, 1)]
    assert sorted(agreement.matched_pairs(np.array([[0.6, 0.9], [0.55, 0.6]]))) == [(0, 1), (1, 0)]


def test_overlap_areas_equal_counting_pixels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        def boxes(n):
            out = []
            for _ in range(n):
                x0, y0 = rng.integers(0, 40, 2)
                out.append([int(x0), int(y0), int(x0 + rng.integers(1, 20)), int(y0 + rng.integers(1, 20))])
            return out

        human, predicted = boxes(int(rng.integers(1, 4))), boxes(int(rng.integers(0, 4)))
        masks = np.zeros((2, 60, 60), bool)
        for side, group in enumerate((human, predicted)):
            for x0, y0, x1, y1 in group:
                masks[side, y0:y1, x0:x1] = True
        inter, union = agreement.overlap_areas(human, predicted)
        assert inter == (masks[0] & masks[1]).sum() and union == (masks[0] | masks[1]).sum()


# Recorded answers of four VisArgs-like items with human boxes, in three families' formats.
# Worked out by hand (see each line's note): the expected figures below follow from them.
HUMAN = {
    "a": [([0, 0, 100, 100], 0), ([100, 0, 200, 100], 0)],  # 200 x 100 image
    "b": [([10, 10, 40, 40], 0)],  # 100 x 50 image
    "c": [([0, 0, 10, 10], 0)],
    "d": [([5, 5, 15, 15], 1)],  # the second of two images
}
ANSWERS = [
    # a: qwen3_vl on the 0-1000 grid: [0,0,100,100] (IoU 1 with the first) and [100,0,150,100] (IoU 0.5 with the second)
    {"item_id": "a", "image": 0, "format": "qwen3_vl", "size": [200, 100], "resized": [224, 112],
     "answer": '```json\n[{"bbox_2d": [0, 0, 500, 1000], "label": "left"}, {"bbox_2d": [500, 0, 750, 1000]}]\n```'},
    # b: qwen2_5_vl in pixels of the 112 x 56 resized image: [0,0,56,56] -> [0,0,50,50]; IoU 900/2500 = 0.36
    {"item_id": "b", "image": 0, "format": "qwen2_5_vl", "size": [100, 50], "resized": [112, 56],
     "answer": '[{"bbox_2d": [0, 0, 56, 56], "label": "cup"}, {"bbox_2d": [0, 0, 5000, 10]}]'},
    # c: no box at all
    {"item_id": "c", "image": 0, "format": "qwen3_vl", "size": [50, 50], "resized": [56, 56],
     "answer": "I cannot tell which region matters."},
    # d: glm boxes the first image while the human box is in the second: no overlap
    {"item_id": "d", "image": 0, "format": "glm", "size": [40, 40], "resized": [56, 56],
     "answer": "<|begin_of_box|>[[0,0,500,500]]<|end_of_box|>"},
    {"item_id": "d", "image": 1, "format": "glm", "size": [40, 40], "resized": [56, 56],
     "answer": "<|begin_of_box|>[[0,0,1000]]<|end_of_box|>"},
]


def replay(path):
    outcomes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        outcome = Outcome(rec["item_id"], rec["image"], 2 if rec["item_id"] == "d" else 1, None,
                          width=rec["size"][0], height=rec["size"][1], answer=rec["answer"])
        read_answer(outcome, rec["format"], ImageFrame(*rec["size"], *rec["resized"]), max_boxes=4)
        outcomes.append(outcome)
    return outcomes


def test_replayed_answers_give_the_worked_out_boxes_and_agreement(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in ANSWERS) + "\n", encoding="utf-8")
    outcomes = replay(path)
    boxes = item_boxes(outcomes)
    assert boxes == {
        "a": [{"box": [0.0, 0.0, 100.0, 100.0], "image": 0, "label": "left"},
              {"box": [100.0, 0.0, 150.0, 100.0], "image": 0}],
        "b": [{"box": [0.0, 0.0, 50.0, 50.0], "image": 0, "label": "cup"}],
        "d": [{"box": [0.0, 0.0, 20.0, 20.0], "image": 0}],
    }
    rejects = {(o.item_id, o.image_index): [(r.kind, r.box) for r in o.rejects] for o in outcomes}
    assert rejects == {("a", 0): [], ("b", 0): [("box outside image", 1)], ("c", 0): [("no box", None)],
                       ("d", 0): [], ("d", 1): [("unparseable answer", 0)]}

    rows = {a.item_id: a for a in compare(HUMAN, boxes)}
    assert (rows["a"].n_matched, rows["a"].recall_50, rows["a"].precision_50) == (2, 1.0, 1.0)
    assert rows["a"].mean_best_iou == pytest.approx(0.75) and rows["a"].union_iou == pytest.approx(0.75)
    assert (rows["b"].n_matched, rows["b"].recall_50, rows["b"].precision_50) == (0, 0.0, 0.0)
    assert rows["b"].mean_best_iou == pytest.approx(0.36) and rows["b"].union_iou == pytest.approx(0.36)
    assert (rows["c"].n_predicted, rows["c"].precision_50, rows["c"].union_iou) == (0, None, 0.0)
    assert (rows["d"].n_matched, rows["d"].mean_best_iou, rows["d"].union_iou) == (0, 0.0, 0.0)

    summary = agreement.summarise(rows.values())
    assert summary == pytest.approx({
        "n_items_compared": 4, "n_human_boxes": 5, "n_predicted_boxes": 4, "n_matched": 2,
        "recall_50": 0.4, "precision_50": 0.5, "mean_best_iou": (1.5 + 0.36) / 5,
        "mean_union_iou": (0.75 + 0.36) / 4, "human_boxes_per_item": 1.25, "predicted_boxes_per_item": 1.0,
        "items_without_prediction": 1,
    })


def test_nothing_to_compare_gives_empty_figures():
    summary = agreement.summarise([])
    assert summary["n_items_compared"] == 0 and summary["recall_50"] is None and summary["mean_union_iou"] is None
    with pytest.raises(ValueError, match="item x: no human boxes"):
        agreement.item_agreement("x", [], [([0, 0, 1, 1], 0)])
