"""Selective prediction: risk-coverage, AURC, E-AURC, risk at coverage, and the vision veto.

A confidence signal ranks the answers; accepting the ``n`` most confident of
``N`` gives coverage ``n / N`` and selective risk = errors among them / ``n``.

- ``AURC``: the plain mean of the selective risk over all ``N`` coverage levels
  ``n = 1..N`` (no x1000 scaling).
- ``E-AURC``: AURC minus the AURC of the ideal ranking for the same errors
  (every correct answer before every error).
- ``risk@c``: the selective risk at ``n = ceil(c N)``, the fewest answers whose
  coverage reaches ``c``.
- Ties in confidence are broken deterministically by a tie key (the trace id),
  and a missing confidence ranks last.
- Intervals: percentile bootstrap over items (all rows of an item together),
  seeded from ``selective.seed``.

The vision veto: among the answers entropy would accept, abstain on the
visually disengaged ones (vision below a within-dataset quantile), only for
the task types where the fitted interaction says confident disengagement is
dangerous (the slope of correctness on vision at confident entropy, a low
training quantile of z(entropy), is positive). Both the task types and the
quantile come from the model's *other* datasets (leave one dataset out),
never from the labels of the dataset evaluated; only a stable ordinary fit
is used. Its change in risk gets a bootstrap interval that refits the rule on
every resample, and each model one pre-declared pooled effect (the mean over
its datasets) with an equivalence test (TOST) of "no harm" on the task types
where disengagement is expected. docs/analysis.md states each choice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from . import interaction, resampling, schema
from .features import feeding, load_features, measure_views, vision_measures
from .logs import get_logger
from .resampling import interval
from .seeding import rng as seeded_rng
from .stage import StageCall
from .tables import write_table

log = get_logger("selective")

# full-response, answer-span and answer-token entropy (no vision), then the signals built on a vision measure
# (one set per measure)
ENTROPY_SIGNALS = ("neg_entropy", "neg_entropy_answer", "neg_entropy_answer_tokens")
VISION_SIGNALS = ("vision", "model", "entropy+veto")
SIGNALS = ENTROPY_SIGNALS + VISION_SIGNALS
CURVE_COLUMNS = ["model", "dataset", "signal", "vision_measure", "n", "coverage", "risk"]
COMPARISON_COLUMNS = [
    "model", "scope", "dataset", "train_dataset", "answer_signal", "missing_rule", "metric", "full", "answer",
    "difference", "difference_low", "difference_high", "n", "n_errors", "n_missing", "better", "status", "note",
]
# the entropies full-response entropy is compared with: the answer step (for a thinking model the whole
# post-</think> span) and the parsed answer's own tokens (features.answer_tokens)
ANSWER_SIGNALS = {"answer_span": interaction.ENTROPY_ANSWER, "answer_tokens": "entropy_answer_tokens"}
CALIBRATION_COLUMNS = [
    "model", "train_dataset", "dataset", "signal", "n", "n_errors", "n_train", "ece", "brier", "mean_predicted",
    "accuracy", "coverage_target", "entropy_threshold", "coverage", "risk", "risk_at_target", "status", "note",
]
RELIABILITY_COLUMNS = ["model", "train_dataset", "dataset", "signal", "bin", "p_low", "p_high", "n",
                       "mean_predicted", "accuracy"]
# equal-width bins of the predicted P(correct) for the expected calibration error and the reliability figure
CALIBRATION_BINS = 10
# z(entropy) at which "confident" is read off a fitted interaction when no training quantile is given
# (vision_slopes' default; the veto uses selective.veto_confident_quantile of the training entropies)
CONFIDENT_Z = -1.0


# ----------------------------------------------------------------------------- metrics


def ranking(confidence: Sequence[float], tie_key: Sequence[Any] | None = None) -> np.ndarray:
    """Row indices from most to least confident; NaN last; ties by ``tie_key`` ascending, then row order."""
    conf = np.asarray(confidence, dtype=float)
    n = len(conf)
    ties = np.arange(n) if tie_key is None else pd.factorize(pd.Series(list(tie_key), dtype="object").astype(str), sort=True)[0]
    missing = ~np.isfinite(conf)
    primary = np.where(missing, 0.0, -conf)
    return np.lexsort((np.arange(n), ties, primary, missing))


def sorted_errors(correct: Sequence[bool], confidence: Sequence[float], tie_key: Sequence[Any] | None = None) -> np.ndarray:
    """Errors (1.0) and correct answers (0.0) in acceptance order."""
    err = 1.0 - np.asarray(correct, dtype=float)
    return err[ranking(confidence, tie_key)]


def risk_curve_from_errors(errors: np.ndarray) -> np.ndarray:
    """Selective risk at n = 1..N for errors in acceptance order."""
    errors = np.asarray(errors, dtype=float)
    return np.cumsum(errors) / np.arange(1, len(errors) + 1) if len(errors) else np.array([])


def aurc_from_errors(errors: np.ndarray) -> float:
    curve = risk_curve_from_errors(errors)
    return float(curve.mean()) if len(curve) else float("nan")


def optimal_aurc(n: int, n_errors: int) -> float:
    """AURC of the ideal ranking (all correct answers first) with ``n_errors`` errors among ``n``."""
    if n == 0:
        return float("nan")
    return aurc_from_errors(np.r_[np.zeros(n - n_errors), np.ones(n_errors)])


def risk_at_from_errors(errors: np.ndarray, coverage: float) -> float:
    n = len(errors)
    if n == 0:
        return float("nan")
    k = max(1, min(n, math.ceil(coverage * n - 1e-9)))
    return float(np.sum(errors[:k]) / k)


def aurc(correct, confidence, tie_key=None) -> float:
    return aurc_from_errors(sorted_errors(correct, confidence, tie_key))


def eaurc(correct, confidence, tie_key=None) -> float:
    errors = sorted_errors(correct, confidence, tie_key)
    return aurc_from_errors(errors) - optimal_aurc(len(errors), int(errors.sum()))


def risk_at_coverage(correct, confidence, coverage: float, tie_key=None) -> float:
    return risk_at_from_errors(sorted_errors(correct, confidence, tie_key), coverage)


def metrics_from_errors(errors: np.ndarray, coverages: Sequence[float]) -> dict[str, float]:
    out = {"aurc": aurc_from_errors(errors)}
    out["eaurc"] = out["aurc"] - optimal_aurc(len(errors), int(np.sum(errors)))
    for c in coverages:
        out[risk_key(c)] = risk_at_from_errors(errors, c)
    return out


def risk_key(coverage: float) -> str:
    return f"risk_{round(coverage * 100):g}"


def bootstrap(
    correct: np.ndarray,
    ranks: Mapping[str, np.ndarray],
    clusters: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    coverages: Sequence[float],
) -> dict[str, dict[str, np.ndarray]]:
    """Bootstrap replicates over clusters (items) of every signal's metrics, on the same resamples.

    ``ranks[s]`` is each row's position in signal ``s``'s acceptance order;
    a resample keeps that order, so ties stay broken the same way.
    """
    err = 1.0 - np.asarray(correct, dtype=float)
    members = resampling.cluster_members(clusters)
    names = list(ranks)
    keys = ["aurc", "eaurc"] + [risk_key(c) for c in coverages]
    out = {s: {k: np.full(n_boot, np.nan) for k in keys} for s in names}
    if not names:
        return out
    positions_by_signal = np.stack([np.asarray(ranks[s]) for s in names])
    for b, pick in enumerate(resampling.draws(len(members), n_boot, rng)):
        idx = resampling.resampled_rows(members, pick)
        m = len(idx)
        if m == 0:
            continue
        # every signal at once: each row of ``errors`` is the resample's errors in one signal's order
        errors = err[idx[np.argsort(positions_by_signal[:, idx], axis=1, kind="stable")]]
        aurcs = (np.cumsum(errors, axis=1) / np.arange(1, m + 1)).mean(axis=1)
        best = optimal_aurc(m, int(errors[0].sum()))
        risks = {}
        for c in coverages:
            k = max(1, min(m, math.ceil(c * m - 1e-9)))
            risks[risk_key(c)] = errors[:, :k].sum(axis=1) / k
        for i, s in enumerate(names):
            out[s]["aurc"][b] = aurcs[i]
            out[s]["eaurc"][b] = aurcs[i] - best
            for key, values in risks.items():
                out[s][key][b] = values[i]
    return out


def positions(order: np.ndarray) -> np.ndarray:
    """Each row's position in an acceptance order."""
    pos = np.empty(len(order), dtype=int)
    pos[order] = np.arange(len(order))
    return pos


# ----------------------------------------------------------------------------- the veto


@dataclass
class VetoRule:
    """Which task types are vetoed and below which within-dataset quantile of vision (fitted on training datasets).

    The threshold is a quantile of vision *within the dataset scored* (among
    its answers of the vetoed task types), not a raw value: a raw evidence
    share does not mean the same on another dataset (it scales with the
    evidence's area), its rank within the dataset does. Computing it reads
    the scored dataset's vision values, never its labels.
    """

    active: bool
    threshold: float = float("nan")  # the last threshold applied (reporting only)
    quantile: float = float("nan")
    task_types: list[str] = field(default_factory=list)
    slopes: dict[str, float] = field(default_factory=dict)
    slope_ses: dict[str, float] = field(default_factory=dict)
    confident_z: float = float("nan")
    train_datasets: list[str] = field(default_factory=list)
    train_risk: float = float("nan")
    train_risk_without: float = float("nan")
    fit_status: str = ""
    note: str = ""

    def thresholds(self, df: pd.DataFrame) -> dict[str, float]:
        """Per dataset in ``df``: the rule's quantile of vision among its answers of the vetoed task types."""
        if not self.active:
            return {}
        return veto_arrays(df, self.task_types, self.quantile)[1]

    def vetoed(self, df: pd.DataFrame) -> np.ndarray:
        """Rows the veto demotes: a vetoed task type and vision below its dataset's threshold (a missing vision never)."""
        if not self.active:
            return np.zeros(len(df), dtype=bool)
        mask, limits = veto_arrays(df, self.task_types, self.quantile)
        if len(limits) == 1:
            self.threshold = next(iter(limits.values()))
        return mask


def veto_arrays(df: pd.DataFrame, task_types: Sequence[str], quantile: float) -> tuple[np.ndarray, dict[str, float]]:
    """The rows a rule of ``task_types`` at ``quantile`` vetoes, and each dataset's threshold."""
    vision = df[interaction.VISION].to_numpy(dtype=float)
    eligible = df["task_type"].isin(list(task_types)).to_numpy() & np.isfinite(vision)
    codes, names = pd.factorize(df["dataset"].astype(str) if "dataset" in df else pd.Series([""] * len(df)),
                                sort=True)
    threshold = np.full(len(df), np.nan)
    limits = {}
    for k, d in enumerate(names):
        mine = codes == k
        v = vision[mine & eligible]
        limits[str(d)] = float(np.quantile(v, quantile)) if len(v) else float("nan")
        threshold[mine] = limits[str(d)]
    with np.errstate(invalid="ignore"):
        return eligible & (vision < threshold), limits


def vision_slopes(fit: interaction.Fit, confident_z: float = CONFIDENT_Z) -> dict[str, tuple[float, float]]:
    """d logit / d z(vision) at z(entropy) = ``confident_z`` and its SE, per task type ("*" without a moderator).

    The slope is linear in the coefficients (``vision + confident_z * entropy:vision``
    plus the task type's own terms), so its SE comes from the clustered covariance.
    """
    if not fit.fitted:
        return {}
    out = {}
    for level in fit.levels or ["*"]:
        grad = np.zeros(len(fit.terms))
        for i, term in enumerate(fit.terms):
            head, lv = interaction.split_term(term)
            if lv is not None and lv != level:
                continue
            if head == "vision":
                grad[i] = 1.0
            elif head == "entropy:vision":
                grad[i] = confident_z
        slope = float(grad @ fit.params)
        se = float(np.sqrt(grad @ fit.cov @ grad)) if fit.cov is not None else float("nan")
        out[level] = (slope, se)
    return out


def veto_order(df: pd.DataFrame, vetoed: np.ndarray) -> np.ndarray:
    """Acceptance order of entropy with vetoed answers moved behind every other answer."""
    conf = -df[interaction.ENTROPY].to_numpy(dtype=float)
    base = positions(ranking(conf, df["trace_id"]))
    return np.lexsort((base, vetoed.astype(int)))


def fit_veto(train: pd.DataFrame, selective_cfg: Mapping[str, Any], min_errors: int,
             filled: bool = False) -> VetoRule:
    """Fit the veto on training datasets: dangerous task types from the interaction, a within-dataset quantile by risk.

    The interaction is the pooled fit (dataset effects, features standardised
    within each dataset, clustered SEs) by ordinary maximum likelihood only:
    a fit that separates, does not converge or has a zero or undefined SE is
    not used, and the rule is off with the reason. "Confident" is the
    ``veto_confident_quantile`` quantile of the fitted rows' z(entropy). A
    task type is dangerous when the vision slope there is positive at the
    one-sided level ``veto_alpha``. The quantile is the candidate
    (``veto_quantiles``, ascending) with the lowest mean training risk at
    ``veto_coverage``, strictly below the risk without the veto; ties keep
    the smaller quantile. ``filled``: ``selective_cfg`` already has its
    defaults (the bootstrap calls this thousands of times).
    """
    if not filled:
        selective_cfg = schema.section("selective", selective_cfg)
    coverage = float(selective_cfg["veto_coverage"])
    datasets = list(dict.fromkeys(train["dataset"]))
    rule = VetoRule(active=False, train_datasets=datasets)
    if not datasets:
        rule.note = "no training datasets (no other dataset of this model has usable answers): veto not fitted"
        return rule
    fit = interaction.fit_logit(train, interaction.FEATURE_SETS["interaction"], "task_type", cluster="auto",
                                min_errors=min_errors, by="dataset", firth=False)
    rule.fit_status = fit.status
    if not fit.stable:
        why = fit.note or f"status {fit.status}"
        rule.note = (f"interaction on {', '.join(datasets)} not a stable fit, not used ({why}): veto off")
        return rule
    rule.confident_z = float(np.quantile(fit.z_entropy, float(selective_cfg["veto_confident_quantile"])))
    slopes = vision_slopes(fit, rule.confident_z)
    if "*" in slopes:
        # one task type among the rows fitted: the slope is that type's, and no other's (rows left out of the
        # fit, e.g. text-only questions without vision, say nothing about their type: never vetoed)
        slopes = {t: slopes["*"] for t in fit.task_types}
    rule.slopes = {t: round(s, 6) for t, (s, _) in slopes.items()}
    rule.slope_ses = {t: round(se, 6) for t, (_, se) in slopes.items()}
    bad_se = sorted(t for t, (_, se) in slopes.items() if not (np.isfinite(se) and se > 0))
    if bad_se:
        rule.note = f"vision slope SE zero or undefined for {', '.join(bad_se)}: fit not used, veto off"
        return rule
    # dangerous: the one-sided test of "lower vision -> lower correctness when confident" rejects at veto_alpha
    alpha = float(selective_cfg["veto_alpha"])
    z_crit = float(norm.ppf(1.0 - alpha))
    dangerous = sorted(t for t, (s, se) in slopes.items() if s > z_crit * se)
    rule.task_types = dangerous
    if not dangerous:
        rule.note = (f"no task type where confident disengagement lowers correctness in training "
                     f"(one-sided alpha {alpha:g}): veto off")
        return rule
    if not train[train["task_type"].astype(str).isin(dangerous)][interaction.VISION].notna().any():
        rule.note = "no vision values for the dangerous task types in training: veto off"
        return rule

    groups = [ddf.reset_index(drop=True) for _, ddf in train.groupby("dataset", sort=True)]
    bases = [positions(ranking(-g[interaction.ENTROPY].to_numpy(dtype=float), g["trace_id"])) for g in groups]
    errs = [1.0 - g[interaction.OUTCOME].astype(bool).to_numpy(dtype=float) for g in groups]
    visions = [g[interaction.VISION].to_numpy(dtype=float) for g in groups]
    eligible = [g["task_type"].isin(dangerous).to_numpy() & np.isfinite(v) for g, v in zip(groups, visions)]

    def train_risk(q: float | None) -> float:
        # veto_arrays' rule on arrays prepared once: within each training dataset, below its q-quantile
        risks = []
        for base, err, v, ok in zip(bases, errs, visions, eligible):
            vetoed = np.zeros(len(v), dtype=bool)
            if q is not None and ok.any():
                vetoed = ok & (v < np.quantile(v[ok], q))
            risks.append(risk_at_from_errors(err[np.lexsort((base, vetoed.astype(int)))], coverage))
        return float(np.mean(risks))

    without = train_risk(None)
    best_q, best_r = None, without
    for q in sorted(float(x) for x in selective_cfg["veto_quantiles"]):
        r = train_risk(q)
        if r < best_r - 1e-12:  # strict: a threshold must earn its place; ties keep the smaller quantile
            best_q, best_r = q, r
    rule.train_risk_without = without
    rule.train_risk = best_r
    if best_q is None:
        rule.note = f"no threshold lowered the training risk at {coverage:g} coverage ({without:.3f}): veto off"
        return rule
    rule.active, rule.quantile = True, best_q
    return rule


@dataclass
class VetoOutcome:
    """The leave-one-dataset-out veto on one dataset: its rule, what it vetoes, and its changes in risk."""

    rule: VetoRule
    vetoed: np.ndarray
    delta: float  # risk at the veto's coverage, veto minus entropy alone, all answers
    delta_expected: float  # the same among the answers of the no-harm task types (NaN without any)


def _risk_change(df: pd.DataFrame, vetoed: np.ndarray, coverage: float) -> float:
    if not len(df):
        return float("nan")
    err = 1.0 - df[interaction.OUTCOME].astype(bool).to_numpy(dtype=float)
    base = ranking(-df[interaction.ENTROPY].to_numpy(dtype=float), df["trace_id"])
    return risk_at_from_errors(err[veto_order(df, vetoed)], coverage) - risk_at_from_errors(err[base], coverage)


def veto_lodo(data: pd.DataFrame, selective_cfg: Mapping[str, Any], min_errors: int) -> dict[str, VetoOutcome]:
    """Each dataset's veto fitted on the model's other datasets, and its change in risk (all answers, and
    those of the task types where disengagement is expected: ``veto_no_harm_task_types``)."""
    selective_cfg = schema.section("selective", selective_cfg)
    coverage = float(selective_cfg["veto_coverage"])
    expected = [str(t) for t in selective_cfg["veto_no_harm_task_types"]]
    out = {}
    names = data["dataset"].astype(str).to_numpy()
    for d in sorted(set(names)):
        mine = names == d
        test = data[mine].reset_index(drop=True)
        rule = fit_veto(data[~mine].reset_index(drop=True), selective_cfg, min_errors, filled=True)
        vetoed = rule.vetoed(test)
        sub = test["task_type"].astype(str).isin(expected).to_numpy()
        out[d] = VetoOutcome(rule, vetoed, _risk_change(test, vetoed, coverage),
                             _risk_change(test[sub].reset_index(drop=True), vetoed[sub], coverage) if sub.any()
                             else float("nan"))
    return out


def pooled_veto_effect(outcomes: Mapping[str, VetoOutcome]) -> tuple[float, float]:
    """The pre-declared pooled effect: the plain mean over datasets of the change in risk (all answers), and of
    the change among the no-harm task types' answers (over the datasets that have any)."""
    deltas = np.array([o.delta for o in outcomes.values()], dtype=float)
    expected = np.array([o.delta_expected for o in outcomes.values()], dtype=float)
    mean = lambda v: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")  # noqa: E731
    return mean(deltas), mean(expected)


def veto_bootstrap(data: pd.DataFrame, selective_cfg: Mapping[str, Any], min_errors: int, n_boot: int,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bootstrap replicates of every dataset's change in risk and of the pooled effects, the rule refitted in each.

    Each resample draws the clusters (``interaction.cluster_labels``: items,
    or the data's own clusters) of every dataset with replacement, within
    the dataset (the datasets are fixed by design); a cluster drawn twice
    enters twice, as two clusters. On every resample the whole
    leave-one-dataset-out procedure runs again, so the selection of task
    types and of the threshold adds its own variability to the intervals.
    Keys: each dataset, ``pooled`` and ``pooled_expected``.
    """
    selective_cfg = schema.section("selective", selective_cfg)
    datasets = sorted(set(data["dataset"].astype(str)))
    out = {k: np.full(n_boot, np.nan) for k in datasets + ["pooled", "pooled_expected"]}
    labels = interaction.cluster_labels(data, "dataset").to_numpy()
    by_dataset = []
    for d in datasets:
        rows = np.flatnonzero(data["dataset"].astype(str).to_numpy() == d)
        members = resampling.cluster_members(labels[rows])
        by_dataset.append([rows[m] for m in members])
    for b in range(n_boot):
        idx, tags = [], []
        for members in by_dataset:
            for k, pick in enumerate(next(resampling.draws(len(members), 1, rng))):
                idx.append(members[pick])
                tags.append(np.full(len(members[pick]), k))
        idx_arr, tag_arr = np.concatenate(idx), np.concatenate(tags)
        sample = data.iloc[idx_arr].reset_index(drop=True)
        sample["cluster_id"] = labels[idx_arr] + "#" + tag_arr.astype(str)
        outcomes = veto_lodo(sample, selective_cfg, min_errors)
        for d, o in outcomes.items():
            out[d][b] = o.delta
        out["pooled"][b], out["pooled_expected"][b] = pooled_veto_effect(outcomes)
    return out


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 0: twice the smaller share of replicates on either side (at most 1)."""
    v = np.asarray(replicates, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan")
    return float(min(1.0, 2.0 * min(np.mean(v <= 0), np.mean(v >= 0))))


# ----------------------------------------------------------------------------- the stage


def _vision_confidences(test: pd.DataFrame, train: pd.DataFrame, min_errors: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Confidence arrays of the vision-based plain signals on the test rows; notes for the ones that are partial."""
    notes = {}
    conf = {"vision": test[interaction.VISION].to_numpy(dtype=float)}
    n_missing = int((~np.isfinite(conf["vision"])).sum())
    if n_missing:
        notes["vision"] = f"{n_missing} answers without vision engagement ranked last"
    if train.empty:
        notes["model"] = "no other dataset to fit the model-based signal on: not computed"
        conf["model"] = np.full(len(test), np.nan)
        return conf, notes
    fit = interaction.fit_logit(train, interaction.FEATURE_SETS["interaction"], "task_type", cluster="auto",
                                min_errors=min_errors, by="dataset")
    p = interaction.predict_proba(fit, test)
    # answers without vision (no evidence regions) fall back to the entropy-only model
    missing = ~np.isfinite(p)
    if missing.any():
        fit_e = interaction.fit_logit(train, interaction.FEATURE_SETS["entropy"], "task_type", cluster="auto",
                                      min_errors=min_errors, by="dataset")
        p_e = interaction.predict_proba(fit_e, test)
        p = np.where(missing, p_e, p)
        notes["model"] = f"{int(missing.sum())} answers scored by the entropy-only model (no vision)"
    if not fit.fitted:
        notes["model"] = f"interaction not fitted on training datasets ({fit.note})" + (
            "; " + notes["model"] if "model" in notes else "")
    conf["model"] = p
    return conf, notes


def evaluate(features: pd.DataFrame, selective_cfg: Mapping[str, Any], regression_cfg: Mapping[str, Any],
             vision_measures: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Curves and summary for every (model, dataset): each signal, and entropy with the veto (LODO).

    The entropy signals (full response, answer span) are computed once; the
    vision-based ones (``vision``, ``model``, ``entropy+veto``) once per vision
    measure. Every signal of a (model, dataset) is bootstrapped on the same
    resamples of its items, so their differences are paired.
    """
    curves, summary, _ = evaluate_all(features, selective_cfg, regression_cfg, vision_measures)
    return curves, summary


def evaluate_all(features: pd.DataFrame, selective_cfg: Mapping[str, Any], regression_cfg: Mapping[str, Any],
                 vision_measures: Sequence[str] | None = None,
                 transfer_features: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``evaluate``'s curves and summary, and the full-response against answer-span entropy comparison.

    The comparison holds, per (model, dataset), the difference of AURC and of
    risk at each coverage between the two entropies (in-domain, paired
    bootstrap over items), and per (model, train dataset, test dataset) the
    difference of the transfer AUROC of an entropy-only logit fitted on the
    train dataset (``transfer_features``, default ``features``).
    """
    selective_cfg = schema.section("selective", selective_cfg)
    regression_cfg = schema.section("regression", regression_cfg)
    coverages = [float(c) for c in selective_cfg["coverages"]]
    veto_cov = float(selective_cfg["veto_coverage"])
    n_boot = int(selective_cfg["bootstrap"])
    seed = int(selective_cfg["seed"])
    min_errors = int(regression_cfg["min_errors"])
    missing_rule = str(selective_cfg["entropy_missing"])
    curves, summary, comparison = [], [], []
    if features.empty:
        empty = pd.DataFrame([{"status": "no_data", "note": "no per-trace features"}])
        return pd.DataFrame(columns=CURVE_COLUMNS), empty, pd.DataFrame(columns=COMPARISON_COLUMNS)
    veto_boot = int(selective_cfg["veto_bootstrap"])
    tost_alpha = float(selective_cfg["veto_no_harm_alpha"])
    views = measure_views(features, vision_measures)
    for model in dict.fromkeys(features["model"]):
        usable = {m: interaction.usable_rows(v[v["model"] == model], [interaction.ENTROPY])[0] for m, v in views}
        mdf = features[features["model"] == model]
        # the leave-one-dataset-out veto of every dataset, and its bootstrap with the rule refitted each time
        vetoes = {}
        for measure, data in usable.items():
            outcomes = veto_lodo(data, selective_cfg, min_errors) if len(data) else {}
            boots = (veto_bootstrap(data, selective_cfg, min_errors, veto_boot,
                                    seeded_rng(seed, "veto", model, measure)) if veto_boot and len(data) else {})
            vetoes[measure] = (outcomes, boots)
        for dataset in dict.fromkeys(mdf["dataset"]):
            _, n_dropped, why = interaction.usable_rows(mdf[mdf["dataset"] == dataset], [interaction.ENTROPY])
            base_note = why.replace("rows left out", "answers left out") if n_dropped else ""
            first = next(iter(usable.values()))
            test = first[first["dataset"] == dataset].reset_index(drop=True)
            if test.empty:
                summary.append({"model": model, "dataset": dataset, "signal": None, "n": 0, "status": "no_data",
                                "note": "; ".join(x for x in ("no usable answers", base_note) if x)})
                continue
            correct = test[interaction.OUTCOME].astype(bool).to_numpy()
            err = 1.0 - correct.astype(float)
            tid = test["trace_id"]
            conf: dict[tuple[str, str], np.ndarray] = {
                ("neg_entropy", ""): -test[interaction.ENTROPY].to_numpy(dtype=float),
                ("neg_entropy_answer", ""): -_column(test, interaction.ENTROPY_ANSWER),
                ("neg_entropy_answer_tokens", ""): -_column(test, ANSWER_SIGNALS["answer_tokens"]),
            }
            notes: dict[tuple[str, str], str] = {}
            for key, what in ((("neg_entropy_answer", ""), "an answer step (no answer-span entropy)"),
                              (("neg_entropy_answer_tokens", ""), "answer-token entropy")):
                n_answer_missing = int((~np.isfinite(conf[key])).sum())
                if n_answer_missing:
                    notes[key] = f"{n_answer_missing} answers without {what} ranked last"
            orders = {key: ranking(c, tid) for key, c in conf.items()}
            rules = {}
            for measure, _ in views:
                mtest = usable[measure][usable[measure]["dataset"] == dataset].reset_index(drop=True)
                mtrain = usable[measure][usable[measure]["dataset"] != dataset].reset_index(drop=True)
                c, n = _vision_confidences(mtest, mtrain, min_errors)
                for signal, values in c.items():
                    conf[(signal, measure)] = values
                    orders[(signal, measure)] = ranking(values, tid)
                    if signal in n:
                        notes[(signal, measure)] = n[signal]
                outcome = vetoes[measure][0][str(dataset)]
                rule, vetoed = outcome.rule, outcome.vetoed
                orders[("entropy+veto", measure)] = veto_order(mtest, vetoed)
                rules[measure] = (rule, vetoed)
            accepted = positions(orders[("neg_entropy", "")]) < max(1, math.ceil(veto_cov * len(test) - 1e-9))
            ranks = {key: positions(o) for key, o in orders.items()}
            boots = bootstrap(correct, ranks, test["item_id"].to_numpy(), n_boot,
                              seeded_rng(seed, "selective", model, dataset), coverages + [veto_cov])
            for (signal, measure), order in orders.items():
                e = err[order]
                # a signal with no value at all would only rank by the tie key: report nothing rather than that
                computed = (signal, measure) not in conf or np.isfinite(conf[(signal, measure)]).any()
                if computed:
                    curves.append(pd.DataFrame({
                        "model": model, "dataset": dataset, "signal": signal, "vision_measure": measure,
                        "n": np.arange(1, len(e) + 1), "coverage": np.arange(1, len(e) + 1) / len(e),
                        "risk": risk_curve_from_errors(e)}))
                row = {"model": model, "scope": "dataset", "dataset": dataset, "signal": signal,
                       "vision_measure": measure,
                       "n": len(e), "n_errors": int(e.sum()), "error_rate": float(e.mean()), "status": "ok"}
                for key, value in metrics_from_errors(e, coverages).items():
                    row[key] = value if computed else np.nan
                    row[f"{key}_low"], row[f"{key}_high"] = (
                        interval(boots[(signal, measure)][key]) if n_boot and computed else (np.nan, np.nan))
                note = [x for x in (notes.get((signal, measure)), base_note) if x]
                if not computed:
                    row["status"] = "not_computed"
                if signal == "entropy+veto":
                    rule, vetoed = rules[measure]
                    base_risk = risk_at_from_errors(err[orders[("neg_entropy", "")]], veto_cov)
                    # the interval of the change comes from the bootstrap that refits the rule on every resample
                    delta = vetoes[measure][1].get(str(dataset), np.array([]))
                    task = test["task_type"].astype(str).to_numpy()
                    row.update({
                        "veto_active": rule.active, "veto_threshold": rule.threshold, "veto_quantile": rule.quantile,
                        "veto_task_types": ",".join(rule.task_types), "veto_slopes": json.dumps(rule.slopes, sort_keys=True),
                        "veto_slope_ses": json.dumps(rule.slope_ses, sort_keys=True),
                        "veto_confident_z": rule.confident_z, "veto_fit_status": rule.fit_status,
                        "veto_train_datasets": ",".join(rule.train_datasets), "veto_coverage": veto_cov,
                        "n_vetoed": int((vetoed & accepted).sum()),
                        "n_vetoed_symbolic": int((vetoed & accepted & (task == "symbolic")).sum()),
                        "delta_risk": risk_at_from_errors(e, veto_cov) - base_risk,
                        "delta_risk_p": bootstrap_p(delta),
                    })
                    row["delta_risk_low"], row["delta_risk_high"] = interval(delta)
                    if rule.note:
                        note.append(rule.note)
                row["note"] = "; ".join(note)
                summary.append(row)
            comparison += in_domain_comparison(model, dataset, test, coverages, n_boot, seed, missing_rule)
            for measure, (rule, _) in rules.items():
                veto_row = next(r for r in reversed(summary) if r.get("signal") == "entropy+veto"
                                and r.get("vision_measure") == measure)
                log.info("%s/%s (vision: %s): n=%d errors=%d; veto %s, change in risk at %g coverage %+.4f",
                         model, dataset, measure or "-", len(test), int(err.sum()), "on" if rule.active else "off",
                         veto_cov, veto_row["delta_risk"])
        for measure, (outcomes, boots) in vetoes.items():
            if outcomes:
                summary.append(_pooled_veto_row(model, measure, outcomes, boots, selective_cfg, tost_alpha))
    comparison += transfer_comparison(features if transfer_features is None else transfer_features,
                                      n_boot, seed, min_errors, missing_rule)
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    comparison_df = pd.DataFrame(comparison, columns=COMPARISON_COLUMNS)
    return curves_df[CURVE_COLUMNS], pd.DataFrame(summary), comparison_df


def _pooled_veto_row(model: str, measure: str, outcomes: Mapping[str, VetoOutcome], boots: Mapping[str, np.ndarray],
                     selective_cfg: Mapping[str, Any], tost_alpha: float) -> dict[str, Any]:
    """The model's one pre-declared veto effect: the mean over its datasets of the change in risk, with the
    refitting bootstrap's interval; and "no harm" on the expected task types as an equivalence test (TOST)."""
    delta, expected = pooled_veto_effect(outcomes)
    margin = float(selective_cfg["veto_no_harm_margin"])
    lo, hi = interval(boots["pooled"]) if boots else (np.nan, np.nan)
    # TOST at level alpha: both one-sided tests reject exactly when the 1 - 2 alpha interval lies inside the margin
    e_lo, e_hi = interval(boots["pooled_expected"], 1.0 - 2.0 * tost_alpha) if boots else (np.nan, np.nan)
    if not (np.isfinite(e_lo) and np.isfinite(e_hi)):
        no_harm = "not estimable"
    elif -margin < e_lo and e_hi < margin:
        no_harm = "shown"
    elif e_lo > margin:
        no_harm = "harm"
    else:
        no_harm = "not shown"
    active = [d for d, o in outcomes.items() if o.rule.active]
    notes = [f"{d}: {o.rule.note}" for d, o in outcomes.items() if o.rule.note]
    return {
        "model": model, "scope": "pooled", "dataset": "pooled", "signal": "entropy+veto", "vision_measure": measure,
        "n": int(sum(len(o.vetoed) for o in outcomes.values())), "status": "ok" if np.isfinite(delta) else "not_computed",
        "veto_active": bool(active), "veto_datasets": ",".join(outcomes), "veto_active_datasets": ",".join(active),
        "veto_coverage": float(selective_cfg["veto_coverage"]),
        "n_vetoed": int(sum(o.vetoed.sum() for o in outcomes.values())),
        "delta_risk": delta, "delta_risk_low": lo, "delta_risk_high": hi,
        "delta_risk_p": bootstrap_p(boots["pooled"]) if boots else np.nan,
        "no_harm_task_types": ",".join(str(t) for t in selective_cfg["veto_no_harm_task_types"]),
        "no_harm_delta": expected, "no_harm_low": e_lo, "no_harm_high": e_hi, "no_harm_margin": margin,
        "no_harm_level": 1.0 - 2.0 * tost_alpha, "no_harm": no_harm,
        "note": "; ".join(["pre-declared: the mean over datasets of the leave-one-dataset-out change in risk"] + notes),
    }


def _column(df: pd.DataFrame, column: str) -> np.ndarray:
    """A float column, all NaN when the table has none (tables from before it existed)."""
    return df[column].to_numpy(dtype=float) if column in df else np.full(len(df), np.nan)


def _missing_note(name: str, n_missing: int, rule: str) -> str:
    if not n_missing:
        return ""
    what = "answer-span" if name == "answer_span" else "answer-token"
    return (f"{n_missing} answers without {what} entropy left out of both" if rule == "common"
            else f"{n_missing} answers without {what} entropy ranked last by it")


def in_domain_comparison(model: str, dataset: str, test: pd.DataFrame, coverages: Sequence[float], n_boot: int,
                         seed: int, missing_rule: str = "common") -> list[dict[str, Any]]:
    """Full-response minus each answer entropy: AURC and risk at each coverage, paired bootstrap over items.

    ``missing_rule`` (``selective.entropy_missing``, the same rule as the
    transfer rows): ``common`` compares both entropies on the answers that
    have both; ``last`` keeps every answer and ranks one without the answer
    entropy last by it.
    """
    rows = []
    correct_all = test[interaction.OUTCOME].astype(bool).to_numpy()
    full_all = -_column(test, interaction.ENTROPY)
    for name, column in ANSWER_SIGNALS.items():
        answer_all = -_column(test, column)
        has = np.isfinite(answer_all)
        n_missing = int((~has).sum())
        common = {"model": model, "scope": "in_domain", "dataset": dataset, "train_dataset": None,
                  "answer_signal": name, "missing_rule": missing_rule, "n_missing": n_missing}
        if not has.any():
            rows.append({**common, "metric": None, "n": 0, "n_errors": 0, "better": "neither",
                         "status": "not_computed", "note": f"no answer has {name.replace('_', '-')} entropy"})
            continue
        keep = has if missing_rule == "common" else np.ones(len(test), dtype=bool)
        sub = test[keep]
        correct, full, answer = correct_all[keep], full_all[keep], answer_all[keep]
        err = 1.0 - correct.astype(float)
        tid = sub["trace_id"].to_numpy()
        orders = {"full": ranking(full, tid), "answer": ranking(answer, tid)}
        boots = bootstrap(correct, {k: positions(o) for k, o in orders.items()}, sub["item_id"].to_numpy(), n_boot,
                          seeded_rng(seed, "entropy comparison", model, dataset, name), coverages)
        metrics = {k: metrics_from_errors(err[o], coverages) for k, o in orders.items()}
        note = "; ".join(x for x in ("lower is better: a negative difference favours full-response entropy",
                                     _missing_note(name, n_missing, missing_rule)) if x)
        for metric in ["aurc"] + [risk_key(c) for c in coverages]:
            lo, hi = interval(boots["full"][metric] - boots["answer"][metric]) if n_boot else (np.nan, np.nan)
            rows.append({**common, "metric": metric, "full": metrics["full"][metric],
                         "answer": metrics["answer"][metric],
                         "difference": metrics["full"][metric] - metrics["answer"][metric],
                         "difference_low": lo, "difference_high": hi, "n": len(err), "n_errors": int(err.sum()),
                         "better": _better(lo, hi, lower_is_better=True), "status": "ok", "note": note})
    return rows


def _better(lo: float, hi: float, lower_is_better: bool) -> str:
    """Which entropy the interval of (full - answer) favours: full, answer, or neither (it holds 0)."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 <= hi:
        return "neither"
    full_wins = hi < 0 if lower_is_better else lo > 0
    return "full" if full_wins else "answer"


def transfer_comparison(features: pd.DataFrame, n_boot: int, seed: int, min_errors: int,
                        missing_rule: str = "common") -> list[dict[str, Any]]:
    """Per model and (train, test) pair: transfer AUROC of full-response minus each answer entropy, paired bootstrap.

    Each entropy gets an entropy-only logit fitted on the train dataset (on
    its answers that have that entropy) and scored on the test dataset's
    answers; which test answers follows ``missing_rule``, as in domain:
    ``common``, the answers with both entropies; ``last``, every answer with a
    full-response entropy, one without the answer entropy scored below every
    other (ranked last; such answers tie among themselves). The bootstrap
    resamples the test items, the same resamples for both.
    """
    rows = []
    for model, mdf in features.groupby("model", sort=False):
        datasets = list(dict.fromkeys(mdf["dataset"]))
        for train in datasets:
            tdf = mdf[mdf["dataset"] == train]
            fits = {col: interaction.fit_logit(tdf, interaction.FEATURE_SETS["entropy"], None, min_errors=min_errors,
                                               entropy_col=col)
                    for col in (interaction.ENTROPY, *(c for c in ANSWER_SIGNALS.values() if c in mdf))}
            for test in datasets:
                if test == train:
                    continue
                sdf_all, _, _ = interaction.usable_rows(mdf[mdf["dataset"] == test], [interaction.ENTROPY])
                for name, column in ANSWER_SIGNALS.items():
                    has = np.isfinite(_column(sdf_all, column))
                    base = {"model": model, "scope": "transfer", "dataset": test, "train_dataset": train,
                            "answer_signal": name, "missing_rule": missing_rule, "metric": "auroc", "full": np.nan,
                            "answer": np.nan, "difference": np.nan, "difference_low": np.nan,
                            "difference_high": np.nan, "n": 0, "n_errors": 0, "n_missing": int((~has).sum()),
                            "better": "neither", "status": "ok", "note": "higher is better"}
                    used = {c: fits[c] for c in (interaction.ENTROPY, column) if c in fits}
                    not_fitted = ([f"{c}: {f.note}" for c, f in used.items() if not f.fitted]
                                  or ([] if column in fits else [f"no {column} column"]))
                    sdf = sdf_all[has] if missing_rule == "common" else sdf_all
                    if not_fitted or sdf.empty or not has.any():
                        rows.append({**base, "status": "not_fitted", "note": "; ".join(not_fitted) or
                                     f"no test answers with {name.replace('_', '-')} entropy"})
                        continue
                    y = sdf[interaction.OUTCOME].astype(bool).to_numpy()
                    full_score = interaction.predict_proba(fits[interaction.ENTROPY], sdf, moderator=None)
                    answer_score = interaction.predict_proba(fits[column], sdf, entropy_col=column, moderator=None)
                    # probabilities lie in [0, 1]: -1 ranks an answer without the entropy below every other
                    answer_score = np.where(np.isfinite(answer_score), answer_score, -1.0)
                    full, answer = interaction.auroc(y, full_score), interaction.auroc(y, answer_score)
                    diffs = resampling.paired_auroc_differences(
                        y, full_score, answer_score, sdf["item_id"].to_numpy(), n_boot,
                        seeded_rng(seed, "entropy transfer", model, train, test, name))
                    lo, hi = interval(diffs) if n_boot else (np.nan, np.nan)
                    note = "higher is better" if np.isfinite(full - answer) else (
                        "test answers of one class only: AUROC undefined")
                    rows.append({**base, "full": full, "answer": answer, "difference": full - answer,
                                 "difference_low": lo, "difference_high": hi, "n": len(y),
                                 "n_errors": int((~y).sum()), "better": _better(lo, hi, lower_is_better=False),
                                 "status": "ok" if np.isfinite(full - answer) else "not_scored",
                                 "note": "; ".join(x for x in (note, _missing_note(name, int((~has).sum()),
                                                                                   missing_rule)) if x)})
    return rows


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = CALIBRATION_BINS
                               ) -> tuple[float, list[dict[str, Any]]]:
    """ECE over ``n_bins`` equal-width bins of the predicted P(correct), and each bin's row for the reliability figure.

    ``sum_b (n_b / n) |accuracy_b - mean predicted_b|``; the last bin is closed.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if not len(y):
        return float("nan"), []
    b = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece, rows = 0.0, []
    for k in range(n_bins):
        sel = b == k
        if not sel.any():
            continue
        conf, acc = float(p[sel].mean()), float(y[sel].mean())
        ece += sel.sum() / len(y) * abs(acc - conf)
        rows.append({"bin": k, "p_low": k / n_bins, "p_high": (k + 1) / n_bins, "n": int(sel.sum()),
                     "mean_predicted": conf, "accuracy": acc})
    return float(ece), rows


def calibration(features: pd.DataFrame, coverages: Sequence[float], min_errors: int
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration and carried-over thresholds of each entropy under transfer (per model, train and test dataset).

    For each entropy (``full``: the full response; ``answer_span``;
    ``answer_tokens``) an entropy-only logit fitted on the train dataset gives
    P(correct) on the test dataset's answers that have that entropy: its
    expected calibration error (``CALIBRATION_BINS`` equal-width bins), Brier
    score, mean prediction and accuracy. Thresholds: for each coverage ``c``
    (``selective.coverages``), the entropy below which ``c`` of the train
    answers fall is applied to the test answers as it is, since a deployed
    selector only has its training data to set it: the coverage it reaches
    there and the risk among the answers it accepts, beside the risk at
    coverage ``c`` chosen on the test answers themselves (``risk_at_target``).
    Returns (calibration rows, reliability bins).
    """
    rows, bins = [], []
    signals = {"full": interaction.ENTROPY, **ANSWER_SIGNALS}
    for model, mdf in features.groupby("model", sort=False):
        datasets = list(dict.fromkeys(mdf["dataset"]))
        for train in datasets:
            for signal, column in signals.items():
                tdf, _, _ = interaction.usable_rows(mdf[mdf["dataset"] == train], [column]) if column in mdf else (
                    mdf.iloc[0:0], 0, "")
                fit = interaction.fit_logit(tdf, interaction.FEATURE_SETS["entropy"], None, min_errors=min_errors,
                                            entropy_col=column) if len(tdf) else None
                for test in datasets:
                    if test == train:
                        continue
                    common = {"model": model, "train_dataset": train, "dataset": test, "signal": signal,
                              "n_train": len(tdf)}
                    sdf, n_dropped, why = (interaction.usable_rows(mdf[mdf["dataset"] == test], [column])
                                           if column in mdf else (mdf.iloc[0:0], 0, ""))
                    if fit is None or not fit.fitted or sdf.empty:
                        reason = (f"no {column} column" if column not in mdf else "no test answers with it" if
                                  sdf.empty else f"not fitted on {train}: {fit.note if fit else 'no rows'}")
                        rows.append({**common, "n": len(sdf), "status": "not_fitted", "note": reason})
                        continue
                    y = sdf[interaction.OUTCOME].astype(bool).to_numpy()
                    p = interaction.predict_proba(fit, sdf, entropy_col=column, moderator=None)
                    ece, bin_rows = expected_calibration_error(y, p)
                    bins += [{**{k: common[k] for k in ("model", "train_dataset", "dataset", "signal")}, **r}
                             for r in bin_rows]
                    ent_train = tdf[column].to_numpy(dtype=float)
                    ent_test = sdf[column].to_numpy(dtype=float)
                    err = (~y).astype(float)
                    order = np.lexsort((sdf["trace_id"].astype(str).to_numpy(), ent_test))  # least entropy first
                    stats = {**common, "n": len(y), "n_errors": int(err.sum()), "ece": ece,
                             "brier": float(np.mean((p - y) ** 2)), "mean_predicted": float(p.mean()),
                             "accuracy": float(y.mean()), "status": "ok",
                             "note": why.replace("rows left out", "test answers left out") if n_dropped else ""}
                    for c in coverages:
                        tau = float(np.quantile(ent_train, c))
                        accepted = ent_test <= tau
                        rows.append({**stats, "coverage_target": float(c), "entropy_threshold": tau,
                                     "coverage": float(accepted.mean()),
                                     "risk": float(err[accepted].mean()) if accepted.any() else np.nan,
                                     "risk_at_target": risk_at_from_errors(err[order], c)})
    return (pd.DataFrame(rows, columns=CALIBRATION_COLUMNS), pd.DataFrame(bins, columns=RELIABILITY_COLUMNS))


def run_stage(call: StageCall) -> None:
    """The ``selective`` rule: curves, summary and the entropy comparison from the per-trace tables.

    ``config``: ``selective``, ``regression`` and ``features`` (the sections)
    and ``analyses`` (dataset -> the analyses it feeds): the selectors and the
    veto use the datasets that feed ``selective``, the entropy comparison's
    transfer rows those that feed ``transfer``.
    """
    features = load_features(call.paths("traces"), call.config["regression"]["variants"])
    analyses = call.config["analyses"]
    curves, summary, comparison = evaluate_all(
        feeding(features, analyses, "selective"), call.config["selective"], call.config["regression"],
        vision_measures(call.config["features"]), transfer_features=feeding(features, analyses, "transfer"))
    tables = {"summary": summary, "entropy_comparison": comparison}
    if "calibration" in call.outputs:
        tables["calibration"], tables["reliability"] = calibration(
            feeding(features, analyses, "transfer"), [float(c) for c in
                                                      schema.section("selective", call.config["selective"])["coverages"]],
            int(schema.section("regression", call.config["regression"])["min_errors"]))
    provenance = call.provenance()
    write_table(curves, call.output("curves"), provenance)
    for key, table in tables.items():
        call.output(key).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(call.output(key), index=False, float_format="%.6g")
