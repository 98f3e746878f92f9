"""The ``regression`` stage: the entropy x vision interaction per (model, dataset) and pooled, and its transfer.

``correct ~ z(entropy) * z(vision)`` (``peekaboo.interaction``) per (model,
dataset), and per model pooled over its datasets with task type as a
moderator; transfer: each feature set fitted on one dataset and scored on the
model's other datasets (AUROC), each feature set with vision against entropy
alone on the same test answers (paired bootstrap over test items); and each
task type's entropy x vision interaction from the pooled fit, with its interval
from the clustered covariance. Tables: ``regression/coefficients.csv``,
``regression/transfer.csv``, ``regression/interaction_by_task.csv``,
``regression/summary.txt``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from scipy.stats import norm

from . import resampling, schema
from .cells import is_blank, is_missing
from .features import feeding, load_features, measure_views, vision_measures
from .interaction import (
    ENTROPY,
    ENTROPY_ANSWER,
    FEATURE_SETS,
    OUTCOME,
    VISION,
    Fit,
    auroc,
    fit_logit,
    formula,
    predict_proba,
    tidy,
    usable_rows,
)
from .logs import get_logger
from .provenance import canonical_json
from .seeding import rng as seeded_rng
from .stage import StageCall

log = get_logger("regression")

COEF_COLUMNS = [
    "model", "dataset", "scope", "vision_measure", "datasets", "formula", "status", "term", "estimate", "se",
    "ci_low", "ci_high", "p",
    "n", "n_errors", "n_correct", "n_items", "n_dropped", "llf", "pseudo_r2", "aic", "converged", "method",
    "events_per_parameter",
    "entropy_mean", "entropy_sd", "vision_mean", "vision_sd", "reference_level", "task_types", "note",
]
TRANSFER_COLUMNS = [
    "model", "train_dataset", "test_dataset", "features", "entropy", "vision_measure", "auroc", "n_train",
    "n_train_errors", "n_test", "n_test_errors",
    # feature sets with vision against entropy alone, both scored on the test answers that have both features
    "n_paired", "entropy_auroc", "difference", "difference_low", "difference_high",
    "status", "note",
]
TASK_COLUMNS = [
    "model", "vision_measure", "datasets", "task_type", "term", "estimate", "se", "ci_low", "ci_high", "p",
    "n", "n_errors", "n_items", "fit_status", "events_per_parameter", "status", "note",
]


def fit_all(features: pd.DataFrame, regression_cfg: Mapping[str, Any],
            vision_measures: Sequence[str] | None = None) -> pd.DataFrame:
    """The coefficients table: every (model, dataset) fit and a pooled fit per model with task type, per measure.

    Each vision measure (``features.vision``) gets fits of its own: one fit
    never mixes two measures, and rows without the fit's measure (an item
    without evidence boxes, for ``evidence_share``) are left out and counted.
    """
    regression_cfg = schema.section("regression", regression_cfg)
    min_errors = int(regression_cfg["min_errors"])
    firth = bool(regression_cfg["firth"])
    rows: list[dict[str, Any]] = []
    terms = FEATURE_SETS["interaction"]
    if features.empty:
        rows += tidy(Fit(status="not_fitted", note="no per-trace features at all"),
                     model=None, dataset=None, scope="dataset", formula=formula(terms, None))
        return _coef_frame(rows)
    for measure, view in measure_views(features, vision_measures):
        for model, mdf in view.groupby("model", sort=False):
            for dataset, ddf in mdf.groupby("dataset", sort=False):
                fit = fit_logit(ddf, terms, None, cluster="auto", min_errors=min_errors, firth=firth)
                _log_fit(model, dataset, measure, fit)
                rows += tidy(fit, model=model, dataset=dataset, scope="dataset", formula=formula(terms, None),
                             vision_measure=measure, datasets=dataset)
            fit = pooled_fit(mdf, min_errors, firth)
            _log_fit(model, "pooled", measure, fit)
            rows += tidy(fit, model=model, dataset="pooled", scope="pooled",
                         formula=formula(terms, "task_type" if fit.levels else None), vision_measure=measure,
                         datasets=",".join(dict.fromkeys(mdf["dataset"].astype(str))))
    return _coef_frame(rows)


def pooled_fit(mdf: pd.DataFrame, min_errors: int, firth: bool = True) -> Fit:
    """A model's interaction logit pooled over its datasets: task type as moderator, dataset fixed effects,
    features standardised within each dataset, SEs clustered by the data's own clusters within each dataset."""
    return fit_logit(mdf, FEATURE_SETS["interaction"], "task_type", cluster="auto", min_errors=min_errors,
                     by="dataset", firth=firth)


def _log_fit(model, dataset, measure, fit: Fit) -> None:
    log.info("fit %s/%s (vision: %s): %s, %d rows used (%d errors), %d left out%s", model, dataset, measure or "-",
             fit.status, fit.n, fit.n_errors, fit.n_dropped, f" ({fit.note})" if fit.note else "")


def _coef_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in COEF_COLUMNS:
        if c not in df:
            df[c] = None
    return df[COEF_COLUMNS]


# (name, terms, the entropy column its entropy terms read): both entropies are confidence signals under transfer
TRANSFER_SETS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("entropy", FEATURE_SETS["entropy"], ENTROPY),
    ("entropy_answer", FEATURE_SETS["entropy"], ENTROPY_ANSWER),
    ("vision", FEATURE_SETS["vision"], ENTROPY),
    ("additive", FEATURE_SETS["additive"], ENTROPY),
    ("interaction", FEATURE_SETS["interaction"], ENTROPY),
)


def transfer(features: pd.DataFrame, regression_cfg: Mapping[str, Any],
             vision_measures: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """Fit each feature set on one dataset, score every other dataset of the same model (AUROC).

    Feature sets without vision are fitted once (``vision_measure`` empty);
    the others once per vision measure, and each of those is compared with
    entropy alone on the test answers that have both features: ``difference``
    = its AUROC minus the entropy-only fit's AUROC there (``entropy_auroc``),
    with a paired bootstrap interval over the test items
    (``regression.bootstrap`` resamples, seeded from ``seed``).
    """
    regression_cfg = schema.section("regression", regression_cfg)
    min_errors = int(regression_cfg["min_errors"])
    n_boot = int(regression_cfg["bootstrap"])
    rows = []
    for i, (measure, view) in enumerate(measure_views(features, vision_measures)):
        for model, mdf in view.groupby("model", sort=False):
            datasets = list(dict.fromkeys(mdf["dataset"]))
            if len(datasets) < 2:
                if i == 0:
                    rows.append({"model": model, "train_dataset": datasets[0] if datasets else None,
                                 "test_dataset": None, "features": None, "auroc": np.nan, "status": "not_fitted",
                                 "note": "only one dataset for this model: nothing to transfer to"})
                continue
            for train in datasets:
                tdf = mdf[mdf["dataset"] == train]
                baseline = fit_logit(tdf, FEATURE_SETS["entropy"], None, min_errors=min_errors, entropy_col=ENTROPY)
                for name, terms, entropy_col in TRANSFER_SETS:
                    uses_vision = any("vision" in t for t in terms)
                    if not uses_vision and i > 0:
                        continue  # the same fit for every measure: once is enough
                    fit = fit_logit(tdf, terms, None, min_errors=min_errors, entropy_col=entropy_col)
                    for test in datasets:
                        if test != train:
                            row = _transfer_row(model, train, test, name, terms, entropy_col,
                                                measure if uses_vision else "", fit, mdf)
                            if uses_vision:
                                row.update(_against_entropy(fit, baseline, mdf[mdf["dataset"] == test], n_boot,
                                                            seeded_rng(seed, "vision transfer", model, measure,
                                                                       train, test, name)))
                            rows.append(row)
    df = pd.DataFrame(rows)
    for c in TRANSFER_COLUMNS:
        if c not in df:
            df[c] = None
    return df[TRANSFER_COLUMNS]


def _against_entropy(fit: Fit, baseline: Fit, test: pd.DataFrame, n_boot: int, rng: np.random.Generator) -> dict:
    """A vision feature set's transfer AUROC minus entropy alone's, on the test answers with both features."""
    out = {"n_paired": 0, "entropy_auroc": np.nan, "difference": np.nan, "difference_low": np.nan,
           "difference_high": np.nan}
    if not (fit.fitted and baseline.fitted):
        return out
    sdf, _, _ = usable_rows(test, [ENTROPY, VISION])
    if sdf.empty:
        return out
    y = sdf[OUTCOME].astype(bool).to_numpy()
    with_vision = predict_proba(fit, sdf, moderator=None)
    entropy_only = predict_proba(baseline, sdf, moderator=None)
    out["n_paired"] = len(sdf)
    out["entropy_auroc"] = auroc(y, entropy_only)
    out["difference"] = auroc(y, with_vision) - out["entropy_auroc"]
    if n_boot and np.isfinite(out["difference"]):
        diffs = resampling.paired_auroc_differences(y, with_vision, entropy_only, sdf["item_id"].to_numpy(), n_boot,
                                                    rng)
        out["difference_low"], out["difference_high"] = resampling.interval(diffs)
    return out


def _transfer_row(model, train, test, name, terms, entropy_col, measure, fit: Fit, mdf: pd.DataFrame) -> dict:
    needs = [c for c, t in ((entropy_col, "entropy"), (VISION, "vision")) if any(t in term for term in terms)]
    sdf, dropped, test_drop_note = usable_rows(mdf[mdf["dataset"] == test], needs)
    y = sdf[OUTCOME].astype(bool).to_numpy() if len(sdf) else np.array([], bool)
    row = {"model": model, "train_dataset": train, "test_dataset": test, "features": name,
           "entropy": entropy_col if "entropy" in " ".join(terms) else "", "vision_measure": measure,
           "n_train": fit.n, "n_train_errors": fit.n_errors, "n_test": len(sdf),
           "n_test_errors": int((~y).sum()), "auroc": np.nan, "status": fit.status, "note": ""}
    notes = [fit.note] if fit.note else []
    if fit.fitted:
        row["auroc"] = auroc(y, predict_proba(fit, sdf, entropy_col=entropy_col, moderator=None))
        if not np.isfinite(row["auroc"]):
            row["status"] = "not_scored"
            notes.append("test set has one class only (or no rows): AUROC undefined")
    if dropped:
        notes.append(f"test: {test_drop_note}")
    row["note"] = "; ".join(notes)
    return row


# ----------------------------------------------------------------------------- each task type's interaction


def interaction_by_task(features: pd.DataFrame, regression_cfg: Mapping[str, Any],
                        vision_measures: Sequence[str] | None = None) -> pd.DataFrame:
    """Each task type's entropy x vision interaction from the model's pooled fit, with its clustered interval.

    With task type as moderator the interaction of task type ``t`` is
    ``entropy:vision`` (the reference level's) plus ``entropy:vision:task[t]``;
    its SE comes from the fit's clustered covariance (a linear combination of
    coefficients), its 95% interval and p-value are normal-based like the
    coefficients'. When the fitted rows hold one task type the moderator is
    dropped and ``entropy:vision`` is that type's. Every task type among the
    model's rows gets a row; one the fit could not speak for (no rows of it in
    the fit, e.g. no vision engagement on its items; or no fit at all) says why.
    """
    regression_cfg = schema.section("regression", regression_cfg)
    min_errors = int(regression_cfg["min_errors"])
    rows: list[dict[str, Any]] = []
    for measure, view in measure_views(features, vision_measures):
        for model, mdf in view.groupby("model", sort=False):
            fit = pooled_fit(mdf, min_errors, bool(regression_cfg["firth"]))
            rows += _task_rows(fit, mdf, model, measure)
    df = pd.DataFrame(rows, columns=TASK_COLUMNS)
    return df


def _task_rows(fit: Fit, mdf: pd.DataFrame, model: str, measure: str) -> list[dict[str, Any]]:
    datasets = ",".join(dict.fromkeys(mdf["dataset"].astype(str)))
    fitted_rows, _, _ = usable_rows(mdf, [ENTROPY, VISION])
    z = float(norm.ppf(0.975))
    out = []
    for task in sorted(set(mdf["task_type"].dropna().astype(str))):
        mine = fitted_rows[fitted_rows["task_type"].astype(str) == task]
        row = {"model": model, "vision_measure": measure, "datasets": datasets, "task_type": task,
               "term": "entropy:vision", "estimate": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan,
               "p": np.nan, "n": len(mine), "n_errors": int((~mine[OUTCOME].astype(bool)).sum()),
               "n_items": int((mine["dataset"].astype(str) + "|" + mine["item_id"].astype(str)).nunique()),
               "fit_status": fit.status, "events_per_parameter": fit.events_per_parameter,
               "status": "not_estimable", "note": ""}
        if not fit.fitted:
            row["note"] = f"pooled fit not fitted: {fit.note}"
        elif task not in fit.task_types:
            _, _, why = usable_rows(mdf[mdf["task_type"].astype(str) == task], [ENTROPY, VISION])
            row["note"] = f"no {task} rows in the pooled fit ({why or 'none usable'})"
        else:
            weights = {"entropy:vision": 1.0}
            if fit.levels and task != fit.levels[0]:
                weights[f"entropy:vision:task[{task}]"] = 1.0
            grad = np.array([weights.get(t, 0.0) for t in fit.terms])
            estimate = float(grad @ fit.params)
            se = float(np.sqrt(grad @ fit.cov @ grad)) if fit.cov is not None else np.nan
            row.update(estimate=estimate, se=se, ci_low=estimate - z * se, ci_high=estimate + z * se,
                       p=float(2 * norm.sf(abs(estimate / se))) if se > 0 else np.nan,
                       status=fit.status if fit.status in ("ok", "penalised") else "unstable",
                       term=" + ".join(weights))
            notes = [] if fit.levels else [f"one task type in the fit ({task}): its interaction is entropy:vision"]
            row["note"] = "; ".join(notes + ([fit.note] if fit.note else []))
        out.append(row)
    return out


# ----------------------------------------------------------------------------- summary and files


def summary_text(coefficients: pd.DataFrame, transfer_table: pd.DataFrame,
                 by_task: pd.DataFrame | None = None) -> str:
    """A plain-text summary: each fit's size, errors and interaction estimate, the transfer AUROCs, the task effects."""
    lines = ["Entropy x vision interaction (logit of correctness; z-scored features, within each dataset with dataset "
             "effects in the pooled fits; SEs clustered by item or the data's own clusters; Firth-penalised where "
             "the ordinary fit separates)", ""]
    fits = coefficients.drop_duplicates(["model", "dataset", "scope", "vision_measure"])
    for r in fits.itertuples(index=False):
        head = (f"{r.model} / {r.dataset} (vision: {'-' if is_blank(r.vision_measure) else r.vision_measure}; "
                f"from {r.datasets}): {r.status}, "
                f"n={r.n}, errors={r.n_errors}, left out={r.n_dropped}")
        sub = coefficients[(coefficients["model"] == r.model) & (coefficients["dataset"] == r.dataset)
                           & (coefficients["vision_measure"] == r.vision_measure)
                           & (coefficients["term"].astype(str).str.startswith("entropy:vision"))]
        for t in sub.itertuples(index=False):
            head += f"\n    {t.term}: {t.estimate:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], p={t.p:.3g}"
        if r.status != "not_fitted":
            head += (f"\n    pseudo R2={r.pseudo_r2:.3f}, AIC={r.aic:.1f}, converged={r.converged}, "
                     f"method={r.method}, events per parameter={r.events_per_parameter:.1f}")
        if isinstance(r.note, str) and r.note:
            head += f"\n    note: {r.note}"
        lines.append(head)
    lines += ["", "Transfer (fit on one dataset, AUROC on another)", ""]
    if transfer_table.empty:
        lines.append("none")
    for r in transfer_table.itertuples(index=False):
        # pandas' string columns hold a missing cell as NaN, not None
        if is_missing(r.test_dataset):
            lines.append(f"{r.model}: {r.note}")
            continue
        auc = f"{r.auroc:.3f}" if not is_missing(r.auroc) and np.isfinite(r.auroc) else "n/a"
        label = str(r.features) + ("" if is_blank(r.vision_measure) else f" [{r.vision_measure}]")
        versus = ""
        if not is_blank(r.vision_measure) and not is_missing(r.difference) and np.isfinite(r.difference):
            versus = (f" vs entropy alone {r.difference:+.3f} [{r.difference_low:+.3f}, {r.difference_high:+.3f}]"
                      f" on {r.n_paired}")
        lines.append(f"{r.model}: {r.train_dataset} -> {r.test_dataset} {label:<30} AUROC {auc}{versus} "
                     f"(train n={r.n_train}, errors={r.n_train_errors}; test n={r.n_test}, errors={r.n_test_errors})"
                     + ("" if is_blank(r.note) else f" [{r.note}]"))
    if by_task is not None:
        lines += ["", "Entropy x vision interaction by task type (pooled fits)", ""]
        for r in by_task.itertuples(index=False):
            value = (f"{r.estimate:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], p={r.p:.3g}"
                     if np.isfinite(r.estimate) else "not estimable")
            measure = "-" if is_blank(r.vision_measure) else r.vision_measure
            lines.append(f"{r.model} (vision: {measure}) {r.task_type}: {value}, n={r.n}, "
                         f"errors={r.n_errors}" + ("" if is_blank(r.note) else f" [{r.note}]"))
    return "\n".join(lines) + "\n"


def run_stage(call: StageCall) -> None:
    """The ``regression`` rule: read every per-trace table, fit, write the coefficients, transfer and task tables.

    ``config``: ``regression`` and ``features`` (the sections), ``seed`` (of
    the transfer bootstrap) and ``analyses`` (dataset -> the analyses it
    feeds): the fits use the datasets that feed ``regression``, the transfer
    those that feed ``transfer``.
    """
    cfg = call.config["regression"]
    measures = vision_measures(call.config["features"])
    features = load_features(call.paths("traces"), cfg["variants"])
    fitted = feeding(features, call.config["analyses"], "regression")
    coefficients = fit_all(fitted, cfg, measures)
    by_task = interaction_by_task(fitted, cfg, measures)
    transfer_table = transfer(feeding(features, call.config["analyses"], "transfer"), cfg, measures,
                              seed=int(call.config["seed"]))
    for key, df in (("coefficients", coefficients), ("transfer", transfer_table), ("interaction_by_task", by_task)):
        call.output(key).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(call.output(key), index=False, float_format="%.6g")
    text = summary_text(coefficients, transfer_table, by_task)
    call.output("summary").write_text(text + "\nprovenance: " + canonical_json(call.provenance()) + "\n", encoding="utf-8")
    log.info("\n%s", text)
