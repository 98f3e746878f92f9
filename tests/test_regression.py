"""Interaction logit: planted effects recovered; degenerate data reported, never raised; transfer."""

import numpy as np
import pandas as pd
import pytest

from peekaboo import interaction
from peekaboo import regression as reg
from peekaboo.stage import StageCall

from fixtures.collapse import simulate_features
from fixtures.scripts import load_script

TRUE = {"const": 0.5, "entropy": -1.0, "vision": 0.6, "entropy:vision": 0.8}


def test_planted_interaction_inside_95_interval_in_90_of_100_simulations():
    hits = 0
    for seed in range(100):
        df = simulate_features(600, seed, TRUE)
        fit = interaction.fit_logit(df)
        assert fit.status == "ok", fit.note
        # the fit standardises with the sample's mean and sd: the planted coefficient on that scale
        s_e = df["entropy_full"].std(ddof=0) / 0.5
        s_v = df["vision"].std(ddof=0) / 0.1
        target = TRUE["entropy:vision"] * s_e * s_v
        lo, hi = fit.ci[fit.terms.index("entropy:vision")]
        hits += lo <= target <= hi
    assert hits >= 90, hits


def test_pooled_fit_recovers_task_specific_interactions():
    coef = {**TRUE, "entropy:vision@symbolic": 0.0, "entropy:vision@visual_reference": 1.2}
    df = simulate_features(4000, 3, coef, datasets=("a", "b"), task_types=("symbolic", "visual_reference"))
    table = reg.fit_all(df, {"min_errors": 5})
    pooled = table[(table["scope"] == "pooled")].set_index("term")
    assert pooled["status"].iloc[0] == "ok"
    assert pooled["formula"].iloc[0] == "correct ~ z(entropy) * z(vision) * task_type"
    assert pooled["reference_level"].iloc[0] == "symbolic"
    sym = pooled.loc["entropy:vision"]
    diff = pooled.loc["entropy:vision:task[visual_reference]"]
    assert sym["ci_low"] < 0.0 < sym["ci_high"]
    assert diff["ci_low"] < 1.2 < diff["ci_high"] and diff["p"] < 0.001
    # the table alone rebuilds the fitted predictions
    params = dict(zip(pooled.index, pooled["estimate"]))
    eta = interaction.linear_predictor(params, 1.0, -1.0, "visual_reference")
    expected = sum(params[t] for t in ("const", "task[visual_reference]")) + sum(
        params[t] * v for t, v in (("entropy", 1), ("vision", -1), ("entropy:vision", -1),
                                   ("entropy:task[visual_reference]", 1), ("vision:task[visual_reference]", -1),
                                   ("entropy:vision:task[visual_reference]", -1)))
    assert eta == pytest.approx(expected)


def test_tidy_table_has_fit_statistics_and_clustered_se():
    df = simulate_features(300, 1, TRUE)
    # every item twice (two variants): clustering by item must widen nothing to zero and keep n right
    doubled = pd.concat([df, df.assign(trace_id=df["trace_id"] + "x")], ignore_index=True)
    table = reg.fit_all(doubled, {"min_errors": 5})
    row = table[(table["dataset"] == "d1") & (table["term"] == "entropy:vision")].iloc[0]
    assert row["n"] == 600 and row["n_items"] == 300
    assert row["n_errors"] == int((~doubled["correct"].astype(bool)).sum())
    for c in ("estimate", "se", "ci_low", "ci_high", "p", "llf", "pseudo_r2", "aic"):
        assert np.isfinite(row[c]), c
    assert row["converged"]
    # clustered by item, duplicated rows carry no extra information: SE equals the single-copy robust SE
    single = interaction.fit_logit(df)
    assert row["se"] == pytest.approx(single.bse[single.terms.index("entropy:vision")], rel=0.01)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.assign(correct=True), "all answers correct"),
    (lambda d: d.assign(correct=False), "all answers wrong"),
    (lambda d: d.assign(correct=[i >= 3 for i in range(len(d))]), "too few errors (3 < regression.min_errors = 5)"),
    (lambda d: d.assign(vision=0.2), "vision engagement is constant"),
    (lambda d: d.assign(vision=np.nan), "no usable rows"),
    (lambda d: d.iloc[0:0], "no usable rows"),
])
def test_degenerate_data_gives_a_row_saying_why(mutate, expected):
    df = mutate(simulate_features(200, 5, TRUE))
    df["correct"] = df["correct"].astype("boolean")
    fit = interaction.fit_logit(df, min_errors=5)
    assert fit.status == "not_fitted"
    assert expected in fit.note
    rows = interaction.tidy(fit, model="m", dataset="d1", scope="dataset", formula="f")
    assert len(rows) == 1 and rows[0]["term"] is None and expected in rows[0]["note"]


def test_missing_rows_are_dropped_before_fitting_and_counted():
    df = simulate_features(400, 2, TRUE)
    df.loc[:9, "vision"] = np.nan
    df.loc[10:14, "correct"] = pd.NA
    df.loc[15, "entropy_full"] = np.inf
    fit = interaction.fit_logit(df)
    assert fit.status == "ok" and fit.n == 384 and fit.n_dropped == 16
    assert "16 rows left out (5 without correctness, 1 without entropy_full, 10 without vision engagement)" in fit.note


def test_fit_all_goes_on_past_a_degenerate_dataset_and_drops_a_lone_moderator():
    good = simulate_features(300, 4, TRUE, datasets=("good",))
    bad = simulate_features(50, 4, TRUE, datasets=("bad",)).assign(correct=True)
    table = reg.fit_all(pd.concat([good, bad], ignore_index=True), {"min_errors": 5})
    status = table.drop_duplicates(["model", "dataset"]).set_index("dataset")["status"]
    assert status["good"] == "ok" and status["bad"] == "not_fitted" and status["pooled"] == "ok"
    pooled = table[table["scope"] == "pooled"].iloc[0]
    assert "one task_type present (visual_reference): moderator dropped" in pooled["note"]
    text = reg.summary_text(table, reg.transfer(pd.concat([good, bad]), {"min_errors": 5}))
    assert "m / bad (vision: -; from bad): not_fitted, n=50, errors=0" in text
    assert "m / good (vision: -; from good): ok, n=300, errors=" in text


def test_transfer_scores_other_datasets_with_training_scaling():
    df = simulate_features(500, 6, TRUE, datasets=("a", "b"))
    out = reg.transfer(df, {"min_errors": 5})
    assert set(out["features"]) == set(interaction.FEATURE_SETS) | {"entropy_answer"}
    assert set(zip(out["train_dataset"], out["test_dataset"])) == {("a", "b"), ("b", "a")}
    auc = out.set_index(["train_dataset", "features"])["auroc"]
    assert 0.5 < auc[("a", "vision")] < auc[("a", "additive")] < 0.95
    # entropy alone: AUROC equals that of -entropy on the test set (the fit is monotone, slope < 0)
    test = df[df["dataset"] == "b"]
    assert auc[("a", "entropy")] == pytest.approx(interaction.auroc(test["correct"].astype(bool), -test["entropy_full"]))
    # the answer-span entropy is a confidence signal of its own (here built to be the weaker one)
    assert auc[("a", "entropy_answer")] == pytest.approx(
        interaction.auroc(test["correct"].astype(bool), -test["entropy_answer"]))
    assert auc[("a", "entropy_answer")] < auc[("a", "entropy")]


def test_transfer_with_one_dataset_or_one_class_says_so():
    one = reg.transfer(simulate_features(100, 7, TRUE, datasets=("a",)), {"min_errors": 5})
    assert len(one) == 1 and "only one dataset" in one["note"].iloc[0]
    df = simulate_features(200, 7, TRUE, datasets=("a", "b"))
    df.loc[df["dataset"] == "b", "correct"] = True
    out = reg.transfer(df, {"min_errors": 5})
    a_to_b = out[out["train_dataset"] == "a"]
    assert a_to_b["auroc"].isna().all() and (a_to_b["status"] == "not_scored").all()
    assert (out[out["train_dataset"] == "b"]["status"] == "not_fitted").all()


def test_summary_text_with_a_model_of_one_dataset_beside_one_of_two():
    # the one-dataset row's empty cells come back as NaN from pandas' string columns, not None
    two = simulate_features(150, 7, TRUE, datasets=("a", "b"), models=("two",))
    one = simulate_features(150, 7, TRUE, datasets=("a",), models=("one",))
    df = pd.concat([two, one], ignore_index=True)
    measures = ["evidence_share"]
    text = reg.summary_text(reg.fit_all(df, {"min_errors": 5}, measures),
                            reg.transfer(df, {"min_errors": 5, "bootstrap": 10}, measures),
                            reg.interaction_by_task(df, {"min_errors": 5}, measures))
    assert "one: only one dataset for this model: nothing to transfer to" in text
    assert "two: a -> b entropy " in text and "[nan]" not in text
    assert "two: a -> b additive [evidence_share]" in text and "vs entropy alone" in text
    assert "two (vision: evidence_share) visual_reference: " in text


def test_auroc_hand_computed_with_ties():
    y = np.array([1, 0, 1, 0, 1], bool)
    s = np.array([0.9, 0.9, 0.5, 0.1, 0.1])
    # pairs (pos, neg): (.9,.9)=.5 (.9,.1)=1 (.5,.9)=0 (.5,.1)=1 (.1,.9)=0 (.1,.1)=.5 -> 3 / 6
    assert interaction.auroc(y, s) == pytest.approx(0.5)
    assert np.isnan(interaction.auroc(np.ones(3, bool), np.arange(3)))


def test_run_stage_writes_csvs_and_summary(tmp_path):
    from peekaboo.tables import write_table

    paths = []
    for d in ("a", "b"):
        df = simulate_features(200, 8, TRUE, datasets=(d,))
        paths.append(write_table(df, tmp_path / f"{d}.traces.parquet"))
    outs = {k: tmp_path / f"{k}.{'txt' if k == 'summary' else 'csv'}"
            for k in ("coefficients", "transfer", "interaction_by_task", "summary")}
    reg.run_stage(StageCall(inputs={"traces": [str(p) for p in paths]}, outputs={k: str(v) for k, v in outs.items()},
                            config={"regression": {"variants": ["base"], "min_errors": 5, "bootstrap": 20},
                                    "features": {}, "seed": 0,
                                    "analyses": {"a": ["regression", "transfer"], "b": ["regression", "transfer"]}},
                            results_dir=tmp_path, code=[reg.__file__]))
    coef = pd.read_csv(outs["coefficients"])
    assert set(coef["dataset"]) == {"a", "b", "pooled"}
    assert list(coef.columns) == reg.COEF_COLUMNS
    assert "errors=" in outs["summary"].read_text()
    # entropy-only sets once; the vision sets once per configured measure (default: evidence_share, image_share)
    transfer = pd.read_csv(outs["transfer"])
    assert len(transfer) == 2 * (2 + 3 * 2)
    assert set(transfer.loc[transfer["features"] == "interaction", "vision_measure"]) == {"evidence_share", "image_share"}
    assert list(transfer.columns) == reg.TRANSFER_COLUMNS
    vision_sets = transfer[transfer["vision_measure"].notna()]
    assert vision_sets["difference_low"].notna().all() and transfer.loc[transfer["vision_measure"].isna(), "difference"].isna().all()
    by_task = pd.read_csv(outs["interaction_by_task"])
    assert list(by_task.columns) == reg.TASK_COLUMNS and set(by_task["vision_measure"]) == {"evidence_share", "image_share"}
    assert "Entropy x vision interaction by task type" in outs["summary"].read_text()


def test_one_fit_never_mixes_two_vision_measures():
    df = simulate_features(300, 41, TRUE, datasets=("a", "b"))
    df.loc[df["dataset"] == "b", "vision_evidence_share"] = np.nan  # b has no evidence boxes
    table = reg.fit_all(df, {"min_errors": 5}, ["image_share", "evidence_share"])
    fits = table.drop_duplicates(["dataset", "vision_measure"]).set_index(["dataset", "vision_measure"])
    assert fits.loc[("b", "image_share"), "status"] == "ok"
    b_share = fits.loc[("b", "evidence_share")]
    assert b_share["status"] == "not_fitted" and "300 without vision engagement" in b_share["note"]
    pooled = fits.loc[("pooled", "evidence_share")]
    assert pooled["n"] == 300 and pooled["n_dropped"] == 300 and pooled["datasets"] == "a,b"
    assert fits.loc[("pooled", "image_share"), "n"] == 600


def test_each_task_types_interaction_with_its_clustered_interval():
    # hazardous (negative interaction) on visual-reference items, none on symbolic ones
    coef = {**TRUE, "entropy:vision@visual_reference": -1.2, "entropy:vision@symbolic": 0.0}
    df = simulate_features(3000, 9, coef, datasets=("a", "b"), task_types=("symbolic", "visual_reference"))
    by_task = reg.interaction_by_task(df, {"min_errors": 5}).set_index("task_type")
    visual, symbolic = by_task.loc["visual_reference"], by_task.loc["symbolic"]
    assert visual["status"] == symbolic["status"] == "ok"
    assert visual["ci_high"] < -0.5 and symbolic["ci_low"] < 0 < symbolic["ci_high"]
    assert visual["n"] == symbolic["n"] == 3000 and visual["datasets"] == "a,b"
    # the reference level's is its coefficient; the other level's adds its own term (coefficients table)
    coefs = reg.fit_all(df, {"min_errors": 5})
    pooled = coefs[coefs["scope"] == "pooled"].set_index("term")
    assert symbolic["estimate"] == pytest.approx(pooled.loc["entropy:vision", "estimate"])
    assert symbolic["se"] == pytest.approx(pooled.loc["entropy:vision", "se"])
    assert visual["estimate"] == pytest.approx(
        pooled.loc["entropy:vision", "estimate"] + pooled.loc["entropy:vision:task[visual_reference]", "estimate"])
    # the combination's SE from the covariance equals the SE of the same contrast made the reference level
    renamed = df.assign(task_type=df["task_type"].replace({"symbolic": "zz_symbolic"}))
    refit = reg.fit_all(renamed, {"min_errors": 5})
    direct = refit[(refit["scope"] == "pooled") & (refit["term"] == "entropy:vision")].iloc[0]
    assert visual["estimate"] == pytest.approx(direct["estimate"], rel=1e-4)
    assert visual["se"] == pytest.approx(direct["se"], rel=1e-3)
    assert visual["ci_low"] == pytest.approx(direct["ci_low"], rel=1e-3)


def test_a_task_type_the_fit_cannot_speak_for_says_why():
    coef = {**TRUE, "entropy:vision@visual_reference": -1.2}
    df = simulate_features(600, 10, coef, datasets=("a", "b"), task_types=("symbolic", "visual_reference"))
    df.loc[df["task_type"] == "symbolic", "vision"] = np.nan  # text-only questions: no vision engagement
    by_task = reg.interaction_by_task(df, {"min_errors": 5}, None).set_index("task_type")
    symbolic = by_task.loc["symbolic"]
    assert symbolic["status"] == "not_estimable" and np.isnan(symbolic["estimate"])
    assert "no symbolic rows in the pooled fit (600 rows left out (600 without vision engagement))" in symbolic["note"]
    visual = by_task.loc["visual_reference"]
    assert visual["status"] == "ok" and "one task type in the fit (visual_reference)" in visual["note"]
    none = reg.interaction_by_task(df.assign(correct=True), {"min_errors": 5}, None)
    assert (none["status"] == "not_estimable").all() and none["note"].str.contains("all answers correct").all()


def test_vision_feature_sets_against_entropy_alone_in_transfer():
    # vision carries a signal of its own, as strong as entropy's
    df = simulate_features(800, 12, {"const": 0.5, "entropy": -1.0, "vision": 1.0}, datasets=("a", "b"))
    out = reg.transfer(df, {"min_errors": 5, "bootstrap": 200}, seed=1)
    add = out[(out["features"] == "additive") & (out["train_dataset"] == "a")].iloc[0]
    entropy = out[(out["features"] == "entropy") & (out["train_dataset"] == "a")].iloc[0]
    assert add["n_paired"] == 800 and add["entropy_auroc"] == pytest.approx(entropy["auroc"])
    assert add["difference"] == pytest.approx(add["auroc"] - entropy["auroc"])
    assert add["difference_low"] > 0
    noise = simulate_features(800, 13, {**TRUE, "vision": 0.0, "entropy:vision": 0.0}, datasets=("a", "b"))
    out = reg.transfer(noise, {"min_errors": 5, "bootstrap": 200}, seed=1)
    add = out[(out["features"] == "additive")]
    assert ((add["difference_low"] < 0) & (add["difference_high"] > 0)).all()
    vision = out[out["features"] == "vision"]
    assert (vision["difference_high"] < 0).all()  # vision alone, no signal: clearly worse than entropy
    again = reg.transfer(noise, {"min_errors": 5, "bootstrap": 200}, seed=1)
    pd.testing.assert_frame_equal(out, again)


# ----------------------------------------------------------------------------- the optimiser, Firth, fixed effects


def test_ml_fit_and_clustered_ses_equal_statsmodels():
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(400), rng.normal(size=400), rng.normal(size=400)])
    y = (rng.random(400) < 1 / (1 + np.exp(-X @ [0.3, 1.0, -0.5]))).astype(float)
    groups = rng.integers(0, 100, 400)
    beta, converged, _ = interaction.newton_logit(X, y)
    ref = sm.Logit(y, X).fit(disp=0, cov_type="cluster", cov_kwds={"groups": groups})
    assert converged and np.allclose(beta, ref.params, atol=1e-8)
    se = np.sqrt(np.diag(interaction.cluster_covariance(X, y, beta, groups)))
    assert np.allclose(se, ref.bse, rtol=1e-8)


def test_firth_against_known_results():
    # a saturated 2x2 table: Firth's estimate is the log odds ratio with 1/2 added to every cell (Firth 1993;
    # Heinze and Schemper 2002), finite although x separates y completely
    X = np.column_stack([np.ones(6), [0, 0, 0, 1, 1, 1]])
    y = np.array([0, 0, 0, 1, 1, 1], dtype=float)
    beta, converged, _ = interaction.newton_logit(X, y, firth=True)
    assert converged and beta == pytest.approx([np.log(0.5 / 3.5), np.log(3.5 / 0.5) - np.log(0.5 / 3.5)], abs=1e-7)
    # quasi-complete separation by a binary column, built as in firthmodels' tests: firthmodels 0.8.2 (whose
    # benchmarks match R's logistf), run on these data at tolerance 1e-10, gives -1.133344, 5.816046, 1.179990
    rng = np.random.default_rng(0)
    sep = rng.choice([0, 1], 100, p=[0.8, 0.2])
    x1 = rng.normal(size=100)
    yy = (rng.random(100) < 1 / (1 + np.exp(-(-0.5 + 0.8 * x1)))).astype(float)
    yy[sep == 1] = 1
    beta, converged, _ = interaction.newton_logit(np.column_stack([np.ones(100), sep, x1]), yy, firth=True)
    assert converged and beta == pytest.approx([-1.133344, 5.816046, 1.179990], abs=2e-5)
    ml, ml_converged, _ = interaction.newton_logit(np.column_stack([np.ones(100), sep, x1]), yy)
    assert not ml_converged or abs(ml[1]) > 10  # the ordinary fit walks off


def test_a_separating_fit_is_penalised_reported_and_never_used_by_the_veto():
    from peekaboo import selective as sel

    df = simulate_features(200, 5, TRUE, datasets=("a", "b"))
    df["correct"] = df["entropy_full"] < df["entropy_full"].median()
    fit = interaction.fit_logit(df)
    assert fit.status == "penalised" and fit.method == "firth" and not fit.stable
    assert fit.note.startswith("perfect separation: the features predict correctness exactly, ML estimates undefined; "
                               "Firth-penalised estimates instead")
    assert np.all(np.isfinite(fit.params)) and fit.params[fit.terms.index("entropy")] < -5
    off = interaction.fit_logit(df, firth=False)
    assert off.status == "not_fitted" and off.note.startswith("perfect separation")
    table = reg.fit_all(df, {"min_errors": 5})
    assert set(table["status"]) == {"penalised"} and set(table["method"]) == {"firth"}
    by_task = reg.interaction_by_task(df, {"min_errors": 5})
    assert by_task["status"].tolist() == ["penalised"]
    rule = sel.fit_veto(df, {"veto_quantiles": [0.1, 0.2]}, min_errors=5)
    assert not rule.active and rule.fit_status == "not_fitted"
    assert "not a stable fit, not used (perfect separation" in rule.note
    from peekaboo import claims

    out = claims.task_interaction(by_task.assign(task_type="visual_reference"), "", "visual_reference")
    assert out["verdict"] == claims.NOT_ESTIMABLE and "1 Firth-penalised (separated) fits left out" in out["reason"]


def test_dataset_offsets_do_not_leak_into_the_interaction():
    # four datasets whose means differ in entropy and vision and whose accuracy differs with them; inside each
    # dataset neither feature matters. Standardised over the pooled rows, the product term sees the offsets.
    rng = np.random.default_rng(3)
    frames = []
    for name, (me, mv, acc) in {"a": (1, 1, -1.5), "b": (-1, -1, -1.5), "c": (1, -1, 1.5), "d": (-1, 1, 1.5)}.items():
        n = 400
        frames.append(pd.DataFrame({
            "trace_id": [f"{name}{i}" for i in range(n)], "model": "m", "dataset": name,
            "item_id": [f"{name}{i}" for i in range(n)], "task_type": "visual_reference", "status": "ok",
            "entropy_full": me + 0.3 * rng.normal(size=n), "vision": mv + 0.3 * rng.normal(size=n),
            "correct": rng.random(n) < 1 / (1 + np.exp(-acc))}))
    df = pd.concat(frames, ignore_index=True)
    naive = interaction.fit_logit(df)
    lo, hi = naive.ci[naive.terms.index("entropy:vision")]
    assert hi < 0  # the leak: a "significant" interaction nobody planted
    fit = reg.pooled_fit(df, 5)
    assert fit.status == "ok" and [t for t in fit.terms if t.startswith("dataset[")] == [
        "dataset[b]", "dataset[c]", "dataset[d]"]
    lo, hi = fit.ci[fit.terms.index("entropy:vision")]
    assert lo < 0 < hi
    # within each dataset the features are centred and scaled
    assert set(fit.group_scaling) == {"a", "b", "c", "d"}
    assert fit.group_scaling["a"]["entropy_mean"] == pytest.approx(df.loc[df["dataset"] == "a", "entropy_full"].mean())


def test_events_per_parameter_and_the_datas_own_clusters():
    df = simulate_features(300, 1, TRUE)
    fit = interaction.fit_logit(df, cluster="auto")
    assert fit.events_per_parameter == pytest.approx(min(fit.n_errors, fit.n_correct) / 3)
    row = interaction.tidy(fit)[0]
    assert row["events_per_parameter"] == fit.events_per_parameter and row["method"] == "ml"
    # questions sharing a figure: clustered by the figure, 30 clusters, and the SE widens
    grouped = df.assign(cluster_id=[f"fig{i // 10}" for i in range(len(df))])
    by_figure = interaction.fit_logit(grouped, cluster="auto")
    assert fit.n_items == 300 and by_figure.n_items == 30
    assert np.allclose(by_figure.params, fit.params)
    assert interaction.cluster_labels(grouped, "dataset").iloc[0] == "d1|fig0"


def test_a_dataset_of_one_class_is_left_out_of_a_fixed_effects_fit():
    good = simulate_features(300, 4, TRUE, datasets=("a", "b"))
    easy = simulate_features(60, 4, TRUE, datasets=("easy",)).assign(correct=True)
    fit = reg.pooled_fit(pd.concat([good, easy], ignore_index=True), 5)
    assert fit.status == "ok" and fit.datasets == ["a", "b"] and fit.n == 600
    assert "60 rows of dataset easy left out (answers all of one class" in fit.note


def test_the_simulation_scripts_studies_small():
    """benchmarks/stats_simulation.py at small N: its studies recover the planted sign, and the veto runs on them."""
    sim = load_script("benchmarks/stats_simulation.py")
    runs = [sim.sign_study((seed, 3, 160, 4)) for seed in range(10)]
    assert all(r[3] == "ok" for r in runs)
    assert sum(r[0] < 0 for r in runs) >= 9
    df = sim.study(0, 3, 120, 4)
    assert df.groupby("dataset")["entropy_full"].mean().std() > 0.1  # the datasets are offset
    assert df["cluster_id"].nunique() == 90 and np.isfinite(sim.veto_point((0, 3, 120, 4)))
