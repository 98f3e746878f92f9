import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

from peekaboo import items, masks, provenance, seeding, stages, tables
from peekaboo.stage import StageCall
from peekaboo.datasets import Region

from fixtures.items import list_spec, raw, tree_hashes

ALL_VARIANTS = ["drop", "drop_all", "keep_evidence", "control"]


def cfg(**over):
    base = {"variants": ALL_VARIANTS, "fills": ["gray"], "blur_radius": 3, "noise_std": 64, "control_attempts": 200, "seed": 0}
    base.update(over)
    return base


def texture(w=64, h=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


def make_items(tmp_path, records, dataset="t"):
    """The items stage on in-memory records; returns its table as the masks stage reads it (from parquet)."""
    res = tmp_path / "res"
    df, rejects = items.build_items(dataset, list_spec(records), 0, res)
    assert rejects.empty, rejects
    items.write_items(df, rejects, res / f"items/{dataset}.parquet", res / f"items/{dataset}.rejects.parquet")
    return tables.read_table(res / f"items/{dataset}.parquet"), res


def pixels(res, path):
    return np.asarray(Image.open(res / path).convert("RGB"))


def box_mask(box, w=64, h=48):
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    m[y0:y1, x0:x1] = True
    return m


REGIONS = [Region("square", (4, 4, 20, 20)), Region("circle", (30, 10, 50, 30))]


@pytest.fixture
def one_item(tmp_path, list_adapter):
    return make_items(tmp_path, [raw("it", [texture()], REGIONS)])


def rows_by_id(df):
    return {r.mask_id: r for r in df.itertuples(index=False)}


def test_variant_rows_and_order(one_item):
    items_df, res = one_item
    df, skipped = masks.build_masks(items_df, cfg(fills=["gray", "black"]), res, "t", seed=0)
    assert skipped.empty
    assert list(df.columns) == masks.MASK_COLUMNS
    variants = [(r.variant, r.fill) for r in df.itertuples()]
    assert variants == [("base", "none")] + [
        (v, f)
        for v in ["drop:0", "drop:1", "drop:all", "keep:evidence", "ctrl:0", "ctrl:1"]
        for f in ["gray", "black"]
    ]
    assert df.mask_id.is_unique and df.mask_id[0] == "it|base|none"
    base = df.iloc[0]
    assert base.image == items_df.image[0] and base.area_fraction == 0.0 and base.hidden_boxes == []
    assert [None if pd.isna(r) else r for r in df.region] == [None] + [0, 0, 1, 1] + [None] * 4 + [0, 0, 1, 1]


@pytest.mark.parametrize("fill", ["black", "gray", "mean", "blur", "noise"])
def test_drop_changes_inside_and_keeps_outside(one_item, fill):
    items_df, res = one_item
    df, _ = masks.build_masks(items_df, cfg(fills=[fill], variants=["drop"]), res, "t", seed=0)
    original = pixels(res, items_df.image[0])
    row = rows_by_id(df)[f"it|drop:0|{fill}"]
    masked = pixels(res, row.image)
    inside = box_mask((4, 4, 20, 20))
    assert np.array_equal(masked[~inside], original[~inside])  # outside: identical
    assert (masked[inside] != original[inside]).any(axis=-1).mean() > 0.9  # inside: changed
    expected = {
        "black": np.zeros(3),
        "gray": np.full(3, 128),
        "mean": np.floor(original.reshape(-1, 3).mean(0) + 0.5),
    }
    if fill in expected:
        assert (masked[inside] == expected[fill]).all()
    if fill == "blur":
        blurred = np.asarray(Image.fromarray(original).filter(ImageFilter.GaussianBlur(3)))
        assert np.array_equal(masked[inside], blurred[inside])
    assert row.hidden_boxes == [[4.0, 4.0, 20.0, 20.0]] and row.area_fraction == pytest.approx(256 / (64 * 48))


def test_fractional_box_hides_every_touched_pixel(tmp_path, list_adapter):
    items_df, res = make_items(tmp_path, [raw("f", [texture()], [Region("r", (4.5, 4.2, 9.1, 9.9))])])
    df, _ = masks.build_masks(items_df, cfg(variants=["drop"]), res, "t", 0)
    row = df.iloc[1]
    assert row.hidden_boxes == [[4.0, 4.0, 10.0, 10.0]]
    masked = pixels(res, row.image)
    assert (masked[box_mask((4, 4, 10, 10))] == 128).all()


def test_drop_all_area_is_the_union(tmp_path, list_adapter):
    overlapping = [Region("a", (0, 0, 20, 20)), Region("b", (10, 10, 30, 30))]
    items_df, res = make_items(tmp_path, [raw("o", [texture()], overlapping)])
    df, _ = masks.build_masks(items_df, cfg(variants=["drop_all"]), res, "t", 0)
    row = df.iloc[1]
    assert row.variant == "drop:all"
    assert row.area_fraction == pytest.approx((400 + 400 - 100) / (64 * 48))  # not 800
    masked, original = pixels(res, row.image), pixels(res, items_df.image[0])
    union = box_mask((0, 0, 20, 20)) | box_mask((10, 10, 30, 30))
    assert (masked[union] == 128).all() and np.array_equal(masked[~union], original[~union])


def test_keep_evidence_hides_everything_else(one_item):
    items_df, res = one_item
    df, _ = masks.build_masks(items_df, cfg(variants=["keep_evidence"], fills=["black"]), res, "t", 0)
    row = df.iloc[1]
    masked, original = pixels(res, row.image), pixels(res, items_df.image[0])
    evidence = box_mask((4, 4, 20, 20)) | box_mask((30, 10, 50, 30))
    assert np.array_equal(masked[evidence], original[evidence])
    assert (masked[~evidence] == 0).all()
    assert row.area_fraction == pytest.approx(1 - evidence.sum() / evidence.size)
    # the recorded boxes tile exactly the hidden pixels
    tiled = np.zeros_like(evidence, dtype=int)
    for box in row.hidden_boxes:
        tiled += box_mask(box)
    assert np.array_equal(tiled, (~evidence).astype(int))


def test_complement_rects_tile_the_rest():
    rng = np.random.default_rng(1)
    for _ in range(50):
        w, h = int(rng.integers(5, 40)), int(rng.integers(5, 40))
        rects = []
        for _ in range(int(rng.integers(0, 5))):
            x0, y0 = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
            rects.append((x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))))
        covered = masks.rect_mask(rects, w, h)
        count = np.zeros((h, w), dtype=int)
        for x0, y0, x1, y1 in masks.complement_rects(rects, w, h):
            count[y0:y1, x0:x1] += 1
        assert np.array_equal(count, (~covered).astype(int))


def test_control_never_touches_evidence(tmp_path, list_adapter):
    rng = np.random.default_rng(7)
    records = []
    for i in range(25):
        regions = []
        for k in range(int(rng.integers(1, 4))):
            w, h = int(rng.integers(3, 25)), int(rng.integers(3, 20))
            x, y = int(rng.integers(0, 64 - w)), int(rng.integers(0, 48 - h))
            regions.append(Region(f"r{k}", (x + 0.3, y + 0.6, x + w, y + h)))  # fractional edges too
        records.append(raw(f"i{i}", [texture(seed=i)], regions))
    items_df, res = make_items(tmp_path, records)
    df, skipped = masks.build_masks(items_df, cfg(variants=["control"]), res, "t", 0)
    n_controls = 0
    for item in items_df.itertuples():
        original = pixels(res, item.image)
        evidence = np.zeros((48, 64), dtype=bool)
        rects = [masks.pixel_rect(r["box"], 64, 48) for r in item.regions]
        for rect in rects:
            evidence |= box_mask(rect)
        for row in df[(df.item_id == item.item_id) & (df.variant != "base")].itertuples():
            n_controls += 1
            (box,) = row.hidden_boxes
            x0, y0, x1, y1 = box
            ref = rects[row.region]
            assert (x1 - x0, y1 - y0) == (ref[2] - ref[0], ref[3] - ref[1])  # same size as region k
            assert 0 <= x0 and 0 <= y0 and x1 <= 64 and y1 <= 48  # inside the image
            hidden = box_mask(box)
            assert not (hidden & evidence).any()
            masked = pixels(res, row.image)
            assert np.array_equal(masked[evidence], original[evidence])  # evidence pixels untouched
            assert (masked[hidden] == 128).all()
    assert n_controls + len(skipped) == sum(len(r) for r in items_df.regions)
    assert n_controls >= 40


def test_control_found_by_scan_when_random_tries_miss(tmp_path, list_adapter):
    # evidence leaves one 10x10 gap in the bottom right corner; one random try almost surely misses it
    regions = [Region("left", (0, 0, 54, 48)), Region("top", (54, 0, 64, 38)), Region("small", (0, 0, 10, 10))]
    items_df, res = make_items(tmp_path, [raw("g", [texture()], regions)])
    df, skipped = masks.build_masks(items_df, cfg(variants=["control"], control_attempts=1), res, "t", 0)
    assert list(skipped.variant) == ["ctrl:0", "ctrl:1"]
    assert all(r.startswith("no place for a") for r in skipped.reason)
    row = df[df.variant == "ctrl:2"].iloc[0]
    assert row.hidden_boxes == [[54.0, 38.0, 64.0, 48.0]]


def test_control_skipped_per_fill_with_reason(tmp_path, list_adapter):
    items_df, res = make_items(tmp_path, [raw("full", [texture()], [Region("all", (0, 0, 64, 48))])])
    df, skipped = masks.build_masks(items_df, cfg(fills=["gray", "noise"]), res, "t", 0)
    assert set(df.variant) == {"base", "drop:0"}
    assert sorted(zip(skipped.variant, skipped.fill)) == [
        ("ctrl:0", "gray"), ("ctrl:0", "noise"), ("drop:all", "gray"), ("drop:all", "noise"),
        ("keep:evidence", "gray"), ("keep:evidence", "noise"),
    ]
    assert skipped[skipped.variant == "drop:all"].reason.iloc[0] == "the item has one region: drop:all would repeat drop:0"
    ctrl_reason = skipped[skipped.variant == "ctrl:0"].reason.iloc[0]
    assert ctrl_reason == "no place for a 64x48 control box in image 0 (64x48) that overlaps no evidence region"


def test_find_control_rect_exhaustive_and_impossible():
    rng = np.random.default_rng(0)
    assert masks.find_control_rect((3, 3), [(0, 0, 10, 10)], (10, 10), rng, 5) is None
    assert masks.find_control_rect((2, 2), [(0, 0, 10, 8)], (10, 10), rng, 0) is not None
    found = masks.find_control_rect((10, 2), [(0, 0, 10, 8)], (10, 10), rng, 0)
    assert found == (0, 8, 10, 10)


def test_items_without_regions_and_disabled_datasets_get_base_only(tmp_path, list_adapter):
    items_df, res = make_items(tmp_path, [raw("plain", [texture()]), raw("r", [texture()], REGIONS), raw("text", [])])
    df, skipped = masks.build_masks(items_df, cfg(), res, "t", 0)
    assert list(df[df.item_id != "r"].variant) == ["base", "base"]
    assert df[df.item_id == "text"].image.isna().all()
    df, skipped = masks.build_masks(items_df, cfg(), res, "t", 0, enabled=False)
    assert list(df.variant) == ["base"] * 3 and skipped.empty
    assert not any((res / "masks" / "t" / "images").iterdir())


def test_multi_image_item_masks_the_image_the_region_lies_in(tmp_path, list_adapter):
    first, second = texture(seed=1), texture(40, 30, seed=2)
    items_df, res = make_items(tmp_path, [raw("two", [first, second], [Region("r", (5, 5, 15, 15), image=1)])])
    df, _ = masks.build_masks(items_df, cfg(variants=["drop", "keep_evidence"]), res, "t", 0)
    item_images = list(items_df.images[0])
    drop = rows_by_id(df)["two|drop:0|gray"]
    assert drop.images[0] == item_images[0]  # first image untouched, order kept
    assert drop.image == drop.images[1] != item_images[1]
    assert list(drop.hidden_images) == [0 + 1]
    masked = pixels(res, drop.images[1])
    assert (masked[box_mask((5, 5, 15, 15), 40, 30)] == 128).all()
    assert drop.area_fraction == pytest.approx(100 / (64 * 48 + 40 * 30))
    keep = rows_by_id(df)["two|keep:evidence|gray"]
    # the first image holds no evidence: all of it is hidden
    assert keep.image == keep.images[0] != item_images[0] and (pixels(res, keep.images[0]) == 128).all()
    assert keep.area_fraction == pytest.approx(1 - 100 / (64 * 48 + 40 * 30))


def test_noise_is_seeded(one_item):
    items_df, res = one_item
    c = cfg(variants=["drop"], fills=["noise"])
    df, _ = masks.build_masks(items_df, c, res, "t", seed=0)
    first = pixels(res, df.image[1])
    df, _ = masks.build_masks(items_df, c, res, "t", seed=0)
    assert np.array_equal(first, pixels(res, df.image[1]))
    df, _ = masks.build_masks(items_df, c, res, "t", seed=1)
    assert not np.array_equal(first, pixels(res, df.image[1]))


def test_control_place_depends_on_seed_and_masks_seed(tmp_path, list_adapter):
    items_df, res = make_items(tmp_path, [raw("c", [texture(200, 200)], [Region("r", (0, 0, 10, 10))])])

    def control(seed, masks_seed):
        df, _ = masks.build_masks(items_df, cfg(variants=["control"], seed=masks_seed), res, "t", seed)
        return df.hidden_boxes[1]

    assert control(0, 0) == control(0, 0)
    assert len({str(control(0, 0)), str(control(1, 0)), str(control(0, 1))}) == 3
    # the documented stream: rng(masks_seed(seed, cfg), "ctrl", dataset, item_id, k)
    rng = seeding.rng(masks.masks_seed(0, cfg()), "ctrl", "t", "c", 0)
    x, y = int(rng.integers(0, 191)), int(rng.integers(0, 191))
    assert control(0, 0) == [[x, y, x + 10, y + 10]]


def test_run_stage_tables_and_determinism(tmp_path, list_adapter):
    records = [raw("a", [texture()], REGIONS), raw("b/c", [texture(seed=3)], REGIONS[:1])]
    items_df, res = make_items(tmp_path, records)
    c = cfg(fills=["gray", "mean", "blur", "noise", "black"])
    code_files = stages.code_files("masks")
    hashes = []
    for run in ("one", "two"):
        out = tmp_path / run
        for rel in ("items/t.parquet",) + tuple(str(p.relative_to(res)) for p in (res / "items/t/images").iterdir()):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes((res / rel).read_bytes())
        masks.run_stage(StageCall(
            inputs={"items_table": [str(out / "items/t.parquet")]},
            outputs={"table": str(out / "masks/t.parquet"), "skipped": str(out / "masks/t.skipped.parquet")},
            config={"enabled": True, "masks": c, "seed": 5}, results_dir=out, code=code_files, wildcards={"d": "t"}))
        hashes.append({k: v for k, v in tree_hashes(out).items() if k.startswith("masks")})
    assert hashes[0] == hashes[1]
    assert len(hashes[0]) == 2 + 5 * (6 + 3)  # tables + one image per (variant, fill); no drop:all with one region
    out = tmp_path / "one"
    assert pq.read_schema(out / "masks/t.parquet").remove_metadata() == masks.MASKS_SCHEMA
    assert pq.read_schema(out / "masks/t.skipped.parquet").remove_metadata() == masks.SKIPPED_SCHEMA
    prov = tables.read_provenance(out / "masks/t.parquet")
    assert prov["config_hash"] == provenance.config_hash({"enabled": True, "masks": c, "seed": 5})
    assert prov["code_hash"] == provenance.code_hash(code_files)


def test_control_uses_the_adapters_proposed_places(tmp_path, list_adapter):
    # a 2 x 2 grid of 32 x 24 cells; the evidence is the top-left cell; the adapter proposes all four
    cells = [(0, 0, 32, 24), (32, 0, 64, 24), (0, 24, 32, 48), (32, 24, 64, 48)]
    meta = {"control_candidates": [{"box": list(c), "image": 0} for c in cells]}
    items_df, res = make_items(tmp_path, [raw("grid", [texture()], [Region("tl", cells[0])], meta=meta)])
    chosen = set()
    for seed in range(12):
        df, skipped = masks.build_masks(items_df, cfg(variants=["control"]), res, "t", seed=seed)
        ctrl = df[df["variant"] == "ctrl:0"].iloc[0]
        box = tuple(int(v) for v in ctrl["hidden_boxes"][0])
        assert box in cells[1:], box  # a whole non-evidence cell, never the evidence, never straddling
        chosen.add(box)
    assert len(chosen) > 1  # drawn among the proposals, not always the first


def test_control_falls_back_to_any_place_when_no_proposal_fits(tmp_path, list_adapter):
    meta = {"control_candidates": [{"box": [0, 0, 10, 10], "image": 0}]}  # wrong size: ignored
    items_df, res = make_items(tmp_path, [raw("x", [texture()], [Region("r", (4, 4, 20, 20))], meta=meta)])
    df, _ = masks.build_masks(items_df, cfg(variants=["control"]), res, "t", seed=0)
    box = tuple(int(v) for v in df[df["variant"] == "ctrl:0"].iloc[0]["hidden_boxes"][0])
    assert (box[2] - box[0], box[3] - box[1]) == (16, 16)
    assert box[0] >= 20 or box[1] >= 20 or box[2] <= 4 or box[3] <= 4
