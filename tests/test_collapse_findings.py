"""Collapse findings on planted per-trace and per-step tables: drops, counts, trajectory, accuracy, reasons."""

import numpy as np
import pandas as pd
import pytest

from peekaboo import collapse_findings as cf
from peekaboo.stage import StageCall

from fixtures.findings import planted_collapse

CFG = {"position_bins": 4, "bootstrap": 200}


@pytest.fixture(scope="module")
def planted():
    traces, steps = planted_collapse(models=("collapsing", "steady"), datasets=("a", "b"), n_items=200,
                                     drop={"collapsing": 0.7, "steady": 0.1}, n_failed=3, n_one_step=5,
                                     n_no_evidence=7, seed=1)
    return traces, steps, cf.findings(traces, steps, CFG, seed=0)


def _row(table, **keys):
    sel = np.ones(len(table), dtype=bool)
    for k, v in keys.items():
        sel &= (table[k] == v).to_numpy()
    assert sel.sum() == 1, keys
    return table[sel].iloc[0]


def test_mean_drop_share_over_half_and_counts_are_the_planted_ones(planted):
    traces, _, tables = planted
    summary = tables["summary"]
    for model, planted_drop in (("collapsing", 0.7), ("steady", 0.1)):
        row = _row(summary, scope="dataset", model=model, dataset="a", measure="evidence_share")
        used = traces[(traces["model"] == model) & (traces["dataset"] == "a") & (traces["status"] == "ok")
                      & (traces["n_think_steps"] >= 2) & (traces["n_evidence_regions"] > 0)]
        assert row["n_traces"] == 200 and row["n_used"] == len(used) == 185
        assert (row["n_failed"], row["n_few_steps"], row["n_no_evidence"], row["n_no_value"]) == (3, 5, 7, 0)
        assert row["note"] == ("15 left out: 3 failed trace, 7 no evidence regions (evidence share undefined), "
                               "5 fewer than two reasoning steps")
        drop = used["evidence_share_reasoning_drop"]
        assert row["mean_drop"] == pytest.approx(drop.mean())
        assert row["mean_drop_low"] < drop.mean() < row["mean_drop_high"]
        assert abs(row["mean_drop"] - planted_drop) < 0.03 and row["mean_drop_high"] - row["mean_drop_low"] < 0.05
        assert row["share_over_half"] == pytest.approx((drop > 0.5).mean())
        assert row["datasets"] == "a" and row["models"] == model and row["status"] == "ok"
    assert _row(summary, scope="dataset", model="collapsing", dataset="a", measure="evidence_share")[
        "share_over_half"] == 1.0
    # image share: defined on items without evidence boxes too; its planted drop is 0.2 for every trace
    image = _row(summary, scope="dataset", model="steady", dataset="b", measure="image_share")
    assert image["n_used"] == 192 and image["n_no_evidence"] == 0
    assert image["mean_drop"] == pytest.approx(0.2) and image["share_over_half"] == 0.0


def test_pooled_rows_resample_items_across_models_and_datasets(planted):
    traces, _, tables = planted
    summary = tables["summary"]
    model = _row(summary, scope="model", model="collapsing", measure="evidence_share")
    assert model["dataset"] == "pooled" and model["datasets"] == "a,b" and model["n_used"] == 370
    everything = _row(summary, scope="all", measure="evidence_share")
    assert everything["models"] == "collapsing,steady" and everything["n_used"] == 740
    # one cluster per dataset|item: the two models' traces of an item stay together
    assert everything["n_items"] == 370
    used = traces[traces["evidence_share_reasoning_drop"].notna() & (traces["n_evidence_regions"] > 0)]
    assert everything["mean_drop"] == pytest.approx(used["evidence_share_reasoning_drop"].mean())
    assert everything["mean_drop_low"] < 0.4 < everything["mean_drop_high"]


def test_trajectory_falls_over_the_reasoning_and_keeps_the_answer_apart(planted):
    traces, steps, tables = planted
    traj = tables["trajectory"]
    sub = traj[(traj["model"] == "collapsing") & (traj["dataset"] == "a") & (traj["measure"] == "evidence_share")]
    reasoning = sub[sub["segment"] == "reasoning"].sort_values("bin")
    assert reasoning["bin"].tolist() == [0, 1, 2, 3]
    assert reasoning["position_low"].tolist() == [0, 0.25, 0.5, 0.75]
    assert (np.diff(reasoning["mean"].to_numpy()) < 0).all()  # the planted linear decay
    # the first bin holds every trace's first reasoning step (a second one only from 5 steps on: position 1/4)
    used = traces[(traces["model"] == "collapsing") & (traces["dataset"] == "a")
                  & traces["evidence_share_reasoning_drop"].notna()]
    assert reasoning.iloc[0]["n_traces"] == len(used) == 185
    assert reasoning.iloc[0]["mean"] == pytest.approx(used["evidence_share_reasoning_first"].mean())
    # the last bin: each trace's steps at positions 3/4 to 1, averaged within the trace, then over traces
    think = steps[steps["trace_id"].isin(used["trace_id"]) & (steps["kind"] == "think")].copy()
    k = think.groupby("trace_id")["step_index"].transform("size")
    late = think[think["step_index"] / (k - 1) >= 0.75]
    assert reasoning.iloc[-1]["mean"] == pytest.approx(late.groupby("trace_id")["evidence_share"].mean().mean())
    answer = sub[sub["segment"] == "answer"].iloc[0]
    assert pd.isna(answer["bin"]) and answer["n_traces"] == 185
    assert answer["mean"] == pytest.approx(used["evidence_share_answer"].mean())
    for r in sub.itertuples():
        assert r.ci_low <= r.mean <= r.ci_high
    assert (sub["n_left_out"] == 15).all() and "5 fewer than two reasoning steps" in sub["note"].iloc[0]


def test_reasoning_positions_and_bins():
    steps = pd.DataFrame({"trace_id": ["t"] * 4 + ["u"] * 3, "kind": ["think"] * 3 + ["answer"] + ["think"] * 2 + ["answer"],
                          "step_index": [0, 1, 2, 3, 0, 1, 2]})
    out = cf.reasoning_bins(steps, 4)
    assert out["reasoning_position"].tolist() == [0.0, 0.5, 1.0, 0.0, 1.0]
    assert out["bin"].tolist() == [0, 2, 3, 0, 3]


def test_accuracy_falls_with_the_drop_by_tercile_and_by_correctness():
    traces, steps = planted_collapse(models=("m",), datasets=("a",), n_items=900, drop={"m": 0.5},
                                     accuracy=(1.2, -0.6), seed=2)
    # drop within 0.35-0.65, P(correct) = 1.2 - 1.8 drop: from 0.57 down to 0.03
    acc = cf.findings(traces, steps, CFG, seed=0)["accuracy"]
    acc = acc[(acc["scope"] == "dataset") & (acc["measure"] == "evidence_share")]
    terciles = acc[acc["statistic"] == "accuracy"].sort_values("tercile")
    assert terciles["n"].sum() == 900 and (terciles["n"] == 300).all()
    assert terciles["estimate"].is_monotonic_decreasing
    assert terciles.iloc[0]["drop_high"] <= terciles.iloc[1]["drop_low"]
    lo_t, hi_t = terciles.iloc[0], terciles.iloc[2]
    assert lo_t["estimate"] == pytest.approx(lo_t["n_correct"] / lo_t["n"])
    assert hi_t["ci_high"] < lo_t["ci_low"]
    diff = acc[acc["statistic"] == "accuracy_difference"].iloc[0]
    assert diff["estimate"] == pytest.approx(hi_t["estimate"] - lo_t["estimate"]) and diff["ci_high"] < 0
    by = acc[acc["statistic"] == "mean_drop"].set_index("group")
    drops = traces["evidence_share_reasoning_drop"]
    assert by.loc["correct", "estimate"] == pytest.approx(drops[traces["correct"].astype(bool)].mean())
    gap = acc[acc["statistic"] == "mean_drop_difference"].iloc[0]
    assert gap["ci_high"] < 0 < gap["n_correct"] < gap["n"]


def test_a_measure_a_dataset_does_not_define_says_so():
    traces, steps = planted_collapse(datasets=("noboxes",), n_items=20, n_no_evidence=20)
    tables = cf.findings(traces, steps, CFG, seed=0)
    for name, table in tables.items():
        rows = table[(table["measure"] == "evidence_share")]
        assert (rows["status"] == "not_estimable").all(), name
        assert rows["note"].str.contains("evidence_share undefined: no item of these 20 traces has evidence regions").all(), name
        image = table[(table["measure"] == "image_share")]
        assert (image["status"] == "ok").any(), name


def test_too_few_traces_for_terciles_and_no_base_traces_say_why():
    traces, steps = planted_collapse(n_items=4, n_failed=2)
    acc = cf.findings(traces, steps, CFG, seed=0)["accuracy"]
    row = acc[(acc["scope"] == "dataset") & (acc["measure"] == "image_share")].iloc[0]
    assert row["status"] == "not_estimable" and "2 traces with a drop and correctness: terciles need 3" in row["note"]
    masked = traces.assign(variant="drop:0")
    for table in cf.findings(masked, steps, CFG, seed=0).values():
        assert len(table) == 1 and table["note"].iloc[0] == "no unmasked traces in the collapse tables"


def test_run_stage_writes_the_tables_deterministically(tmp_path):
    from peekaboo.tables import write_table

    traces, steps = planted_collapse(datasets=("a", "b"), n_items=60, seed=3)
    paths = {"traces": [], "steps": []}
    for d in ("a", "b"):
        paths["traces"].append(str(write_table(traces[traces["dataset"] == d], tmp_path / f"{d}.traces.parquet")))
        paths["steps"].append(str(write_table(steps[steps["dataset"] == d], tmp_path / f"{d}.parquet")))
    texts = []
    for run in ("one", "two"):
        outs = {name: tmp_path / run / f"{name}.csv" for name in ("summary", "trajectory", "accuracy")}
        cf.run_stage(StageCall(inputs=paths, outputs={k: str(v) for k, v in outs.items()},
                               config={"collapse": CFG, "seed": 5}, results_dir=tmp_path))
        texts.append({k: v.read_text() for k, v in outs.items()})
    assert texts[0] == texts[1]
    summary = pd.read_csv(tmp_path / "one" / "summary.csv")
    assert list(summary.columns) == cf.SUMMARY_COLUMNS
    assert set(summary["scope"]) == {"dataset", "model", "all"}
    assert list(pd.read_csv(tmp_path / "one" / "trajectory.csv").columns) == cf.TRAJECTORY_COLUMNS
    assert list(pd.read_csv(tmp_path / "one" / "accuracy.csv").columns) == cf.ACCURACY_COLUMNS


# ----------------------------------------------------------------------------- cells, nulls (issue 25)


def test_pooled_rows_report_the_range_over_cells_and_how_many_drop():
    traces, steps = planted_collapse(models=("m", "n"), datasets=("a", "b"), n_items=120,
                                     drop={"m/a": 0.8, "m/b": 0.6, "n/a": 0.0, "n/b": -0.4}, seed=3)
    summary = cf.findings(traces, steps, CFG, seed=0)["summary"]
    cells = summary[(summary["scope"] == "dataset") & (summary["measure"] == "evidence_share")]
    pooled = _row(summary, scope="all", measure="evidence_share")
    assert pooled["n_cells"] == 4
    assert pooled["cells_drop_min"] == pytest.approx(cells["mean_drop"].min())
    assert pooled["cells_drop_max"] == pytest.approx(cells["mean_drop"].max())
    assert pooled["cells_drop_min"] < -0.3 and pooled["cells_drop_max"] > 0.7
    # m's two cells drop, n/b rises, n/a is centred on no drop
    assert (pooled["n_cells_drop"], pooled["n_cells_rise"], pooled["n_cells_unclear"]) == (2, 1, 1)
    per_model = _row(summary, scope="model", model="m", measure="evidence_share")
    assert (per_model["n_cells"], per_model["n_cells_drop"], per_model["n_cells_rise"]) == (2, 2, 0)
    assert pooled["null"] == "same-area random region"


def test_the_drop_is_judged_against_its_null():
    traces, steps = planted_collapse(models=("m", "n"), n_items=150, drop={"m": 0.7, "n": 0.7},
                                     null_drop={"m": 0.0, "n": 0.7}, seed=4)
    summary = cf.findings(traces, steps, CFG, seed=0)["summary"]
    for model, null in (("m", 0.0), ("n", 0.7)):
        row = _row(summary, scope="dataset", model=model, measure="evidence_share")
        used = traces[(traces["model"] == model) & traces["evidence_share_reasoning_drop"].notna()]
        null_loss = ((used["evidence_share_null_reasoning_first"] - used["evidence_share_null_reasoning_last"])
                     / used["evidence_share_reasoning_first"])
        excess = used["evidence_share_reasoning_drop"] - null_loss
        assert row["null_mean_drop"] == pytest.approx(null_loss.mean())
        assert row["excess_drop"] == pytest.approx(excess.mean())
        assert abs(row["excess_drop"] - (0.7 - null)) < 0.03 and row["n_null"] == len(used)
    assert _row(summary, scope="dataset", model="m", measure="evidence_share")["excess_drop_low"] > 0.6
    n = _row(summary, scope="dataset", model="n", measure="evidence_share")
    assert n["excess_drop_low"] < 0 < n["excess_drop_high"]
    # the image share's null is named even where the table has no null column (no excess then)
    image = _row(summary, scope="dataset", model="m", measure="image_share")
    assert image["null"] == "position-matched image share" and np.isnan(image["excess_drop"])


def test_a_null_near_zero_is_read_in_the_evidence_curves_units():
    # attention all on the evidence: a random region off it starts near 0, so its own relative drop is huge
    # (here -999x); the null's loss is read in units of the evidence's first value and stays bounded
    traces, steps = planted_collapse(models=("m",), n_items=60, drop={"m": 0.5}, null_drop={"m": 0.0}, seed=5)
    used = traces["evidence_share_null_reasoning_drop"].notna()
    first = traces.loc[used, "evidence_share_reasoning_first"]
    traces.loc[used, "evidence_share_null_reasoning_first"] = 1e-4 * first
    traces.loc[used, "evidence_share_null_reasoning_last"] = 0.1 * first
    traces.loc[used, "evidence_share_null_reasoning_drop"] = -999.0
    row = _row(cf.findings(traces, steps, CFG, seed=0)["summary"], scope="dataset", model="m",
               measure="evidence_share")
    assert row["null_mean_drop"] == pytest.approx(-0.0999, abs=1e-3)
    assert 0.45 < row["excess_drop"] < 0.75
