"""The entropy x vision interaction model: a statsmodels logit of correctness, and predictions from it.

``correct ~ z(entropy) * z(vision)``, optionally with task type as a
moderator (``z(entropy) * z(vision) * task_type``), on features standardised
on the rows of each fit, standard errors clustered by item. Degenerate data
(no rows, one class, too few errors, a constant feature, perfect separation,
a failed fit) gives a ``Fit`` saying what could not be fitted and why; nothing
raises.

Terms are named without patsy so that predictions can be rebuilt from a
coefficients table alone: ``const``, ``entropy``, ``vision``,
``entropy:vision`` and, with the moderator, ``task[<level>]`` and its
products (``entropy:task[<level>]``, ...), the first level in alphabetical
order being the reference.

The ``regression`` stage fits it per (model, dataset) and pooled; the
``selective`` stage fits it on the other datasets for the vision veto.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

ENTROPY = "entropy_full"  # mean entropy over every generated token (thinking and answer)
ENTROPY_ANSWER = "entropy_answer"  # mean entropy over the answer step's tokens
VISION = "vision"
OUTCOME = "correct"

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
