"""The entropy x vision interaction model and its transfer across datasets.

``correct ~ z(entropy) * z(vision)`` as a statsmodels logit, per (model,
dataset), and per model pooled over its datasets with task type as a
moderator (``z(entropy) * z(vision) * task_type``). Features are standardised
on the rows of each fit; standard errors are clustered by item. Degenerate
data (no rows, one class, too few errors, a constant feature, perfect
separation, a failed fit) gives a row saying what could not be fitted and why;
nothing raises.

Terms are named without patsy so that predictions can be rebuilt from the
table alone: ``const``, ``entropy``, ``vision``, ``entropy:vision`` and, with
the moderator, ``task[<level>]`` and its products (``entropy:task[<level>]``,
...), the first level in alphabetical order being the reference.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .logs import get_logger

log = get_logger("regression")

ENTROPY = "entropy_full"
VISION = "vision"
OUTCOME = "correct"

COEF_COLUMNS = [
    "model", "dataset", "scope", "formula", "status", "term", "estimate", "se", "ci_low", "ci_high", "p",
    "n", "n_errors", "n_correct", "n_items", "n_dropped", "llf", "pseudo_r2", "aic", "converged",
    "entropy_mean", "entropy_sd", "vision_mean", "vision_sd", "reference_level", "task_types", "note",
]
TRANSFER_COLUMNS = [
    "model", "train_dataset", "test_dataset", "features", "auroc", "n_train", "n_train_errors",
    "n_test", "n_test_errors", "status", "note",
]
FEATURE_SETS = {
    "entropy": ("entropy",),
    "vision": ("vision",),
    "additive": ("entropy", "vision"),
    "interaction": ("entropy", "vision", "entropy:vision"),
}
# |estimate| beyond this on the standardised scale means the likelihood is flat: (quasi-)separation
UNSTABLE_ESTIMATE = 10.0


@dataclass
class Fit:
    """One logit fit, or why there is none."""

    status: str  # ok, unstable (fitted, estimates not to be trusted), not_fitted
    note: str
    terms: list[str] = field(default_factory=list)
    params: np.ndarray | None = None
    bse: np.ndarray | None = None
    ci: np.ndarray | None = None  # [term, 2]
    pvalues: np.ndarray | None = None
    cov: np.ndarray | None = None  # [term, term], clustered
    n: int = 0
    n_errors: int = 0
    n_correct: int = 0
    n_items: int = 0
    n_dropped: int = 0
    llf: float = float("nan")
    pseudo_r2: float = float("nan")
    aic: float = float("nan")
    converged: bool | None = None
    scaling: dict[str, float] = field(default_factory=dict)
    levels: list[str] = field(default_factory=list)
    task_types: list[str] = field(default_factory=list)  # task types among the rows fitted

    @property
    def fitted(self) -> bool:
        return self.status != "not_fitted"

    def coefficient(self, term: str) -> float:
        if self.params is None or term not in self.terms:
            return 0.0
        return float(self.params[self.terms.index(term)])


def zscore(x: np.ndarray, mean: float | None = None, sd: float | None = None) -> tuple[np.ndarray, float, float]:
    """Standardise ``x`` (population sd); with ``mean``/``sd`` given, apply a training set's scaling."""
    x = np.asarray(x, dtype=float)
    if mean is None:
        mean, sd = float(np.mean(x)), float(np.std(x))
    return (x - mean) / sd if sd and sd > 0 else np.full_like(x, np.nan), mean, sd


def design(
    z_entropy: np.ndarray | None,
    z_vision: np.ndarray | None,
    terms: Sequence[str] = ("entropy", "vision", "entropy:vision"),
    task: Sequence[str] | None = None,
    levels: Sequence[str] = (),
) -> tuple[np.ndarray, list[str]]:
    """Design matrix with a constant, the requested terms and, with ``levels``, their products with task dummies."""
    n = len(z_entropy if z_entropy is not None else z_vision)
    base = {"const": np.ones(n)}
    if z_entropy is not None:
        base["entropy"] = z_entropy
    if z_vision is not None:
        base["vision"] = z_vision
    if z_entropy is not None and z_vision is not None:
        base["entropy:vision"] = z_entropy * z_vision
    cols, names = [base["const"]], ["const"]
    for t in terms:
        cols.append(base[t])
        names.append(t)
    task_arr = np.asarray(task, dtype=object) if task is not None else None
    for level in list(levels)[1:]:
        dummy = (task_arr == level).astype(float)
        cols.append(dummy)
        names.append(f"task[{level}]")
        for t in terms:
            cols.append(base[t] * dummy)
            names.append(f"{t}:task[{level}]")
    return np.column_stack(cols), names


def usable_rows(df: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, int, str]:
    """Rows of ok traces with correctness and every needed feature finite; the count dropped and why."""
    reasons = []
    ok = pd.Series(True, index=df.index)
    checks = [("failed traces", df["status"].fillna("ok").eq("ok") if "status" in df else ok),
              ("without correctness", df[OUTCOME].notna())]
    for c in columns:
        # vision is missing mostly for items without evidence regions (e.g. arithmetic)
        what = "without vision engagement" if c == VISION else f"without {c}"
        checks.append((what, pd.Series(np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)),
                                       index=df.index)))
    for what, good in checks:
        good = good.fillna(False).astype(bool)
        lost = int((ok & ~good).sum())
        if lost:
            reasons.append(f"{lost} {what}")
        ok &= good
    dropped = int((~ok).sum())
    note = f"{dropped} rows left out ({', '.join(reasons)})" if dropped else ""
    return df[ok.to_numpy()].reset_index(drop=True), dropped, note


def fit_logit(
    df: pd.DataFrame,
    terms: Sequence[str] = ("entropy", "vision", "entropy:vision"),
    moderator: str | None = None,
    cluster: str = "item_id",
    min_errors: int = 5,
    entropy_col: str = ENTROPY,
    vision_col: str = VISION,
) -> Fit:
    """Fit ``correct ~ terms`` (optionally x moderator) on standardised features, clustered SEs.

    Rows missing correctness or a needed feature are dropped first, so the
    cluster groups line up with the rows fitted. Never raises for data
    problems: the returned ``Fit`` says what could not be fitted and why.
    """
    needs = [c for c, used in ((entropy_col, any("entropy" in t for t in terms)),
                               (vision_col, any("vision" in t for t in terms))) if used]
    data, dropped, drop_note = usable_rows(df, needs)
    y = data[OUTCOME].astype(bool).to_numpy().astype(float) if len(data) else np.array([])
    n, n_correct = len(y), int(y.sum())
    n_errors = n - n_correct
    groups = data[cluster].astype(str).to_numpy() if cluster in data and len(data) else np.arange(n).astype(str)
    fit = Fit(status="not_fitted", note="", n=n, n_errors=n_errors, n_correct=n_correct,
              n_items=len(set(groups)), n_dropped=dropped,
              task_types=sorted(set(data["task_type"].dropna().astype(str))) if "task_type" in data else [])

    def fail(reason: str) -> Fit:
        fit.note = "; ".join(x for x in (reason, drop_note) if x)
        return fit

    if n == 0:
        return fail("no usable rows")
    if n_errors == 0:
        return fail("all answers correct: no errors to model")
    if n_correct == 0:
        return fail("all answers wrong: nothing correct to model")
    if min(n_errors, n_correct) < min_errors:
        which = "errors" if n_errors <= n_correct else "correct answers"
        return fail(f"too few {which} ({min(n_errors, n_correct)} < regression.min_errors = {min_errors})")

    z_e = z_v = None
    if entropy_col in needs:
        z_e, fit.scaling["entropy_mean"], fit.scaling["entropy_sd"] = zscore(data[entropy_col].to_numpy(dtype=float))
        if not fit.scaling["entropy_sd"] > 0:
            return fail("entropy is constant: cannot standardise")
    if vision_col in needs:
        z_v, fit.scaling["vision_mean"], fit.scaling["vision_sd"] = zscore(data[vision_col].to_numpy(dtype=float))
        if not fit.scaling["vision_sd"] > 0:
            return fail("vision engagement is constant: cannot standardise")

    notes = []
    levels: list[str] = []
    task = None
    if moderator:
        task = data[moderator].astype(str).to_numpy()
        levels = sorted(set(task))
        if len(levels) < 2:
            notes.append(f"one {moderator} present ({levels[0]}): moderator dropped")
            levels, task = [], None
        else:
            small = [lv for lv in levels if (task == lv).sum() < 2]
            if small:
                notes.append(f"{moderator} levels with fewer than 2 rows: {', '.join(small)}")
    fit.levels = levels
    X, names = design(z_e, z_v, terms, task, levels)
    fit.terms = names
    if np.linalg.matrix_rank(X) < X.shape[1]:
        return fail("design matrix is rank deficient (a term is constant or collinear within this subset)")

    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

    codes = pd.factorize(groups, sort=True)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = sm.Logit(y, X).fit(disp=0, maxiter=100, cov_type="cluster", cov_kwds={"groups": codes})
        except Exception as exc:  # statsmodels raises several types (LinAlgError, ValueError, ...)
            return fail(f"fit failed: {type(exc).__name__}: {exc}")
        pred = np.asarray(res.predict(X))
    kinds = {type(w.message) for w in caught if isinstance(w.message, Warning)}
    # every row on its own side of 0.5 can only happen when the classes are linearly separable,
    # where the maximum-likelihood estimate does not exist (the optimiser just walks off)
    if PerfectSeparationWarning in kinds or np.all((pred > 0.5) == (y > 0.5)):
        return fail("perfect separation: the features predict correctness exactly, estimates undefined")
    converged = bool(res.mle_retvals.get("converged", False))
    fit.converged = converged
    fit.params = np.asarray(res.params, dtype=float)
    fit.bse = np.asarray(res.bse, dtype=float)
    fit.ci = np.asarray(res.conf_int(alpha=0.05), dtype=float)
    fit.pvalues = np.asarray(res.pvalues, dtype=float)
    fit.cov = np.asarray(res.cov_params(), dtype=float)
    fit.llf, fit.pseudo_r2, fit.aic = float(res.llf), float(res.prsquared), float(res.aic)
    fit.status = "ok"
    if not converged or ConvergenceWarning in kinds:
        fit.status = "unstable"
        notes.append("optimiser did not converge")
    if np.nanmax(np.abs(fit.params)) > UNSTABLE_ESTIMATE:
        fit.status = "unstable"
        notes.append(f"|estimate| > {UNSTABLE_ESTIMATE:g}: quasi-separation likely, estimates unreliable")
    if not np.all(np.isfinite(fit.bse)):
        fit.status = "unstable"
        notes.append("standard errors undefined")
    if fit.n_items < len(names) + 1:
        notes.append(f"only {fit.n_items} item clusters for {len(names)} terms: clustered SEs unreliable")
    fit.note = "; ".join(x for x in notes + [drop_note] if x)
    return fit


def formula(terms: Sequence[str], moderator: str | None) -> str:
    rhs = {"entropy": "z(entropy)", "vision": "z(vision)"}
    parts = [rhs[t] for t in terms if t in rhs]
    text = " * ".join(parts) if "entropy:vision" in terms else " + ".join(parts)
    return f"correct ~ {text}" + (f" * {moderator}" if moderator else "")


def tidy(fit: Fit, **labels: Any) -> list[dict[str, Any]]:
    """Rows of the coefficients table for one fit (one row saying why when not fitted)."""
    common = {
        **labels, "status": fit.status, "n": fit.n, "n_errors": fit.n_errors, "n_correct": fit.n_correct,
        "n_items": fit.n_items, "n_dropped": fit.n_dropped, "llf": fit.llf, "pseudo_r2": fit.pseudo_r2,
        "aic": fit.aic, "converged": fit.converged,
        "entropy_mean": fit.scaling.get("entropy_mean", np.nan), "entropy_sd": fit.scaling.get("entropy_sd", np.nan),
        "vision_mean": fit.scaling.get("vision_mean", np.nan), "vision_sd": fit.scaling.get("vision_sd", np.nan),
        "reference_level": fit.levels[0] if fit.levels else None, "task_types": ",".join(fit.task_types),
        "note": fit.note,
    }
    if not fit.fitted:
        return [{**common, "term": None, "estimate": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan}]
    return [
        {**common, "term": t, "estimate": fit.params[i], "se": fit.bse[i], "ci_low": fit.ci[i, 0],
         "ci_high": fit.ci[i, 1], "p": fit.pvalues[i]}
        for i, t in enumerate(fit.terms)
    ]


def fit_all(features: pd.DataFrame, regression_cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The coefficients table: every (model, dataset) fit and a pooled fit per model with task type."""
    min_errors = int(regression_cfg.get("min_errors", 5))
    rows: list[dict[str, Any]] = []
    terms = FEATURE_SETS["interaction"]
    if features.empty:
        rows += tidy(Fit(status="not_fitted", note="no per-trace features at all"),
                     model=None, dataset=None, scope="dataset", formula=formula(terms, None))
        return _coef_frame(rows)
    for model, mdf in features.groupby("model", sort=False):
        for dataset, ddf in mdf.groupby("dataset", sort=False):
            fit = fit_logit(ddf, terms, None, min_errors=min_errors)
            _log_fit(model, dataset, fit)
            rows += tidy(fit, model=model, dataset=dataset, scope="dataset", formula=formula(terms, None))
        pooled = mdf.assign(item_id=mdf["dataset"].astype(str) + "|" + mdf["item_id"].astype(str))
        fit = fit_logit(pooled, terms, "task_type", min_errors=min_errors)
        _log_fit(model, "pooled", fit)
        rows += tidy(fit, model=model, dataset="pooled", scope="pooled",
                     formula=formula(terms, "task_type" if fit.levels else None))
    return _coef_frame(rows)


def _log_fit(model, dataset, fit: Fit) -> None:
    log.info("fit %s/%s: %s, n=%d, errors=%d%s", model, dataset, fit.status, fit.n, fit.n_errors,
             f" ({fit.note})" if fit.note else "")


def _coef_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in COEF_COLUMNS:
        if c not in df:
            df[c] = None
    return df[COEF_COLUMNS]


# ----------------------------------------------------------------------------- prediction and transfer


def split_term(term: str) -> tuple[str, str | None]:
    """``entropy:task[visual_reference]`` -> (``entropy``, ``visual_reference``); ``task[x]`` -> (``const``, ``x``)."""
    if term.startswith("task["):
        return "const", term[len("task["):-1]
    if ":task[" in term:
        head, _, rest = term.partition(":task[")
        return head, rest[:-1]
    return term, None


def linear_predictor(params: Mapping[str, float], z_entropy: np.ndarray | float, z_vision: np.ndarray | float,
                     task_type: str | None = None) -> np.ndarray:
    """The logit from named coefficients (``term -> estimate``) at standardised feature values."""
    z_e = np.asarray(z_entropy, dtype=float)
    z_v = np.asarray(z_vision, dtype=float)
    base = {"const": np.ones(np.broadcast(z_e, z_v).shape), "entropy": z_e, "vision": z_v, "entropy:vision": z_e * z_v}
    eta = np.zeros(np.broadcast(z_e, z_v).shape)
    for term, value in params.items():
        if not isinstance(term, str) or not np.isfinite(value):
            continue
        head, level = split_term(term)
        if level is not None and level != task_type:
            continue
        eta = eta + value * base[head]
    return eta


def predict_proba(fit: Fit, df: pd.DataFrame, entropy_col: str = ENTROPY, vision_col: str = VISION,
                  moderator: str | None = "task_type") -> np.ndarray:
    """P(correct) for new rows, standardised with the training fit's scaling; NaN where a feature is missing."""
    if not fit.fitted:
        return np.full(len(df), np.nan)
    params = dict(zip(fit.terms, fit.params))
    z_e = z_v = np.zeros(len(df))
    if "entropy_mean" in fit.scaling:
        z_e = (df[entropy_col].to_numpy(dtype=float) - fit.scaling["entropy_mean"]) / fit.scaling["entropy_sd"]
    if "vision_mean" in fit.scaling:
        z_v = (df[vision_col].to_numpy(dtype=float) - fit.scaling["vision_mean"]) / fit.scaling["vision_sd"]
    eta = np.full(len(df), np.nan)
    if fit.levels and moderator in df:
        task = df[moderator].astype(str).to_numpy()
        for level in set(task):
            sel = task == level
            # a level unseen in training has no coefficients of its own: the reference level's apply
            eta[sel] = linear_predictor(params, z_e[sel], z_v[sel], level)
    else:
        eta = linear_predictor(params, z_e, z_v, None)
    return 1.0 / (1.0 + np.exp(-eta))


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN with one class or no rows."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(score, dtype=float)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def transfer(features: pd.DataFrame, regression_cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Fit each feature set on one dataset, score every other dataset of the same model (AUROC)."""
    min_errors = int(regression_cfg.get("min_errors", 5))
    rows = []
    for model, mdf in features.groupby("model", sort=False):
        datasets = list(dict.fromkeys(mdf["dataset"]))
        if len(datasets) < 2:
            rows.append({"model": model, "train_dataset": datasets[0] if datasets else None, "test_dataset": None,
                         "features": None, "auroc": np.nan, "status": "not_fitted",
                         "note": "only one dataset for this model: nothing to transfer to"})
            continue
        for train in datasets:
            tdf = mdf[mdf["dataset"] == train]
            for name, terms in FEATURE_SETS.items():
                fit = fit_logit(tdf, terms, None, min_errors=min_errors)
                for test in datasets:
                    if test == train:
                        continue
                    needs = [c for c, t in ((ENTROPY, "entropy"), (VISION, "vision")) if t in terms]
                    sdf, dropped, test_drop_note = usable_rows(mdf[mdf["dataset"] == test], needs)
                    y = sdf[OUTCOME].astype(bool).to_numpy() if len(sdf) else np.array([], bool)
                    row = {"model": model, "train_dataset": train, "test_dataset": test, "features": name,
                           "n_train": fit.n, "n_train_errors": fit.n_errors, "n_test": len(sdf),
                           "n_test_errors": int((~y).sum()), "auroc": np.nan, "status": fit.status, "note": ""}
                    notes = [fit.note] if fit.note else []
                    if fit.fitted:
                        score = predict_proba(fit, sdf, moderator=None)
                        row["auroc"] = auroc(y, score)
                        if not np.isfinite(row["auroc"]):
                            row["status"] = "not_scored"
                            notes.append("test set has one class only (or no rows): AUROC undefined")
                    if dropped:
                        notes.append(f"test: {test_drop_note}")
                    row["note"] = "; ".join(notes)
                    rows.append(row)
    df = pd.DataFrame(rows)
    for c in TRANSFER_COLUMNS:
        if c not in df:
            df[c] = None
    return df[TRANSFER_COLUMNS]


# ----------------------------------------------------------------------------- summary and files


def summary_text(coefficients: pd.DataFrame, transfer_table: pd.DataFrame) -> str:
    """A plain-text summary: each fit's size, errors and interaction estimate, and the transfer AUROCs."""
    lines = ["Entropy x vision interaction (logit of correctness; z-scored features; SEs clustered by item)", ""]
    fits = coefficients.drop_duplicates(["model", "dataset", "scope"])
    for r in fits.itertuples(index=False):
        head = f"{r.model} / {r.dataset}: {r.status}, n={r.n}, errors={r.n_errors}"
        sub = coefficients[(coefficients["model"] == r.model) & (coefficients["dataset"] == r.dataset)
                           & (coefficients["term"].astype(str).str.startswith("entropy:vision"))]
        for t in sub.itertuples(index=False):
            head += f"\n    {t.term}: {t.estimate:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], p={t.p:.3g}"
        if r.status != "not_fitted":
            head += f"\n    pseudo R2={r.pseudo_r2:.3f}, AIC={r.aic:.1f}, converged={r.converged}"
        if isinstance(r.note, str) and r.note:
            head += f"\n    note: {r.note}"
        lines.append(head)
    lines += ["", "Transfer (fit on one dataset, AUROC on another)", ""]
    if transfer_table.empty:
        lines.append("none")
    for r in transfer_table.itertuples(index=False):
        if r.test_dataset is None:
            lines.append(f"{r.model}: {r.note}")
            continue
        auc = f"{r.auroc:.3f}" if r.auroc is not None and np.isfinite(r.auroc) else "n/a"
        lines.append(f"{r.model}: {r.train_dataset} -> {r.test_dataset} {r.features:<12} AUROC {auc} "
                     f"(train n={r.n_train}, errors={r.n_train_errors}; test n={r.n_test}, errors={r.n_test_errors})"
                     + (f" [{r.note}]" if r.note else ""))
    return "\n".join(lines) + "\n"


def run_stage(traces_paths: Sequence[str | Path], outputs: Mapping[str, str | Path], config: Mapping[str, Any],
              code_files: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every per-trace table, fit, write coefficients.csv, transfer.csv and summary.txt."""
    from .features import load_features
    from .provenance import canonical_json, record

    cfg = config["regression"]
    features = load_features(traces_paths, cfg.get("variants") or None)
    coefficients = fit_all(features, cfg)
    transfer_table = transfer(features, cfg)
    prov = record({"regression": cfg, "features": config.get("features")}, code_files)
    for key, df in (("coefficients", coefficients), ("transfer", transfer_table)):
        Path(outputs[key]).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(outputs[key], index=False, float_format="%.6g")
    text = summary_text(coefficients, transfer_table)
    Path(outputs["summary"]).write_text(text + "\nprovenance: " + canonical_json(prov) + "\n", encoding="utf-8")
    log.info("\n%s", text)
    return coefficients, transfer_table
