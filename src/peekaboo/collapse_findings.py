"""The ``collapse_findings`` stage: evidence collapse as a finding, per (model, dataset) and pooled.

From the per-trace and per-step collapse tables of the unmasked (``base``)
traces, for the reasoning measures (``image_share``: the share of attention on
all image tokens; ``evidence_share``: the part of it on the evidence boxes;
``evidence_mass``: the raw attention on the evidence; ``focus``: the evidence
share corrected for chance), each drop judged against its null (``NULLS``)
and the (model, dataset) cells' range given on every pooled row:

- **trajectory** (``collapse/trajectory.csv``): the measure over normalised
  reasoning position, reasoning (``think``) steps only, pooled into
  ``collapse.position_bins`` bins, and the answer step as a row of its own;
  mean over traces with a bootstrap interval over items;
- **summary** (``collapse/summary.csv``): the mean relative drop from the first
  to the last reasoning step, the share of traces that lose more than half, the
  drop of the mean curve, each with an interval, and how many traces were used
  and left out and why; per (model, dataset), pooled per model and pooled over
  everything;
- **accuracy** (``collapse/accuracy.csv``): accuracy by tercile of the drop and
  the mean drop of correct against incorrect traces, with intervals.

Intervals are percentile bootstraps over items (``peekaboo.resampling``; a
pooled table resamples ``dataset|item`` clusters, so one item answered by
several models stays one cluster), ``collapse.bootstrap`` resamples seeded from
the config's ``seed``. Every row names the datasets and models it was computed
from; a measure a dataset does not define (``evidence_share`` without evidence
boxes) gives rows saying so. Definitions and choices: docs/analysis.md.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import resampling, schema
from .features import load_features
from .logs import get_logger
from .seeding import rng as seeded_rng
from .stage import StageCall
from .tables import read_table

log = get_logger("collapse_findings")

# the collapse stage's reasoning measures (its per-trace {measure}_reasoning_* and _answer columns); a measure whose
# columns a traces table lacks (tables from before it existed) is skipped
MEASURES = ("image_share", "evidence_share", "evidence_mass", "focus")
# what each measure's drop is judged against: (the null's name, its per-trace {null}_reasoning_drop column or None)
NULLS = {
    "image_share": ("position-matched image share", "image_share_null"),
    "evidence_share": ("same-area random region", "evidence_share_null"),
    "evidence_mass": ("same-area random region", "evidence_mass_null"),
    "focus": ("chance (focus is 0 for attention spread evenly; no separate null)", None),
}
# the measures an item without evidence regions does not define
EVIDENCE_MEASURES = ("evidence_share", "evidence_mass", "focus")
# "lose more than half": the papers' "often losing over half of evidence mass"
OVER_HALF = 0.5
# why a base trace has no reasoning drop, checked in this order (the first that holds counts)
LEFT_OUT = (
    ("layer_selection", "held out to choose the grounding layer (collapse.layers: select)"),
    ("failed", "failed trace"),
    ("no_evidence", "no evidence regions (evidence share undefined)"),
    ("few_steps", "fewer than two reasoning steps"),
    ("no_value", "no value (fewer than two reasoning steps with a value, or a first value of 0 or less: for the "
                 "focus, no above-chance focus at the start)"),
)

SUMMARY_COLUMNS = [
    "scope", "model", "dataset", "measure", "n_traces", "n_used", "n_left_out",
    *(f"n_{key}" for key, _ in LEFT_OUT),
    "mean_first", "mean_last", "mean_answer", "mean_drop", "mean_drop_low", "mean_drop_high", "median_drop",
    "share_over_half", "share_over_half_low", "share_over_half_high",
    "drop_of_means", "drop_of_means_low", "drop_of_means_high",
    "null", "n_null", "null_mean_drop", "null_mean_drop_low", "null_mean_drop_high",
    "excess_drop", "excess_drop_low", "excess_drop_high",
    "n_cells", "cells_drop_min", "cells_drop_max", "n_cells_drop", "n_cells_rise", "n_cells_unclear",
    "n_items", "datasets", "models", "sinks_excluded", "status", "note",
]
TRAJECTORY_COLUMNS = [
    "model", "dataset", "measure", "segment", "bin", "position_low", "position_high", "position",
    "n_traces", "n_items", "mean", "ci_low", "ci_high", "n_left_out", "datasets", "models", "sinks_excluded",
    "status", "note",
]
ACCURACY_COLUMNS = [
    "scope", "model", "dataset", "measure", "statistic", "group", "tercile", "drop_low", "drop_high", "n",
    "n_correct", "estimate", "ci_low", "ci_high", "datasets", "models", "sinks_excluded", "status", "note",
]


# ----------------------------------------------------------------------------- per trace


def classify(traces: pd.DataFrame, measure: str) -> pd.DataFrame:
    """The base traces with ``drop`` (the measure's reasoning drop; NaN when left out) and ``left_out`` (why)."""
    df = traces.copy()
    drop = pd.to_numeric(df[f"{measure}_reasoning_drop"], errors="coerce").astype(float)
    ok = df["status"].fillna("ok").eq("ok")
    regions = df["n_evidence_regions"] if "n_evidence_regions" in df else pd.Series(0, index=df.index)
    has_evidence = pd.to_numeric(regions, errors="coerce").fillna(0) > 0
    few = pd.to_numeric(df["n_think_steps"], errors="coerce").fillna(0) < 2
    split = df["layer_split"] if "layer_split" in df else pd.Series(None, index=df.index, dtype="object")
    checks = {
        "layer_selection": split.eq("selection"),
        "failed": ~ok,
        "no_evidence": ~has_evidence if measure in EVIDENCE_MEASURES else pd.Series(False, index=df.index),
        "few_steps": few,
        "no_value": ~np.isfinite(drop),
    }
    why = pd.Series(None, index=df.index, dtype="object")
    for key, _ in LEFT_OUT:
        why = why.where(why.notna() | ~checks[key].astype(bool), key)
    df["left_out"] = why
    df["drop"] = drop.where(why.isna())
    df["first"] = pd.to_numeric(df[f"{measure}_reasoning_first"], errors="coerce").astype(float)
    df["last"] = pd.to_numeric(df[f"{measure}_reasoning_last"], errors="coerce").astype(float)
    df["answer"] = pd.to_numeric(df[f"{measure}_answer"], errors="coerce").astype(float)
    # The null's loss in units of the trace's own first value, (null first - null last) / first: the
    # null curve's relative drop divides by the null's first value, which is near 0 wherever attention
    # sits on the evidence (a random region off it gets almost nothing) and then runs to -1000x.
    null = NULLS.get(measure, (None, None))[1]
    cols = [f"{null}_reasoning_first", f"{null}_reasoning_last"] if null else []
    if cols and all(c in df for c in cols):
        null_first, null_last = (pd.to_numeric(df[c], errors="coerce").astype(float) for c in cols)
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = (null_first - null_last) / df["first"].where(df["first"] > 0)
        df["null_drop"] = scaled.where(why.isna())
    else:
        df["null_drop"] = np.nan
    df["cluster"] = df["dataset"].astype(str) + "|" + df["item_id"].astype(str)
    return df


def left_out_counts(df: pd.DataFrame) -> dict[str, int]:
    return {f"n_{key}": int((df["left_out"] == key).sum()) for key, _ in LEFT_OUT}


def left_out_note(df: pd.DataFrame) -> str:
    """How many traces were left out and why, e.g. ``3 left out: 2 fewer than two reasoning steps, 1 failed trace``."""
    counts = df["left_out"].value_counts()
    parts = [f"{int(counts[key])} {label}" for key, label in LEFT_OUT if key in counts]
    return f"{int(df['left_out'].notna().sum())} left out: {', '.join(parts)}" if parts else ""


def _names(values: pd.Series) -> str:
    return ",".join(dict.fromkeys(values.astype(str)))


def _sinks(df: pd.DataFrame) -> Any:
    """Whether attention sinks were excluded: the one value of the rows, or None when they mix or say nothing."""
    if "sinks_excluded" not in df:
        return None
    values = set(df["sinks_excluded"].dropna().astype(bool))
    return values.pop() if len(values) == 1 else None


def _column_means(values: np.ndarray) -> np.ndarray:
    """Each column's mean over its finite values (NaN for a column without any), without warnings."""
    return resampling.weighted_means(values, np.ones((1, len(values))))[0]


def _undefined(df: pd.DataFrame, measure: str) -> str:
    """Why no trace has a drop: the measure undefined on the data, or the traces' reasons."""
    if measure in EVIDENCE_MEASURES and len(df) and (df["left_out"] == "no_evidence").all():
        return f"{measure} undefined: no item of these {len(df)} traces has evidence regions"
    return "no trace with a reasoning drop" + (f" ({left_out_note(df)})" if len(df) else " (no base traces)")


# ----------------------------------------------------------------------------- summary


def summarise(df: pd.DataFrame, measure: str, n_boot: int, rng: np.random.Generator) -> dict[str, Any]:
    """The drop statistics of classified traces (``classify``), intervals over their clusters."""
    used = df[df["left_out"].isna()]
    out: dict[str, Any] = {"n_traces": len(df), "n_used": len(used), "n_left_out": len(df) - len(used),
                           **left_out_counts(df), "n_items": int(used["cluster"].nunique()),
                           "sinks_excluded": _sinks(df)}
    if used.empty:
        return {**out, "status": "not_estimable", "note": _undefined(df, measure)}
    drop = used["drop"].to_numpy(float)
    over = (drop > OVER_HALF).astype(float)
    first, last = used["first"].to_numpy(float), used["last"].to_numpy(float)
    null = used["null_drop"].to_numpy(float)
    excess = drop - null  # NaN where the trace has no null: the excess is over the traces with one
    out["n_null"] = int(np.isfinite(null).sum())
    out["null_mean_drop"] = float(np.nanmean(null)) if np.isfinite(null).any() else np.nan
    out["excess_drop"] = float(np.nanmean(excess)) if np.isfinite(excess).any() else np.nan
    out.update(mean_first=float(np.nanmean(first)), mean_last=float(np.nanmean(last)),
               mean_answer=float(np.nanmean(used["answer"])) if used["answer"].notna().any() else np.nan,
               mean_drop=float(drop.mean()), median_drop=float(np.median(drop)), share_over_half=float(over.mean()))
    first_mean = out["mean_first"]
    out["drop_of_means"] = (first_mean - out["mean_last"]) / first_mean if first_mean > 0 else np.nan
    for key in ("mean_drop", "share_over_half", "drop_of_means", "null_mean_drop", "excess_drop"):
        out[f"{key}_low"] = out[f"{key}_high"] = np.nan
    if n_boot:
        means = resampling.weighted_means(np.column_stack([drop, over, first, last, null, excess]),
                                          resampling.row_counts(used["cluster"], n_boot, rng))
        with np.errstate(invalid="ignore", divide="ignore"):
            of_means = np.where(means[:, 2] > 0, (means[:, 2] - means[:, 3]) / means[:, 2], np.nan)
        for key, values in (("mean_drop", means[:, 0]), ("share_over_half", means[:, 1]), ("drop_of_means", of_means),
                            ("null_mean_drop", means[:, 4]), ("excess_drop", means[:, 5])):
            out[f"{key}_low"], out[f"{key}_high"] = resampling.interval(values)
    out["status"] = "ok"
    out["note"] = left_out_note(df)
    return out


def _groups(classified: pd.DataFrame, scopes: Sequence[str]):
    """(scope, model, dataset, rows) for each scope: per (model, dataset), per model pooled, everything pooled."""
    if "dataset" in scopes:
        for (m, d), sub in classified.groupby(["model", "dataset"], sort=False):
            yield "dataset", m, d, sub
    if "model" in scopes:
        for m, sub in classified.groupby("model", sort=False):
            yield "model", m, "pooled", sub
    if "all" in scopes and len(classified):
        yield "all", "pooled", "pooled", classified


def measures_of(traces: pd.DataFrame) -> list[str]:
    """The reasoning measures the traces table has columns for."""
    return [m for m in MEASURES if f"{m}_reasoning_drop" in traces]


def cell_range(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The spread of the (model, dataset) cells' mean drops, as the paper reports a range over cells.

    A cell counts as a drop when its interval lies above 0, a rise when below,
    unclear otherwise (no interval counts as unclear).
    """
    ok = [c for c in cells if c.get("status") == "ok" and np.isfinite(c.get("mean_drop", np.nan))]
    if not ok:
        return {"n_cells": len(cells)}
    drops = [float(c["mean_drop"]) for c in ok]
    low = np.array([c.get("mean_drop_low", np.nan) for c in ok], dtype=float)
    high = np.array([c.get("mean_drop_high", np.nan) for c in ok], dtype=float)
    n_drop, n_rise = int(np.sum(low > 0)), int(np.sum(high < 0))
    return {"n_cells": len(ok), "cells_drop_min": min(drops), "cells_drop_max": max(drops), "n_cells_drop": n_drop,
            "n_cells_rise": n_rise, "n_cells_unclear": len(ok) - n_drop - n_rise}


def summary_table(traces: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    rows = []
    for measure in measures_of(traces):
        classified = classify(traces, measure)
        cells: list[dict[str, Any]] = []
        for scope, model, dataset, sub in _groups(classified, ("dataset", "model", "all")):
            rng = seeded_rng(seed, "collapse findings", "summary", scope, model, dataset, measure)
            stats = summarise(sub, measure, n_boot, rng)
            used = sub[sub["left_out"].isna()]
            named = used if len(used) else sub
            row = {"scope": scope, "model": model, "dataset": dataset, "measure": measure, **stats,
                   "null": NULLS[measure][0], "datasets": _names(named["dataset"]), "models": _names(named["model"])}
            if scope == "dataset":
                cells.append(row)
                row.update(cell_range([row]))
            else:
                row.update(cell_range([c for c in cells if scope == "all" or c["model"] == model]))
            rows.append(row)
            log.info("drop %s %s/%s (%s): %d traces used, %s%s", scope, model, dataset, measure, stats["n_used"],
                     left_out_note(sub) or "none left out",
                     f"; mean drop {stats['mean_drop']:+.3f}" if stats["status"] == "ok" else f"; {stats['note']}")
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# ----------------------------------------------------------------------------- trajectory


def reasoning_bins(steps: pd.DataFrame, n_bins: int) -> pd.DataFrame:
    """The reasoning steps with their normalised position over the trace's reasoning and its bin.

    Position ``r / (k - 1)`` for the ``r``-th of ``k`` reasoning steps (in
    step order); bin ``floor(position * n_bins)``, the last bin closed.
    """
    think = steps[steps["kind"] == "think"].sort_values(["trace_id", "step_index"], kind="stable")
    rank = think.groupby("trace_id", sort=False).cumcount()
    k = think.groupby("trace_id", sort=False)["step_index"].transform("size")
    position = (rank / (k - 1).where(k > 1)).astype(float)
    return think.assign(reasoning_position=position,
                        bin=np.minimum(np.floor(position * n_bins + 1e-9), n_bins - 1))


def trajectory_table(traces: pd.DataFrame, steps: pd.DataFrame, n_bins: int, n_boot: int, seed: int) -> pd.DataFrame:
    """Mean of each measure per reasoning-position bin and at the answer step, per (model, dataset)."""
    rows = []
    binned = reasoning_bins(steps, n_bins)
    answers = steps[steps["kind"] == "answer"]
    for measure in [m for m in measures_of(traces) if m in steps]:
        classified = classify(traces, measure)
        for (model, dataset), sub in classified.groupby(["model", "dataset"], sort=False):
            common = {"model": model, "dataset": dataset, "measure": measure, "datasets": dataset, "models": model,
                      "sinks_excluded": _sinks(sub)}
            # traces with a position over the reasoning (two reasoning steps or more) and the measure defined
            gone = ["layer_selection", "failed", "no_evidence", "few_steps"]
            keep = sub[~sub["left_out"].isin(gone)]
            note = left_out_note(sub[sub["left_out"].isin(gone)])
            tids = keep["trace_id"].astype(str).to_numpy()
            index = {t: i for i, t in enumerate(tids)}
            values = np.full((len(tids), n_bins + 1), np.nan)
            mine = binned[binned["trace_id"].astype(str).isin(index)]
            per_bin = mine.groupby(["trace_id", "bin"])[measure].mean()
            for (tid, b), v in per_bin.items():
                values[index[str(tid)], int(b)] = v
            per_answer = answers[answers["trace_id"].astype(str).isin(index)].groupby("trace_id")[measure].mean()
            for tid, v in per_answer.items():
                values[index[str(tid)], n_bins] = v
            finite = np.isfinite(values)
            if not finite.any():
                rows.append({**common, "segment": None, "n_traces": 0, "n_items": 0, "n_left_out": len(sub) - len(keep),
                             "status": "not_estimable", "note": _undefined(sub, measure)})
                continue
            clusters = keep["cluster"].to_numpy()
            mean = _column_means(values)
            low = high = np.full(n_bins + 1, np.nan)
            if n_boot:
                boot = resampling.weighted_means(values, resampling.row_counts(
                    clusters, n_boot, seeded_rng(seed, "collapse findings", "trajectory", model, dataset, measure)))
                low, high = np.array([resampling.interval(boot[:, j]) for j in range(n_bins + 1)]).T
            for j in range(n_bins + 1):
                answer = j == n_bins
                has = finite[:, j]
                rows.append({**common, "segment": "answer" if answer else "reasoning", "bin": None if answer else j,
                             "position_low": None if answer else j / n_bins,
                             "position_high": None if answer else (j + 1) / n_bins,
                             "position": None if answer else (j + 0.5) / n_bins,
                             "n_traces": int(has.sum()), "n_items": int(len(set(clusters[has]))),
                             "mean": mean[j] if has.any() else np.nan, "ci_low": low[j], "ci_high": high[j],
                             "n_left_out": len(sub) - len(keep), "status": "ok" if has.any() else "not_estimable",
                             "note": note if has.any() else "; ".join(x for x in ("no value in this bin", note) if x)})
    out = pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)
    for c in ("bin", "n_traces", "n_items", "n_left_out"):
        out[c] = out[c].astype("Int64")
    return out


# ----------------------------------------------------------------------------- accuracy


def accuracy_rows(df: pd.DataFrame, measure: str, n_boot: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Accuracy by tercile of the drop, and the mean drop of correct against incorrect traces (module doc)."""
    used = df[df["left_out"].isna() & df["correct"].notna()]
    no_correctness = int((df["left_out"].isna() & df["correct"].isna()).sum())
    notes = [x for x in (left_out_note(df), f"{no_correctness} without correctness" if no_correctness else "") if x]
    note = "; ".join(notes)
    if len(used) < 3:
        reason = _undefined(df, measure) if used.empty and not no_correctness else (
            f"{len(used)} traces with a drop and correctness: terciles need 3")
        return [{"statistic": None, "n": len(used), "status": "not_estimable",
                 "note": "; ".join(x for x in (reason, note) if x)}]
    drop = used["drop"].to_numpy(float)
    correct = used["correct"].astype(bool).to_numpy()
    bounds = np.quantile(drop, [1 / 3, 2 / 3])
    # by value, so equal drops share a tercile (terciles may then differ in size)
    tercile = np.where(drop <= bounds[0], 1, np.where(drop <= bounds[1], 2, 3))
    columns = [np.where(tercile == t, correct, np.nan) for t in (1, 2, 3)]
    columns += [np.where(correct, drop, np.nan), np.where(~correct, drop, np.nan)]
    values = np.column_stack(columns).astype(float)
    boot = (resampling.weighted_means(values, resampling.row_counts(used["cluster"], n_boot, rng))
            if n_boot else np.full((0, values.shape[1]), np.nan))
    point = _column_means(values)

    def row(statistic: str, group: str, estimate: float, replicates: np.ndarray, sel: np.ndarray, defined: bool,
            why_not: str, **extra) -> dict[str, Any]:
        """One statistic's row: its estimate and interval, or why it has none."""
        low, high = resampling.interval(replicates) if n_boot and defined else (np.nan, np.nan)
        return {"statistic": statistic, "group": group, "n": int(sel.sum()), "n_correct": int(correct[sel].sum()),
                "estimate": estimate if defined else np.nan, "ci_low": low, "ci_high": high,
                "status": "ok" if defined else "not_estimable",
                "note": note if defined else "; ".join(x for x in (why_not, note) if x), **extra}

    everyone = np.ones(len(used), dtype=bool)
    rows = []
    for t, label in ((1, "smallest drop"), (2, "middle"), (3, "largest drop")):
        sel = tercile == t
        rows.append(row("accuracy", f"tercile {t} ({label})", point[t - 1], boot[:, t - 1], sel, sel.any(),
                        "no trace in this tercile (ties)", tercile=t,
                        drop_low=float(drop[sel].min()) if sel.any() else np.nan,
                        drop_high=float(drop[sel].max()) if sel.any() else np.nan))
    both_ends = bool((tercile == 1).any() and (tercile == 3).any())
    rows.append(row("accuracy_difference", "tercile 3 - tercile 1", point[2] - point[0], boot[:, 2] - boot[:, 0],
                    everyone, both_ends, "tercile 1 or 3 empty (ties)"))
    for col, group, sel in ((3, "correct", correct), (4, "incorrect", ~correct)):
        rows.append(row("mean_drop", group, point[col], boot[:, col], sel, sel.any(), f"no {group} trace"))
    both = bool(correct.any() and (~correct).any())
    rows.append(row("mean_drop_difference", "correct - incorrect", point[3] - point[4], boot[:, 3] - boot[:, 4],
                    everyone, both, "all traces correct or all wrong"))
    return rows


def accuracy_table(traces: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    rows = []
    for measure in measures_of(traces):
        classified = classify(traces, measure)
        for scope, model, dataset, sub in _groups(classified, ("dataset", "model")):
            used = sub[sub["left_out"].isna()]
            named = used if len(used) else sub
            common = {"scope": scope, "model": model, "dataset": dataset, "measure": measure,
                      "datasets": _names(named["dataset"]), "models": _names(named["model"]),
                      "sinks_excluded": _sinks(sub)}
            rng = seeded_rng(seed, "collapse findings", "accuracy", scope, model, dataset, measure)
            rows += [{**common, **r} for r in accuracy_rows(sub, measure, n_boot, rng)]
    out = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    for c in ("tercile", "n", "n_correct"):
        out[c] = out[c].astype("Int64")
    return out


# ----------------------------------------------------------------------------- the stage


def findings(traces: pd.DataFrame, steps: pd.DataFrame, collapse_cfg: Mapping[str, Any],
             seed: int) -> dict[str, pd.DataFrame]:
    """The summary, trajectory and accuracy tables from per-trace and per-step collapse tables (base traces only)."""
    cfg = schema.section("collapse", collapse_cfg)
    n_boot, n_bins = int(cfg["bootstrap"]), int(cfg["position_bins"])
    base = traces[traces["variant"] == "base"].reset_index(drop=True) if len(traces) else traces
    if base.empty:
        empty = {"status": "not_estimable", "note": "no unmasked traces in the collapse tables"}
        return {"summary": pd.DataFrame([empty], columns=SUMMARY_COLUMNS),
                "trajectory": pd.DataFrame([empty], columns=TRAJECTORY_COLUMNS),
                "accuracy": pd.DataFrame([empty], columns=ACCURACY_COLUMNS)}
    base_steps = steps[steps["trace_id"].isin(set(base["trace_id"]))] if len(steps) else steps
    return {"summary": summary_table(base, n_boot, seed),
            "trajectory": trajectory_table(base, base_steps, n_bins, n_boot, seed),
            "accuracy": accuracy_table(base, n_boot, seed)}


def run_stage(call: StageCall) -> None:
    """The ``collapse_findings`` rule: the three tables from every (model, dataset) feeding ``collapse``.

    ``config``: ``collapse`` (its ``position_bins`` and ``bootstrap``) and
    ``seed``. Inputs: ``traces`` (per-trace tables) and ``steps`` (per-step
    tables); outputs: ``summary``, ``trajectory``, ``accuracy`` (CSV).
    """
    traces = load_features(call.paths("traces"))
    frames = [read_table(p) for p in call.paths("steps")]
    frames = [f for f in frames if len(f)]
    steps = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["trace_id", "kind", "step_index"])
    tables = findings(traces, steps, call.config["collapse"], int(call.config["seed"]))
    for name, table in tables.items():
        call.output(name).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(call.output(name), index=False, float_format="%.6g")
