"""The entropy x vision interaction model: a statsmodels logit of correctness, and predictions from it.

``correct ~ z(entropy) * z(vision)``, optionally with task type as a
moderator (``z(entropy) * z(vision) * task_type``), on features standardised
on the rows of each fit, standard errors clustered (by item, or by the
cluster the data's dependence follows: ``cluster_id``). A fit pooled over
datasets (``by="dataset"``) standardises each feature *within* each dataset
and adds dataset fixed effects, so that differences between datasets cannot
leak into the product term; a dataset (or task type) whose answers are all of
one class carries no information about the slopes and is left out, with a
note. Where the ordinary maximum-likelihood fit separates or does not
converge, the fit is redone with Firth's penalised likelihood (status
``penalised``: finite estimates, never used by the veto). Every fit reports
its events per parameter. Degenerate data (no rows, one class, too few
errors, a constant feature, perfect separation, a failed fit) gives a
``Fit`` saying what could not be fitted and why; nothing raises.

The optimiser is a Newton-Raphson with step halving written here (numpy
only): the same for the ordinary and the penalised likelihood, fast enough to
refit inside every bootstrap resample of the veto. Standard errors are the
cluster-robust sandwich with statsmodels' small-sample factor
``G/(G-1) (N-1)/(N-K)`` (tests compare both with statsmodels).

Terms are named without patsy so that predictions can be rebuilt from a
coefficients table alone: ``const``, ``entropy``, ``vision``,
``entropy:vision`` and, with the moderator, ``task[<level>]`` and its
products (``entropy:task[<level>]``, ...), the first level in alphabetical
order being the reference; dataset fixed effects are ``dataset[<name>]``
(the first dataset in alphabetical order the reference).

The ``regression`` stage fits it per (model, dataset) and pooled; the
``selective`` stage fits it on the other datasets for the vision veto.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

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

    status: str  # ok, penalised (Firth, after the ordinary fit separated), unstable, not_fitted
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
    n_items: int = 0  # distinct clusters (items, or the data's own clusters)
    n_dropped: int = 0
    llf: float = float("nan")
    pseudo_r2: float = float("nan")
    aic: float = float("nan")
    converged: bool | None = None
    scaling: dict[str, float] = field(default_factory=dict)
    levels: list[str] = field(default_factory=list)
    task_types: list[str] = field(default_factory=list)  # task types among the rows fitted
    method: str = ""  # ml or firth
    events_per_parameter: float = float("nan")  # min(errors, correct) / parameters besides the constant
    by: str | None = None  # the column features were standardised within (dataset fixed effects), or None
    group_scaling: dict[str, dict[str, float]] = field(default_factory=dict)  # per dataset: means and sds
    datasets: list[str] = field(default_factory=list)  # datasets among the rows fitted (with ``by``)
    z_entropy: np.ndarray | None = field(default=None, repr=False)  # the fitted rows' standardised entropy

    @property
    def fitted(self) -> bool:
        return self.status != "not_fitted"

    @property
    def stable(self) -> bool:
        """An ordinary ML fit that converged with finite, positive standard errors: what the veto may use."""
        return (self.status == "ok" and self.bse is not None and bool(np.all(np.isfinite(self.bse)))
                and bool(np.all(self.bse > 0)))

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


def within_zscore(x: np.ndarray, groups: Sequence) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
    """``x`` standardised within each group (its own mean and population sd); the scaling per group.

    A group whose values are constant gets NaN (it cannot be standardised);
    a missing value stays missing and does not enter its group's scaling.
    """
    x = np.asarray(x, dtype=float)
    g = np.asarray(groups, dtype=object).astype(str)
    out = np.full(len(x), np.nan)
    scaling = {}
    for level in sorted(set(g)):
        sel = (g == level) & np.isfinite(x)
        if not sel.any():
            scaling[level] = (float("nan"), float("nan"))
            continue
        out[sel], mean, sd = zscore(x[sel])
        scaling[level] = (mean, sd)
    return out, scaling


def design(
    z_entropy: np.ndarray | None,
    z_vision: np.ndarray | None,
    terms: Sequence[str] = ("entropy", "vision", "entropy:vision"),
    task: Sequence[str] | None = None,
    levels: Sequence[str] = (),
    group: Sequence[str] | None = None,
    group_levels: Sequence[str] = (),
) -> tuple[np.ndarray, list[str]]:
    """Design matrix: a constant, dataset fixed effects (``group_levels``), the terms, and their task products."""
    n = len(z_entropy if z_entropy is not None else z_vision)
    base = {"const": np.ones(n)}
    if z_entropy is not None:
        base["entropy"] = z_entropy
    if z_vision is not None:
        base["vision"] = z_vision
    if z_entropy is not None and z_vision is not None:
        base["entropy:vision"] = z_entropy * z_vision
    cols, names = [base["const"]], ["const"]
    group_arr = np.asarray(group, dtype=object) if group is not None else None
    for level in list(group_levels)[1:]:
        cols.append((group_arr == level).astype(float))
        names.append(f"dataset[{level}]")
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


def _drop_redundant_dummies(X: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Leave out fixed-effect and task dummies already spanned by earlier columns (a task type nested in a dataset).

    Only intercept-like columns (``dataset[...]``, ``task[...]``) are dropped:
    a redundant feature term is a real rank problem and is reported as such.
    """
    keep, dropped = [], []
    for j, name in enumerate(names):
        trial = keep + [j]
        if name.startswith(("dataset[", "task[")) and np.linalg.matrix_rank(X[:, trial]) < len(trial):
            dropped.append(name)
            continue
        keep.append(j)
    return X[:, keep], [names[j] for j in keep], dropped


# ----------------------------------------------------------------------------- the optimiser


def _expit(eta: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * eta))  # no overflow for large |eta|


def _loglik(y: np.ndarray, eta: np.ndarray) -> float:
    # log p = -log(1 + e^-eta), log(1 - p) = -log(1 + e^eta), computed stably
    return float(-(y * np.logaddexp(0.0, -eta) + (1.0 - y) * np.logaddexp(0.0, eta)).sum())


def _hat(X: np.ndarray, w: np.ndarray, info_inv: np.ndarray) -> np.ndarray:
    """Diagonal of the weighted hat matrix W^1/2 X (X'WX)^-1 X' W^1/2."""
    return w * np.einsum("ij,jk,ik->i", X, info_inv, X)


def newton_logit(X: np.ndarray, y: np.ndarray, firth: bool = False, maxiter: int = 100,
                 tol: float = 1e-8, max_step: float = 5.0) -> tuple[np.ndarray, bool, float]:
    """Maximise the logistic log-likelihood, or with ``firth`` Firth's penalised one; (beta, converged, objective).

    Firth (1993): the penalised log-likelihood ``l(b) + 1/2 log det I(b)``
    (the Jeffreys prior), whose score is ``X'(y - p + h (1/2 - p))`` with
    ``h`` the diagonal of the weighted hat matrix; Newton steps on the
    Fisher information, each at most ``max_step`` per coefficient and halved
    until the objective does not fall (Heinze and Schemper 2002, as R's
    logistf does). Converged: the largest step below ``tol``.
    """
    beta = np.zeros(X.shape[1])

    def objective(b: np.ndarray) -> float:
        eta = X @ b
        value = _loglik(y, eta)
        if firth:
            p = _expit(eta)
            sign, logdet = np.linalg.slogdet(X.T @ (X * (p * (1 - p))[:, None]))
            value += 0.5 * logdet if sign > 0 else -np.inf
        return value

    current = objective(beta)
    for _ in range(maxiter):
        p = _expit(X @ beta)
        w = p * (1.0 - p)
        info = X.T @ (X * w[:, None])
        try:
            info_inv = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            return beta, False, current
        resid = y - p
        if firth:
            resid = resid + _hat(X, w, info_inv) * (0.5 - p)
        step = info_inv @ (X.T @ resid)
        biggest = np.max(np.abs(step)) if len(step) else 0.0
        if biggest > max_step:
            step *= max_step / biggest
        if np.max(np.abs(step)) < tol:
            return beta, True, current
        for _ in range(30):
            trial = objective(beta + step)
            if np.isfinite(trial) and trial >= current - 1e-12:
                break
            step = step / 2.0
        beta = beta + step
        current = objective(beta)
    return beta, False, current


def cluster_covariance(X: np.ndarray, y: np.ndarray, beta: np.ndarray, codes: np.ndarray,
                       firth: bool = False) -> np.ndarray:
    """Cluster-robust sandwich ``c B M B``: B the inverse information, M the clusters' summed (modified) scores.

    ``c = G/(G-1) (N-1)/(N-K)``, statsmodels' default for clustered logit
    SEs; with ``firth`` the scores are Firth's modified ones.
    """
    p = _expit(X @ beta)
    w = p * (1.0 - p)
    bread = np.linalg.inv(X.T @ (X * w[:, None]))
    resid = y - p
    if firth:
        resid = resid + _hat(X, w, bread) * (0.5 - p)
    n_clusters = int(codes.max()) + 1 if len(codes) else 0
    scores = np.zeros((n_clusters, X.shape[1]))
    np.add.at(scores, codes, X * resid[:, None])
    meat = scores.T @ scores
    n, k = X.shape
    c = (n_clusters / (n_clusters - 1.0)) * ((n - 1.0) / (n - k)) if n_clusters > 1 and n > k else np.nan
    return c * bread @ meat @ bread


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


def cluster_labels(df: pd.DataFrame, by: str | None = None) -> pd.Series:
    """Each row's cluster: ``cluster_id`` where the data has one (e.g. HallusionBench's figure sets), else the item;
    prefixed with the row's ``by`` value (the dataset) when given, so that clusters never span datasets."""
    base = df["item_id"].astype(str) if "item_id" in df else pd.Series(np.arange(len(df)).astype(str), index=df.index)
    if "cluster_id" in df:
        own = df["cluster_id"]
        base = own.where(own.notna() & (own.astype(str) != ""), base).astype(str)
    if by and by in df:
        base = df[by].astype(str) + "|" + base
    return base


def _one_class_groups(data: pd.DataFrame, column: str) -> list[str]:
    """Levels of ``column`` whose rows are all correct or all wrong."""
    y = data[OUTCOME].astype(bool).to_numpy()
    codes, names = pd.factorize(data[column].astype(str), sort=True)
    n = np.bincount(codes, minlength=len(names))
    hits = np.bincount(codes, weights=y.astype(float), minlength=len(names))
    return [str(names[k]) for k in range(len(names)) if hits[k] in (0, n[k])]


def fit_logit(
    df: pd.DataFrame,
    terms: Sequence[str] = ("entropy", "vision", "entropy:vision"),
    moderator: str | None = None,
    cluster: str = "item_id",
    min_errors: int = 5,
    entropy_col: str = ENTROPY,
    vision_col: str = VISION,
    by: str | None = None,
    firth: bool = True,
) -> Fit:
    """Fit ``correct ~ terms`` (optionally x moderator) on standardised features, clustered SEs.

    ``cluster``: the column of cluster labels (``"auto"``: :func:`cluster_labels`,
    the data's own clusters within ``by``). ``by`` (e.g. ``"dataset"``):
    standardise within each of its levels and add its fixed effects; levels
    (and moderator levels) with answers of one class only are left out first.
    ``firth``: where the ordinary fit separates or does not converge, refit
    with Firth's penalty (status ``penalised``). Rows missing correctness or
    a needed feature are dropped first, so the cluster groups line up with
    the rows fitted. Never raises for data problems: the returned ``Fit``
    says what could not be fitted and why.
    """
    needs = [c for c, used in ((entropy_col, any("entropy" in t for t in terms)),
                               (vision_col, any("vision" in t for t in terms))) if used]
    data, dropped, drop_note = usable_rows(df, needs)
    notes: list[str] = []
    # a stratum of one class adds nothing to the slopes but sends its own intercept to infinity
    for column, what in ((by, "dataset"), (moderator, moderator)):
        if column and column in data and len(data) and data[column].astype(str).nunique() > 1:
            flat = _one_class_groups(data, column)
            if flat and len(flat) < data[column].astype(str).nunique():
                lost = data[column].astype(str).isin(flat)
                notes.append(f"{int(lost.sum())} rows of {what} {', '.join(flat)} left out (answers all of one "
                             "class: no information about the slopes)")
                data = data[~lost.to_numpy()].reset_index(drop=True)
    y = data[OUTCOME].astype(bool).to_numpy().astype(float) if len(data) else np.array([])
    n, n_correct = len(y), int(y.sum())
    n_errors = n - n_correct
    if cluster == "auto":
        groups = cluster_labels(data, by).to_numpy() if len(data) else np.array([], dtype=str)
    else:
        groups = data[cluster].astype(str).to_numpy() if cluster in data and len(data) else np.arange(n).astype(str)
    fit = Fit(status="not_fitted", note="", n=n, n_errors=n_errors, n_correct=n_correct,
              n_items=len(set(groups)), n_dropped=dropped, by=by,
              task_types=sorted(set(data["task_type"].dropna().astype(str))) if "task_type" in data else [])

    def fail(reason: str) -> Fit:
        fit.note = "; ".join(x for x in [reason] + notes + [drop_note] if x)
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

    group = group_levels = None
    if by and by in data:
        group = data[by].astype(str).to_numpy()
        group_levels = sorted(set(group))
        fit.datasets = group_levels
    z_e = z_v = None
    for col, key, what in ((entropy_col, "entropy", "entropy"), (vision_col, "vision", "vision engagement")):
        if col not in needs:
            continue
        x = data[col].to_numpy(dtype=float)
        if group is not None:
            z, scaling = within_zscore(x, group)
            for level, (mean, sd) in scaling.items():
                fit.group_scaling.setdefault(level, {}).update({f"{key}_mean": mean, f"{key}_sd": sd})
            constant = [lv for lv, (_, sd) in scaling.items() if not sd > 0]
            if constant:
                return fail(f"{what} is constant within {by} {', '.join(constant)}: cannot standardise")
            fit.scaling[f"{key}_mean"], fit.scaling[f"{key}_sd"] = 0.0, 1.0
        else:
            z, fit.scaling[f"{key}_mean"], fit.scaling[f"{key}_sd"] = zscore(x)
            if not fit.scaling[f"{key}_sd"] > 0:
                return fail(f"{what} is constant: cannot standardise")
        if key == "entropy":
            z_e = fit.z_entropy = z
        else:
            z_v = z

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
    X, names = design(z_e, z_v, terms, task, levels, group, group_levels or ())
    X, names, redundant = _drop_redundant_dummies(X, names)
    if redundant:
        notes.append(f"{', '.join(redundant)} left out (spanned by the dataset effects)")
    fit.terms = names
    k = len(names)
    fit.events_per_parameter = min(n_errors, n_correct) / max(1, k - 1)
    if np.linalg.matrix_rank(X) < k:
        return fail("design matrix is rank deficient (a term is constant or collinear within this subset)")

    codes = pd.factorize(groups, sort=True)[0]
    beta, converged, _ = newton_logit(X, y)
    pred = _expit(X @ beta)
    separated = bool(np.all((pred > 0.5) == (y > 0.5)))  # linearly separable: the ML estimate does not exist
    big = bool(np.max(np.abs(beta)) > UNSTABLE_ESTIMATE)
    fit.method = "ml"
    why = ""
    if separated:
        why = "perfect separation: the features predict correctness exactly, ML estimates undefined"
    elif not converged:
        why = "the ML optimiser did not converge"
    elif big:
        why = f"|ML estimate| > {UNSTABLE_ESTIMATE:g}: quasi-separation likely"
    if why:
        if not firth:
            return fail(why)
        # the penalised optimum can lie far out (complete separation): more, halved steps to get there
        beta, converged, _ = newton_logit(X, y, firth=True, maxiter=1000)
        if not converged:
            return fail(f"{why}; the Firth-penalised fit did not converge either")
        fit.method = "firth"
        notes.insert(0, f"{why}; Firth-penalised estimates instead (not used by the veto or the claims)")
    fit.converged = converged
    cov = cluster_covariance(X, y, beta, codes, firth=fit.method == "firth")
    bse = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    crit = 1.959963984540054
    fit.params, fit.bse, fit.cov = beta, bse, cov
    fit.ci = np.column_stack([beta - crit * bse, beta + crit * bse])
    with np.errstate(divide="ignore", invalid="ignore"):
        fit.pvalues = 2.0 * norm.sf(np.abs(beta / bse))
    eta = X @ beta
    fit.llf = _loglik(y, eta)
    ybar = y.mean()
    llnull = float(n * (ybar * np.log(ybar) + (1 - ybar) * np.log(1 - ybar)))
    fit.pseudo_r2 = 1.0 - fit.llf / llnull
    fit.aic = -2.0 * fit.llf + 2.0 * k
    fit.status = "ok" if fit.method == "ml" else "penalised"
    if not np.all(np.isfinite(bse)) or not np.all(bse > 0):
        fit.status = "unstable"
        notes.append("standard errors undefined or zero")
    if fit.n_items < k + 1:
        notes.append(f"only {fit.n_items} clusters for {k} terms: clustered SEs unreliable")
    if fit.events_per_parameter < 10:
        notes.append(f"{fit.events_per_parameter:.1f} events per parameter (< 10)")
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
        "aic": fit.aic, "converged": fit.converged, "method": fit.method,
        "events_per_parameter": fit.events_per_parameter,
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
    """``entropy:task[visual_reference]`` -> (``entropy``, ``visual_reference``); ``task[x]`` -> (``const``, ``x``);
    a dataset effect ``dataset[x]`` -> (``dataset``, None)."""
    if term.startswith("dataset["):
        return "dataset", None
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
        if head == "dataset" or (level is not None and level != task_type):
            continue  # dataset effects: see predict_proba
        eta = eta + value * base[head]
    return eta


def predict_proba(fit: Fit, df: pd.DataFrame, entropy_col: str = ENTROPY, vision_col: str = VISION,
                  moderator: str | None = "task_type") -> np.ndarray:
    """P(correct) for new rows, standardised with the training fit's scaling; NaN where a feature is missing.

    A fit with dataset effects (``by``) standardises the new rows within
    their own dataset (features only, never labels: the same transform the
    fit applied), and gives every row the mean of the fitted dataset effects
    (the reference's being 0): within one dataset that shifts no ranking.
    """
    if not fit.fitted:
        return np.full(len(df), np.nan)
    params = dict(zip(fit.terms, fit.params))
    z_e = z_v = np.zeros(len(df))
    if fit.by:
        groups = df[fit.by].astype(str).to_numpy() if fit.by in df else np.zeros(len(df)).astype(str)
        effects = [0.0] + [v for t, v in params.items() if t.startswith("dataset[")]
        params["const"] = params.get("const", 0.0) + float(np.mean(effects))
        if "entropy_mean" in fit.scaling:
            z_e = within_zscore(df[entropy_col].to_numpy(dtype=float), groups)[0]
        if "vision_mean" in fit.scaling:
            z_v = within_zscore(df[vision_col].to_numpy(dtype=float), groups)[0]
    else:
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
