"""Risk-coverage metrics against hand-computed values (ties included); the vision veto; the stage."""

import numpy as np
import pandas as pd
import pytest


from peekaboo import selective as sel
from peekaboo.stage import StageCall

from fixtures.collapse import simulate_features

CORRECT = [True, False, True, True, False]
CONF = [0.9, 0.8, 0.7, 0.6, 0.5]


def test_aurc_eaurc_risk_at_coverage_hand_computed():
    # errors in acceptance order 0 1 0 0 1 -> risks 0, 1/2, 1/3, 1/4, 2/5
    assert sel.aurc(CORRECT, CONF) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4 + 2 / 5) / 5)
    # ideal order 0 0 0 1 1 -> risks 0, 0, 0, 1/4, 2/5
    assert sel.optimal_aurc(5, 2) == pytest.approx((1 / 4 + 2 / 5) / 5)
    assert sel.eaurc(CORRECT, CONF) == pytest.approx((1 / 2 + 1 / 3) / 5)
    assert sel.risk_at_coverage(CORRECT, CONF, 0.8) == pytest.approx(1 / 4)  # n = 4
    assert sel.risk_at_coverage(CORRECT, CONF, 0.9) == pytest.approx(2 / 5)  # n = ceil(4.5) = 5
    assert sel.risk_at_coverage(CORRECT, CONF, 0.5) == pytest.approx(1 / 3)  # n = 3
    assert sel.risk_at_coverage(CORRECT, CONF, 0.2) == 0.0  # n = 1 exactly (no float overshoot)
    assert sel.risk_at_coverage(CORRECT, CONF, 0.01) == 0.0  # at least one answer


def test_ties_broken_by_tie_key_then_row_order():
    correct = [True, False, False, True]
    conf = [0.5, 0.5, 0.9, 0.5]
    # by key: row 2 (0.9), then the 0.5 ties by key a (row 1), b (row 0), d (row 3): errors 1 1 0 0
    assert sel.ranking(conf, ["b", "a", "c", "d"]).tolist() == [2, 1, 0, 3]
    assert sel.aurc(correct, conf, ["b", "a", "c", "d"]) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
    assert sel.eaurc(correct, conf, ["b", "a", "c", "d"]) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4 - (1 / 3 + 1 / 2) / 4)
    # without a key: row order 2, 0, 1, 3: errors 1 0 1 0
    assert sel.aurc(correct, conf) == pytest.approx((1 + 1 / 2 + 2 / 3 + 1 / 2) / 4)
    assert sel.risk_at_coverage(correct, conf, 0.5, ["b", "a", "c", "d"]) == 1.0
    assert sel.risk_at_coverage(correct, conf, 0.5) == 0.5


def test_missing_confidence_ranks_last_and_empty_is_nan():
    assert sel.ranking([np.nan, 0.2, 0.1]).tolist() == [1, 2, 0]
    assert sel.aurc([False, True, True], [np.nan, 0.2, 0.1]) == pytest.approx((0 + 0 + 1 / 3) / 3)
    assert np.isnan(sel.aurc([], [])) and np.isnan(sel.risk_at_coverage([], [], 0.9))


def test_bootstrap_is_seeded_and_resamples_items_whole():
    correct = np.array([True, False, True, True, False, True])
    ranks = {"a": np.arange(6)}
    items = np.array(["x", "x", "y", "y", "z", "z"])
    b1 = sel.bootstrap(correct, ranks, items, 200, np.random.default_rng(1), [0.9])
    b2 = sel.bootstrap(correct, ranks, items, 200, np.random.default_rng(1), [0.9])
    np.testing.assert_array_equal(b1["a"]["aurc"], b2["a"]["aurc"])
    # every resample draws 3 items of 2 rows: every 6-row curve; some items drawn twice
    assert len(b1["a"]["aurc"]) == 200 and np.isfinite(b1["a"]["aurc"]).all()
    lo, hi = sel.interval(b1["a"]["aurc"])
    assert lo <= sel.aurc(correct, -np.arange(6.0)) <= hi


def _veto_world(n, seed, datasets=("a", "b", "c")):
    """Visual-reference answers that are confident but disengaged are often wrong; symbolic ones are not."""
    coef = {"const": 1.5, "entropy": -0.5, "vision": 0.0, "entropy:vision": 0.0,
            "vision@visual_reference": 2.0, "entropy:vision@visual_reference": -1.0}
    return simulate_features(n, seed, coef, datasets=datasets, task_types=("symbolic", "visual_reference"))


def test_fit_veto_picks_dangerous_task_type_and_a_threshold():
    train = _veto_world(400, 11, datasets=("a", "b"))
    rule = sel.fit_veto(train, {"veto_quantiles": [0.05, 0.1, 0.2, 0.3], "veto_coverage": 0.9}, min_errors=5)
    assert rule.active, rule.note
    assert rule.task_types == ["visual_reference"]
    assert rule.slopes["visual_reference"] > 0 >= rule.slopes["symbolic"] - 0.3
    # the threshold is the chosen quantile of vision within each dataset scored, among the vetoed type's answers
    limits = rule.thresholds(train)
    for d in ("a", "b"):
        vis = train.loc[(train["task_type"] == "visual_reference") & (train["dataset"] == d), "vision"]
        assert limits[d] == pytest.approx(np.quantile(vis, rule.quantile))
    assert rule.train_risk < rule.train_risk_without
    # "confident": the configured low quantile of the fitted rows' within-dataset z(entropy)
    assert rule.confident_z == pytest.approx(np.quantile(
        np.concatenate([(g - g.mean()) / g.std(ddof=0) for _, g in train.groupby("dataset")["entropy_full"]]), 0.1))
    assert rule.fit_status == "ok" and all(se > 0 for se in rule.slope_ses.values())
    vetoed = rule.vetoed(train)
    assert not vetoed[train["task_type"].eq("symbolic").to_numpy()].any()


def test_veto_never_acts_on_a_task_type_absent_from_the_fitted_rows():
    # training: visual-reference answers where confident disengagement is dangerous, and symbolic answers without
    # any vision value (text-only questions): the fit sees one task type only
    train = _veto_world(400, 21, datasets=("a", "b"))
    train.loc[train["task_type"] == "symbolic", "vision"] = np.nan
    rule = sel.fit_veto(train, {"veto_quantiles": [0.1, 0.2, 0.3], "veto_coverage": 0.9}, min_errors=5)
    assert rule.active and rule.task_types == ["visual_reference"], (rule.task_types, rule.note)
    assert "symbolic" not in rule.slopes
    # evaluated where symbolic answers do have vision values, as low as any: never vetoed
    test = _veto_world(200, 22, datasets=("c",))
    symbolic = test["task_type"].eq("symbolic").to_numpy()
    test.loc[symbolic, "vision"] = test["vision"].min() - 1.0
    vetoed = rule.vetoed(test)
    visual = test.loc[~symbolic, "vision"]
    assert vetoed[~symbolic].sum() == (visual < np.quantile(visual, rule.quantile)).sum() > 0
    assert not vetoed[symbolic].any()


def test_veto_demotes_vetoed_answers_behind_all_others():
    df = pd.DataFrame({"trace_id": list("abcd"), "entropy_full": [0.1, 0.2, 0.3, 0.4]})
    order = sel.veto_order(df, np.array([True, False, False, False]))
    assert order.tolist() == [1, 2, 3, 0]


def test_evaluate_leave_one_dataset_out_and_never_on_test_labels():
    df = _veto_world(300, 12)
    cfg = {"coverages": [0.8, 0.9, 0.95], "bootstrap": 50, "veto_quantiles": [0.1, 0.2, 0.3], "seed": 0,
           "veto_coverage": 0.9, "veto_bootstrap": 20}
    curves, summary = sel.evaluate(df, cfg, {"min_errors": 5})
    veto = summary[(summary["signal"] == "entropy+veto") & (summary["scope"] == "dataset")].set_index("dataset")
    assert set(veto.index) == {"a", "b", "c"}
    assert veto.loc["a", "veto_train_datasets"] == "b,c"
    assert veto["veto_active"].all()
    for d, row in veto.iterrows():
        assert row["delta_risk_low"] <= row["delta_risk"] <= row["delta_risk_high"]
    # scrambling the evaluated dataset's labels leaves its veto rule unchanged
    scrambled = df.copy()
    mask = scrambled["dataset"] == "a"
    scrambled.loc[mask, "correct"] = np.random.default_rng(0).permutation(scrambled.loc[mask, "correct"].to_numpy())
    _, summary2 = sel.evaluate(scrambled, cfg, {"min_errors": 5})
    veto2 = summary2[(summary2["signal"] == "entropy+veto") & (summary2["scope"] == "dataset")].set_index("dataset")
    assert veto2.loc["a", "veto_threshold"] == veto.loc["a", "veto_threshold"]
    # curves: every signal covers n = 1..N of each dataset, risk at N = error rate
    c = curves[(curves["dataset"] == "a") & (curves["signal"] == "neg_entropy")]
    assert c["n"].tolist() == list(range(1, 301))
    assert c["risk"].iloc[-1] == pytest.approx(1 - df.loc[mask, "correct"].astype(bool).mean())
    row = summary[(summary["dataset"] == "a") & (summary["signal"] == "neg_entropy")].iloc[0]
    test = df[mask]
    assert row["aurc"] == pytest.approx(sel.aurc(test["correct"].astype(bool), -test["entropy_full"], test["trace_id"]))
    assert row["risk_90"] == pytest.approx(
        sel.risk_at_coverage(test["correct"].astype(bool), -test["entropy_full"], 0.9, test["trace_id"]))


def test_evaluate_degenerate_inputs_are_reported():
    one = _veto_world(60, 13, datasets=("a",))
    cfg = {"bootstrap": 10, "veto_quantiles": [0.1], "seed": 0, "veto_bootstrap": 5}
    _, summary = sel.evaluate(one, cfg, {"min_errors": 5})
    veto = summary[summary["signal"] == "entropy+veto"].iloc[0]
    assert not veto["veto_active"] and "no training datasets" in veto["note"]
    assert veto["delta_risk"] == 0.0
    model = summary[summary["signal"] == "model"].iloc[0]
    assert model["status"] == "not_computed" and np.isnan(model["aurc"])
    empty = _veto_world(20, 13, datasets=("a", "b"))
    empty.loc[empty["dataset"] == "b", "entropy_full"] = np.nan
    _, summary = sel.evaluate(empty, cfg, {"min_errors": 5})
    b = summary[summary["dataset"] == "b"].iloc[0]
    assert b["status"] == "no_data" and "20 answers left out (20 without entropy_full)" in b["note"]
    a_veto = summary[(summary["dataset"] == "a") & (summary["signal"] == "entropy+veto")].iloc[0]
    assert "no training datasets" in a_veto["note"]
    small = _veto_world(20, 13, datasets=("a", "b"))  # b: too few errors to fit the interaction on
    _, summary = sel.evaluate(small, cfg, {"min_errors": 50})
    a_veto = summary[(summary["dataset"] == "a") & (summary["signal"] == "entropy+veto")].iloc[0]
    assert "interaction on b not a stable fit, not used (too few" in a_veto["note"] and not a_veto["veto_active"]


def test_run_stage_writes_tables(tmp_path):
    from peekaboo.tables import read_table, write_table

    paths = [write_table(_veto_world(80, 14, datasets=(d,)), tmp_path / f"{d}.parquet") for d in ("a", "b")]
    outs = {"curves": tmp_path / "curves.parquet", "summary": tmp_path / "summary.csv",
            "entropy_comparison": tmp_path / "entropy_comparison.csv"}
    config = {"selective": {"bootstrap": 20, "seed": 0, "veto_bootstrap": 5}, "regression": {"variants": ["base"], "min_errors": 5},
              "features": {"vision": "evidence_share"},
              "analyses": {"a": ["selective", "transfer"], "b": ["selective", "transfer"]}}
    sel.run_stage(StageCall(inputs={"traces": [str(p) for p in paths]}, outputs={k: str(v) for k, v in outs.items()},
                            config=config, results_dir=tmp_path, code=[sel.__file__]))
    # the world has no answer-token entropy: that signal has no curve (a row saying so in the summary)
    assert set(read_table(outs["curves"])["signal"]) == set(sel.SIGNALS) - {"neg_entropy_answer_tokens"}
    summary = pd.read_csv(outs["summary"])
    assert {"aurc", "aurc_low", "eaurc", "risk_80", "risk_90_high", "delta_risk", "vision_measure"} <= set(summary.columns)
    comparison = pd.read_csv(outs["entropy_comparison"])
    assert set(comparison["scope"]) == {"in_domain", "transfer"}
    assert set(comparison.loc[comparison["answer_signal"] == "answer_tokens", "status"]) == {"not_computed", "not_fitted"}
    comparison = comparison[comparison["answer_signal"] == "answer_span"]
    assert len(comparison[comparison["scope"] == "transfer"]) == 2  # a -> b, b -> a


def test_entropy_comparison_favours_the_stronger_signal_in_domain_and_under_transfer():
    # correctness follows the full-response entropy; the answer-span entropy is the same signal under heavy noise
    coef = {"const": 0.5, "entropy": -1.5}
    df = simulate_features(400, 31, coef, datasets=("a", "b"), answer_noise=2.0)
    cfg = {"coverages": [0.8, 0.9, 0.95], "bootstrap": 200, "seed": 0, "veto_quantiles": [0.1], "veto_bootstrap": 0}
    _, summary, comparison = sel.evaluate_all(df, cfg, {"min_errors": 5}, ["evidence_share"])
    comparison = comparison[comparison["answer_signal"] == "answer_span"]
    inside = comparison[(comparison["scope"] == "in_domain") & (comparison["metric"] == "aurc")]
    assert len(inside) == 2 and (inside["difference"] < 0).all() and (inside["difference_high"] < 0).all()
    assert set(inside["better"]) == {"full"}
    aurc = summary.set_index(["dataset", "signal"])["aurc"]
    assert (inside.set_index("dataset")["full"] == aurc.xs("neg_entropy", level="signal")).all()
    moved = comparison[comparison["scope"] == "transfer"]
    assert set(zip(moved["train_dataset"], moved["dataset"])) == {("a", "b"), ("b", "a")}
    assert (moved["full"] > moved["answer"]).all() and (moved["difference_low"] > 0).all()
    assert set(moved["better"]) == {"full"}


def test_entropy_comparison_holds_zero_when_the_two_signals_are_the_same():
    df = simulate_features(300, 32, {"const": 0.5, "entropy": -1.5}, datasets=("a", "b"), answer_noise=0.0)
    cfg = {"bootstrap": 100, "seed": 0, "veto_quantiles": [0.1], "veto_bootstrap": 0}
    _, _, comparison = sel.evaluate_all(df, cfg, {"min_errors": 5}, ["evidence_share"])
    comparison = comparison[comparison["answer_signal"] == "answer_span"]
    assert np.allclose(comparison["difference"], 0) and set(comparison["better"]) == {"neither"}


def test_each_vision_measure_gets_its_own_signals_and_rows_without_it_rank_last():
    df = _veto_world(200, 33, datasets=("a", "b"))
    df.loc[df["task_type"] == "symbolic", "vision_evidence_share"] = np.nan  # no boxes on symbolic items
    cfg = {"bootstrap": 0, "seed": 0, "veto_quantiles": [0.1, 0.2], "veto_bootstrap": 0}
    _, summary = sel.evaluate(df, cfg, {"min_errors": 5}, ["image_share", "evidence_share"])
    keyed = summary.set_index(["dataset", "signal", "vision_measure"])
    assert {("a", "neg_entropy", ""), ("a", "neg_entropy_answer", ""), ("a", "vision", "image_share"),
            ("a", "vision", "evidence_share"), ("a", "entropy+veto", "evidence_share")} <= set(keyed.index)
    assert "answers without vision engagement ranked last" in keyed.loc[("a", "vision", "evidence_share"), "note"]
    assert "ranked last" not in str(keyed.loc[("a", "vision", "image_share"), "note"])
    # where symbolic items have no evidence share, the veto on it was never fitted to them: it never touches them
    veto = summary[(summary["signal"] == "entropy+veto") & (summary["vision_measure"] == "evidence_share")
                   & (summary["scope"] == "dataset")]
    assert (veto["veto_task_types"] == "visual_reference").all() and (veto["n_vetoed_symbolic"] == 0).all()


def test_one_missing_value_rule_for_in_domain_and_transfer():
    # a fifth of each dataset's answers are cut-off chains: no answer step (no answer-span entropy), all wrong
    df = simulate_features(300, 40, {"const": 0.5, "entropy": -1.5}, datasets=("a", "b"), answer_noise=1.0)
    cut = (np.arange(len(df)) % 5) == 0
    df.loc[cut, "entropy_answer"] = np.nan
    df["correct"] = df["correct"].where(~cut, False)
    out = {}
    for rule in ("common", "last"):
        cfg = {"bootstrap": 50, "seed": 0, "veto_quantiles": [0.1], "entropy_missing": rule}
        _, _, comparison = sel.evaluate_all(df, cfg, {"min_errors": 5}, ["evidence_share"])
        out[rule] = comparison[(comparison["answer_signal"] == "answer_span")
                               & comparison["metric"].isin(["aurc", "auroc"])].set_index(["scope", "dataset"])
    for dataset in ("a", "b"):
        n_all, n_cut = int((df["dataset"] == dataset).sum()), int((cut & (df["dataset"] == dataset)).sum())
        for scope in ("in_domain", "transfer"):
            common, last = out["common"].loc[(scope, dataset)], out["last"].loc[(scope, dataset)]
            # the same answers in both scopes under each rule
            assert common["n"] == n_all - n_cut and last["n"] == n_all, (scope, dataset)
            assert common["n_missing"] == last["n_missing"] == n_cut
            assert "left out of both" in common["note"] and "ranked last" in last["note"]
        # ranking the cut-off (wrong) chains last favours the answer span, in both scopes alike
        assert out["last"].loc[("in_domain", dataset), "difference"] > out["common"].loc[("in_domain", dataset),
                                                                                        "difference"]
        assert out["last"].loc[("transfer", dataset), "difference"] < out["common"].loc[("transfer", dataset),
                                                                                       "difference"]


def test_calibration_and_thresholds_carried_over_from_the_training_dataset():
    coef = {"const": 0.5, "entropy": -1.5}
    a = simulate_features(1500, 41, coef, datasets=("a",))
    same = simulate_features(1500, 42, coef, datasets=("b",))
    # c: the same entropies, every answer much more often wrong; d: as a, its entropies shifted up by one sd
    harder = simulate_features(1500, 43, {"const": -1.5, "entropy": -1.5}, datasets=("c",))
    shifted = simulate_features(1500, 44, coef, datasets=("d",), entropy_mean=2.5)
    df = pd.concat([a, same, harder, shifted], ignore_index=True)
    table, bins = sel.calibration(df, [0.5, 0.8], min_errors=5)
    row = table[(table["signal"] == "full") & (table["coverage_target"] == 0.8)].set_index(["train_dataset", "dataset"])
    assert row.loc[("a", "b"), "ece"] < 0.05 and row.loc[("a", "c"), "ece"] > 0.3
    assert row.loc[("a", "c"), "mean_predicted"] - row.loc[("a", "c"), "accuracy"] > 0.3  # overconfident there
    # the threshold set on a reaches about 80% of b, far less of the shifted d; its risk there is the risk it runs
    assert abs(row.loc[("a", "b"), "coverage"] - 0.8) < 0.05 and row.loc[("a", "d"), "coverage"] < 0.6
    d = df[df["dataset"] == "d"]
    tau = float(np.quantile(a["entropy_full"], 0.8))
    assert row.loc[("a", "d"), "entropy_threshold"] == pytest.approx(tau)
    assert row.loc[("a", "d"), "risk"] == pytest.approx(1 - d.loc[d["entropy_full"] <= tau, "correct"].mean())
    # reliability bins: counts add up to the test answers, the ECE is their weighted gap
    ab = bins[(bins["signal"] == "full") & (bins["train_dataset"] == "a") & (bins["dataset"] == "c")]
    assert ab["n"].sum() == 1500
    gap = (ab["n"] / ab["n"].sum() * (ab["accuracy"] - ab["mean_predicted"]).abs()).sum()
    assert row.loc[("a", "c"), "ece"] == pytest.approx(gap)
    # the answer-token entropy is absent from these tables: rows say so
    assert set(table.loc[table["signal"] == "answer_tokens", "status"]) == {"not_fitted"}


def test_a_noise_only_veto_is_not_consistent_and_no_harm_is_an_equivalence_test():
    from peekaboo import claims

    # vision does nothing anywhere; a lax level (point estimate > 0) lets the training fits declare types dangerous
    noise = simulate_features(300, 44, {"const": 1.0, "entropy": -1.0}, datasets=("a", "b", "c"),
                              task_types=("symbolic", "visual_reference"))
    cfg = {"bootstrap": 0, "seed": 0, "veto_quantiles": [0.1, 0.2, 0.3], "veto_alpha": 0.5, "veto_bootstrap": 40}
    _, summary = sel.evaluate(noise, cfg, {"min_errors": 5})
    pooled = summary[(summary["scope"] == "pooled") & (summary["signal"] == "entropy+veto")].iloc[0]
    cells = summary[(summary["scope"] == "dataset") & (summary["signal"] == "entropy+veto")]
    assert cells["veto_active"].any()  # selection did happen on noise
    assert pooled["delta_risk_low"] <= 0 <= pooled["delta_risk_high"]
    assert pooled["delta_risk"] == pytest.approx(cells["delta_risk"].mean())
    assert claims.vision_veto(summary, "")["verdict"] != claims.CONSISTENT
    # the same seed gives the same table; the bootstrap refits the rule (its replicates vary where the rule does)
    _, again = sel.evaluate(noise, cfg, {"min_errors": 5})
    pd.testing.assert_frame_equal(summary, again)
    # the danger world: the veto never touches symbolic answers, so no harm is shown there by TOST
    world = _veto_world(300, 12)
    _, summary = sel.evaluate(world, {**cfg, "veto_alpha": 0.05, "veto_bootstrap": 20}, {"min_errors": 5})
    pooled = summary[(summary["scope"] == "pooled") & (summary["signal"] == "entropy+veto")].iloc[0]
    assert pooled["no_harm_task_types"] == "symbolic" and pooled["no_harm_level"] == pytest.approx(0.9)
    assert -0.02 < pooled["no_harm_low"] <= pooled["no_harm_high"] < 0.02 and pooled["no_harm"] == "shown"
    # a margin narrower than the interval: no harm not shown
    lo, hi = pooled["no_harm_low"], pooled["no_harm_high"]
    if hi > 0:
        _, narrow = sel.evaluate(world, {**cfg, "veto_alpha": 0.05, "veto_bootstrap": 20,
                                         "veto_no_harm_margin": hi / 2}, {"min_errors": 5})
        assert narrow[narrow["scope"] == "pooled"].iloc[0]["no_harm"] == "not shown"
