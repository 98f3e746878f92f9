"""The claims table: verdict rules on both sides of each threshold, pooling, and a planted world end to end."""

import numpy as np
import pandas as pd
import pytest

from peekaboo import claims
from peekaboo.claims import CONSISTENT, INCONSISTENT, NOT_ESTIMABLE
from peekaboo.stage import StageCall

from fixtures.collapse import simulate_features


# ----------------------------------------------------------------------------- helpers


def test_random_effects_pooling_hand_computed():
    z = claims.Z
    # SEs 0.1 and 0.2 read off the intervals: weights 100 and 25, fixed mean 1.2, Q = 20, C = 40
    out = claims.pool_cells([1.0, 2.0], [1 - 0.1 * z, 2 - 0.2 * z], [1 + 0.1 * z, 2 + 0.2 * z])
    tau2 = (20 - 1) / 40
    w = np.array([1 / (0.01 + tau2), 1 / (0.04 + tau2)])
    assert out.tau2 == pytest.approx(tau2) and out.i2 == pytest.approx(19 / 20) and out.k == 2
    assert out.estimate == pytest.approx((w[0] * 1 + w[1] * 2) / w.sum())
    assert out.high - out.estimate == pytest.approx(z / np.sqrt(w.sum()))
    # homogeneous cells: no between-cell variance, the fixed-effect answer
    same = claims.pool_cells([1.0, 1.0], [1 - 0.1 * z] * 2, [1 + 0.1 * z] * 2)
    assert same.tau2 == 0.0 and same.i2 == 0.0 and same.high - same.estimate == pytest.approx(0.1 * z / np.sqrt(2))
    # a zero-width interval counts with the smallest positive SE; with none at all: plain mean, the cells' span
    assert claims.pool([0.0, 0.2], [0.0, 0.2], [0.0, 0.2]) == (pytest.approx(0.1), 0.0, 0.2)
    assert all(np.isnan(claims.pool([np.nan], [0.0], [1.0])))


def test_cells_that_disagree_are_not_consistent_where_fixed_effects_would_say_so():
    # two pairs clearly favour the full-response entropy, one as clearly the answer span
    values = [(0.06, 0.05, 0.07), (0.06, 0.05, 0.07), (-0.06, -0.07, -0.05)]
    est = np.array([v[0] for v in values])
    se = np.array([(v[2] - v[1]) / (2 * claims.Z) for v in values])
    fixed_high = est.mean() - claims.Z / np.sqrt((1 / se**2).sum())
    assert fixed_high > 0  # the old fixed-effect pool: an interval above 0, "consistent"
    out = claims.entropy_transfer(_pairs(values))
    assert out["verdict"] == NOT_ESTIMABLE and out["ci_low"] < 0 < out["ci_high"] and out["i2"] > 0.9
    assert "2 positive (2 with the interval above 0)" in out["cells_by_sign"]
    # "often" by counts: one pair of three clearly worse is not often; two of three are
    rows = pd.DataFrame([{"model": "m", "train_dataset": f"s{i}", "test_dataset": f"t{i}", "features": "additive",
                          "vision_measure": "evidence_share", "difference": d, "difference_low": lo,
                          "difference_high": hi, "status": "ok", "note": ""} for i, (d, lo, hi) in enumerate(values)])
    hurts = claims.vision_hurts_transfer(rows, "evidence_share")
    assert hurts["verdict"] == NOT_ESTIMABLE and hurts["cells_by_sign"].startswith("1 negative (1 with the interval")
    assert hurts["reason"].startswith("inconclusive: too few pairs clearly worse")
    flipped = rows.assign(difference=-rows["difference"], difference_low=-rows["difference_high"],
                          difference_high=-rows["difference_low"])
    assert claims.vision_hurts_transfer(flipped, "evidence_share")["verdict"] == CONSISTENT


def test_holm_wilson_hand_computed():
    assert np.allclose(claims.holm([0.01, 0.04, 0.03, np.nan])[:3], [0.03, 0.06, 0.06])
    assert np.isnan(claims.holm([0.01, 0.04, 0.03, np.nan])[3])
    lo, hi = claims.wilson(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(10 / (10 + claims.Z**2))
    lo, hi = claims.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(claims.Z**2 / (10 + claims.Z**2))


def test_holm_over_the_rows_decides_the_verdicts():
    # each alone significant at 0.05, not after Holm over the three rows with a test
    z = claims.Z
    comparison = _pairs([(0.05, 0.05 - 0.0230 * z, 0.05 + 0.0230 * z)])  # p = 0.03
    by_task = _by_task([("m", "visual_reference", -0.5, -0.5 - 0.2299 * z, -0.5 + 0.2299 * z, "ok", ""),
                        ("m", "symbolic", 0.1, 0.1 - 0.5 * z, 0.1 + 0.5 * z, "ok", "")])
    assert claims.entropy_transfer(comparison)["verdict"] == CONSISTENT
    empty = pd.DataFrame()
    tables = claims.Tables(collapse_summary=empty, transfer=empty, interaction_by_task=by_task,
                           selective_summary=empty, entropy_comparison=comparison, modes=empty)
    table = claims.claims_table(tables, ["evidence_share"], 10, 0).set_index("id")
    for row in ("entropy_transfer", "interaction_visual_reference"):
        assert table.loc[row, "verdict"] == NOT_ESTIMABLE, table.loc[row, "reason"]
        assert table.loc[row, "reason"].startswith("not significant after Holm's adjustment over the 3 rows")
        assert 0.05 < table.loc[row, "p_holm"] < 0.1
    assert table.loc["interaction_symbolic", "verdict"] == CONSISTENT  # not a rejection: Holm cannot undo it
    assert table["rule"].str.len().gt(30).all()


@pytest.mark.parametrize("low, high, expected, verdict", [
    (-0.3, -0.01, "negative", CONSISTENT), (0.01, 0.3, "negative", INCONSISTENT), (-0.1, 0.1, "negative", None),
    (0.01, 0.3, "positive", CONSISTENT), (-0.3, -0.01, "positive", INCONSISTENT), (-0.1, 0.1, "positive", None),
    (-0.1, 0.1, "not_negative", CONSISTENT), (0.1, 0.3, "not_negative", CONSISTENT),
    (-0.3, -0.01, "not_negative", INCONSISTENT), (np.nan, 0.1, "negative", None),
])
def test_interval_verdicts(low, high, expected, verdict):
    assert claims.by_interval(low, high, expected) == verdict


# ----------------------------------------------------------------------------- each finding's rule


def _collapse_summary(est, lo, hi, status="ok", note=""):
    row = {"scope": "all", "model": "pooled", "dataset": "pooled", "measure": "evidence_share", "n_used": 90,
           "n_left_out": 10, "mean_drop": est, "mean_drop_low": lo, "mean_drop_high": hi, "share_over_half": 0.6,
           "datasets": "a,b", "models": "m", "status": status, "note": note}
    cell = {**row, "scope": "dataset", "model": "m", "dataset": "a"}
    return pd.DataFrame([row, cell])


@pytest.mark.parametrize("est, lo, hi, verdict, why", [
    (0.60, 0.55, 0.65, CONSISTENT, "the drop is positive and its interval reaches half"),
    (0.45, 0.40, 0.501, CONSISTENT, "the drop is positive and its interval reaches half"),
    (0.45, 0.40, 0.499, INCONSISTENT, "the interval lies below half"),
    (-0.10, -0.20, -0.05, INCONSISTENT, "the interval lies below half"),
    (0.30, -0.01, 0.60, NOT_ESTIMABLE, "inconclusive"),
])
def test_evidence_collapse_verdicts_around_zero_and_half(est, lo, hi, verdict, why):
    out = claims.evidence_collapse(_collapse_summary(est, lo, hi), "evidence_share")
    assert out["verdict"] == verdict and out["reason"].startswith(why)
    assert out["estimate"] == pytest.approx(100 * est) and out["datasets"] == "a,b"
    assert "the paper's 57-91%" in out["reason"] and "10 left out" in out["reason"]


def test_evidence_collapse_without_an_estimate_says_why():
    out = claims.evidence_collapse(_collapse_summary(np.nan, np.nan, np.nan, "not_estimable",
                                                     "evidence_share undefined: no item of these 12 traces has "
                                                     "evidence regions"), "evidence_share")
    assert out["verdict"] == NOT_ESTIMABLE and "no item of these 12 traces has evidence regions" in out["reason"]
    out = claims.evidence_collapse(_collapse_summary(0.6, np.nan, np.nan), "evidence_share")
    assert out["verdict"] == NOT_ESTIMABLE and "no interval (collapse.bootstrap = 0)" in out["reason"]
    assert "no collapse findings" in claims.evidence_collapse(pd.DataFrame(), "evidence_share")["reason"]


def _pairs(values, scope="transfer"):
    return pd.DataFrame([{"model": "m", "scope": scope, "dataset": f"t{i}", "train_dataset": f"s{i}", "metric": "auroc",
                          "difference": d, "difference_low": lo, "difference_high": hi, "status": "ok",
                          "better": "full" if lo > 0 else "answer" if hi < 0 else "neither", "note": ""}
                         for i, (d, lo, hi) in enumerate(values)])


@pytest.mark.parametrize("values, verdict", [
    ([(0.05, 0.01, 0.09), (0.03, -0.01, 0.07)], CONSISTENT),
    ([(-0.05, -0.09, -0.01), (-0.03, -0.07, 0.01)], INCONSISTENT),
    ([(0.05, -0.02, 0.12), (-0.05, -0.12, 0.02)], NOT_ESTIMABLE),
])
def test_entropy_transfer_pools_the_pairs(values, verdict):
    out = claims.entropy_transfer(_pairs(values))
    assert out["verdict"] == verdict and "pool over 2 (model, train, test) pairs" in out["reason"]
    assert out["datasets"] == "s0,s1,t0,t1" and out["models"] == "m"


def test_entropy_transfer_without_pairs_says_why():
    out = claims.entropy_transfer(_pairs([(0.1, 0.0, 0.2)], scope="in_domain"))
    assert out["verdict"] == NOT_ESTIMABLE and "a model needs two datasets feeding transfer" in out["reason"]
    failed = _pairs([(np.nan, np.nan, np.nan)]).assign(status="not_fitted", note="entropy_full: too few errors")
    out = claims.entropy_transfer(failed)
    assert out["verdict"] == NOT_ESTIMABLE and "entropy_full: too few errors" in out["reason"]


def _transfer(additive, measure="evidence_share"):
    rows = []
    for name, (d, lo, hi) in (("additive", additive), ("vision", (-0.2, -0.3, -0.1)), ("interaction", (0.0, -0.1, 0.1))):
        rows.append({"model": "m", "train_dataset": "a", "test_dataset": "b", "features": name,
                     "vision_measure": measure, "difference": d, "difference_low": lo, "difference_high": hi,
                     "status": "ok", "note": ""})
    rows.append({"model": "m", "train_dataset": "a", "test_dataset": "b", "features": "entropy", "vision_measure": None,
                 "difference": np.nan, "difference_low": np.nan, "difference_high": np.nan, "status": "ok", "note": ""})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("additive, verdict", [
    ((-0.04, -0.07, -0.01), CONSISTENT), ((0.04, 0.01, 0.07), INCONSISTENT), ((0.0, -0.03, 0.03), NOT_ESTIMABLE)])
def test_vision_hurts_transfer_reads_the_additive_rule(additive, verdict):
    out = claims.vision_hurts_transfer(_transfer(additive), "evidence_share")
    assert out["verdict"] == verdict and out["estimate"] == pytest.approx(additive[0])
    assert "vision: -0.200 [-0.300, -0.100] over 1" in out["reason"]
    out = claims.vision_hurts_transfer(_transfer(additive), "image_share")
    assert out["verdict"] == NOT_ESTIMABLE and "no transfer rows with vision measure image_share" in out["reason"]


def _by_task(rows):
    return pd.DataFrame([{"model": m, "vision_measure": "evidence_share", "datasets": "a,b", "task_type": t,
                          "estimate": e, "ci_low": lo, "ci_high": hi, "status": s, "note": n}
                         for m, t, e, lo, hi, s, n in rows])


@pytest.mark.parametrize("task, ci, verdict", [
    ("visual_reference", (-0.8, -0.1), CONSISTENT), ("visual_reference", (0.1, 0.8), INCONSISTENT),
    ("visual_reference", (-0.5, 0.2), NOT_ESTIMABLE),
    ("symbolic", (-0.2, 0.3), CONSISTENT), ("symbolic", (0.1, 0.4), CONSISTENT),
    ("symbolic", (-0.6, -0.05), INCONSISTENT),
])
def test_interaction_by_task_signs(task, ci, verdict):
    mid = sum(ci) / 2
    table = _by_task([("m1", task, mid, *ci, "ok", ""), ("m2", task, mid, *ci, "ok", "")])
    out = claims.task_interaction(table, "evidence_share", task)
    assert out["verdict"] == verdict and out["estimate"] == pytest.approx(mid)
    # two models with the same interval: the pooled interval is narrower by sqrt(2)
    assert out["ci_high"] - out["ci_low"] == pytest.approx((ci[1] - ci[0]) / np.sqrt(2))
    assert out["models"] == "m1,m2"


def test_interaction_not_estimable_says_why():
    table = _by_task([("m", "symbolic", np.nan, np.nan, np.nan, "not_estimable",
                       "no symbolic rows in the pooled fit (40 rows left out (40 without vision engagement))"),
                      ("m", "visual_reference", 0.3, 0.1, 0.5, "unstable", "optimiser did not converge")])
    sym = claims.task_interaction(table, "evidence_share", "symbolic")
    assert sym["verdict"] == NOT_ESTIMABLE and "40 without vision engagement" in sym["reason"]
    vis = claims.task_interaction(table, "evidence_share", "visual_reference")
    assert vis["verdict"] == NOT_ESTIMABLE and "1 unstable fits left out" in vis["reason"]
    none = claims.task_interaction(table[table["task_type"] == "symbolic"], "evidence_share", "visual_reference")
    assert "no visual_reference items among the datasets feeding regression" in none["reason"]


def _veto(models, cells=()):
    """Pooled veto rows per model (delta, low, high, p, no_harm) and optional per-dataset rows."""
    rows = [{"model": m, "scope": "pooled", "dataset": "pooled", "signal": "entropy+veto",
             "vision_measure": "evidence_share", "delta_risk": e, "delta_risk_low": lo, "delta_risk_high": hi,
             "delta_risk_p": p, "veto_active": True, "veto_datasets": "a,b", "veto_active_datasets": "a,b",
             "veto_coverage": 0.9, "no_harm_task_types": "symbolic", "no_harm_delta": 0.0, "no_harm_low": 0.0,
             "no_harm_high": 0.01 if harm == "shown" else 0.03 if harm == "not shown" else 0.05,
             "no_harm_margin": 0.02, "no_harm_level": 0.9, "no_harm": harm, "status": "ok", "note": ""}
            for m, e, lo, hi, p, harm in models]
    rows += [{"model": "m", "scope": "dataset", "dataset": d, "signal": "entropy+veto",
              "vision_measure": "evidence_share", "delta_risk": 0.0, "n_vetoed_symbolic": 0, "status": "ok",
              "note": ""} for d in cells]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("models, verdict, estimate, why", [
    ([("m1", -0.019, -0.03, -0.005, 0.01, "shown"), ("m2", 0.0, -0.01, 0.01, 0.9, "shown")], CONSISTENT, -1.9,
     "the veto lowers the risk without harm"),
    ([("m1", -0.019, -0.03, -0.005, 0.01, "not shown")], NOT_ESTIMABLE, -1.9, "the veto lowers the risk, but no harm"),
    ([("m1", -0.019, -0.03, 0.004, 0.1, "shown")], NOT_ESTIMABLE, -1.9, "inconclusive"),
    ([("m1", -0.019, -0.03, -0.005, 0.01, "shown"), ("m2", 0.02, 0.004, 0.03, 0.01, "shown")], INCONSISTENT, -1.9,
     "the veto raised the risk for m2"),
    ([("m1", -0.019, -0.03, -0.005, 0.01, "harm")], INCONSISTENT, -1.9, "the veto harmed where disengagement"),
])
def test_veto_verdicts_from_each_models_pooled_effect(models, verdict, estimate, why):
    out = claims.vision_veto(_veto(models, ["a", "b"]), "evidence_share")
    assert out["verdict"] == verdict and out["reason"].startswith(why), out["reason"]
    assert out["estimate"] == pytest.approx(estimate)
    assert out["p"] == pytest.approx(min(1.0, len(models) * min(m[4] for m in models)))
    assert "0 symbolic answers vetoed" in out["reason"] and out["datasets"] == "a,b"


def test_veto_without_pooled_rows_or_interval_says_why():
    cells = _veto([], ["a"])
    assert claims.vision_veto(cells, "evidence_share")["reason"].startswith("no pooled veto effect per model")
    none = _veto([("m1", -0.01, np.nan, np.nan, np.nan, "not estimable")])
    assert "no interval (selective.veto_bootstrap = 0)" in claims.vision_veto(none, "evidence_share")["reason"]


def _modes(shares, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for model, probs in shares.items():
        modes = list(probs)
        for i in range(n_items):
            for region in range(2):
                rows.append({"model": model, "dataset": "v", "item_id": f"i{i}", "region": region, "fill": "gray",
                             "mode": rng.choice(modes, p=list(probs.values())), "match_f1": 0.8})
    return pd.DataFrame(rows)


def test_crm_patterns_by_each_models_own_mode():
    modes = _modes({"blind": {"hallucination": 0.8, "grounded": 0.2},
                    "jumpy": {"collapse": 0.7, "grounded": 0.2, "undecided": 0.1},
                    "good": {"grounded": 0.9, "insensitive": 0.1}})
    hal = claims.crm_pattern(modes, "hallucination", 200, 0)
    assert hal["verdict"] == CONSISTENT and hal["reason"].startswith("hallucination is the most frequent mode of blind")
    assert 70 < hal["estimate"] < 90 and hal["ci_low"] > 50 and "mean Match F1 0.80" in hal["reason"]
    col = claims.crm_pattern(modes, "collapse", 200, 0)
    assert col["verdict"] == CONSISTENT and "collapse is the most frequent mode of jumpy" in col["reason"]
    # undecided cases are not a mode of the model: left out of the shares
    jumpy = modes[(modes["model"] == "jumpy") & (modes["mode"] != "undecided")]
    assert col["estimate"] == pytest.approx(100 * (jumpy["mode"] == "collapse").mean())
    only_good = claims.crm_pattern(modes[modes["model"] == "good"], "collapse", 200, 0)
    assert only_good["verdict"] == INCONSISTENT and "no model's most frequent mode is collapse" in only_good["reason"]
    assert only_good["estimate"] == 0.0
    assert claims.crm_pattern(pd.DataFrame(), "collapse", 10, 0)["reason"] == "no CRM modes (no dataset feeds crm)"
    # a tie leaves each tied mode as the model's own
    tie = pd.DataFrame({"model": "m", "dataset": "v", "item_id": [f"i{i}" for i in range(20)],
                        "mode": ["hallucination", "grounded"] * 10, "match_f1": 0.9})
    tied = claims.crm_pattern(tie, "hallucination", 200, 0)
    assert tied["verdict"] == CONSISTENT and "m grounded/hallucination 50% of 20" in tied["reason"]
    # a share of 100%: Wilson's interval, not [100, 100]
    all_hal = _modes({"m": {"hallucination": 1.0}}, n_items=10)
    full = claims.crm_pattern(all_hal, "hallucination", 100, 0)
    assert full["estimate"] == 100.0 and full["ci_high"] == pytest.approx(100.0)
    assert full["ci_low"] == pytest.approx(100 * 20 / (20 + claims.Z**2))
    undecided = modes.assign(mode="undecided")
    assert "all 180 CRM cases undecided or without a control trace" in claims.crm_pattern(undecided, "hallucination", 10, 0)["reason"]


# ----------------------------------------------------------------------------- a planted world, end to end


def _planted_world():
    """Two models, three datasets; on visual-reference items confident but disengaged answers are wrong, on
    symbolic items vision does nothing; the answer-span entropy is the noisier signal; the evidence drops by 70%."""
    coef = {"const": 1.5, "entropy": -1.0, "vision": 0.0, "entropy:vision": 0.0,
            "vision@visual_reference": 3.0, "entropy:vision@visual_reference": -1.5}
    df = simulate_features(500, 5, coef, datasets=("a", "b", "c"), models=("m1", "m2"),
                           task_types=("symbolic", "visual_reference"), answer_noise=2.0)
    rng = np.random.default_rng(6)
    drop = rng.uniform(0.55, 0.85, len(df))
    first = rng.uniform(0.3, 0.6, len(df))
    df = df.assign(n_think_steps=3, n_evidence_regions=1, sinks_excluded=False, evidence_share_reasoning_first=first,
                   evidence_share_reasoning_last=first * (1 - drop), evidence_share_reasoning_drop=drop,
                   evidence_share_answer=first * (1 - drop), image_share_reasoning_first=0.5,
                   image_share_reasoning_last=0.45, image_share_reasoning_drop=0.1, image_share_answer=0.4)
    return df


def test_a_planted_world_gives_the_planted_verdicts(tmp_path):
    from peekaboo import collapse_findings, regression, selective

    df = _planted_world()
    measures = ["evidence_share"]
    reg_cfg = {"min_errors": 5, "bootstrap": 200}
    sel_cfg = {"bootstrap": 200, "seed": 0, "veto_quantiles": [0.1, 0.2, 0.3], "veto_alpha": 0.05,
               "veto_bootstrap": 60}
    _, summary, comparison = selective.evaluate_all(df, sel_cfg, reg_cfg, measures)
    modes = _modes({"m1": {"hallucination": 0.75, "grounded": 0.25}, "m2": {"grounded": 0.8, "collapse": 0.2}})
    tables = claims.Tables(collapse_summary=collapse_findings.summary_table(df, 200, 0),
                           transfer=regression.transfer(df, reg_cfg, measures, seed=0),
                           interaction_by_task=regression.interaction_by_task(df, reg_cfg, measures),
                           selective_summary=summary, entropy_comparison=comparison, modes=modes)
    table = claims.claims_table(tables, measures, 200, 0)
    assert list(table.columns) == claims.COLUMNS
    assert table["id"].tolist() == [f.id for f in claims.FINDINGS]
    verdicts = dict(zip(table["id"], table["verdict"]))
    assert verdicts == {
        "evidence_collapse": CONSISTENT,  # 70% planted
        "entropy_transfer": CONSISTENT,  # the answer-span entropy is the noisier signal
        "vision_hurts_transfer": INCONSISTENT,  # here vision carries signal of its own: it helps
        "interaction_visual_reference": CONSISTENT,
        "interaction_symbolic": CONSISTENT,
        "vision_veto": CONSISTENT,
        "crm_hallucination": CONSISTENT,
        "crm_collapse": INCONSISTENT,  # m2's own mode is grounded
    }, table[["id", "verdict", "reason"]].to_string()
    assert table["reason"].str.len().gt(20).all()
    collapse = table.set_index("id").loc["evidence_collapse"]
    assert collapse["ci_low"] < 70 < collapse["ci_high"] and collapse["unit"].startswith("%")
    veto = table.set_index("id").loc["vision_veto"]
    assert veto["estimate"] < 0 and "0 symbolic answers vetoed" in veto["reason"]
    assert table.set_index("id").loc["interaction_visual_reference", "models"] == "m1,m2"


def test_run_stage_writes_every_row_with_a_reason(tmp_path):
    """No dataset feeds anything but the (empty) tables exist: every row is there, not estimable, saying why."""
    inputs = {}
    from peekaboo.collapse_findings import SUMMARY_COLUMNS

    nothing = pd.DataFrame([{"status": "not_estimable", "note": "no unmasked traces in the collapse tables"}],
                           columns=SUMMARY_COLUMNS)
    for name, frame in (("collapse_summary", nothing),
                        ("transfer", pd.DataFrame(columns=["model", "features", "vision_measure"])),
                        ("interaction_by_task", pd.DataFrame(columns=["model", "vision_measure", "task_type"])),
                        ("selective_summary", pd.DataFrame([{"status": "no_data", "note": "no per-trace features"}])),
                        ("entropy_comparison", pd.DataFrame(columns=["scope", "status"]))):
        inputs[name] = str(tmp_path / f"{name}.csv")
        frame.to_csv(inputs[name], index=False)
    inputs["modes"] = []
    out = tmp_path / "claims.csv"
    claims.run_stage(StageCall(inputs=inputs, outputs={"claims": str(out)},
                               config={"features": {"vision": ["evidence_share", "image_share"]},
                                       "claims": {"bootstrap": 10}, "seed": 0}, results_dir=tmp_path))
    table = pd.read_csv(out)
    assert (table["verdict"] == NOT_ESTIMABLE).all() and table["reason"].notna().all()
    # the findings built on a vision measure once per measure, the primary one first
    assert table["id"].value_counts()["vision_veto"] == 2 and table["id"].value_counts()["entropy_transfer"] == 1
    veto = table[table["id"] == "vision_veto"]
    assert veto["vision_measure"].tolist() == ["evidence_share", "image_share"] and veto["primary"].tolist() == [True, False]
    reasons = dict(zip(table.loc[table["primary"], "id"], table.loc[table["primary"], "reason"]))
    assert reasons["crm_collapse"] == "no CRM modes (no dataset feeds crm)"
    assert reasons["evidence_collapse"] == ("no pooled evidence_share row in the collapse summary: no unmasked traces "
                                            "in the collapse tables")


# ----------------------------------------------------------------------------- collapse: cells and nulls (issue 25)


def _collapse_claim(**kwargs):
    from peekaboo import collapse_findings as cf

    from fixtures.findings import planted_collapse

    traces, steps = planted_collapse(n_items=120, **kwargs)
    summary = cf.findings(traces, steps, {"position_bins": 4, "bootstrap": 200}, seed=0)["summary"]
    return summary, claims.evidence_collapse(summary, "evidence_share")


def test_collapse_cells_that_disagree_are_not_consistent():
    # every cell collapses: consistent
    _, agree = _collapse_claim(models=("m", "n"), datasets=("a", "b"), drop={"m": 0.8, "n": 0.8}, seed=5)
    assert agree["verdict"] == CONSISTENT and "cells with a drop 4, a rise 0, unclear 0" in agree["reason"]
    # three cells collapse hard, one stays flat: the pooled drop alone would read consistent, the cells do not
    summary, flat = _collapse_claim(models=("m", "n"), datasets=("a", "b"), drop={"m": 0.9, "n/a": 0.9, "n/b": 0.0},
                                    seed=5)
    pooled = summary[(summary["scope"] == "all") & (summary["measure"] == "evidence_share")].iloc[0]
    assert pooled["mean_drop_low"] > 0 and pooled["mean_drop_high"] > 0.5  # the old rule's "consistent"
    assert flat["verdict"] == NOT_ESTIMABLE and flat["reason"].startswith("cells disagree: 1 of 4 cells show no clear")
    # one cell gains evidence attention: inconsistent
    _, rise = _collapse_claim(models=("m", "n"), datasets=("a", "b"), drop={"m": 0.95, "n/a": 0.95, "n/b": -0.4},
                              seed=5)
    assert rise["verdict"] == INCONSISTENT and rise["reason"].startswith("cells disagree: 1 of 4 cells rise")


def test_collapse_no_larger_than_its_null_is_not_consistent():
    _, real = _collapse_claim(drop={"m": 0.7}, null_drop={"m": 0.0}, seed=6)
    assert real["verdict"] == CONSISTENT and "judged against the same-area random region null" in real["reason"]
    _, chance = _collapse_claim(drop={"m": 0.7}, null_drop={"m": 0.7}, seed=6)
    assert chance["verdict"] == NOT_ESTIMABLE
    assert chance["reason"].startswith("the drop is not larger than the same-area random region null's")
