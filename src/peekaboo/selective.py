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
visually disengaged ones (vision below a threshold), only for the task types
where the fitted interaction says confident disengagement is dangerous (the
slope of correctness on vision at confident entropy, ``z(entropy) = -1``, is
positive). Both the task types and the threshold come from the model's
*other* datasets (leave one dataset out), never from the dataset evaluated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from . import interaction, schema
from .features import load_features
from .logs import get_logger
from .seeding import rng as seeded_rng
from .stage import StageCall
from .tables import write_table

log = get_logger("selective")

SIGNALS = ("neg_entropy", "vision", "model", "entropy+veto")
CURVE_COLUMNS = ["model", "dataset", "signal", "n", "coverage", "risk"]
# z(entropy) at which "confident" is read off the fitted interaction
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
    codes, uniques = pd.factorize(pd.Series(clusters).astype(str), sort=True)
    members = [np.flatnonzero(codes == k) for k in range(len(uniques))]
    out: dict[str, dict[str, list]] = {s: {} for s in ranks}
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[k] for k in pick]) if len(pick) else np.array([], int)
        for s, r in ranks.items():
            e = err[idx[np.argsort(r[idx], kind="stable")]]
            for key, value in metrics_from_errors(e, coverages).items():
                out[s].setdefault(key, []).append(value)
    return {s: {k: np.asarray(v) for k, v in m.items()} for s, m in out.items()}


def interval(values: np.ndarray) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def positions(order: np.ndarray) -> np.ndarray:
    """Each row's position in an acceptance order."""
    pos = np.empty(len(order), dtype=int)
    pos[order] = np.arange(len(order))
    return pos


# ----------------------------------------------------------------------------- the veto


@dataclass
class VetoRule:
    """Which task types are vetoed and below which vision value (fitted on training datasets)."""

    active: bool
    threshold: float = float("nan")
    quantile: float = float("nan")
    task_types: list[str] = field(default_factory=list)
    slopes: dict[str, float] = field(default_factory=dict)
    train_datasets: list[str] = field(default_factory=list)
    train_risk: float = float("nan")
    train_risk_without: float = float("nan")
    note: str = ""

    def vetoed(self, df: pd.DataFrame) -> np.ndarray:
        """Rows the veto demotes: dangerous task type and vision below the threshold (a missing vision never)."""
        if not self.active:
            return np.zeros(len(df), dtype=bool)
        vision = df[interaction.VISION].to_numpy(dtype=float)
        task = df["task_type"].astype(str).to_numpy()
        with np.errstate(invalid="ignore"):
            return np.isin(task, self.task_types) & np.isfinite(vision) & (vision < self.threshold)


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


def fit_veto(train: pd.DataFrame, selective_cfg: Mapping[str, Any], min_errors: int) -> VetoRule:
    """Fit the veto on training datasets: dangerous task types from the interaction, threshold by risk."""
    selective_cfg = schema.section("selective", selective_cfg)
    coverage = float(selective_cfg["veto_coverage"])
    datasets = list(dict.fromkeys(train["dataset"]))
    rule = VetoRule(active=False, train_datasets=datasets)
    if not datasets:
        rule.note = "no training datasets (no other dataset of this model has usable answers): veto not fitted"
        return rule
    fit = interaction.fit_logit(train.assign(item_id=train["dataset"].astype(str) + "|" + train["item_id"].astype(str)),
                        interaction.FEATURE_SETS["interaction"], "task_type", min_errors=min_errors)
    if not fit.fitted:
        rule.note = f"interaction not fitted on {', '.join(datasets)}: {fit.note}"
        return rule
    slopes = vision_slopes(fit)
    if "*" in slopes:  # one task type in training: the slope applies to it
        present = sorted(set(train["task_type"].dropna().astype(str)))
        slopes = {t: slopes["*"] for t in present}
    rule.slopes = {t: round(s, 6) for t, (s, _) in slopes.items()}
    # dangerous: the one-sided test of "lower vision -> lower correctness when confident" rejects at veto_alpha
    alpha = float(selective_cfg["veto_alpha"])
    z_crit = float(norm.ppf(1.0 - alpha))
    dangerous = sorted(t for t, (s, se) in slopes.items() if np.isfinite(se) and s > 0 and s > z_crit * se)
    rule.task_types = dangerous
    if not dangerous:
        rule.note = (f"no task type where confident disengagement lowers correctness in training "
                     f"(one-sided alpha {alpha:g}): veto off")
        return rule
    candidates = train[train["task_type"].astype(str).isin(dangerous)][interaction.VISION].to_numpy(dtype=float)
    candidates = candidates[np.isfinite(candidates)]
    if not len(candidates):
        rule.note = "no vision values for the dangerous task types in training: veto off"
        return rule

    def train_risk(threshold: float | None) -> float:
        risks = []
        for _, ddf in train.groupby("dataset", sort=False):
            ddf = ddf.reset_index(drop=True)
            probe = VetoRule(active=threshold is not None, threshold=threshold if threshold is not None else np.nan,
                             task_types=dangerous)
            order = veto_order(ddf, probe.vetoed(ddf))
            err = 1.0 - ddf[interaction.OUTCOME].astype(bool).to_numpy(dtype=float)
            risks.append(risk_at_from_errors(err[order], coverage))
        return float(np.mean(risks))

    without = train_risk(None)
    best_q, best_t, best_r = None, None, without
    for q in selective_cfg["veto_quantiles"]:
        t = float(np.quantile(candidates, q))
        r = train_risk(t)
        if r < best_r - 1e-12:  # strict: a threshold must earn its place; ties keep the smaller quantile
            best_q, best_t, best_r = float(q), t, r
    rule.train_risk_without = without
    rule.train_risk = best_r
    if best_q is None:
        rule.note = f"no threshold lowered the training risk at {coverage:g} coverage ({without:.3f}): veto off"
        return rule
    rule.active, rule.threshold, rule.quantile = True, best_t, best_q
    return rule


# ----------------------------------------------------------------------------- the stage


def _signal_confidences(test: pd.DataFrame, train: pd.DataFrame, min_errors: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Confidence arrays for each plain signal on the test rows; notes for the ones that are partial."""
    notes = {}
    conf = {
        "neg_entropy": -test[interaction.ENTROPY].to_numpy(dtype=float),
        "vision": test[interaction.VISION].to_numpy(dtype=float),
    }
    n_missing = int((~np.isfinite(conf["vision"])).sum())
    if n_missing:
        notes["vision"] = f"{n_missing} answers without vision engagement ranked last"
    if train.empty:
        notes["model"] = "no other dataset to fit the model-based signal on: not computed"
        conf["model"] = np.full(len(test), np.nan)
        return conf, notes
    pooled = train.assign(item_id=train["dataset"].astype(str) + "|" + train["item_id"].astype(str))
    fit = interaction.fit_logit(pooled, interaction.FEATURE_SETS["interaction"], "task_type", min_errors=min_errors)
    p = interaction.predict_proba(fit, test)
    # answers without vision (no evidence regions) fall back to the entropy-only model
    missing = ~np.isfinite(p)
    if missing.any():
        fit_e = interaction.fit_logit(pooled, interaction.FEATURE_SETS["entropy"], "task_type", min_errors=min_errors)
        p_e = interaction.predict_proba(fit_e, test)
        p = np.where(missing, p_e, p)
        notes["model"] = f"{int(missing.sum())} answers scored by the entropy-only model (no vision)"
    if not fit.fitted:
        notes["model"] = f"interaction not fitted on training datasets ({fit.note})" + (
            "; " + notes["model"] if "model" in notes else "")
    conf["model"] = p
    return conf, notes


def evaluate(features: pd.DataFrame, selective_cfg: Mapping[str, Any], regression_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Curves and summary for every (model, dataset): each signal, and entropy with the veto (LODO)."""
    selective_cfg = schema.section("selective", selective_cfg)
    regression_cfg = schema.section("regression", regression_cfg)
    coverages = [float(c) for c in selective_cfg["coverages"]]
    veto_cov = float(selective_cfg["veto_coverage"])
    n_boot = int(selective_cfg["bootstrap"])
    seed = int(selective_cfg["seed"])
    min_errors = int(regression_cfg["min_errors"])
    curves, summary = [], []
    if features.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS), pd.DataFrame([{"status": "no_data", "note": "no per-trace features"}])
    for model, mdf in features.groupby("model", sort=False):
        usable, _, _ = interaction.usable_rows(mdf, [interaction.ENTROPY])
        for dataset in dict.fromkeys(mdf["dataset"]):
            test = usable[usable["dataset"] == dataset].reset_index(drop=True)
            train = usable[usable["dataset"] != dataset].reset_index(drop=True)
            _, n_dropped, why = interaction.usable_rows(mdf[mdf["dataset"] == dataset], [interaction.ENTROPY])
            base_note = why.replace("rows left out", "answers left out") if n_dropped else ""
            if test.empty:
                summary.append({"model": model, "dataset": dataset, "signal": None, "n": 0, "status": "no_data",
                                "note": "; ".join(x for x in ("no usable answers", base_note) if x)})
                continue
            correct = test[interaction.OUTCOME].astype(bool).to_numpy()
            conf, notes = _signal_confidences(test, train, min_errors)
            orders = {s: ranking(c, test["trace_id"]) for s, c in conf.items()}
            rule = fit_veto(train, selective_cfg, min_errors)
            vetoed = rule.vetoed(test)
            orders["entropy+veto"] = veto_order(test, vetoed)
            accepted = positions(orders["neg_entropy"]) < max(1, math.ceil(veto_cov * len(test) - 1e-9))
            err = 1.0 - correct.astype(float)
            ranks = {s: positions(o) for s, o in orders.items()}
            boots = bootstrap(correct, ranks, test["item_id"].to_numpy(), n_boot,
                              seeded_rng(seed, "selective", model, dataset), coverages + [veto_cov])
            for s in SIGNALS:
                e = err[orders[s]]
                # a signal with no value at all would only rank by the tie key: report nothing rather than that
                computed = s not in conf or np.isfinite(conf[s]).any()
                if computed:
                    curves.append(pd.DataFrame({
                        "model": model, "dataset": dataset, "signal": s, "n": np.arange(1, len(e) + 1),
                        "coverage": np.arange(1, len(e) + 1) / len(e), "risk": risk_curve_from_errors(e)}))
                m = metrics_from_errors(e, coverages)
                row = {"model": model, "dataset": dataset, "signal": s, "n": len(e), "n_errors": int(e.sum()),
                       "error_rate": float(e.mean()), "status": "ok"}
                for key, value in m.items():
                    row[key] = value if computed else np.nan
                    row[f"{key}_low"], row[f"{key}_high"] = (
                        interval(boots[s][key]) if n_boot and computed else (np.nan, np.nan))
                note = [x for x in (notes.get(s), base_note) if x]
                if not computed:
                    row["status"] = "not_computed"
                if s == "entropy+veto":
                    vk = risk_key(veto_cov)
                    base_risk = risk_at_from_errors(err[orders["neg_entropy"]], veto_cov)
                    veto_risk = risk_at_from_errors(e, veto_cov)
                    delta = boots[s][vk] - boots["neg_entropy"][vk] if n_boot else np.array([])
                    row.update({
                        "veto_active": rule.active, "veto_threshold": rule.threshold, "veto_quantile": rule.quantile,
                        "veto_task_types": ",".join(rule.task_types), "veto_slopes": json.dumps(rule.slopes, sort_keys=True),
                        "veto_train_datasets": ",".join(rule.train_datasets), "veto_coverage": veto_cov,
                        "n_vetoed": int((vetoed & accepted).sum()),
                        "delta_risk": veto_risk - base_risk,
                    })
                    row["delta_risk_low"], row["delta_risk_high"] = interval(delta)
                    if rule.note:
                        note.append(rule.note)
                row["note"] = "; ".join(note)
                summary.append(row)
            log.info("%s/%s: n=%d errors=%d; veto %s, change in risk at %g coverage %+.4f",
                     model, dataset, len(test), int(err.sum()), "on" if rule.active else "off", veto_cov,
                     summary[-1]["delta_risk"])
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    return curves_df, pd.DataFrame(summary)


def run_stage(call: StageCall) -> None:
    """The ``selective`` rule: read the per-trace tables, write ``selective/curves.parquet`` and ``summary.csv``.

    ``config``: ``selective``, ``regression`` and ``features`` (the sections).
    """
    features = load_features(call.paths("traces"), call.config["regression"]["variants"])
    curves, summary = evaluate(features, call.config["selective"], call.config["regression"])
    write_table(curves, call.output("curves"), call.provenance())
    call.output("summary").parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(call.output("summary"), index=False, float_format="%.6g")
