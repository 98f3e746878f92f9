"""The ``claims`` stage: the two papers' headline findings, each against this run's estimate, with a verdict.

One row per finding as the abstracts state it ("Don't Blink", arXiv
2604.04207; "Peek-a-Boo Reasoning", arXiv 2512.08976); a finding built on a
vision measure gets one row per configured measure (``features.vision``, the
primary one first, ``primary`` true). Each row: the finding, the paper's
figure where one is given, the estimate with its 95% interval on the data the
config ran, its unit, the datasets and models behind it, the tables it was
read from, and a verdict: ``consistent``, ``inconsistent`` or ``not
estimable``, with ``reason`` always saying what decided it (or why there is
no estimate, including an interval too wide to decide either way).

The stage reads tables only: ``collapse/summary.csv``,
``regression/transfer.csv``, ``regression/interaction_by_task.csv``,
``selective/summary.csv``, ``selective/entropy_comparison.csv`` and
``crm/{m}/{d}/modes.parquet``. Where several cells (model, dataset, train and
test pair) each give an estimate with a bootstrap interval, they are pooled
with random effects (DerSimonian-Laird), I^2 reported; the veto's effect
comes pooled per model from the selective stage's joint bootstrap. Shares get
Wilson intervals. Each row states its decision rule (``rule``); the rows that
test a pooled estimate are adjusted together by Holm (``p_holm``), and a
verdict that rests on a rejection stands only when it survives. Every
estimate and verdict rule is written out in docs/analysis.md ("The claims
table").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from . import resampling, schema
from .features import vision_measures
from .logs import get_logger
from .seeding import rng as seeded_rng
from .stage import StageCall
from .tables import read_table

log = get_logger("claims")

COLUMNS = [
    "id", "paper", "finding", "paper_figure", "estimate", "ci_low", "ci_high", "unit", "vision_measure", "primary",
    "datasets", "models", "verdict", "reason", "rule", "n_cells", "cells_by_sign", "i2", "p", "p_holm", "source",
]
CONSISTENT, INCONSISTENT, NOT_ESTIMABLE = "consistent", "inconsistent", "not estimable"
DONT_BLINK = "Don't Blink (arXiv 2604.04207)"
PEEK_A_BOO = "Peek-a-Boo Reasoning (arXiv 2512.08976)"
Z = float(norm.ppf(0.975))
# "often losing over half of evidence mass": the collapse verdict's threshold, in percent of the first step's value
HALF = 50.0
# the paper's figures the reasons compare the estimates with
PAPER_DROP = (57.0, 91.0)
PAPER_VETO = -1.9
# the relative drop of the lift equals the evidence share's (the evidence's area is fixed within a trace)
COLLAPSE_MEASURE = {"evidence_share": "evidence_share", "evidence_lift": "evidence_share", "image_share": "image_share"}


@dataclass(frozen=True)
class Finding:
    id: str
    paper: str
    finding: str
    paper_figure: str
    unit: str
    source: tuple[str, ...]
    vision: bool


FINDINGS = (
    Finding("evidence_collapse", DONT_BLINK,
            "attention to annotated evidence regions drops substantially, often losing over half of evidence mass, "
            "as reasoning unfolds", "57-91%", "% of the first reasoning step's value (mean relative drop)",
            ("collapse/summary.csv",), True),
    Finding("entropy_transfer", DONT_BLINK,
            "full-response entropy is the most reliable text-only uncertainty signal under cross-dataset transfer",
            "", "AUROC, full-response minus answer-span entropy", ("selective/entropy_comparison.csv",), False),
    Finding("vision_hurts_transfer", DONT_BLINK,
            "adding vision features with a single global linear rule is brittle and often degrades transfer",
            "", "AUROC, entropy + vision minus entropy alone", ("regression/transfer.csv",), True),
    Finding("interaction_visual_reference", DONT_BLINK,
            "low-entropy, visually disengaged predictions are hazardous on sustained visual-reference tasks "
            "(entropy x vision interaction negative)", "",
            "logit coefficient of z(entropy) x z(vision)", ("regression/interaction_by_task.csv",), True),
    Finding("interaction_symbolic", DONT_BLINK,
            "... but benign on symbolic tasks (entropy x vision interaction near zero or positive)", "",
            "logit coefficient of z(entropy) x z(vision)", ("regression/interaction_by_task.csv",), True),
    Finding("vision_veto", DONT_BLINK,
            "a targeted vision veto reduces selective risk by up to 1.9 percentage points at 90% coverage, while "
            "avoiding degradations where disengagement is expected", "up to -1.9 points",
            "percentage points of selective risk at the veto's coverage (veto minus entropy alone)",
            ("selective/summary.csv",), True),
    Finding("crm_hallucination", PEEK_A_BOO,
            "some models preserve reasoning structure, but hallucinate when evidence is missing", "",
            "% of a model's decided CRM cases in mode hallucination", ("crm/{m}/{d}/modes.parquet",), False),
    Finding("crm_collapse", PEEK_A_BOO,
            "others ground tightly to visual cues yet collapse under perturbations", "",
            "% of a model's decided CRM cases in mode collapse", ("crm/{m}/{d}/modes.parquet",), False),
)


# each row's decision rule, as written in the table (docs/analysis.md gives the reasons)
RULES = {
    "evidence_collapse": "consistent: the drop's 95% interval lies above 0 and reaches 50%; inconsistent: it lies "
                         "below 50%; descriptive, not in the Holm family",
    "entropy_transfer": "random-effects pool of the (model, train, test) pairs; consistent: the 95% interval lies "
                        "above 0, inconsistent: below 0, each only if Holm-adjusted p < alpha",
    "vision_hurts_transfer": "\"often\" by counts of pairs by sign: consistent: at least half the pairs worse and at "
                             "least one with its interval below 0; inconsistent: most pairs better, one clearly, "
                             "none clearly worse; a count rule, not in the Holm decision (its pooled p is listed)",
    "interaction_visual_reference": "random-effects pool over models of the task type's interaction (stable ML fits "
                                    "only); consistent: the 95% interval lies below 0, inconsistent: above 0, each "
                                    "only if Holm-adjusted p < alpha",
    "interaction_symbolic": "random-effects pool over models (stable ML fits only); inconsistent: the 95% interval "
                            "lies below 0 and Holm-adjusted p < alpha; otherwise consistent (not negative)",
    "vision_veto": "each model's pre-declared pooled effect (mean over its datasets, rule refitted in every "
                   "bootstrap resample); consistent: some model's interval below 0 (p: Bonferroni over models, then "
                   "Holm) and no harm shown by TOST for every model; inconsistent: some model's interval above 0 or "
                   "harm beyond the margin",
    "crm_hallucination": "consistent: the mode is some model's most frequent and its share's Wilson interval (on "
                         "the effective n after the item design effect) excludes 0; inconsistent: no model's most "
                         "frequent mode; descriptive, not in the Holm family",
    "crm_collapse": "as crm_hallucination, for the mode collapse",
}
HOLM_NOTE = "not significant after Holm's adjustment over the {m} rows with a test (p_holm {p:.3g} >= {alpha:g})"


# ----------------------------------------------------------------------------- helpers


@dataclass
class Pooled:
    """Cells pooled with random effects: the estimate, its 95% interval, p (two-sided, of 0), I^2, tau^2, k."""

    estimate: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    p: float = float("nan")
    i2: float = float("nan")
    tau2: float = float("nan")
    k: int = 0

    def __iter__(self):  # (estimate, low, high), as the fixed-effect pool returned
        return iter((self.estimate, self.low, self.high))


def pool_cells(estimates: Sequence[float], lows: Sequence[float], highs: Sequence[float],
               threshold: float = 0.0) -> Pooled:
    """Random-effects pooling of cells, each SE read off its 95% interval as ``(high - low) / (2 x 1.96)``.

    DerSimonian-Laird's between-cell variance tau^2 widens every cell's
    variance, so heterogeneous cells (high I^2) no longer give the narrow
    fixed-effect interval; the interval is normal-based (Hartung-Knapp's t
    on k - 1 degrees of freedom would be safer with many cells, but with the
    two or three models or pairs of a run its t on 1 or 2 degrees of
    freedom decides nothing). ``p`` tests ``threshold``. A cell whose interval has no width counts with the
    smallest positive SE among the cells; with none at all the estimate is
    the plain mean, the interval the cells' span and p undefined. One cell:
    its own estimate and interval.
    """
    est, lo, hi = (np.asarray(x, dtype=float) for x in (estimates, lows, highs))
    ok = np.isfinite(est) & np.isfinite(lo) & np.isfinite(hi)
    est, lo, hi = est[ok], lo[ok], hi[ok]
    k = len(est)
    if not k:
        return Pooled()
    se = (hi - lo) / (2 * Z)
    if not (se > 0).any():
        return Pooled(float(est.mean()), float(lo.min()), float(hi.max()), k=k)
    se = np.where(se > 0, se, se[se > 0].min())
    if k == 1:
        z = (est[0] - threshold) / se[0]
        return Pooled(float(est[0]), float(lo[0]), float(hi[0]), float(2 * norm.sf(abs(z))), np.nan, 0.0, 1)
    w = 1.0 / se**2
    fixed = float((w * est).sum() / w.sum())
    q = float((w * (est - fixed) ** 2).sum())
    c = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    wr = 1.0 / (se**2 + tau2)
    mean = float((wr * est).sum() / wr.sum())
    var = 1.0 / float(wr.sum())
    half = Z * np.sqrt(var)
    p = float(2 * norm.sf(abs(mean - threshold) / np.sqrt(var))) if var > 0 else np.nan
    return Pooled(mean, mean - half, mean + half, p, i2, tau2, k)


def pool(estimates: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float, float]:
    """``pool_cells`` as (estimate, low, high)."""
    return tuple(pool_cells(estimates, lows, highs))


def wilson(hits: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a share ``hits / n`` (``n`` may be an effective, fractional size)."""
    if not n > 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + level / 2))
    share = hits / n
    centre = (share + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(share * (1 - share) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _signs(est: pd.Series, lo: pd.Series, hi: pd.Series) -> tuple[dict[str, int], str]:
    """Counts of cells by sign: point estimate below/above 0, and interval below/above 0."""
    e, l, h = (pd.to_numeric(x, errors="coerce").to_numpy(dtype=float) for x in (est, lo, hi))
    counts = {"negative": int((e < 0).sum()), "positive": int((e > 0).sum()), "zero": int((e == 0).sum()),
              "below_0": int((h < 0).sum()), "above_0": int((l > 0).sum())}
    text = (f"{counts['negative']} negative ({counts['below_0']} with the interval below 0), {counts['positive']} "
            f"positive ({counts['above_0']} with the interval above 0)"
            + (f", {counts['zero']} exactly 0" if counts["zero"] else ""))
    return counts, text


def by_interval(low: float, high: float, expected: str, threshold: float = 0.0) -> str | None:
    """The verdict an interval gives for an expected sign: ``negative``, ``positive`` or ``not_negative``.

    ``negative``: consistent when the interval lies below ``threshold``,
    inconsistent when above; ``positive`` the mirror; ``not_negative``:
    inconsistent only when the interval lies below ``threshold``. None: the
    interval cannot decide (it holds the threshold).
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    if expected == "negative":
        return CONSISTENT if high < threshold else INCONSISTENT if low > threshold else None
    if expected == "positive":
        return CONSISTENT if low > threshold else INCONSISTENT if high < threshold else None
    if expected == "not_negative":
        return INCONSISTENT if high < threshold else CONSISTENT
    raise ValueError(f"unknown expectation {expected!r}")


def _names(*columns: pd.Series) -> str:
    values = [v for c in columns for v in c.dropna().astype(str) for v in v.split(",") if v]
    return ",".join(dict.fromkeys(values))


def _finite(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    ok = np.ones(len(df), dtype=bool)
    for c in columns:
        ok &= np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float))
    return df[ok]


def _f(x: float, digits: int = 3, signed: bool = True) -> str:
    return "nan" if not np.isfinite(x) else f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(est: float, lo: float, hi: float, digits: int = 3, signed: bool = True) -> str:
    return f"{_f(est, digits, signed)} [{_f(lo, digits, signed)}, {_f(hi, digits, signed)}]"


def _notes(df: pd.DataFrame, limit: int = 3) -> str:
    notes = list(dict.fromkeys(str(n) for n in df.get("note", pd.Series(dtype=object)).dropna() if str(n)))
    return "; ".join(notes[:limit]) + (f"; and {len(notes) - limit} more" if len(notes) > limit else "")


def result(estimate: float = np.nan, low: float = np.nan, high: float = np.nan, *, verdict: str, reason: str,
           datasets: str = "", models: str = "", p: float = np.nan, tested: bool = False, n_cells: int | None = None,
           cells_by_sign: str = "", i2: float = np.nan) -> dict[str, Any]:
    """A row's estimate and verdict; ``p`` enters Holm's family, and ``tested`` says the verdict rests on
    rejecting it (so it stands only when the Holm-adjusted p does)."""
    return {"estimate": estimate, "ci_low": low, "ci_high": high, "verdict": verdict, "reason": reason,
            "datasets": datasets, "models": models, "p": p, "tested": tested, "n_cells": n_cells,
            "cells_by_sign": cells_by_sign, "i2": i2}


def undecided(reason: str, **kwargs) -> dict[str, Any]:
    return result(verdict=NOT_ESTIMABLE, reason=reason, **kwargs)


# ----------------------------------------------------------------------------- the findings


def evidence_collapse(summary: pd.DataFrame, measure: str) -> dict[str, Any]:
    """The mean relative drop over the reasoning, pooled over every model and dataset (collapse/summary.csv)."""
    if summary.empty or "scope" not in summary:
        return undecided("no collapse findings (collapse/summary.csv has no rows)")
    rows = summary[(summary["scope"] == "all") & (summary["measure"] == measure)]
    if rows.empty:
        return undecided(f"no pooled {measure} row in the collapse summary: {_notes(summary) or 'no base traces'}")
    r = rows.iloc[0]
    names = {"datasets": str(r["datasets"]), "models": str(r["models"])}
    if r["status"] != "ok":
        return undecided(f"{measure}: {r['note']}", **names)
    est, lo, hi = (100 * float(r[c]) for c in ("mean_drop", "mean_drop_low", "mean_drop_high"))
    cells = _finite(summary[(summary["scope"] == "dataset") & (summary["measure"] == measure)
                            & (summary["status"] == "ok")], "mean_drop")
    span = 100 * cells["mean_drop"].astype(float)
    where = ("inside" if PAPER_DROP[0] <= est <= PAPER_DROP[1] else "below" if est < PAPER_DROP[0] else "above")
    facts = (f"mean relative drop {_ci(est, lo, hi, 1)}% over {int(r['n_used'])} traces ({int(r['n_left_out'])} "
             f"left out); per (model, dataset) {span.min():.1f} to {span.max():.1f}% over {len(cells)} cells, the "
             f"pooled estimate {where} the paper's 57-91%; {100 * float(r['share_over_half']):.0f}% of traces lose "
             f"more than half")
    # each cell judged alone: the paper reports decay in every (model, dataset) cell, so cells that disagree
    # (one rises, or one shows no clear drop) keep the pooled mean from reading as consistent
    cell_lo, cell_hi = (cells[c].astype(float) if c in cells else pd.Series(np.nan, index=cells.index)
                        for c in ("mean_drop_low", "mean_drop_high"))
    n_rise, n_drop = int((cell_hi < 0).sum()), int((cell_lo > 0).sum())
    n_unclear = len(cells) - n_rise - n_drop
    facts += f"; cells with a drop {n_drop}, a rise {n_rise}, unclear {n_unclear}"
    excess = [float(r[c]) if c in r and pd.notna(r[c]) else np.nan for c in ("excess_drop", "excess_drop_low",
                                                                               "excess_drop_high")]
    if np.isfinite(excess[0]):
        facts += (f"; judged against the {r['null']} null: excess drop "
                  f"{_ci(100 * excess[0], 100 * excess[1], 100 * excess[2], 1)}%")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return undecided(f"no interval (collapse.bootstrap = 0): {facts}", **names)
    if n_rise and lo > 0:
        return result(est, lo, hi, verdict=INCONSISTENT, reason=f"cells disagree: {n_rise} of {len(cells)} cells "
                      f"rise while the pooled drop is positive: {facts}", **names)
    if n_unclear and lo > 0 and hi >= HALF:
        return result(est, lo, hi, verdict=NOT_ESTIMABLE, reason=f"cells disagree: {n_unclear} of {len(cells)} cells "
                      f"show no clear drop: {facts}", **names)
    if np.isfinite(excess[1]) and excess[1] <= 0 and lo > 0 and hi >= HALF:
        return result(est, lo, hi, verdict=NOT_ESTIMABLE, reason=f"the drop is not larger than the {r['null']} "
                      f"null's: {facts}", **names)
    if hi < HALF:
        verdict, why = INCONSISTENT, "the interval lies below half of the first step's value"
    elif lo > 0:
        verdict, why = CONSISTENT, "the drop is positive and its interval reaches half or more"
    else:
        verdict, why = NOT_ESTIMABLE, "inconclusive: the interval holds both no drop and half"
    return result(est, lo, hi, verdict=verdict, reason=f"{why}: {facts}", **names)


def entropy_transfer(comparison: pd.DataFrame) -> dict[str, Any]:
    """Full-response minus answer-span entropy's transfer AUROC, pooled over (model, train, test) pairs."""
    moved = comparison[comparison["scope"] == "transfer"] if "scope" in comparison else comparison.iloc[0:0]
    if "answer_signal" in moved:  # the paper's comparison is with the answer span (the answer tokens are a check)
        moved = moved[moved["answer_signal"] == "answer_span"]
    if moved.empty:
        return undecided("no transfer pairs in selective/entropy_comparison.csv (a model needs two datasets "
                         "feeding transfer)")
    cells = _finite(moved[moved["status"] == "ok"], "difference", "difference_low", "difference_high")
    named = cells if len(cells) else moved
    names = {"datasets": _names(named["train_dataset"], named["dataset"]), "models": _names(named["model"])}
    if cells.empty:
        return undecided(f"no transfer pair with a difference and an interval: {_notes(moved)}", **names)
    pooled = pool_cells(cells["difference"], cells["difference_low"], cells["difference_high"])
    est, lo, hi = pooled
    counts, signs = _signs(cells["difference"], cells["difference_low"], cells["difference_high"])
    facts = (f"random-effects pool over {len(cells)} (model, train, test) pairs {_ci(est, lo, hi)}, "
             f"I^2 {_f(100 * pooled.i2, 0, False)}%, p {_f(pooled.p, 3, False)}; pairs by sign: {signs}")
    verdict = by_interval(lo, hi, "positive")
    why = {CONSISTENT: "full-response entropy transfers better", INCONSISTENT: "answer-span entropy transfers better",
           None: "inconclusive: the interval holds 0"}[verdict]
    return result(est, lo, hi, verdict=verdict or NOT_ESTIMABLE, reason=f"{why}: {facts}", **names, p=pooled.p,
                  tested=verdict is not None, n_cells=len(cells), cells_by_sign=signs, i2=pooled.i2)


def vision_hurts_transfer(transfer: pd.DataFrame, measure: str) -> dict[str, Any]:
    """Entropy + vision (additive: one global linear rule) minus entropy alone under transfer, pooled over pairs."""
    rows = transfer[(transfer["vision_measure"] == measure)] if "vision_measure" in transfer else transfer.iloc[0:0]
    if rows.empty:
        return undecided(f"no transfer rows with vision measure {measure} (a model needs two datasets feeding "
                         "transfer)" + (f": {_notes(transfer)}" if len(transfer) else ""))
    pooled = {}
    for name in ("additive", "vision", "interaction"):
        cells = _finite(rows[(rows["features"] == name) & (rows["status"] == "ok")], "difference", "difference_low",
                        "difference_high")
        pooled[name] = (pool_cells(cells["difference"], cells["difference_low"], cells["difference_high"]), cells)
    mine_pool, cells = pooled["additive"]
    est, lo, hi = mine_pool
    mine = cells if len(cells) else rows[rows["features"] == "additive"]
    names = {"datasets": _names(mine["train_dataset"], mine["test_dataset"]), "models": _names(mine["model"])}
    if cells.empty:
        return undecided(f"no additive transfer pair with a difference and an interval: "
                         f"{_notes(rows[rows['features'] == 'additive'])}", **names)
    others = "; ".join(f"{name}: {_ci(*pooled[name][0])} over {len(pooled[name][1])}"
                       for name in ("vision", "interaction"))
    counts, signs = _signs(cells["difference"], cells["difference_low"], cells["difference_high"])
    facts = (f"entropy + vision minus entropy alone, pairs by sign: {signs}; random-effects pool over {len(cells)} "
             f"pairs {_ci(est, lo, hi)}, I^2 {_f(100 * mine_pool.i2, 0, False)}% ({others})")
    # "often": judged by the count of pairs by sign, not by a pooled mean
    half = len(cells) / 2.0
    if counts["negative"] >= half and counts["below_0"] >= 1:
        verdict, why = CONSISTENT, "adding vision often degrades transfer (at least half the pairs worse, one clearly)"
    elif counts["positive"] > half and counts["above_0"] >= 1 and counts["below_0"] == 0:
        verdict, why = INCONSISTENT, "adding vision mostly improves transfer (no pair clearly worse)"
    else:
        verdict, why = NOT_ESTIMABLE, "inconclusive: too few pairs clearly worse to call it often"
    return result(est, lo, hi, verdict=verdict, reason=f"{why}: {facts}", **names, p=mine_pool.p, tested=False,
                  n_cells=len(cells), cells_by_sign=signs, i2=mine_pool.i2)


def task_interaction(by_task: pd.DataFrame, measure: str, task: str) -> dict[str, Any]:
    """A task type's entropy x vision interaction, pooled over models (regression/interaction_by_task.csv)."""
    mine = by_task[by_task["vision_measure"] == measure] if len(by_task) else by_task
    if mine.empty:
        return undecided(f"no task rows for vision measure {measure} in regression/interaction_by_task.csv "
                         "(no dataset feeds regression, or no model has rows)")
    rows = mine[mine["task_type"] == task]
    if rows.empty:
        return undecided(f"no {task} items among the datasets feeding regression")
    names = {"datasets": _names(rows["datasets"]), "models": _names(rows["model"])}
    cells = _finite(rows[rows["status"] == "ok"], "estimate", "ci_low", "ci_high")
    unstable = rows[rows["status"] == "unstable"]
    if cells.empty:
        n_pen = int((rows["status"] == "penalised").sum())
        extra = "".join(f" ({k} {what} fits left out)" for k, what in ((len(unstable), "unstable"),
                                                                         (n_pen, "Firth-penalised (separated)")) if k)
        return undecided(f"no stable {task} interaction{extra}: {_notes(rows)}", **names)
    names = {"datasets": _names(cells["datasets"]), "models": _names(cells["model"])}
    pooled = pool_cells(cells["estimate"], cells["ci_low"], cells["ci_high"])
    est, lo, hi = pooled
    per_model = ", ".join(f"{r.model} {_ci(r.estimate, r.ci_low, r.ci_high, 2)}" for r in cells.itertuples())
    counts, signs = _signs(cells["estimate"], cells["ci_low"], cells["ci_high"])
    facts = (f"random-effects pool over {len(cells)} models {_ci(est, lo, hi)}, I^2 {_f(100 * pooled.i2, 0, False)}% "
             f"({per_model}); models by sign: {signs}")
    if len(unstable):
        facts += f"; {len(unstable)} unstable fits left out"
    penalised = rows[rows["status"] == "penalised"]
    if len(penalised):
        facts += f"; {len(penalised)} Firth-penalised (separated) fits left out"
    if task == "visual_reference":
        verdict = by_interval(lo, hi, "negative")
        why = {CONSISTENT: "negative: confident, disengaged answers are less often correct",
               INCONSISTENT: "positive, against the paper's sign", None: "inconclusive: the interval holds 0"}[verdict]
    else:
        verdict = by_interval(lo, hi, "not_negative")
        why = {CONSISTENT: "not negative: near zero or positive, as the paper says",
               INCONSISTENT: "negative, as the paper says only of visual-reference tasks"}[verdict]
    rejects = verdict == INCONSISTENT if task != "visual_reference" else verdict is not None
    return result(est, lo, hi, verdict=verdict or NOT_ESTIMABLE, reason=f"{why}: {facts}", **names, p=pooled.p,
                  tested=rejects, n_cells=len(cells), cells_by_sign=signs, i2=pooled.i2)


def vision_veto(summary: pd.DataFrame, measure: str) -> dict[str, Any]:
    """Each model's pre-declared pooled veto effect (selective/summary.csv, scope pooled) and its no-harm test.

    Consistent: some model's pooled change in risk has its interval below 0
    (the row's p: the smallest of the models' bootstrap p-values times the
    number of models, Bonferroni, then Holm over the rows) and every model
    shows no harm on the task types where disengagement is expected (TOST
    inside the margin). Inconsistent: some model's pooled interval lies above
    0, or some model's no-harm interval lies beyond the margin. Otherwise not
    estimable, saying which part is missing. The estimate shown is the model
    with the largest reduction (ties: the first model by name).
    """
    if summary.empty or "signal" not in summary:
        return undecided("no selective-risk summary rows")
    rows = summary[(summary["signal"] == "entropy+veto") & (summary["vision_measure"] == measure)]
    if rows.empty:
        return undecided(f"no veto rows for vision measure {measure}: {_notes(summary)}")
    pooled = rows[rows["scope"] == "pooled"] if "scope" in rows else rows.iloc[0:0]
    cells = rows[rows["scope"] != "pooled"] if "scope" in rows else rows
    names = {"datasets": _names(cells["dataset"]), "models": _names(rows["model"])}
    pooled = _finite(pooled[pooled["status"] == "ok"], "delta_risk").sort_values("model", kind="stable")
    if pooled.empty:
        return undecided(f"no pooled veto effect per model (selective/summary.csv has no pooled rows): "
                         f"{_notes(rows)}", **names)
    coverage = float(pooled["veto_coverage"].iloc[0])
    where = f"at {coverage:.0%} coverage" + ("" if abs(coverage - 0.9) < 1e-9 else " (the paper: 90%)")
    symbolic = int(pd.to_numeric(cells.get("n_vetoed_symbolic", pd.Series(dtype=float)), errors="coerce").fillna(0).sum())
    per_model = "; ".join(
        f"{r.model} {_ci(100 * r.delta_risk, 100 * r.delta_risk_low, 100 * r.delta_risk_high, 2)} points "
        f"(veto on in {r.veto_active_datasets if isinstance(r.veto_active_datasets, str) and r.veto_active_datasets else 'no'} "
        f"of {r.veto_datasets}), no harm on {r.no_harm_task_types}: {r.no_harm} "
        f"({_ci(100 * r.no_harm_delta, 100 * r.no_harm_low, 100 * r.no_harm_high, 2)} at "
        f"{100 * r.no_harm_level:.0f}%, margin +-{100 * r.no_harm_margin:.2g})"
        for r in pooled.itertuples())
    facts = f"pooled over each model's datasets {where}: {per_model}; {symbolic} symbolic answers vetoed"
    best = pooled.sort_values(["delta_risk", "model"], kind="stable").iloc[0]
    est, lo, hi = (100 * float(best[c]) for c in ("delta_risk", "delta_risk_low", "delta_risk_high"))
    p_models = pd.to_numeric(pooled["delta_risk_p"], errors="coerce")
    p = float(min(1.0, len(pooled) * p_models.min())) if p_models.notna().any() else np.nan
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return undecided(f"no interval (selective.veto_bootstrap = 0): {facts}", **names)
    raised = pooled[pd.to_numeric(pooled["delta_risk_low"], errors="coerce") > 0]
    harmed = pooled[pooled["no_harm"].astype(str) == "harm"]
    lowered = pooled[pd.to_numeric(pooled["delta_risk_high"], errors="coerce") < 0]
    if len(raised) or len(harmed):
        worst = (raised if len(raised) else harmed).iloc[0]
        what = "raised the risk" if len(raised) else "harmed where disengagement is expected"
        return result(est, lo, hi, verdict=INCONSISTENT, reason=f"the veto {what} for {worst['model']}: {facts}",
                      **names, p=p, tested=True, n_cells=len(pooled))
    if lowered.empty:
        return result(est, lo, hi, verdict=NOT_ESTIMABLE,
                      reason=f"inconclusive: no model's pooled change is distinguishable from 0: {facts}", **names,
                      p=p, tested=False, n_cells=len(pooled))
    not_shown = pooled[pooled["no_harm"].astype(str) != "shown"]
    if len(not_shown):
        return result(est, lo, hi, verdict=NOT_ESTIMABLE,
                      reason=f"the veto lowers the risk, but no harm is not shown for "
                             f"{', '.join(not_shown['model'].astype(str))}: {facts}", **names, p=p, tested=False,
                      n_cells=len(pooled))
    return result(est, lo, hi, verdict=CONSISTENT, reason=f"the veto lowers the risk without harm: {facts}", **names,
                  p=p, tested=True, n_cells=len(pooled))


def crm_pattern(modes: pd.DataFrame, mode: str, n_boot: int, seed: int) -> dict[str, Any]:
    """The largest share of ``mode`` among a model's decided CRM cases, and whether it is that model's own mode."""
    if modes.empty:
        return undecided("no CRM modes (no dataset feeds crm)")
    # undecided and no-control cases make no claim about the model (crm.UNDECIDED_MODES; not imported, so that
    # the claims stage does not re-run on every edit of the CRM code)
    decided = modes[~modes["mode"].astype(str).isin(("undecided", "no_control"))]
    names = {"datasets": _names(modes["dataset"]), "models": _names(modes["model"])}
    if decided.empty:
        return undecided(f"all {len(modes)} CRM cases undecided or without a control trace", **names)
    per_model = []
    for model, sub in decided.groupby("model", sort=False):
        hit = (sub["mode"].astype(str) == mode).to_numpy(dtype=float)
        share = float(hit.mean())
        lo = hi = np.nan
        if n_boot:
            # Wilson's interval on the effective number of cases: the cases of one item (its masked regions) are
            # not independent, so n shrinks by the design effect, the item-bootstrap variance over the binomial one
            clusters = (sub["dataset"].astype(str) + "|" + sub["item_id"].astype(str)).to_numpy()
            boot = resampling.weighted_means(hit, resampling.row_counts(clusters, n_boot,
                                                                         seeded_rng(seed, "claims", mode, model)))
            binomial = share * (1 - share) / len(hit)
            deff = max(1.0, float(np.nanvar(boot)) / binomial) if binomial > 0 else 1.0
            lo, hi = wilson(share * len(hit) / deff, len(hit) / deff)
        counts = sub["mode"].astype(str).value_counts()
        # the most frequent mode(s): a tie leaves several, each of which counts as the model's own
        tops = sorted(m for m in counts.index if counts[m] == counts.max())
        per_model.append({"model": model, "share": share, "lo": lo, "hi": hi, "n": len(sub), "tops": tops,
                          "top_share": counts.max() / len(sub), "sub": sub})
    best = max(per_model, key=lambda r: r["share"])
    est, lo, hi = 100 * best["share"], 100 * best["lo"], 100 * best["hi"]
    dominant = [r for r in per_model if mode in r["tops"]]
    listing = ", ".join(f"{r['model']} {'/'.join(r['tops'])} {100 * r['top_share']:.0f}% of {r['n']}"
                        for r in per_model)
    facts = (f"largest share: {best['model']} {_ci(est, lo, hi, 1, signed=False)}% of {best['n']} decided cases; "
             f"most frequent mode per model: {listing}")
    if mode == "hallucination" and best["share"] > 0 and "match_f1" in best["sub"]:
        f1 = pd.to_numeric(best["sub"].loc[best["sub"]["mode"] == mode, "match_f1"], errors="coerce").mean()
        facts += f"; its hallucinating cases keep the structure (mean Match F1 {f1:.2f})"
    if not dominant:
        return result(est, lo, hi, verdict=INCONSISTENT, reason=f"no model's most frequent mode is {mode}: {facts}",
                      **names)
    if not all(np.isfinite([lo, hi])):
        return undecided(f"no interval (claims.bootstrap = 0): {facts}", **names)
    shown = [r for r in dominant if np.isfinite(r["lo"]) and r["lo"] > 0]
    if not shown:
        return result(est, lo, hi, verdict=NOT_ESTIMABLE,
                      reason=f"inconclusive: {mode} is the most frequent mode of "
                             f"{', '.join(r['model'] for r in dominant)} but its share's interval reaches 0: {facts}",
                      **names)
    return result(est, lo, hi, verdict=CONSISTENT,
                  reason=f"{mode} is the most frequent mode of {', '.join(r['model'] for r in shown)}: {facts}",
                  **names)


# ----------------------------------------------------------------------------- the table


@dataclass
class Tables:
    """The stage's input tables (empty frames where a table has no rows)."""

    collapse_summary: pd.DataFrame
    transfer: pd.DataFrame
    interaction_by_task: pd.DataFrame
    selective_summary: pd.DataFrame
    entropy_comparison: pd.DataFrame
    modes: pd.DataFrame


def claims_table(tables: Tables, measures: Sequence[str], n_boot: int, seed: int, alpha: float = 0.05) -> pd.DataFrame:
    """Every finding's row (per vision measure where it uses one), in the order of ``FINDINGS``.

    The rows with a p-value form one family, adjusted by Holm; a verdict
    that rests on a rejection (``tested``) becomes not estimable when its
    adjusted p is not below ``alpha``, and says so.
    """
    estimators: dict[str, Callable[[str], dict[str, Any]]] = {
        "evidence_collapse": lambda m: evidence_collapse(tables.collapse_summary, m),
        "entropy_transfer": lambda m: entropy_transfer(tables.entropy_comparison),
        "vision_hurts_transfer": lambda m: vision_hurts_transfer(tables.transfer, m),
        "interaction_visual_reference": lambda m: task_interaction(tables.interaction_by_task, m, "visual_reference"),
        "interaction_symbolic": lambda m: task_interaction(tables.interaction_by_task, m, "symbolic"),
        "vision_veto": lambda m: vision_veto(tables.selective_summary, m),
        "crm_hallucination": lambda m: crm_pattern(tables.modes, "hallucination", n_boot, seed),
        "crm_collapse": lambda m: crm_pattern(tables.modes, "collapse", n_boot, seed),
    }
    rows = []
    for f in FINDINGS:
        if not f.vision:
            per_measure = [("", True)]
        elif f.id == "evidence_collapse":
            mapped = list(dict.fromkeys(COLLAPSE_MEASURE[m] for m in measures))
            per_measure = [(m, m == COLLAPSE_MEASURE[measures[0]]) for m in mapped]
        else:
            per_measure = [(m, i == 0) for i, m in enumerate(measures)]
        for measure, primary in per_measure:
            try:
                out = estimators[f.id](measure)
            except Exception as exc:  # one finding's bad table must not cost the others; the row says what failed
                log.exception("claim %s (%s) failed", f.id, measure)
                out = undecided(f"failed: {type(exc).__name__}: {exc}")
            rows.append({"id": f.id, "paper": f.paper, "finding": f.finding, "paper_figure": f.paper_figure,
                         "unit": f.unit, "vision_measure": measure, "primary": primary, "source": ",".join(f.source),
                         "rule": RULES[f.id], **out})
    adjusted = holm([r.get("p", np.nan) for r in rows])
    family = int(np.isfinite(adjusted).sum())
    for r, p_holm in zip(rows, adjusted):
        r["p_holm"] = p_holm
        if r.pop("tested", False) and r["verdict"] != NOT_ESTIMABLE and not p_holm < alpha:
            r["reason"] = f"{HOLM_NOTE.format(m=family, p=p_holm, alpha=alpha)}; was {r['verdict']}: {r['reason']}"
            r["verdict"] = NOT_ESTIMABLE
        log.info("claim %s%s: %s (%s)", r["id"], f" [{r['vision_measure']}]" if r["vision_measure"] else "",
                 r["verdict"], r["reason"])
    return pd.DataFrame(rows, columns=COLUMNS)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        log.warning("%s is empty", path)
        return pd.DataFrame()


def read_modes(paths: Sequence[Path]) -> pd.DataFrame:
    """Every ``crm/{m}/{d}/modes.parquet``, with the model and dataset its path names."""
    frames = []
    for p in paths:
        df = read_table(p)
        if len(df):
            frames.append(df.assign(model=Path(p).parent.parent.name, dataset=Path(p).parent.name))
    if not frames:
        return pd.DataFrame(columns=["model", "dataset", "item_id", "mode"])
    return pd.concat(frames, ignore_index=True)


def run_stage(call: StageCall) -> None:
    """The ``claims`` rule: ``claims.csv`` from the findings tables.

    ``config``: ``features`` (the vision measures, primary first), ``claims``
    (its ``bootstrap``) and ``seed``. Inputs: ``collapse_summary``,
    ``transfer``, ``interaction_by_task``, ``selective_summary``,
    ``entropy_comparison`` (files) and ``modes`` (a list, possibly empty).
    """
    tables = Tables(
        collapse_summary=_read_csv(call.path("collapse_summary")),
        transfer=_read_csv(call.path("transfer")),
        interaction_by_task=_read_csv(call.path("interaction_by_task")),
        selective_summary=_read_csv(call.path("selective_summary")),
        entropy_comparison=_read_csv(call.path("entropy_comparison")),
        modes=read_modes(call.paths("modes")),
    )
    cfg = schema.section("claims", call.config["claims"])
    table = claims_table(tables, vision_measures(call.config["features"]), int(cfg["bootstrap"]),
                         int(call.config["seed"]), float(cfg["alpha"]))
    call.output("claims").parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(call.output("claims"), index=False, float_format="%.6g")
