import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from peekaboo import items, logs, provenance, stages, tables
from peekaboo.stage import StageCall
from peekaboo.datasets import Region

from fixtures.items import good_record, jsonl_spec, list_spec, raw, textured_png, tree_hashes, write_jsonl


@pytest.fixture
def data(tmp_path):
    """A data folder with one good 64x48 image and one file that is not an image."""
    textured_png(tmp_path / "data" / "img" / "a.png")
    (tmp_path / "data" / "img" / "bad.png").write_bytes(b"this is not a png")
    return tmp_path / "data"


def build(tmp_path, data, lines, **spec_extra):
    path = write_jsonl(data / "d.jsonl", lines)
    return items.build_items("d", jsonl_spec(path, **spec_extra), seed=0, results_dir=tmp_path / "res", base_dir=tmp_path)


def one_reject(rejects):
    assert len(rejects) == 1, rejects
    return rejects.iloc[0]


def test_good_items_table(tmp_path, data):
    df, rejects = build(tmp_path, data, [good_record("a", meta={"k": [1, 2]}), good_record("b")])
    assert list(df.columns) == items.ITEM_COLUMNS
    assert rejects.empty
    row = df.iloc[0]
    assert row.item_id == "a" and row.dataset == "d"
    assert row.image == "items/d/images/a.png" and list(row.images) == ["items/d/images/a.png"]
    assert (row.width, row.height) == (64, 48)
    assert row.answer == "A" and row.answer_type == "multi_choice" and row.task_type == "visual_reference"
    assert row.regions[1] == {"label": "circle", "box": [30.0, 10.0, 50.0, 30.0], "image": 0}
    assert json.loads(row.meta) == {"k": [1, 2]}
    assert row.source_line == 1
    # same pixels as the source, re-encoded as a plain RGB PNG
    written = Image.open(tmp_path / "res" / row.image)
    assert written.mode == "RGB" and written.format == "PNG"
    assert np.array_equal(np.asarray(written), np.asarray(Image.open(data / "img" / "a.png")))


def test_missing_image_rejected_others_go_on(tmp_path, data):
    df, rejects = build(tmp_path, data, [good_record("a"), good_record("b", image="img/gone.png"), good_record("c")])
    assert list(df.item_id) == ["a", "c"]
    r = one_reject(rejects)
    assert (r.item_id, r.source_line) == ("b", 2)
    assert r.reason.startswith("missing image:") and "gone.png" in r.reason


def test_unreadable_image_rejected_others_go_on(tmp_path, data):
    df, rejects = build(tmp_path, data, [good_record("a", image="img/bad.png"), good_record("b")])
    assert list(df.item_id) == ["b"]
    r = one_reject(rejects)
    assert (r.item_id, r.source_line) == ("a", 1) and r.reason.startswith("unreadable image:")


def test_truncated_image_rejected(tmp_path, data):
    full = (data / "img" / "a.png").read_bytes()
    (data / "img" / "cut.png").write_bytes(full[: len(full) // 2])
    df, rejects = build(tmp_path, data, [good_record("a", image="img/cut.png"), good_record("b")])
    assert list(df.item_id) == ["b"] and one_reject(rejects).reason.startswith("unreadable image:")


def test_box_outside_image_rejected(tmp_path, data):
    outside = good_record("a", regions=[{"label": "x", "box": [50, 10, 70, 20]}])  # image is 64 wide
    df, rejects = build(tmp_path, data, [outside, good_record("b")])
    assert list(df.item_id) == ["b"]
    r = one_reject(rejects)
    assert (r.item_id, r.source_line) == ("a", 1)
    assert r.reason.startswith("box outside image:") and "64x48" in r.reason


def test_negative_box_coordinate_rejected(tmp_path, data):
    df, rejects = build(tmp_path, data, [good_record("a", regions=[{"label": "x", "box": [-1, 0, 5, 5]}])])
    assert df.empty and one_reject(rejects).reason.startswith("box outside image:")


@pytest.mark.parametrize("box", [[5, 5, 5, 10], [5, 10, 9, 10], [9, 5, 5, 10]])
def test_zero_area_box_rejected(tmp_path, data, box):
    df, rejects = build(tmp_path, data, [good_record("a", regions=[{"label": "x", "box": box}]), good_record("b")])
    assert list(df.item_id) == ["b"]
    r = one_reject(rejects)
    assert (r.item_id, r.source_line) == ("a", 1) and r.reason.startswith("zero-area box:")


def test_duplicate_id_rejects_the_later_ones(tmp_path, data):
    lines = [good_record("a", answer="red"), good_record("b"), good_record("a", answer="blue"), good_record("a")]
    df, rejects = build(tmp_path, data, lines)
    assert list(df.item_id) == ["a", "b"]
    assert df.iloc[0].answer == "A"  # the first one is kept
    assert list(rejects.source_line) == [3, 4]
    assert all(r.startswith("duplicate item id:") and "line 1" in r for r in rejects.reason)


def test_non_json_line_rejected_with_line_number(tmp_path, data):
    df, rejects = build(tmp_path, data, [good_record("a"), "{'single': 'quotes'}", good_record("c")])
    assert list(df.item_id) == ["a", "c"]
    r = one_reject(rejects)
    assert r.source_line == 2 and r.item_id is None and r.reason.startswith("not JSON:")


def test_log_counts_rejections(tmp_path, data):
    log_path = tmp_path / "items.log"
    logs.to_file(log_path)
    try:
        lines = [good_record("a"), good_record("b", image="img/gone.png"), "nope", good_record("a"), good_record("c")]
        build(tmp_path, data, lines)
    finally:
        logs.to_file(None)
    text = log_path.read_text()
    assert "5 records, 2 items kept, 3 rejected (duplicate item id: 1, missing image: 1, not JSON: 1)" in text
    assert "rejected b (line 2): missing image" in text


def test_limit_counts_records_in_order(tmp_path, data):
    df, rejects = build(tmp_path, data, [good_record("a"), "bad", good_record("c"), good_record("d")], limit=3)
    assert list(df.item_id) == ["a", "c"] and len(rejects) == 1


def test_task_type_precedence(tmp_path, data):
    lines = [good_record("a"), good_record("b", task_type="visual_reference"), good_record("c")]
    df, _ = build(tmp_path, data, lines, task_type="symbolic", task_type_overrides={"c": "visual_reference"})
    assert list(df.task_type) == ["symbolic", "symbolic", "visual_reference"]
    df, _ = build(tmp_path, data, [good_record("a", task_type="symbolic"), good_record("b")])
    assert list(df.task_type) == ["symbolic", "visual_reference"]  # per item, else the adapter's default
    # a map from the metadata wins over the dataset-wide type (which types what the map does not name) and
    # loses to a per-id override; nested JSON text and list-valued fields are read
    lines = [good_record("a", meta={"metadata": {"task": "math word problem"}}),
             good_record("b", meta={"metadata": json.dumps({"task": "figure question answering"})}),
             good_record("c", meta={"metadata": {"task": "unknown"}}),
             good_record("d", meta={"metadata": {"task": "math word problem"}}),
             good_record("e", meta={"skills": ["numeric commonsense", "statistical reasoning"]})]
    type_map = {"field": "metadata.task", "values": {"math word problem": "symbolic",
                                                     "figure question answering": "visual_reference"}}
    df, _ = build(tmp_path, data, lines, task_type="visual_reference", task_type_map=type_map,
                  task_type_overrides={"d": "visual_reference"})
    assert list(df.task_type) == ["symbolic", "visual_reference", "visual_reference", "visual_reference",
                                  "visual_reference"]
    skills = {"field": "skills", "values": {"statistical reasoning": "symbolic", "arithmetic reasoning": "visual_reference"}}
    assert items.mapped_task_type({"skills": ["numeric commonsense", "statistical reasoning"]}, skills) == "symbolic"
    assert items.mapped_task_type({"skills": "x"}, skills) is None and items.mapped_task_type({}, skills) is None


def test_boxes_file_adds_regions_to_items_without(tmp_path, data):
    boxes = write_jsonl(
        data / "boxes.jsonl",
        [
            {"dataset": "d", "item_id": "bare", "boxes": [{"label": "cup", "box": [1, 2, 10, 12]}]},
            {"dataset": "d", "item_id": "a", "boxes": [{"label": "other", "box": [0, 0, 5, 5]}]},
            {"dataset": "other", "item_id": "bare", "boxes": [{"label": "no", "box": [0, 0, 1, 1]}]},
            {"dataset": "d", "item_id": "ghost", "boxes": []},
            {"dataset": "d", "item_id": "far", "boxes": [{"label": "x", "box": [0, 0, 100, 100]}]},
            "not json",
        ],
    )
    log_path = tmp_path / "items.log"
    logs.to_file(log_path)
    try:
        df, rejects = build(
            tmp_path, data,
            [good_record("a"), good_record("bare", regions=None), good_record("far", regions=[])],
            boxes=str(boxes),
        )
    finally:
        logs.to_file(None)
    regions = dict(zip(df.item_id, df.regions))
    assert [r["label"] for r in regions["a"]] == ["square", "circle"]  # its own regions win
    assert regions["bare"] == [{"label": "cup", "box": [1.0, 2.0, 10.0, 12.0], "image": 0}]
    r = one_reject(rejects)
    assert r.item_id == "far" and r.reason.startswith("box outside image:") and "boxes.jsonl line 5" in r.reason
    text = log_path.read_text()
    assert "2 item(s) got evidence boxes; 0 have none (left out of collapse and CRM); 1 kept their own regions" in text
    assert "1 box-file item id(s) match no item (ghost)" in text and "1 line(s) for other datasets" in text
    assert "boxes.jsonl line 6: not JSON" in text


def test_unsafe_and_colliding_ids_get_distinct_files(tmp_path, list_adapter):
    png = (textured_png(tmp_path / "x.png")).read_bytes()
    records = [raw("a/b", [png]), raw("a_b", [png]), raw("a", [png, png]), raw("a-1", [png]), raw("A", [png])]
    df, rejects = items.build_items("t", list_spec(records), 0, tmp_path / "res")
    assert rejects.empty
    paths = [p for ps in df.images for p in ps]
    assert len(set(p.lower() for p in paths)) == len(paths) == 6
    assert all((tmp_path / "res" / p).is_file() for p in paths)
    assert list(df.item_id) == ["a/b", "a_b", "a", "a-1", "A"]  # the original ids stay in the table
    assert all("/" not in p.rsplit("images/", 1)[1] for p in paths)
    assert items.safe_stem("a/b") == items.safe_stem("a/b") != items.safe_stem("a_b")


def test_image_sources_bytes_pil_and_alpha(tmp_path, list_adapter):
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    buf = io.BytesIO()
    Image.new("L", (5, 4), 77).save(buf, format="PNG")
    records = [raw("pil", [rgba]), raw("bytes", [buf.getvalue()]), raw("junk", [b"\x89PNG broken"])]
    df, rejects = items.build_items("t", list_spec(records), 0, tmp_path / "res")
    assert list(df.item_id) == ["pil", "bytes"]
    pil = np.asarray(Image.open(tmp_path / "res" / df.image[0]))
    assert pil.shape == (6, 8, 3) and tuple(pil[0, 0]) == (0, 0, 255) and tuple(pil[5, 7]) == (255, 255, 255)
    gray = np.asarray(Image.open(tmp_path / "res" / df.image[1]))
    assert gray.shape == (4, 5, 3) and (gray == 77).all()
    assert one_reject(rejects).reason.startswith("unreadable image: image bytes")


def test_region_in_second_image_checked_against_that_image(tmp_path, list_adapter):
    small = Image.new("RGB", (10, 10))
    big = Image.new("RGB", (100, 100))
    fits = raw("fits", [small, big], regions=[Region("r", (50, 50, 90, 90), image=1)])
    too_big = raw("too_big", [big, small], regions=[Region("r", (50, 50, 90, 90), image=1)])
    no_image = raw("no_image", [big], regions=[Region("r", (0, 0, 1, 1), image=1)])
    df, rejects = items.build_items("t", list_spec([fits, too_big, no_image]), 0, tmp_path / "res")
    assert list(df.item_id) == ["fits"] and (df.width[0], df.height[0]) == (10, 10)
    assert list(rejects.item_id) == ["too_big", "no_image"]
    assert rejects.reason[0].startswith("box outside image") and rejects.reason[1].startswith("bad region")


def test_stale_images_are_removed(tmp_path, data):
    stale = tmp_path / "res" / "items" / "d" / "images" / "old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    build(tmp_path, data, [good_record("a")])
    assert sorted(p.name for p in stale.parent.iterdir()) == ["a.png"]


def run_items_stage(spec, seed, results, out, code=()):
    """The items stage of dataset "d" as the workflow runs it (its paths are absolute, so the cwd does not matter)."""
    items.run_stage(StageCall(inputs={}, outputs={"table": str(out / "d.parquet"), "rejects": str(out / "d.rejects.parquet")},
                              config={"dataset": spec, "seed": seed}, results_dir=results, code=code,
                              wildcards={"d": "d"}))


def test_run_stage_writes_tables_with_schema_and_provenance(tmp_path, data):
    path = write_jsonl(data / "d.jsonl", [good_record("a"), "broken"])
    spec = jsonl_spec(path)
    code_files = stages.code_files("items", "peekaboo.datasets.jsonl")
    out = tmp_path / "res" / "items"
    run_items_stage(spec, 3, tmp_path / "res", out, code_files)
    assert pq.read_schema(out / "d.parquet").remove_metadata() == items.ITEMS_SCHEMA
    assert pq.read_schema(out / "d.rejects.parquet").remove_metadata() == items.REJECTS_SCHEMA
    prov = tables.read_provenance(out / "d.parquet")
    assert prov["config_hash"] == provenance.config_hash({"dataset": spec, "seed": 3})
    assert prov["code_hash"] == provenance.code_hash(code_files)
    assert (prov["n_items"], prov["n_rejects"]) == (1, 1)
    back = tables.read_table(out / "d.rejects.parquet")
    assert list(back.source_line) == [2] and back.reason[0].startswith("not JSON")


def test_empty_result_still_writes_typed_tables(tmp_path, data):
    path = write_jsonl(data / "d.jsonl", ["broken"])
    out = tmp_path / "res" / "items"
    run_items_stage(jsonl_spec(path), 0, tmp_path / "res", out)
    df = tables.read_table(out / "d.parquet")
    assert df.empty and pq.read_schema(out / "d.parquet").remove_metadata() == items.ITEMS_SCHEMA
    assert (out / "d" / "images").is_dir()


def test_same_config_and_seed_give_identical_bytes(tmp_path, data):
    lines = [good_record("a"), good_record("b/c"), good_record("x", image="img/gone.png")]
    path = write_jsonl(data / "d.jsonl", lines)
    spec = jsonl_spec(path)
    hashes = []
    for run in ("one", "two"):
        res = tmp_path / run
        run_items_stage(spec, 0, res, res / "items")
        hashes.append(tree_hashes(res))
    assert len(hashes[0]) == 4  # two tables, two images
    assert hashes[0] == hashes[1]


def test_sample_draws_a_seeded_subset_in_file_order(tmp_path, data):
    lines = [good_record(f"i{k}") for k in range(12)]
    df, rejects = build(tmp_path, data, lines, sample={"n": 5, "seed": 1})
    again, _ = build(tmp_path, data, lines, sample={"n": 5, "seed": 1})
    other, _ = build(tmp_path, data, lines, sample={"n": 5, "seed": 2})
    ids = list(df.item_id)
    assert len(ids) == 5 and rejects.empty and ids == list(again.item_id)
    assert ids == sorted(ids, key=lambda i: int(i[1:]))  # the file's order
    assert ids != [f"i{k}" for k in range(5)]  # not the first five
    assert set(ids) != set(other.item_id)
    # a drawn record that is rejected is replaced: still 5 items; limit applies first (its meaning unchanged)
    with_bad = [good_record(f"i{k}", image="img/gone.png") if k % 2 else good_record(f"i{k}") for k in range(12)]
    kept, rejected = build(tmp_path, data, with_bad, sample={"n": 5, "seed": 1})
    assert len(kept) == 5 and all(int(i[1:]) % 2 == 0 for i in kept.item_id) and len(rejected) >= 1
    limited, _ = build(tmp_path, data, lines, limit=4, sample={"n": 10, "seed": 1})
    assert list(limited.item_id) == ["i0", "i1", "i2", "i3"]
