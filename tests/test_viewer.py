"""The viewer's data and files on a constructed results folder (fast; no model, no browser).

The results folder holds every table and store the viewer reads, in their
documented formats: a trace store built like the real one
(``fixtures.collapse.make_traces``), sidecars with real token offsets, a
steps table, CRM tables and the collapse tables computed by the real
``collapse.compute`` from that store. The browser test on a real tiny run is
tests/test_viewer_browser.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from peekaboo import collapse
from peekaboo.tables import read_table, write_table
from peekaboo.viewer import data as vdata
from peekaboo.viewer import maps as vmaps
from peekaboo.viewer import site as vsite

from fixtures.collapse import QUAD_BOXES, items_rows, make_traces

VIEWER_CFG = {"variants": ["drop", "drop_all", "keep_evidence", "control"], "items_per_page": 50, "max_items": None,
              "image_max_side": 768, "map_scale": "step", "confident_z": -1.0}
COLLAPSE_CFG = {"layers": "all", "top_k": 2, "sinks": {"detect": True, "exclude": False, "ratio": 5.0, "min_fraction": 0.5},
                "map_items": 3}


# ----------------------------------------------------------------------------- a constructed results folder


def _tokens(pieces):
    """Text and per-token char offsets of a list of token strings."""
    starts, ends, pos = [], [], 0
    for p in pieces:
        starts.append(pos)
        pos += len(p)
        ends.append(pos)
    return "".join(pieces), starts, ends


BASE = ["Step", " 1", ":", " it", " is", " red", ".", "\n", "Answer", ":", " red", ""]
HIDDEN = ["Step", " 1", ":", " it", " is", " hidden", ".", "\n", "Answer", ":", " unknown", ""]
# (kind, token span, char span, text) of the two steps of both texts
STEPS = {"base": [("think", 0, 7, "it is red."), ("answer", 8, 11, "red")],
         "drop:0": [("think", 0, 7, "it is hidden."), ("answer", 8, 11, "unknown")],
         "ctrl:0": [("think", 0, 7, "it is red."), ("answer", 8, 11, "red")]}


def _attention(n_tokens, think_patch, answer_patch, sink=None):
    """image_attn [T, 1, 4]: think tokens (0-6) favour one patch, the answer tokens another."""
    attn = np.full((n_tokens, 1, 4), 0.05)
    attn[:7, 0, think_patch] = 0.6
    attn[7:, 0, answer_patch] = 0.5
    if sink is not None:
        attn[:, 0, sink] = 2.0
    return attn


def write_store(ds, path: Path) -> Path:
    """Write a constructed store as the traces stage does: Zarr format 3, trace ids a coordinate, consolidated."""
    import warnings

    import zarr

    ds = ds.set_coords("trace_id")
    ds.attrs["map_layers"] = [-1]
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(path)
    return path


def write_results(root: Path, sink: int | None = None, exclude_sinks: bool = False) -> dict:
    """Three items of dataset ``toy`` for model ``m``; returns the paths and the frames written.

    toy-0: base, drop:0 and ctrl:0 traces, CRM tables; toy-1: broken meta and a failed base trace;
    toy-2: a base trace whose arrays are missing from the store.
    """
    d, m = "toy", "m"
    (root / "items" / d / "images").mkdir(parents=True)
    (root / "masks" / d / "images").mkdir(parents=True)
    items = []
    for i in range(3):
        item_id = f"toy-{i}"
        Image.new("RGB", (32, 32), (200, 40 * i, 90)).save(root / f"items/{d}/images/{item_id}.png")
        items.append({"item_id": item_id, "regions": [[0, 0, 16, 16]], "image": f"items/{d}/images/{item_id}.png"})
    items_df = items_rows(items, dataset=d)
    items_df["images"] = [[it["image"]] for it in items]
    items_df["question"] = ["What colour is the top-left shape?"] * 3
    items_df["answer"] = "red"
    items_df["meta"] = ['{"gold_steps": [{"text": "Step 1: it is red.", "regions": [0]}]}', "{not json", "{}"]
    write_table(items_df, root / f"items/{d}.parquet")

    mask_rows = []
    for it in items:
        mask_rows.append({"mask_id": f"{it['item_id']}|base|none", "item_id": it["item_id"], "dataset": d,
                          "variant": "base", "fill": "none", "region": None, "hidden_boxes": [], "hidden_images": [],
                          "area_fraction": 0.0, "image": it["image"], "images": [it["image"]]})
    for variant, box in (("drop:0", [0.0, 0.0, 16.0, 16.0]), ("ctrl:0", [16.0, 16.0, 32.0, 32.0])):
        path = f"masks/{d}/images/toy-0__{variant.replace(':', '-')}__gray.png"
        im = Image.open(root / items[0]["image"]).copy()
        im.paste((128, 128, 128), tuple(int(v) for v in box))
        im.save(root / path)
        mask_rows.append({"mask_id": f"toy-0|{variant}|gray", "item_id": "toy-0", "dataset": d, "variant": variant,
                          "fill": "gray", "region": 0, "hidden_boxes": [box], "hidden_images": [0],
                          "area_fraction": 0.25, "image": path, "images": [path]})
    masks_df = pd.DataFrame(mask_rows)
    masks_df["region"] = masks_df["region"].astype("Int64")
    write_table(masks_df, root / f"masks/{d}.parquet")

    rng = np.random.default_rng(0)
    traces, side, step_rows = [], [], []
    plan = [("toy-0", "base", BASE, 0, 3), ("toy-0", "drop:0", HIDDEN, 1, 3), ("toy-0", "ctrl:0", BASE, 0, 3),
            ("toy-1", "base", BASE, 0, 3), ("toy-2", "base", BASE, 0, 3)]
    for item_id, variant, pieces, think_patch, answer_patch in plan:
        fill = "none" if variant == "base" else "gray"
        tid = f"{m}|{item_id}|{variant}|{fill}"
        text, starts, ends = _tokens(pieces)
        failed = item_id == "toy-1"
        side.append({"trace_id": tid, "model": m, "dataset": d, "item_id": item_id, "mask_id": f"{item_id}|{variant}|{fill}",
                     "variant": variant, "fill": fill, "trace_index": len(side), "status": "failed" if failed else "ok",
                     "error": "CUDA out of memory" if failed else None, "text": "" if failed else text,
                     "answer_text": None if failed else pieces[-2].strip(), "correct": None if failed else variant != "drop:0",
                     "abstained": variant == "drop:0", "truncated": False, "n_tokens": 0 if failed else len(pieces),
                     "token_char_start": [] if failed else starts, "token_char_end": [] if failed else ends,
                     "retries": 0})
        if failed:
            continue
        if item_id != "toy-2":  # toy-2's arrays are missing from the store
            traces.append({"trace_id": tid, "entropy": rng.uniform(0.01, 1.5, len(pieces)),
                           "image_mass": np.full((len(pieces), 2, 2), 0.4),
                           "region_mass": np.full((len(pieces), 2, 1), 0.1),
                           "image_attn": _attention(len(pieces), think_patch, answer_patch, sink),
                           "patch_box": QUAD_BOXES})
        for k, (kind, t0, t1, content) in enumerate(STEPS[variant]):
            c0, c1 = starts[t0], ends[t1 - 1]
            step_rows.append({"trace_id": tid, "item_id": item_id, "mask_id": f"{item_id}|{variant}|{fill}",
                              "variant": variant, "fill": fill, "step": k, "kind": kind, "text": content,
                              "char_start": c0, "char_end": c1, "token_start": t0, "token_end": t1,
                              "segmenter": "markers"})
    sidecar = pd.DataFrame(side)
    for c in ("correct", "abstained", "truncated"):
        sidecar[c] = sidecar[c].astype("boolean")
    sidecar_path = write_table(sidecar, root / f"traces/{m}/{d}/shard-0.parquet")
    store_path = write_store(make_traces(traces), root / f"traces/{m}/{d}/shard-0.zarr")
    steps = pd.DataFrame(step_rows)
    write_table(steps, root / f"steps/{m}/{d}.parquet")

    cfg = {**COLLAPSE_CFG, "sinks": {**COLLAPSE_CFG["sinks"], "exclude": exclude_sinks}}
    tables = collapse.compute(make_traces(traces), sidecar, steps, items_df, cfg, {"vision": "evidence_share"}, m, d)
    write_table(tables.steps, root / f"collapse/{m}/{d}.parquet")
    write_table(tables.traces, root / f"collapse/{m}/{d}.traces.parquet")
    write_table(tables.sinks, root / f"collapse/{m}/{d}.sinks.parquet")
    write_table(tables.maps, root / f"collapse/{m}/{d}.maps.parquet")

    base_tid = f"{m}|toy-0|base|none"
    alignment = pd.DataFrame([
        {"trace_id": f"{m}|toy-0|drop:0|gray", "base_trace_id": base_tid, "item_id": "toy-0",
         "mask_id": "toy-0|drop:0|gray", "variant": "drop:0", "fill": "gray", "region": 0, "n_base_steps": 2,
         "n_steps": 2, "n_matched": 1, "precision": 0.5, "recall": 0.5, "match_f1": 0.5, "ordered_match_f1": 0.5,
         "kendall_tau": np.nan, "order_score": 1.0, "answer_changed": True, "abstained": True, "base_abstained": False,
         "pairs": [{"base_step": 0, "step": 0, "similarity": 0.4}]},
        {"trace_id": f"{m}|toy-0|ctrl:0|gray", "base_trace_id": base_tid, "item_id": "toy-0",
         "mask_id": "toy-0|ctrl:0|gray", "variant": "ctrl:0", "fill": "gray", "region": 0, "n_base_steps": 2,
         "n_steps": 2, "n_matched": 2, "precision": 1.0, "recall": 1.0, "match_f1": 1.0, "ordered_match_f1": 1.0,
         "kendall_tau": 1.0, "order_score": 1.0, "answer_changed": False, "abstained": False, "base_abstained": False,
         "pairs": [{"base_step": 0, "step": 0, "similarity": 1.0}, {"base_step": 1, "step": 1, "similarity": 0.97}]},
    ])
    write_table(alignment, root / f"crm/{m}/{d}/alignment.parquet")
    attribution = pd.DataFrame([
        {"item_id": "toy-0", "region": 0, "region_label": "r0", "fill": "gray", "base_step": b, "base_kind": kind,
         "base_text": text, "dependence": dep, "control_dependence": cdep, "changed": True, "control_changed": False,
         "depends": True, "gold_depends": True, "base_trace_id": base_tid, "trace_id": f"{m}|toy-0|drop:0|gray",
         "control_trace_id": f"{m}|toy-0|ctrl:0|gray"}
        for b, (kind, text, dep, cdep) in enumerate([("think", "it is red.", 0.6, 0.0), ("answer", "red", 1.0, 0.03)])
    ])
    write_table(attribution, root / f"crm/{m}/{d}/attribution.parquet")
    modes = pd.DataFrame([{"item_id": "toy-0", "region": 0, "region_label": "r0", "fill": "gray", "mode": "grounded",
                           "rule": "changed_dependent_control_quiet", "detail": "evidence change 0.800, abstained",
                           "evidence_change": 0.8, "control_change": 0.015, "match_f1": 0.5}])
    write_table(modes, root / f"crm/{m}/{d}/modes.parquet")
    return {"items": items_df, "sidecar": sidecar, "steps": steps, "collapse": tables, "store": store_path,
            "sidecar_path": sidecar_path, "traces": traces}


def input_paths(root: Path) -> list[Path]:
    """Every file the viewer rule would list as input, by the documented layout."""
    out = [root / "items/toy.parquet", root / "masks/toy.parquet"]
    out += sorted((root / "traces").glob("*/*/shard-*.parquet")) + sorted((root / "traces").glob("*/*/shard-*.zarr"))
    out += sorted((root / "steps").glob("*/*.parquet")) + sorted((root / "crm").glob("*/*/*.parquet"))
    out += [p for p in sorted((root / "collapse").glob("*/*.parquet")) if not p.name.endswith(".maps.parquet")]
    return out


def build(root: Path, out: Path, **cfg) -> dict:
    pairs = vdata.group_sources(input_paths(root), root)
    return vsite.build_site(pairs, root, out, {**VIEWER_CFG, **cfg}, "all", {"config_hash": "test"})


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    info = write_results(root)
    return root, info


def _item_json(site: Path, item: str) -> dict:
    return json.loads((site / f"m/toy/items/{item}.json").read_text())["item"]


# ----------------------------------------------------------------------------- the site


def test_site_has_every_page_and_the_tables_data(results, tmp_path):
    root, info = results
    site = tmp_path / "site"
    record = build(root, site)
    for rel in ("index.html", "provenance.json", "static/viewer.css", "static/viewer.js", "static/scales.css",
                "static/vendor/tabulator/tabulator.min.js", "static/vendor/tabulator/LICENSE",
                "m/toy/index.html", "m/toy/index-data.js"):
        assert (site / rel).is_file(), rel
    for i in range(3):
        assert (site / f"m/toy/items/toy-{i}.html").is_file()
    counts = record["pairs"]["m/toy"]["counts"]
    assert counts["items"] == 3 and counts["pages"] == 3 and counts["failed_traces"] == 1
    assert counts["missing_in_store"] == 1 and counts["modes"] == {"grounded": 1}

    item = _item_json(site, "toy-0")
    base = item["base"]
    steps = info["steps"][info["steps"]["trace_id"] == "m|toy-0|base|none"]
    assert [s["text"] for s in base["steps"]] == list(steps["text"])
    assert [(s["token_start"], s["token_end"]) for s in base["steps"]] == list(zip(steps["token_start"], steps["token_end"]))
    # tokens of the first step: the generated pieces, with the store's entropies
    entropy = info["traces"][0]["entropy"]
    tokens = base["steps"][0]["tokens"]
    assert [t["text"] for t in tokens] == BASE[:7]
    assert [t["entropy"] for t in tokens] == pytest.approx(list(entropy[:7]), rel=1e-6)
    # collapse's per-step measures beside each step
    cs = info["collapse"].steps
    row = cs[(cs["trace_id"] == "m|toy-0|base|none") & (cs["step"] == 0)].iloc[0]
    assert base["steps"][0]["evidence_share"] == pytest.approx(row["evidence_share"])
    # the answer and its score
    assert base["answer_text"] == "red" and base["correct"] is True and base["abstained"] is False


def test_masked_variants_carry_the_crm_alignment(results, tmp_path):
    root, _ = results
    site = tmp_path / "site"
    build(root, site)
    item = _item_json(site, "toy-0")
    by_variant = {v["variant"]: v for v in item["variants"]}
    assert set(by_variant) == {"drop:0", "ctrl:0"}
    drop = by_variant["drop:0"]
    assert drop["role"] == "evidence" and drop["region"] == 0
    assert drop["alignment"]["match_f1"] == 0.5 and drop["alignment"]["answer_changed"] is True
    # step 0 matched to base step 0 at similarity 0.4 (change 0.6); step 1 unmatched (change 1)
    assert drop["steps"][0]["match"] == {"base_step": 0, "similarity": 0.4}
    assert drop["steps"][0]["change"] == pytest.approx(0.6)
    assert drop["steps"][1]["match"] is None and drop["steps"][1]["change"] == 1.0
    assert drop["mask"]["hidden_boxes"] == [[0.0, 0.0, 16.0, 16.0]]
    assert by_variant["ctrl:0"]["role"] == "control"
    crm = item["crm"]
    assert len(crm) == 1 and crm[0]["mode"] == "grounded"
    assert crm[0]["evidence_trace"] == "m|toy-0|drop:0|gray" and crm[0]["control_trace"] == "m|toy-0|ctrl:0|gray"
    assert [s["dependence"] for s in crm[0]["steps"]] == [0.6, 1.0]
    assert [s["control_dependence"] for s in crm[0]["steps"]] == [0.0, 0.03]
    html = (site / "m/toy/items/toy-0.html").read_text()
    # the masked step links to the base step it was matched to, which has that anchor
    assert 'href="#base-step-0"' in html and 'id="base-step-0"' in html
    assert "no match in the base trace" in html


def test_bad_records_are_reported_on_their_pages_and_the_rest_is_built(results, tmp_path):
    root, _ = results
    site = tmp_path / "site"
    build(root, site)
    failed = _item_json(site, "toy-1")
    assert any("meta is not JSON" in n for n in failed["notes"])
    assert failed["base"]["status"] == "failed" and failed["base"]["error"] == "CUDA out of memory"
    assert "trace failed: CUDA out of memory" in (site / "m/toy/items/toy-1.html").read_text()
    missing = _item_json(site, "toy-2")
    assert any("not found in the trace store" in n for n in missing["base"]["notes"])
    assert missing["base"]["steps"] and all(s["tokens"] is None for s in missing["base"]["steps"])


def test_a_page_that_cannot_be_built_is_reported_and_the_others_are_built(results, tmp_path, monkeypatch):
    root, _ = results
    original = vdata.item_record

    def breaks_on_toy_1(ctx, reader, item):
        if item["item_id"] == "toy-1":
            raise KeyError("constructed failure")
        return original(ctx, reader, item)

    monkeypatch.setattr(vdata, "item_record", breaks_on_toy_1)
    site = tmp_path / "site"
    record = build(root, site)
    assert record["pairs"]["m/toy"]["counts"]["failed_pages"] == 1
    assert any("toy-1" in p and "constructed failure" in p for p in record["pairs"]["m/toy"]["problems"])
    page = (site / "m/toy/items/toy-1.html").read_text()
    assert 'id="page-failed"' in page and "constructed failure" in page
    assert (site / "m/toy/items/toy-2.html").is_file() and not (site / "m/toy/items/toy-1.json").exists()


def test_maps_match_the_collapse_maps_table(results):
    root, info = results
    pair = vdata.group_sources(input_paths(root), root)[0]
    tables = vdata.load_pair(pair)
    ctx = vdata.pair_context(tables, VIEWER_CFG["variants"])
    reader = vdata.StoreReader(pair.stores)
    maps_table = info["collapse"].maps
    assert len(maps_table)
    for tid, sub in maps_table.groupby("trace_id"):
        arrays = reader.get(tid)
        ours = vdata.step_maps(arrays.attn, ctx.steps[tid], arrays.n_tokens)
        for (step_index,), rows in sub.groupby(["step_index"]):
            np.testing.assert_allclose(ours[step_index][rows["patch"].to_numpy()], rows["share"].to_numpy(), rtol=1e-6)
    # by hand: step 0 of toy-0's base trace is the mean of tokens 0-6, all favouring patch 0
    base = reader.get("m|toy-0|base|none")
    first = vdata.step_maps(base.attn, ctx.steps["m|toy-0|base|none"], base.n_tokens)[0]
    np.testing.assert_allclose(first, np.array([0.6, 0.05, 0.05, 0.05]) / 0.75, rtol=1e-3)


def test_excluded_sinks_are_zeroed_in_the_maps(tmp_path):
    root = tmp_path / "results"
    write_results(root, sink=2, exclude_sinks=True)
    sinks = read_table(root / "collapse/m/toy.sinks.parquet")
    assert sinks.loc[sinks["is_sink"], "patch"].tolist() == [2]
    site = tmp_path / "site"
    build(root, site)
    data = json.loads((site / "m/toy/items/toy-0.json").read_text())
    assert data["settings"]["sinks_excluded"] is True and data["settings"]["excluded_sinks"] == [2]
    pair = vdata.group_sources(input_paths(root), root)[0]
    ctx = vdata.pair_context(vdata.load_pair(pair), VIEWER_CFG["variants"])
    reader = vdata.StoreReader(pair.stores)
    arrays = reader.get("m|toy-0|base|none")
    maps = vdata.step_maps(arrays.attn, ctx.steps["m|toy-0|base|none"], arrays.n_tokens, ctx.excluded_sinks)
    assert (maps[:, 2] == 0).all()
    np.testing.assert_allclose(maps.sum(axis=1), 1.0)
    assert "excluded (patches 2 zeroed" in (site / "m/toy/items/toy-0.html").read_text()


def test_heat_map_sprites_hold_one_tile_per_step(results, tmp_path):
    root, _ = results
    site = tmp_path / "site"
    build(root, site)
    item = _item_json(site, "toy-0")
    panel = item["base"]["panels"][0]
    assert panel["map"]["rows"] == 2 and panel["map"]["exact"] and panel["map"]["pct"] == [0, 0, 100, 100]
    sprite = np.asarray(Image.open(site / "m/toy/items" / panel["map"]["src"]))
    assert sprite.shape == (4, 2, 4)  # two steps of a 2 x 2 patch grid, RGBA
    alpha = sprite[..., 3].astype(int)
    # step 0 looks at patch 0 (top left), the answer at patch 3 (bottom right): there the opacity peaks
    assert alpha[0, 0] == alpha[:2].max() and alpha[3, 1] == alpha[2:].max()
    assert alpha[0, 0] > alpha[0, 1]
    # the image is in the site, and the item page points at it
    assert (site / "images/items/toy/images/toy-0.png").is_file()
    assert 'src="../../../images/items/toy/images/toy-0.png"' in (site / "m/toy/items/toy-0.html").read_text()


def test_index_rows_filters_and_presets(results, tmp_path):
    root, _ = results
    traces = read_table(root / "collapse/m/toy.traces.parquet")
    # a boolean column and a second vision measure, as later collapse tables may add
    traces["planted"] = pd.array([t.startswith("m|toy-2|base") for t in traces["trace_id"]], dtype="boolean")
    traces["vision_image"] = 0.5
    write_table(traces, root / "collapse/m/toy.traces.parquet")
    # the blinker's planted subset, where the items stage puts it: the items' meta (toy-1's meta is not JSON)
    items = read_table(root / "items/toy.parquet")
    metas = {"toy-0": {"blink": True, "blink_answer": "green"}, "toy-2": {"blink": False, "blink_answer": None}}
    items["meta"] = [json.dumps({**json.loads(m), **metas[i]}) if i in metas else m
                     for i, m in zip(items["item_id"], items["meta"])]
    write_table(items, root / "items/toy.parquet")
    site = tmp_path / "site"
    build(root, site)
    script = (site / "m/toy/index-data.js").read_text()
    payload = json.loads(re.match(r"window\.PEEKABOO_INDEX = (.*);\n$", script, re.S).group(1))
    rows = {r["item"]: r for r in payload["rows"]}
    assert list(rows) == ["toy-0", "toy-1", "toy-2"]
    assert rows["toy-0"]["page"] == "items/toy-0.html" and rows["toy-0"]["modes"] == "grounded"
    assert rows["toy-0"]["evidence_flip"] is True and rows["toy-0"]["control_flip"] is False
    assert rows["toy-1"]["status"] == "failed"
    assert payload["meta"]["flags"] == ["planted", "meta.blink"] and "vision_image" in payload["meta"]["numbers"]
    assert rows["toy-0"]["meta.blink"] is True and rows["toy-0"]["flags"]["flag:meta.blink"] is True
    assert rows["toy-2"]["meta.blink"] is False and rows["toy-1"]["meta.blink"] is None
    assert rows["toy-2"]["planted"] is True and rows["toy-0"]["planted"] is False
    keys = {p["key"]: p["count"] for p in payload["presets"]}
    assert keys["mode:grounded"] == 1 and keys["flag:meta.blink"] == 1 and keys["flag:planted"] == 1
    assert "confident_wrong" in keys


def test_confident_and_wrong_uses_z_of_entropy_among_base_traces():
    def ctx_with(entropies, correct):
        n = len(entropies)
        sidecar = pd.DataFrame({"trace_id": [f"m|i{k}|base|none" for k in range(n)], "item_id": [f"i{k}" for k in range(n)],
                                "variant": "base", "status": "ok", "correct": correct, "abstained": False})
        traces = pd.DataFrame({"trace_id": sidecar["trace_id"], "entropy_full": entropies})
        empty = pd.DataFrame()
        tables = vdata.PairTables("m", "d", pd.DataFrame({"item_id": sidecar["item_id"]}), empty, sidecar, empty, empty,
                                  empty, empty, empty, traces, empty)
        return vdata.pair_context(tables, VIEWER_CFG["variants"]), tables.items.to_dict("records")

    entropies = [0.1, 1.0, 1.0, 1.0, 1.0, 2.0]
    ctx, items = ctx_with(entropies, [False, False, True, True, True, False])
    rows, meta = vdata.index_rows(ctx, items, {}, -1.0)
    z = (np.array(entropies) - np.mean(entropies)) / np.std(entropies, ddof=1)
    assert [r["entropy_z"] for r in rows] == pytest.approx(list(z))
    assert [r["flags"]["confident_wrong"] for r in rows] == [True, False, False, False, False, False]
    assert [r["flags"]["wrong"] for r in rows] == [True, True, False, False, False, True]


def test_same_tables_give_the_same_site(results, tmp_path):
    root, _ = results
    a, b = tmp_path / "a", tmp_path / "b"
    build(root, a)
    build(root, b)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_site_links_stay_inside_the_site_and_name_existing_files(results, tmp_path):
    root, _ = results
    site = tmp_path / "site"
    build(root, site)
    pattern = re.compile(r'(?:href|src)="([^"#:]+)"|url\(\'([^\']+)\'\)')
    for page in site.rglob("*.html"):
        for m in pattern.finditer(page.read_text()):
            target = (page.parent / (m.group(1) or m.group(2))).resolve()
            assert target.is_relative_to(site.resolve()), (page, m.group(0))
            assert target.exists(), (page, m.group(0))
    assert "http://" not in (site / "m/toy/items/toy-0.html").read_text()


def test_refuses_to_replace_a_folder_it_did_not_write(results, tmp_path):
    root, _ = results
    site = tmp_path / "site"
    site.mkdir()
    (site / "notes.txt").write_text("mine")
    with pytest.raises(vsite.SiteError, match="not written by the viewer"):
        build(root, site)
    assert (site / "notes.txt").read_text() == "mine"
    (site / "notes.txt").unlink()
    build(root, site)
    build(root, site)  # its own site is replaced
    assert (site / "index.html").is_file()


def test_an_unreadable_table_is_reported_and_the_rest_shown(results, tmp_path):
    root, _ = results
    (root / "crm/m/toy/modes.parquet").write_bytes(b"not a parquet file")
    site = tmp_path / "site"
    record = build(root, site)
    problems = record["pairs"]["m/toy"]["problems"]
    assert any("CRM modes table" in p and "modes.parquet" in p for p in problems)
    assert _item_json(site, "toy-0")["crm"] == []
    assert "CRM modes table" in (site / "m/toy/index.html").read_text()


def test_max_items_and_variants_settings(results, tmp_path):
    root, _ = results
    site = tmp_path / "site"
    build(root, site, max_items=1, variants=["control"])
    assert sorted(p.name for p in (site / "m/toy/items").glob("*.html")) == ["toy-0.html"]
    assert [v["variant"] for v in _item_json(site, "toy-0")["variants"]] == ["ctrl:0"]


# ----------------------------------------------------------------------------- the pieces


def test_group_sources_sorts_inputs_by_the_documented_layout(results):
    root, _ = results
    pairs = vdata.group_sources(input_paths(root), root)
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.model, p.dataset) == ("m", "toy")
    assert p.items.name == "toy.parquet" and p.masks.parent.name == "masks"
    assert p.collapse_steps.name == "toy.parquet" and p.collapse_traces.name == "toy.traces.parquet"
    assert p.collapse_sinks.name == "toy.sinks.parquet" and [s.name for s in p.stores] == ["shard-0.zarr"]
    with pytest.raises(vdata.ViewerError, match="not a table or store of the documented layout"):
        vdata.group_sources([root / "crm/m/toy/summary.csv"], root)
    with pytest.raises(vdata.ViewerError, match="not inside the results folder"):
        vdata.group_sources([Path("/elsewhere/items/toy.parquet")], root)


def test_patch_grid_exact_tiling_and_raster():
    grid = vmaps.patch_grid(QUAD_BOXES)
    assert grid.exact and (grid.rows, grid.cols) == (2, 2) and grid.extent == (0, 0, 32, 32)
    assert grid.cells.tolist() == [[0, 1, 0, 1], [0, 1, 1, 2], [1, 2, 0, 1], [1, 2, 1, 2]]
    # float32 edges of a 3 x 1 tiling of 100 px: one edge each, not two
    edges = np.float32(np.array([0, 100 / 3, 200 / 3, 100]))
    boxes = np.array([[edges[k], 0, np.float32(100 * (k + 1) / 3), 50] for k in range(3)], dtype=np.float32)
    boxes[1, 0] = np.nextafter(boxes[1, 0], np.float32(0))
    g3 = vmaps.patch_grid(boxes)
    assert g3.exact and (g3.rows, g3.cols) == (1, 3)
    # unequal cells: a raster of at most RASTER_SIDE pixels, each patch over its share of it
    uneven = np.array([[0, 0, 10, 10], [10, 0, 40, 10]], dtype=float)
    gr = vmaps.patch_grid(uneven)
    assert not gr.exact and gr.cols == vmaps.RASTER_SIDE and gr.rows == 32
    assert gr.cells.tolist() == [[0, 32, 0, 32], [0, 32, 32, 128]]
    assert vmaps.patch_grid(np.zeros((0, 4))) is None


def test_tiles_scale_each_step_and_leave_missing_steps_empty():
    grid = vmaps.patch_grid(QUAD_BOXES)
    maps = np.array([[0.5, 0.25, 0.25, 0.0], [np.nan] * 4])
    values = vmaps.tiles(maps, grid, [0.5, 1.0])
    assert values.shape == (4, 2)
    np.testing.assert_allclose(values[:2], [[1.0, 0.5], [0.5, 0.0]])
    assert np.isnan(values[2:]).all()
    # unequal cells: each patch painted over its part of the raster
    raster = vmaps.patch_grid(np.array([[0, 0, 10, 10], [10, 0, 40, 10]], dtype=float))
    painted = vmaps.tiles(np.array([[0.2, 0.8]]), raster, [0.8])
    assert painted.shape == (32, 128)
    assert (painted[:, :32] == 0.25).all() and (painted[:, 32:] == 1.0).all()


def test_token_entropies_cut_a_step_into_its_tokens():
    text, starts, ends = _tokens(BASE)
    entropy = np.arange(len(BASE), dtype=float)
    tokens = vdata.token_entropies(text, starts, ends, entropy, -entropy, 8, 11)
    assert [t.text for t in tokens] == ["Answer", ":", " red"]
    assert [t.entropy for t in tokens] == [8.0, 9.0, 10.0] and [t.logprob for t in tokens] == [-8.0, -9.0, -10.0]
    assert vdata.token_entropies(text, starts, ends, entropy, None, None, 3) is None
    assert vdata.token_entropies(text, starts[:5], ends[:5], entropy, None, 0, 7) is None  # span past the offsets
    bad = list(ends)
    bad[2] = len(text) + 5
    assert vdata.token_entropies(text, starts, bad, entropy, None, 0, 7) is None


def test_step_maps_average_the_span_and_skip_empty_steps():
    attn = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    steps = [vdata.Step(0, 0, "think", "a", None, None, 0, 2), vdata.Step(1, 1, "think", "b", None, None, 2, 2),
             vdata.Step(2, 2, "answer", "c", None, None, None, None), vdata.Step(3, 3, "answer", "d", None, None, 2, 9)]
    maps = vdata.step_maps(attn, steps, n_tokens=3)
    np.testing.assert_allclose(maps[0], [0.5, 0.5])
    assert np.isnan(maps[1]).all() and np.isnan(maps[2]).all()
    np.testing.assert_allclose(maps[3], [0.75, 0.25])  # clipped to the trace's tokens


def test_safe_names_are_unique_and_stable():
    taken: set[str] = set()
    assert vdata.safe_name("panels-000001", taken) == "panels-000001"
    odd = vdata.safe_name("a/b c", taken)
    assert re.fullmatch(r"a_b_c-[0-9a-f]{8}", odd) and vdata.safe_name("a/b c") == odd
    assert vdata.safe_name("PANELS-000001", taken) != "PANELS-000001"  # same name on a case-insensitive disk
    assert vdata.variant_key("drop:0", "gray") == "drop-0-gray"


def test_scales_css_has_every_class_from_the_colormaps():
    css = vmaps.scales_css()
    for k in range(vmaps.N_CLASSES):
        assert f".e{k} {{ background: #" in css and f".d{k} {{ background: #" in css
    assert vmaps.class_of(0.0, 1.0) == 0 and vmaps.class_of(1.0, 1.0) == vmaps.N_CLASSES - 1
    assert vmaps.class_of(5.0, 1.0) == vmaps.N_CLASSES - 1 and vmaps.class_of(None, 1.0) is None


def test_a_model_whose_pages_fail_is_reported_and_the_others_built(results, tmp_path, monkeypatch):
    import shutil

    root, _ = results
    for kind in ("traces", "steps", "crm", "collapse"):  # a second model with the same files
        src = root / kind / "m"
        shutil.copytree(src, root / kind / "m2")
    original = vdata.StoreReader

    def fails_for_m2(paths):
        if any("/m2/" in str(p) for p in paths):
            raise OSError("constructed failure")
        return original(paths)

    monkeypatch.setattr(vdata, "StoreReader", fails_for_m2)
    pairs = vdata.group_sources(input_paths(root) + sorted((root / "traces/m2").glob("*/*"))
                                + sorted(root.glob("steps/m2/*")) + sorted(root.glob("crm/m2/*/*"))
                                + [p for p in sorted(root.glob("collapse/m2/*")) if ".maps." not in p.name], root)
    assert [(p.model, p.dataset) for p in pairs] == [("m", "toy"), ("m2", "toy")]
    site = tmp_path / "site"
    record = vsite.build_site(pairs, root, site, VIEWER_CFG, "all", {})
    assert record["pairs"]["m/toy"]["counts"]["pages"] == 3
    assert "constructed failure" in record["pairs"]["m2/toy"]["problems"][0]
    home = (site / "index.html").read_text()
    assert 'href="m/toy/index.html"' in home and "not built" in home and not (site / "m2").exists()


def test_crm_rows_without_a_region_are_reported_and_left_out(results, tmp_path):
    root, _ = results
    attribution = read_table(root / "crm/m/toy/attribution.parquet")
    attribution["region"] = attribution["region"].astype("Int64")
    attribution.loc[1, "region"] = pd.NA
    write_table(attribution, root / "crm/m/toy/attribution.parquet")
    site = tmp_path / "site"
    record = build(root, site)
    assert "CRM attribution table row 1: no region; left out" in record["pairs"]["m/toy"]["problems"]
    assert [s["base_step"] for s in _item_json(site, "toy-0")["crm"][0]["steps"]] == [0]
