"""Evidence-box files: per-line errors, dataset filtering, attaching boxes to items without regions."""

import json

from fixtures import benchmarks as fx
from peekaboo.datasets import RawItem, Region, Reject, get_adapter
from peekaboo.datasets.boxes import BoxReport, attach_boxes, read_boxes


def write_lines(path, lines):
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n", encoding="utf-8")
    return path


GOOD = {"dataset": "mathvista", "item_id": "5", "boxes": [{"label": "angle H", "box": [10, 5, 40, 30]}]}


def test_valid_lines_become_regions(tmp_path):
    path = write_lines(tmp_path / "boxes.jsonl", [
        GOOD,
        {"dataset": "mathvista", "item_id": 7,
         "boxes": [{"box": [0, 0, 4.5, 4], "image": 1}, {"label": "b", "box": [1, 1, 2, 2]}]},
        "",
        {"item_id": "2", "boxes": []},  # no dataset: applies to any; an empty list means no boxes
    ])
    boxes = read_boxes(path, "mathvista")
    assert boxes.errors == []
    assert boxes.regions_for("5") == [Region("angle H", (10.0, 5.0, 40.0, 30.0), 0)]
    assert boxes.regions_for("7") == [Region("box1", (0.0, 0.0, 4.5, 4.0), 1), Region("b", (1.0, 1.0, 2.0, 2.0), 0)]
    assert boxes.regions_for("2") == [] and boxes.regions_for("nope") is None
    assert boxes.line_of == {"5": 1, "7": 2, "2": 4}


def test_each_bad_line_is_an_error_naming_it_and_the_rest_is_read(tmp_path):
    path = write_lines(tmp_path / "boxes.jsonl", [
        "{not json",
        {"dataset": "mathvista", "boxes": []},
        {"item_id": "a", "boxes": [{"box": [10, 10, 5, 20]}]},
        {"item_id": "b", "boxes": [{"box": [0, 0, "x", 1]}]},
        {"item_id": "c", "boxes": {"box": [0, 0, 1, 1]}},
        {"item_id": "d", "boxes": [{"box": [0, 0, 1]}]},
        {"item_id": "e", "boxes": [{"box": [0, 0, 1, 1], "image": -1}]},
        GOOD,
        {**GOOD, "boxes": [{"box": [0, 0, 2, 2]}]},
        [1, 2],
    ])
    boxes = read_boxes(path, "mathvista")
    errors = {e.line: e.reason for e in boxes.errors}
    assert sorted(errors) == [1, 2, 3, 4, 5, 6, 7, 9, 10]
    assert errors[1].startswith("not JSON")
    assert errors[2] == "missing item_id"
    assert "x1 > x0" in errors[3] and "item 'a'" in errors[3]
    assert "not a number" in errors[4]
    assert "'boxes' must be a list" in errors[5]
    assert "[x0, y0, x1, y1]" in errors[6]
    assert "image index" in errors[7]
    assert "already has boxes on line 8" in errors[9]
    assert errors[10] == "not a JSON object"
    assert str(boxes.errors[0]).startswith("line 1: ")
    assert list(boxes.by_item) == ["5"]


def test_a_line_that_is_not_utf8_is_an_error_naming_it_and_the_others_are_read(tmp_path):
    path = tmp_path / "boxes.jsonl"
    bad = json.dumps({"item_id": "caf\u00e9", "boxes": []}).replace("\\u00e9", "\u00e9").encode("latin-1")
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad + b"\n" + json.dumps({**GOOD, "item_id": "9"}).encode())
    boxes = read_boxes(path, "mathvista")
    assert list(boxes.by_item) == ["5", "9"] and boxes.line_of == {"5": 1, "9": 3}
    assert len(boxes.errors) == 1 and boxes.errors[0].line == 2
    assert boxes.errors[0].reason.startswith("not valid UTF-8: byte 0xe9")


def test_a_byte_order_mark_is_read_as_such(tmp_path):
    path = tmp_path / "boxes.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode("utf-8") + b"\n")
    boxes = read_boxes(path, "mathvista")
    assert boxes.errors == [] and boxes.regions_for("5") == [Region("angle H", (10.0, 5.0, 40.0, 30.0), 0)]
    # a mark anywhere but the start is not one: that line is not JSON
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xef\xbb\xbf" + json.dumps({**GOOD, "item_id": "7"}).encode())
    boxes = read_boxes(path, "mathvista")
    assert list(boxes.by_item) == ["5"] and [e.line for e in boxes.errors] == [2]
    assert boxes.errors[0].reason.startswith("not JSON")


def test_lines_of_other_datasets_are_skipped_and_counted(tmp_path):
    path = write_lines(tmp_path / "boxes.jsonl", [GOOD, {**GOOD, "dataset": "mmmu_pro", "item_id": "x"}])
    boxes = read_boxes(path, "mmmu_pro")
    assert list(boxes.by_item) == ["x"] and boxes.other_datasets == 1
    assert set(read_boxes(path).by_item) == {"5", "x"}  # no dataset given: every line


def test_attach_gives_boxes_to_items_without_regions_only(tmp_path):
    path = write_lines(tmp_path / "boxes.jsonl", [
        GOOD,
        {"item_id": "own", "boxes": [{"box": [0, 0, 1, 1]}]},
        {"item_id": "ghost", "boxes": [{"box": [0, 0, 1, 1]}]},
        "oops",
    ])
    records = [
        RawItem("5", "q", "97", "multi_choice", choices=["97"]),
        RawItem("own", "q", "a", "text", regions=[Region("mine", (1, 1, 3, 3))]),
        RawItem("none", "q", "a", "text"),
        Reject("bad", item_id="r"),
    ]
    report = BoxReport()
    out = list(attach_boxes(records, read_boxes(path, "mathvista"), report))
    assert out[0].regions == [Region("angle H", (10.0, 5.0, 40.0, 30.0), 0)]
    assert out[1].regions == [Region("mine", (1, 1, 3, 3))]
    assert out[2].regions == [] and isinstance(out[3], Reject)
    assert (report.attached, report.kept_own, report.without_boxes) == (1, 1, 1)
    assert report.unknown_ids == ["ghost"] and report.errors == ["line 4: not JSON: Expecting value at column 1"]
    summary = report.summary()
    assert "1 item(s) got evidence boxes" in summary and "ghost" in summary and "line 4" in summary


def test_attach_without_a_file_only_counts():
    report = BoxReport()
    out = list(attach_boxes([RawItem("a", "q", "x", "text")], None, report))
    assert len(out) == 1 and report.without_boxes == 1 and report.attached == 0


def test_mathvista_items_get_file_boxes_through_the_items_stage(tmp_path):
    data = fx.write_mathvista_parquet(tmp_path)
    seven = {**GOOD, "item_id": "7", "boxes": [{"label": "x", "box": [0, 0, 50, 50]}]}
    path = write_lines(tmp_path / "boxes.jsonl", [GOOD, seven])
    boxes = read_boxes(path, "mathvista")
    a = get_adapter("mathvista", {"adapter": "mathvista", "options": {"path": str(data)}})
    attached = {r.item_id: r.regions for r in attach_boxes(a.records(), boxes)}
    assert attached["5"] == [Region("angle H", (10.0, 5.0, 40.0, 30.0), 0)] and attached["2"] == []
    # the items stage checks them against the image: item 7's image is 40x40, its box reaches 50
    items, rejects = fx.build_items(tmp_path, "mathvista", "mathvista", {"path": str(data)}, boxes=str(path))
    regions = dict(zip(items["item_id"], items["regions"]))
    assert [r["label"] for r in regions["5"]] == ["angle H"] and len(regions["2"]) == 0
    assert list(rejects["item_id"]) == ["7"] and rejects["reason"][0].startswith("box outside image")
