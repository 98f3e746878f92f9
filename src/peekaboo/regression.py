"""The ``regression`` stage: the entropy x vision interaction per (model, dataset) and pooled, and its transfer.

``correct ~ z(entropy) * z(vision)`` (``peekaboo.interaction``) per (model,
dataset), and per model pooled over its datasets with task type as a
moderator; transfer: each feature set fitted on one dataset and scored on the
model's other datasets (AUROC). Tables: ``regression/coefficients.csv``,
``regression/transfer.csv``, ``regression/summary.txt``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import schema
from .cells import is_blank
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
from .stage import StageCall

log = get_logger("regression")

COEF_COLUMNS = [
    "model", "dataset", "scope", "vision_measure", "datasets", "formula", "status", "term", "estimate", "se",
    "ci_low", "ci_high", "p",
    "n", "n_errors", "n_correct", "n_items", "n_dropped", "llf", "pseudo_r2", "aic", "converged",
    "entropy_mean", "entropy_sd", "vision_mean", "vision_sd", "reference_level", "task_types", "note",
]
TRANSFER_COLUMNS = [
    "model", "train_dataset", "test_dataset", "features", "entropy", "vision_measure", "auroc", "n_train",
    "n_train_errors", "n_test", "n_test_errors", "status", "note",
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
    rows: list[dict[str, Any]] = []
    terms = FEATURE_SETS["interaction"]
    if features.empty:
        rows += tidy(Fit(status="not_fitted", note="no per-trace features at all"),
                     model=None, dataset=None, scope="dataset", formula=formula(terms, None))
        return _coef_frame(rows)
    for measure, view in measure_views(features, vision_measures):
        for model, mdf in view.groupby("model", sort=False):
            for dataset, ddf in mdf.groupby("dataset", sort=False):
                fit = fit_logit(ddf, terms, None, min_errors=min_errors)
                _log_fit(model, dataset, measure, fit)
                rows += tidy(fit, model=model, dataset=dataset, scope="dataset", formula=formula(terms, None),
                             vision_measure=measure, datasets=dataset)
            pooled = mdf.assign(item_id=mdf["dataset"].astype(str) + "|" + mdf["item_id"].astype(str))
            fit = fit_logit(pooled, terms, "task_type", min_errors=min_errors)
            _log_fit(model, "pooled", measure, fit)
            rows += tidy(fit, model=model, dataset="pooled", scope="pooled",
                         formula=formula(terms, "task_type" if fit.levels else None), vision_measure=measure,
                         datasets=",".join(dict.fromkeys(mdf["dataset"].astype(str))))
    return _coef_frame(rows)


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
             vision_measures: Sequence[str] | None = None) -> pd.DataFrame:
    """Fit each feature set on one dataset, score every other dataset of the same model (AUROC).

    Feature sets without vision are fitted once (``vision_measure`` empty);
    the others once per vision measure.
    """
    regression_cfg = schema.section("regression", regression_cfg)
    min_errors = int(regression_cfg["min_errors"])
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
                for name, terms, entropy_col in TRANSFER_SETS:
                    uses_vision = any("vision" in t for t in terms)
                    if not uses_vision and i > 0:
                        continue  # the same fit for every measure: once is enough
                    fit = fit_logit(tdf, terms, None, min_errors=min_errors, entropy_col=entropy_col)
                    for test in datasets:
                        if test != train:
                            rows.append(_transfer_row(model, train, test, name, terms, entropy_col,
                                                      measure if uses_vision else "", fit, mdf))
    df = pd.DataFrame(rows)
    for c in TRANSFER_COLUMNS:
        if c not in df:
            df[c] = None
    return df[TRANSFER_COLUMNS]


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


# ----------------------------------------------------------------------------- summary and files


def summary_text(coefficients: pd.DataFrame, transfer_table: pd.DataFrame) -> str:
    """A plain-text summary: each fit's size, errors and interaction estimate, and the transfer AUROCs."""
    lines = ["Entropy x vision interaction (logit of correctness; z-scored features; SEs clustered by item)", ""]
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
            head += f"\n    pseudo R2={r.pseudo_r2:.3f}, AIC={r.aic:.1f}, converged={r.converged}"
        if isinstance(r.note, str) and r.note:
            head += f"\n    note: {r.note}"
        lines.append(head)
    lines += ["", "Transfer (fit on one dataset, AUROC on another)", ""]
    if transfer_table.empty:
        lines.append("none")
    for r in transfer_table.itertuples(index=False):
        if is_blank(r.test_dataset):
            lines.append(f"{r.model}: {r.note}")
            continue
        auc = f"{r.auroc:.3f}" if r.auroc is not None and np.isfinite(r.auroc) else "n/a"
        label = str(r.features) + ("" if is_blank(r.vision_measure) else f" [{r.vision_measure}]")
        lines.append(f"{r.model}: {r.train_dataset} -> {r.test_dataset} {label:<30} AUROC {auc} "
                     f"(train n={r.n_train}, errors={r.n_train_errors}; test n={r.n_test}, errors={r.n_test_errors})"
                     + (f" [{r.note}]" if r.note else ""))
    return "\n".join(lines) + "\n"


def run_stage(call: StageCall) -> None:
    """The ``regression`` rule: read every per-trace table, fit, write coefficients.csv, transfer.csv, summary.txt.

    ``config``: ``regression`` and ``features`` (the sections) and ``analyses``
    (dataset -> the analyses it feeds): the fits use the datasets that feed
    ``regression``, the transfer those that feed ``transfer``.
    """
    cfg = call.config["regression"]
    measures = vision_measures(call.config["features"])
    features = load_features(call.paths("traces"), cfg["variants"])
    coefficients = fit_all(feeding(features, call.config["analyses"], "regression"), cfg, measures)
    transfer_table = transfer(feeding(features, call.config["analyses"], "transfer"), cfg, measures)
    for key, df in (("coefficients", coefficients), ("transfer", transfer_table)):
        call.output(key).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(call.output(key), index=False, float_format="%.6g")
    text = summary_text(coefficients, transfer_table)
    call.output("summary").write_text(text + "\nprovenance: " + canonical_json(call.provenance()) + "\n", encoding="utf-8")
    log.info("\n%s", text)
