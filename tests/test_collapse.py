"""Collapse measures against hand-computed values on a constructed trace; sinks; bad input."""

import numpy as np
import pandas as pd
import pytest

from peekaboo import collapse
from peekaboo.tables import read_provenance, read_table

from fixtures.collapse import QUAD_BOXES, items_rows, make_traces, sidecar_rows, steps_rows

CFG = {"layers": "all", "top_k": 2, "sinks": {"detect": True, "exclude": False, "ratio": 5.0, "min_fraction": 0.5},
       "map_items": 1}
FEATURES = {"vision": "evidence_share"}

# 4 tokens, 2 layers x 2 heads; region 0 = [0, 0, 24, 16]: patch 0 fully inside, patch 1 half, others out
IMAGE_MASS = np.array([
    [[0.5, 0.3], [0.2, 0.4]],  # layer means .4, .3 -> .35
    [[0.6, 0.6], [0.2, 0.2]],  # .6, .2 -> .4
    [[0.1, 0.1], [0.3, 0.3]],  # .1, .3 -> .2
    [[0.2, 0.2], [0.2, 0.2]],  # .2
])
REGION_MASS = np.array([[[0.2], [0.1]], [[0.3], [0.1]], [[0.02], [0.04]], [[0.01], [0.03]]])  # .15 .2 .03 .02
IMAGE_ATTN = np.array([
    [[0.2, 0.05, 0.05, 0.05]],
    [[0.1, 0.1, 0.1, 0.1]],  # step 0 map: .15 .075 .075 .075
    [[0.0, 0.1, 0.05, 0.05]],
    [[0.0, 0.1, 0.05, 0.05]],  # step 1 map: 0 .1 .05 .05
])
ENTROPY = np.array([1.0, 2.0, 0.5, 0.3])
TID = "m|it1|base|none"


def one_trace(**over):
    t = {"trace_id": TID, "entropy": ENTROPY, "image_mass": IMAGE_MASS, "region_mass": REGION_MASS,
         "image_attn": IMAGE_ATTN, "patch_box": QUAD_BOXES}
    t.update(over)
    return t


def run(traces, side, steps, items, cfg=CFG):
    return collapse.compute(traces, side, steps, items, cfg, FEATURES, "m", "d")


@pytest.fixture()
def hand_case():
    traces = make_traces([one_trace()])
    side = sidecar_rows([{"item_id": "it1", "variant": "base", "correct": True, "n_tokens": 4}])
    steps = steps_rows({TID: [("think", 0, 2), ("answer", 2, 4)]})
    items = items_rows([{"item_id": "it1", "regions": [[0, 0, 24, 16]]}])
    return traces, side, steps, items


def test_step_measures_equal_hand_computed_values(hand_case):
    out = run(*hand_case)
    s = out.steps.set_index("step")
    # float16 storage: compare at 1e-3
    assert s.loc[0, "image_share"] == pytest.approx(0.375, abs=1e-3)
    assert s.loc[0, "evidence_share"] == pytest.approx(0.175 / 0.375, abs=1e-3)
    assert s.loc[0, "evidence_area_fraction"] == pytest.approx(24 * 16 / 1024)
    assert s.loc[0, "lift"] == pytest.approx((0.175 / 0.375) / 0.375, abs=3e-3)
    assert s.loc[0, "topk_overlap"] == pytest.approx((1 + 0.5) / 2)  # p0, then p1 wins the tie with p2, p3
    assert s.loc[1, "image_share"] == pytest.approx(0.2, abs=1e-3)
    assert s.loc[1, "evidence_share"] == pytest.approx(0.125, abs=1e-3)
    assert s.loc[1, "topk_overlap"] == pytest.approx((0.5 + 0.0) / 2)
    assert list(s["position"]) == [0.0, 1.0]
    assert not s["sinks_excluded"].any()


def test_trace_measures_and_features_equal_hand_computed_values(hand_case):
    t = run(*hand_case).traces.iloc[0]
    first, last = 0.175 / 0.375, 0.125
    assert t["evidence_share_first"] == pytest.approx(first, abs=1e-3)
    assert t["evidence_share_last"] == pytest.approx(last, abs=1e-3)
    assert t["evidence_share_drop"] == pytest.approx((first - last) / first, abs=1e-3)
    assert t["evidence_share_auc"] == pytest.approx((first + last) / 2, abs=1e-3)
    assert t["entropy_full"] == pytest.approx(0.95, abs=1e-6)
    assert t["entropy_answer"] == pytest.approx(0.4, abs=1e-6)
    assert t["vision"] == pytest.approx(first, abs=1e-3)  # evidence share over the think step
    assert t["vision_steps"] == "think"
    assert bool(t["correct"]) is True
    assert t["task_type"] == "visual_reference"


def test_layer_selection_changes_the_average(hand_case):
    out = run(*hand_case, cfg={**CFG, "layers": [-1]})
    s = out.steps.set_index("step")
    assert s.loc[0, "image_share"] == pytest.approx(0.25, abs=1e-3)  # layer 1: (.3 + .2) / 2
    assert s.loc[0, "evidence_share"] == pytest.approx(0.1 / 0.25, abs=1e-3)
    with pytest.raises(collapse.CollapseError, match="collapse.layers"):
        run(*hand_case, cfg={**CFG, "layers": [5]})


def test_sink_exclusion_equals_hand_computed_value():
    ev = collapse.item_evidence([{"label": "a", "box": [0, 0, 24, 16]}])
    collapse.attach_patch_weights(ev, QUAD_BOXES, None, 32, 32)
    raw = collapse.StepRaw(0, "think", 0, 2, 2, image_mass=0.375, evidence_mass_sum=0.175,
                           patch_map=np.array([0.15, 0.075, 0.075, 0.075]))
    kept = collapse.step_measures(raw, ev, 2, None)
    assert kept["evidence_share"] == pytest.approx(0.175 / 0.375)
    # patch 3 holds 0.2 of the map and none of the evidence: image mass x 0.8, evidence mass unchanged
    out = collapse.step_measures(raw, ev, 2, np.array([3]))
    assert out["image_share"] == pytest.approx(0.375 * 0.8)
    assert out["evidence_share"] == pytest.approx(0.175 / 0.3)
    assert out["sink_share"] == pytest.approx(0.2)
    # patch 0 (all evidence, 0.4 of the map) excluded: evidence mass - 0.375 x 0.4; top-k skips it
    out = collapse.step_measures(raw, ev, 2, np.array([0]))
    assert out["evidence_share"] == pytest.approx((0.175 - 0.15) / (0.375 * 0.6))
    assert out["topk_overlap"] == pytest.approx((0.5 + 0.0) / 2)


def test_overlapping_regions_count_once():
    boxes = [[0, 0, 24, 16], [8, 0, 32, 16]]
    assert collapse.union_area(boxes) == pytest.approx(32 * 16)
    ev = collapse.item_evidence([{"label": "a", "box": boxes[0]}, {"label": "b", "box": boxes[1]}])
    collapse.attach_patch_weights(ev, QUAD_BOXES, None, 32, 32)
    assert ev.overlapping
    np.testing.assert_allclose(ev.union_weight, [1, 1, 0, 0])
    np.testing.assert_allclose(ev.sum_weight, [1.5, 1.5, 0, 0])
    assert ev.area_fraction == pytest.approx(0.5)
    # region_mass sums both regions (patches 0, 1 counted 1.5 times): rescaled by 1 / 1.5
    raw = collapse.StepRaw(0, "think", 0, 1, 1, image_mass=0.4, evidence_mass_sum=0.3,
                           patch_map=np.array([0.1, 0.1, 0.1, 0.1]))
    out = collapse.step_measures(raw, ev, 2, None)
    assert out["evidence_share"] == pytest.approx(0.3 / 1.5 / 0.4)


def test_trajectory_single_step_and_nan_steps():
    assert collapse.trajectory([0.4], [0.0]) == {"first": 0.4, "last": 0.4, "drop": 0.0, "auc": 0.4}
    out = collapse.trajectory([np.nan, 0.6, 0.3], [0.0, 0.5, 1.0])
    assert out["first"] == 0.6 and out["last"] == 0.3
    assert out["drop"] == pytest.approx(0.5)
    assert out["auc"] == pytest.approx(0.45)  # trapezoid over [0.5, 1] / 0.5
    assert np.isnan(collapse.trajectory([0.0, 0.1], [0, 1])["drop"])  # drop from 0 is undefined


def test_sinks_detected_reported_and_excluded():
    rng = np.random.default_rng(0)
    traces, spans, items, side = [], {}, [], []
    for i in range(6):
        attn = rng.uniform(0.01, 0.02, size=(4, 1, 4))
        attn[:, :, 3] = 0.3  # patch 3 soaks up attention in every step of every item
        tid = f"m|it{i}|base|none"
        traces.append(one_trace(trace_id=tid, image_attn=attn))
        spans[tid] = [("think", 0, 2), ("answer", 2, 4)]
        items.append({"item_id": f"it{i}", "regions": [[0, 0, 24, 16]]})
        side.append({"item_id": f"it{i}", "variant": "base"})
    args = (make_traces(traces), sidecar_rows(side), steps_rows(spans), items_rows(items))
    kept = run(*args)
    sinks = kept.sinks[kept.sinks["is_sink"]]
    assert sinks["patch"].tolist() == [3]
    assert not sinks["excluded"].any()
    assert not kept.steps["sinks_excluded"].any() and not kept.traces["sinks_excluded"].any()
    cfg = {**CFG, "sinks": {**CFG["sinks"], "exclude": True}}
    dropped = run(*args, cfg=cfg)
    assert dropped.sinks.loc[dropped.sinks["patch"] == 3, "excluded"].all()
    assert dropped.steps["sinks_excluded"].all() and dropped.traces["sinks_excluded"].all()
    assert (dropped.steps["image_share"] < kept.steps["image_share"] - 0.05).all()
    assert (dropped.steps["evidence_share"] > kept.steps["evidence_share"]).all()
    assert dropped.maps["sinks_excluded"].all() and dropped.maps.loc[dropped.maps["patch"] == 3, "is_sink"].all()


def test_bad_traces_are_reported_not_dropped(hand_case):
    traces, _, steps, _ = hand_case
    side = sidecar_rows([
        {"item_id": "it1", "variant": "base"},
        {"item_id": "it2", "variant": "base", "status": "failed", "error": "image unreadable"},
        {"item_id": "it3", "variant": "base"},  # not in the store
        {"item_id": "it4", "variant": "base", "trace_id": "m|it4|x"},
    ])
    items = items_rows([{"item_id": "it1", "regions": []}])  # no evidence; it3/it4 not in items
    traces2 = make_traces([one_trace(), one_trace(trace_id="m|it4|x")])
    out = run(traces2, side, steps, items)
    t = out.traces.set_index("item_id")
    assert len(out.traces) == 4
    assert "trace failed: image unreadable" in t.loc["it2", "note"]
    assert "not found in the trace store" in t.loc["it3", "note"]
    assert "no steps" in t.loc["it4", "note"] and "not in the items table" in t.loc["it4", "note"]
    assert "no evidence regions" in t.loc["it1", "note"]
    assert np.isnan(t.loc["it1", "vision"]) and t.loc["it1", "image_share_first"] == pytest.approx(0.375, abs=1e-3)
    assert out.counts["failed"] == 1 and out.counts["missing_in_store"] == 1


def test_empty_and_clipped_spans(hand_case):
    traces, side, _, items = hand_case
    steps = steps_rows({TID: [("think", 0, 2), ("think", 3, 3), ("answer", 2, 9), ("think", 0, 1)]})
    steps["token_start"] = steps["token_start"].astype("Int64")
    steps.loc[3, ["token_start", "token_end"]] = pd.NA  # the steps stage's "offsets unusable"
    s = run(traces, side, steps, items).steps.set_index("step")
    assert np.isnan(s.loc[3, "image_share"]) and s.loc[3, "note"] == "no token span"
    assert np.isnan(s.loc[1, "evidence_share"]) and "empty token span" in s.loc[1, "note"]
    assert "clipped" in s.loc[2, "note"] and s.loc[2, "n_step_tokens"] == 2
    assert s.loc[2, "evidence_share"] == pytest.approx(0.125, abs=1e-3)


def test_answer_changed_against_base(hand_case):
    traces, _, _, items = hand_case
    tids = ["m|it1|base|none", "m|it1|drop:0|gray", "m|it1|ctrl:0|gray"]
    traces = make_traces([one_trace(trace_id=t) for t in tids])
    side = sidecar_rows([
        {"item_id": "it1", "variant": "base", "answer_text": "red"},
        {"item_id": "it1", "variant": "drop:0", "answer_text": "unknown", "abstained": True},
        {"item_id": "it1", "variant": "ctrl:0", "answer_text": "Red"},
    ])
    steps = steps_rows({t: [("think", 0, 2), ("answer", 2, 4)] for t in tids})
    t = run(traces, side, steps, items).traces.set_index("variant")
    assert pd.isna(t.loc["base", "answer_changed"])
    assert bool(t.loc["drop:0", "answer_changed"]) and not bool(t.loc["ctrl:0", "answer_changed"])
    assert t.loc["drop:0", "region"] == 0


def test_run_stage_writes_tables_with_provenance(tmp_path, hand_case):
    traces, side, steps, items = hand_case
    from peekaboo import tables
    from peekaboo.stage import StageCall

    store = tmp_path / "shard-0.zarr"
    traces.to_zarr(store, consolidated=False)
    tables.write_table(side, tmp_path / "shard-0.parquet")
    tables.write_table(steps, tmp_path / "steps.parquet")
    tables.write_table(items, tmp_path / "items.parquet")
    outs = {k: str(tmp_path / f"out.{k}.parquet") for k in ("steps", "traces", "sinks", "maps")}
    collapse.run_stage(StageCall(
        inputs={"stores": [str(store)], "sidecars": [str(tmp_path / "shard-0.parquet")],
                "steps": [str(tmp_path / "steps.parquet")], "items_table": [str(tmp_path / "items.parquet")]},
        outputs=outs, config={"collapse": CFG, "features": FEATURES}, results_dir=tmp_path,
        code=[collapse.__file__], wildcards={"m": "m", "d": "d"}))
    got = read_table(outs["steps"])
    assert got["evidence_share"].iloc[0] == pytest.approx(0.175 / 0.375, abs=1e-3)
    assert read_provenance(outs["traces"])["code_hash"]
    maps = read_table(outs["maps"])
    assert len(maps) == 2 * 4 and set(maps["step"]) == {0, 1}
    np.testing.assert_allclose(maps.groupby("step")["share"].sum(), 1.0, atol=1e-3)


def test_shards_read_one_by_one_equal_one_store(hand_case):
    _, side, steps, items = hand_case
    tids = ["m|it1|base|none", "m|it1|drop:0|gray", "m|it1|ctrl:0|gray"]
    side = sidecar_rows([{"item_id": "it1", "variant": v} for v in ("base", "drop:0", "ctrl:0")])
    steps = steps_rows({t: [("think", 0, 2), ("answer", 2, 4)] for t in tids})
    whole = run(make_traces([one_trace(trace_id=t) for t in tids]), side, steps, items)
    shards = [make_traces([one_trace(trace_id=tids[0])]), make_traces([one_trace(trace_id=t) for t in tids[1:]])]
    split = run(shards, side, steps, items)
    pd.testing.assert_frame_equal(whole.steps, split.steps)
    pd.testing.assert_frame_equal(whole.traces, split.traces)


def test_localisation_by_step_groups_steps_by_role():
    # two 1-step traces and one 3-step trace, unmasked; a masked trace and an item without evidence are left out
    rows = []

    def add(trace, variant, area, kinds_shares):
        for i, (kind, share) in enumerate(kinds_shares):
            rows.append({"trace_id": trace, "model": "m", "dataset": "d", "variant": variant, "kind": kind,
                         "step_index": i, "evidence_share": share, "evidence_area_fraction": area})

    add("a", "base", 0.25, [("think", 0.50), ("answer", 0.20)])
    add("b", "base", 0.25, [("think", 0.70), ("answer", 0.30)])
    add("c", "base", 0.50, [("think", 0.80), ("think", 0.90), ("think", 0.40), ("answer", 0.50)])
    add("d", "drop:0", 0.25, [("think", 0.0), ("answer", 0.0)])
    add("e", "base", 0.0, [("think", float("nan")), ("answer", float("nan"))])
    out = collapse.localisation_by_step(pd.DataFrame(rows))
    got = {(r.n_reasoning_steps, r.step): (r.n, round(r.evidence_share, 6), round(r.lift, 6))
           for r in out.itertuples(index=False)}
    assert got == {
        (1, "step 1"): (2, 0.6, 2.4), (1, "answer"): (2, 0.25, 1.0),
        (3, "step 1"): (1, 0.8, 1.6), (3, "step 2"): (1, 0.9, 1.8), (3, "step 3"): (1, 0.4, 0.8),
        (3, "answer"): (1, 0.5, 1.0),
    }
    assert list(out["step"][out["n_reasoning_steps"] == 3]) == ["step 1", "step 2", "step 3", "answer"]
    masked = collapse.localisation_by_step(pd.DataFrame(rows), variant="drop:0")
    assert masked["evidence_share"].tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------- focus, windows, nulls (issue 25)


def _planted_trace(tid, step_shares, step_tokens, image=0.5, maps=None, image_by_token=None):
    """A trace whose evidence share (evidence = patch 0, a quarter of the image) is ``step_shares`` per think step,
    each step ``step_tokens`` long, then a one-token answer step; ``maps[k]``: step k's per-patch map."""
    shares = np.repeat(step_shares, step_tokens)
    T = len(shares) + 1
    shares = np.append(shares, step_shares[-1])
    img = np.full(T, image) if image_by_token is None else np.asarray(image_by_token, dtype=float)
    attn = np.full((T, 1, 4), 0.25)
    if maps is not None:
        attn[:-1, 0] = np.repeat(np.asarray(maps, dtype=float), step_tokens, axis=0)
    trace = {"trace_id": tid, "entropy": np.full(T, 0.5), "image_mass": np.repeat(img[:, None, None], 2, axis=1),
             "region_mass": (shares * img)[:, None, None].repeat(1, axis=1), "image_attn": attn,
             "patch_box": QUAD_BOXES}
    edges = np.concatenate([[0], np.cumsum(step_tokens)])
    spans = [("think", int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])] + [("answer", T - 1, T)]
    return trace, spans


def _run_planted(planted, cfg=None):
    traces, spans, side = [], {}, []
    for k, (tid, args) in enumerate(planted.items()):
        trace, span = _planted_trace(tid, **args)
        traces.append(trace)
        spans[tid] = span
        side.append({"item_id": f"it{k}", "variant": "base", "trace_id": tid, "n_tokens": len(trace["entropy"])})
    items = items_rows([{"item_id": f"it{k}", "regions": [[0, 0, 16, 16]]} for k in range(len(planted))])
    out = collapse.compute(make_traces(traces), sidecar_rows(side), steps_rows(spans), items,
                           {**CFG, **(cfg or {})}, FEATURES, "m", "d")
    return out.traces.set_index("trace_id"), out.steps


def test_a_trace_that_loses_all_above_chance_focus_loses_100_percent_of_its_focus():
    # lift 1.23 -> 1.0 on evidence a quarter of the image: the share falls 19%, the focus all of it
    t, steps = _run_planted({"t": {"step_shares": [1.23 * 0.25, 0.25], "step_tokens": [4, 4]}})
    row = t.loc["t"]
    assert row["evidence_share_reasoning_drop"] == pytest.approx(0.23 / 1.23, abs=2e-3)
    assert row["focus_reasoning_first"] == pytest.approx(0.23 * 0.25 / 0.75, abs=1e-3)
    assert row["focus_reasoning_drop"] == pytest.approx(1.0, abs=5e-3)
    assert row["evidence_mass_reasoning_drop"] == pytest.approx(0.23 / 1.23, abs=2e-3)
    think = steps[steps["kind"] == "think"]
    np.testing.assert_allclose(think["focus"], [0.23 * 0.25 / 0.75, 0.0], atol=1e-3)
    assert collapse.chance_corrected(0.25, 0.25) == 0.0 and collapse.chance_corrected(1.0, 0.25) == 1.0
    assert np.isnan(collapse.chance_corrected(0.5, 1.0)) and np.isnan(collapse.chance_corrected(np.nan, 0.2))


def test_endpoints_are_token_weighted_windows_not_single_steps():
    first, last = collapse.window_weights([2, 100, 100, 2], 0.25)
    np.testing.assert_allclose(first, [2, 49, 0, 0])
    np.testing.assert_allclose(last, [0, 0, 49, 2])
    np.testing.assert_allclose(collapse.window_weights([2, 100, 100, 2], 0.0)[0], [1, 0, 0, 0])
    # a one-token opening step at 0.9 weighs 1 of the first window's 5.25 tokens, not all of it
    planted = {"t": {"step_shares": [0.9, 0.6, 0.3], "step_tokens": [1, 10, 10]}}
    t, _ = _run_planted(planted, {"endpoint_fraction": 0.25})
    assert t.loc["t", "evidence_share_reasoning_first"] == pytest.approx((0.9 + 4.25 * 0.6) / 5.25, abs=2e-3)
    assert t.loc["t", "evidence_share_reasoning_last"] == pytest.approx(0.3, abs=2e-3)
    single, _ = _run_planted(planted, {"endpoint_fraction": 0.0})
    assert single.loc["t", "evidence_share_reasoning_first"] == pytest.approx(0.9, abs=2e-3)


def test_random_regions_have_the_evidence_area_lie_outside_it_and_follow_the_seed():
    ev = collapse.item_evidence([{"label": "a", "box": [0, 0, 16, 16]}])
    collapse.attach_patch_weights(ev, QUAD_BOXES, None, 32, 32)
    w = collapse.null_region_weights(ev, QUAD_BOXES, None, 50, np.random.default_rng(1))
    assert w.shape == (50, 4)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)  # one patch's area: the evidence's
    assert (w[:, 0] == 0).all()  # never on the evidence
    np.testing.assert_array_equal(w, collapse.null_region_weights(ev, QUAD_BOXES, None, 50, np.random.default_rng(1)))
    assert not np.array_equal(w, collapse.null_region_weights(ev, QUAD_BOXES, None, 50, np.random.default_rng(2)))
    whole = collapse.item_evidence([{"label": "a", "box": [0, 0, 32, 32]}])
    collapse.attach_patch_weights(whole, QUAD_BOXES, None, 32, 32)
    assert collapse.null_region_weights(whole, QUAD_BOXES, None, 10, np.random.default_rng(1)) is None


def test_random_region_null_and_position_matched_null_curves():
    # the map moves from the evidence (patch 0) to the rest: a same-area region elsewhere gains what it loses
    maps = [[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]
    planted = {
        # image share falls 0.6 -> 0.3 over the tokens; the other trace's stays at 0.2
        "a": {"step_shares": [0.7, 0.25], "step_tokens": [2, 2], "maps": maps,
              "image_by_token": [0.6, 0.6, 0.3, 0.3, 0.3]},
        "b": {"step_shares": [0.7, 0.25], "step_tokens": [2, 2], "maps": maps, "image_by_token": [0.2] * 5},
    }
    t, steps = _run_planted(planted, {"endpoint_fraction": 0.5, "null_regions": 20})
    a = t.loc["a"]
    assert a["evidence_share_map_reasoning_drop"] == pytest.approx((0.7 - 0.25) / 0.7, abs=5e-3)
    assert a["evidence_share_null_reasoning_first"] == pytest.approx(0.1, abs=2e-3)
    assert a["evidence_share_null_reasoning_drop"] == pytest.approx((0.1 - 0.25) / 0.1, abs=3e-2)
    # position-matched: a's null is b's image share at the same tokens (flat), b's is a's (falling by half)
    assert a["image_share_reasoning_drop"] == pytest.approx(0.5, abs=2e-3)
    assert a["image_share_null_reasoning_drop"] == pytest.approx(0.0, abs=2e-3)
    assert t.loc["b", "image_share_null_reasoning_drop"] == pytest.approx(0.5, abs=2e-3)
    assert steps.loc[steps["trace_id"] == "a", "image_share_null"].iloc[0] == pytest.approx(0.2, abs=1e-3)
    off, _ = _run_planted(planted, {"null_regions": 0})
    assert off["evidence_share_null_reasoning_drop"].isna().all()


# ----------------------------------------------------------------------------- layers and heads (issue 25)


def _layered_world(n_items=12):
    """3 layers x 2 heads; evidence = patch 0 (a quarter of the image). Layer 2 looks at the evidence (share 0.75,
    lift 3) and loses it over the reasoning (to 0.25: chance); layers 0 and 1 sit at chance. Head 1 of layer 0
    loses image attention (0.6 -> 0.2) while head 0 keeps it (0.4)."""
    traces, spans, side = [], {}, []
    T = 8  # four 2-token think steps and no answer step
    for k in range(n_items):
        tid = f"m|it{k}|base|none"
        image = np.zeros((T, 3, 2))
        image[:, :, :] = 0.4
        image[:, 0, 1] = np.repeat([0.6, 0.45, 0.3, 0.2], 2)
        share = np.full((T, 3), 0.25)
        share[:, 2] = np.repeat([0.75, 0.6, 0.4, 0.25], 2)
        region = (share * image.mean(axis=2))[:, :, None]
        traces.append({"trace_id": tid, "entropy": np.full(T, 0.5), "image_mass": image, "region_mass": region,
                       "image_attn": np.full((T, 1, 4), 0.25), "patch_box": QUAD_BOXES})
        spans[tid] = [("think", 2 * j, 2 * j + 2) for j in range(4)]
        side.append({"item_id": f"it{k}", "variant": "base", "trace_id": tid, "n_tokens": T})
    items = items_rows([{"item_id": f"it{k}", "regions": [[0, 0, 16, 16]]} for k in range(n_items)])
    return make_traces(traces), sidecar_rows(side), steps_rows(spans), items


def test_per_layer_and_per_head_collapse_curves():
    out = collapse.compute(*_layered_world(), {**CFG, "position_bins": 4, "endpoint_fraction": 0.25}, FEATURES,
                           "m", "d")
    layers = out.layers
    summary = layers[layers["kind"] == "summary"].set_index(["measure", "layer", "head"])
    ev = summary.xs("evidence_share", level="measure")
    assert ev.loc[(2, -1), "mean_first"] == pytest.approx(0.75, abs=3e-3)
    assert ev.loc[(2, -1), "mean_last"] == pytest.approx(0.25, abs=3e-3)
    assert ev.loc[(2, -1), "drop_of_means"] == pytest.approx(2 / 3, abs=1e-2)
    assert ev.loc[(0, -1), "drop_of_means"] == pytest.approx(0.0, abs=1e-2)
    assert ev.loc[(2, -1), "mean_lift"] == pytest.approx((0.75 + 0.6 + 0.4 + 0.25) / 4 / 0.25, abs=2e-2)
    assert ev.loc[(2, -1), "n_traces"] == 12
    heads = summary.xs("image_share", level="measure")
    assert heads.loc[(0, 1), "drop_of_means"] == pytest.approx((0.6 - 0.2) / 0.6, abs=1e-2)
    assert heads.loc[(0, 0), "drop_of_means"] == pytest.approx(0.0, abs=1e-2)
    assert heads.loc[(0, -1), "mean_first"] == pytest.approx(0.5, abs=3e-3)  # the head mean
    curve = layers[(layers["kind"] == "curve") & (layers["measure"] == "evidence_share") & (layers["layer"] == 2)]
    np.testing.assert_allclose(curve.sort_values("bin")["mean"], [0.75, 0.6, 0.4, 0.25], atol=3e-3)
    assert not layers["selected"].any() and set(layers["layers_config"]) == {"all"}


def test_a_grounding_layer_chosen_on_held_out_items_by_evidence_lift():
    cfg = {**CFG, "layers": "select", "selection_fraction": 0.5, "position_bins": 4}
    out = collapse.compute(*_layered_world(), cfg, FEATURES, "m", "d", seed=3)
    assert set(out.layers.loc[out.layers["selected"], "layer"]) == {2}
    # the steps are measured in the chosen layer alone
    first = out.steps[out.steps["step_index"] == 0]
    np.testing.assert_allclose(first["evidence_share"], 0.75, atol=3e-3)
    split = out.traces.set_index("item_id")["layer_split"]
    assert (split == "selection").sum() == 6 and (split == "analysis").sum() == 6
    again = collapse.compute(*_layered_world(), cfg, FEATURES, "m", "d", seed=3).traces
    assert list(again["layer_split"]) == list(out.traces["layer_split"])
    # the findings leave the held-out items out, saying why
    from peekaboo import collapse_findings as cf

    summary = cf.findings(out.traces, out.steps, {"bootstrap": 0, "position_bins": 4}, seed=0)["summary"]
    row = summary[(summary["scope"] == "dataset") & (summary["measure"] == "evidence_share")].iloc[0]
    assert row["n_layer_selection"] == 6 and row["n_used"] == 6
    assert "6 held out to choose the grounding layer" in row["note"]
    assert collapse.select_layer(np.array([1.0, np.nan, 1.0]), np.array([3, 0, 3])) == 0  # ties: the lowest
    assert collapse.select_layer(np.array([np.nan]), np.array([0])) is None
