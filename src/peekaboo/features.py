"""Per-trace features for the interaction regression and selective prediction.

- ``entropy_full``: mean next-token entropy over all generated tokens;
- ``entropy_answer``: mean entropy over the tokens of the ``answer`` step(s)
  (for a thinking model: the whole post-``</think>`` span, summary included);
- ``entropy_answer_tokens``: mean entropy over the tokens of the parsed
  answer alone (its last whole-word occurrence inside the answer step);
- vision engagement, the mean over the reasoning (``think``) steps of each
  measure: ``vision_image_share`` (the share of attention on all image
  tokens: the papers' visual attention mass, defined on every trace with an
  image), ``vision_evidence_share`` (the part of that attention on the
  evidence boxes: only where the item has boxes) and ``vision_evidence_lift``
  (evidence share over the evidence's area share); ``vision`` and
  ``vision_measure`` repeat the primary measure (the first of
  ``features.vision``). The default config puts the evidence share first: in
  a trial the small reference models put more attention on the image for
  arithmetic (which needs no image) than for colour questions, so raw mass
  behaves like a sink there;
- correctness, abstention, whether the answer changed against the item's
  ``base`` trace, dataset, model, task type, item id and variant.

These columns are part of ``collapse/{m}/{d}.traces.parquet``; the regression
and selective stages read them from there (``load_features``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import schema
from .cells import is_missing, optional_bool
from .logs import get_logger

log = get_logger("features")

# config value of features.vision -> the per-step column it averages
VISION_MEASURES = {"evidence_share": "evidence_share", "evidence_lift": "lift", "image_share": "image_share"}

# cluster_id: the unit the item's answers depend through (an item's ``meta["cluster"]``, e.g. HallusionBench's
# figure set; else the item itself), which the interaction fits cluster their SEs by and the veto resamples
ID_COLUMNS = ["trace_id", "model", "dataset", "item_id", "cluster_id", "mask_id", "variant", "fill", "region",
              "task_type"]
OUTCOME_COLUMNS = ["status", "correct", "abstained", "truncated", "answer_text", "answer_changed"]
FEATURE_COLUMNS = ["n_tokens", "entropy_full", "entropy_answer", "entropy_answer_tokens", "vision", "vision_measure", "vision_steps"] + [
    f"vision_{m}" for m in VISION_MEASURES]


def vision_measures(features_cfg: Mapping[str, Any]) -> list[str]:
    """The configured vision measures (``features.vision``: one name or a list), the primary one first."""
    value = schema.section("features", features_cfg)["vision"]
    measures = [value] if isinstance(value, str) else list(value)
    unknown = [m for m in measures if m not in VISION_MEASURES]
    if unknown or not measures:
        raise ValueError(f"features.vision: unknown measure(s) {unknown} (known: {', '.join(VISION_MEASURES)})")
    return measures


def with_vision(df: pd.DataFrame, measure: str) -> pd.DataFrame:
    """The per-trace rows with ``vision`` set to ``measure``'s column (``vision_measure`` says which).

    Every fit, selector and veto reads the ``vision`` column; this is the one
    place that says which measure it holds, so one fit never mixes two.
    """
    column = f"vision_{measure}"
    if column not in df.columns:
        raise ValueError(f"per-trace table has no {column} column (features.vision: {measure})")
    return df.assign(vision=df[column].astype(float), vision_measure=measure)


def answer_tokens(text: Any, answer_text: Any, token_char_start: Any, token_char_end: Any,
                  answer_spans: Sequence[tuple[int, int]]) -> tuple[list[int], str]:
    """The generated tokens of the parsed answer itself, and why there are none.

    The answer text's last case-insensitive whole-word occurrence inside the
    answer step(s) (their characters, from the tokens' character offsets); a
    token belongs to it when its characters overlap it.
    """
    import re

    if is_missing(answer_text) or not str(answer_text).strip():
        return [], "no parsed answer: answer-token entropy undefined"
    if not answer_spans:
        return [], "no answer step: answer-token entropy undefined"
    try:
        starts = [int(v) for v in token_char_start]
        ends = [int(v) for v in token_char_end]
    except (TypeError, ValueError):
        starts = ends = []
    if not starts or len(starts) != len(ends):
        return [], "no token character offsets: answer-token entropy undefined"
    text = "" if is_missing(text) else str(text)
    toks = sorted({t for s, e in answer_spans for t in range(max(0, int(s)), min(int(e), len(starts)))})
    if not toks:
        return [], "answer step has no tokens: answer-token entropy undefined"
    c0, c1 = min(starts[t] for t in toks), max(ends[t] for t in toks)
    found = list(re.finditer(rf"(?<!\w){re.escape(str(answer_text).strip())}(?!\w)", text[c0:c1], re.IGNORECASE))
    if not found:
        return [], "parsed answer not found verbatim in the answer step: answer-token entropy undefined"
    a, b = c0 + found[-1].start(), c0 + found[-1].end()
    return [t for t in toks if starts[t] < b and ends[t] > a], ""


def entropy_features(entropy: np.ndarray, n_tokens: int, answer_spans: Sequence[tuple[int, int]],
                     answer_token_ids: Sequence[int] | None = None, answer_token_note: str = "") -> dict[str, Any]:
    """Full-response, answer-span and answer-token mean entropy of one trace (spans half-open, clipped to
    ``n_tokens``; ``answer_token_ids`` from ``answer_tokens``)."""
    ent = np.asarray(entropy, dtype=float)[: int(n_tokens)]
    full = float(np.nanmean(ent)) if len(ent) and np.isfinite(ent).any() else np.nan
    idx = sorted({t for s, e in answer_spans for t in range(max(0, int(s)), min(int(e), int(n_tokens)))})
    sel = ent[idx] if idx else np.array([])
    answer = float(np.nanmean(sel)) if len(sel) and np.isfinite(sel).any() else np.nan
    notes = []
    if not len(ent):
        notes.append("no generated tokens: entropy undefined")
    elif not answer_spans:
        notes.append("no answer step: answer-span entropy undefined")
    elif not idx:
        notes.append("answer step has no tokens: answer-span entropy undefined")
    tok = [t for t in (answer_token_ids or []) if 0 <= int(t) < len(ent)]
    sel = ent[tok] if tok else np.array([])
    answer_tok = float(np.nanmean(sel)) if len(sel) and np.isfinite(sel).any() else np.nan
    if answer_spans and idx and answer_token_note:
        notes.append(answer_token_note)
    return {"n_tokens": int(n_tokens), "entropy_full": full, "entropy_answer": answer,
            "entropy_answer_tokens": answer_tok, "note": "; ".join(notes)}


def vision_engagement(trace_steps: pd.DataFrame, measure: str) -> tuple[float, str]:
    """Mean of ``measure`` over the trace's think steps (all steps when it has none) and which steps were used."""
    column = VISION_MEASURES.get(measure)
    if column is None:
        raise ValueError(f"features.vision: unknown measure '{measure}' (known: {', '.join(VISION_MEASURES)})")
    if trace_steps.empty:
        return np.nan, "none"
    think = trace_steps[trace_steps["kind"] == "think"]
    used, label = (think, "think") if len(think) else (trace_steps, "all (no think steps)")
    values = used[column].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return (float(values.mean()) if len(values) else np.nan), label


def hidden_region(variant: Any) -> Any:
    """k for ``drop:k`` / ``ctrl:k`` variants, else None."""
    if isinstance(variant, str) and ":" in variant:
        kind, _, k = variant.partition(":")
        if kind in ("drop", "ctrl") and k.lstrip("-").isdigit():
            return int(k)
    return None


def item_cluster(meta: Any) -> str | None:
    """The cluster an item's metadata names (``meta["cluster"]``, a JSON object or a dict); None without one."""
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return None
    if isinstance(meta, Mapping) and not is_missing(meta.get("cluster")):
        return str(meta["cluster"])
    return None


def _norm_answer(text: Any) -> str | None:
    if is_missing(text):
        return None
    return " ".join(str(text).strip().lower().split())


def build_trace_table(
    meta: pd.DataFrame,
    items: pd.DataFrame,
    trajectories: pd.DataFrame,
    collapse_steps: pd.DataFrame,
    entropy: Mapping[str, Mapping[str, Any]],
    notes: Mapping[str, Sequence[str]],
    features_cfg: Mapping[str, Any],
    model: str,
    dataset: str,
    sinks_excluded: bool,
) -> pd.DataFrame:
    """One row per sidecar trace: identifiers, outcomes, features and the collapse trajectories."""
    measures = vision_measures(features_cfg)
    task_types = dict(zip(items["item_id"].astype(str), items["task_type"])) if "task_type" in items else {}
    clusters = ({str(i): c for i, c in zip(items["item_id"], (item_cluster(m) for m in items["meta"])) if c}
                if "meta" in items else {})
    steps_by_trace = {tid: sub for tid, sub in collapse_steps.groupby("trace_id", sort=False)}
    empty = collapse_steps.iloc[0:0]

    rows = []
    for r in meta.to_dict("records"):
        tid = str(r["trace_id"])
        ent = entropy.get(tid, {})
        trace_steps = steps_by_trace.get(tid, empty)
        engagement = {m: vision_engagement(trace_steps, m) for m in VISION_MEASURES}
        vision, used = engagement[measures[0]]
        note = list(notes.get(tid, []))
        if ent.get("note"):
            note.append(ent["note"])
        correct = r.get("correct")
        rows.append({
            "trace_id": tid, "model": model, "dataset": dataset, "item_id": str(r.get("item_id")),
            "cluster_id": clusters.get(str(r.get("item_id"))) or str(r.get("item_id")),
            "mask_id": r.get("mask_id"), "variant": r.get("variant"), "fill": r.get("fill"),
            "region": hidden_region(r.get("variant")), "task_type": task_types.get(str(r.get("item_id"))),
            "status": r.get("status", "ok") or "ok",
            "correct": optional_bool(correct),
            "abstained": optional_bool(r.get("abstained")), "truncated": optional_bool(r.get("truncated")),
            "answer_text": None if r.get("answer_text") is None else str(r.get("answer_text")),
            "n_tokens": ent.get("n_tokens", r.get("n_tokens")),
            "entropy_full": ent.get("entropy_full", np.nan), "entropy_answer": ent.get("entropy_answer", np.nan),
            "entropy_answer_tokens": ent.get("entropy_answer_tokens", np.nan),
            "vision": vision, "vision_measure": measures[0], "vision_steps": used,
            **{f"vision_{m}": value for m, (value, _) in engagement.items()},
            "sinks_excluded": bool(sinks_excluded), "note": "; ".join(n for n in note if n),
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=ID_COLUMNS + OUTCOME_COLUMNS + FEATURE_COLUMNS + ["sinks_excluded", "note"])
    df["answer_changed"] = _answer_changed(df)
    df = df.merge(trajectories, on="trace_id", how="left")
    first = ID_COLUMNS + OUTCOME_COLUMNS + FEATURE_COLUMNS
    rest = [c for c in df.columns if c not in first + ["sinks_excluded", "note"]]
    df = df[first + rest + ["sinks_excluded", "note"]]
    df["region"] = df["region"].astype("Int64")
    df["n_tokens"] = pd.to_numeric(df["n_tokens"], errors="coerce").astype("Int64")
    for c in ("correct", "abstained", "truncated", "answer_changed"):
        df[c] = df[c].astype("boolean")
    for c in ("entropy_full", "entropy_answer", "entropy_answer_tokens", "vision",
              *(f"vision_{m}" for m in VISION_MEASURES)):
        df[c] = df[c].astype("float64")
    return df


def _answer_changed(df: pd.DataFrame) -> pd.Series:
    """Whether each masked trace's parsed answer differs from its item's base trace (null for base traces)."""
    ok = df["status"] == "ok"
    base = df[ok & (df["variant"] == "base")].drop_duplicates("item_id")
    base_answer = dict(zip(base["item_id"], base["answer_text"].map(_norm_answer)))
    out = []
    for r in df.itertuples(index=False):
        if r.variant == "base" or r.status != "ok" or r.item_id not in base_answer:
            out.append(None)
            continue
        a, b = _norm_answer(r.answer_text), base_answer[r.item_id]
        out.append(None if a is None and b is None else a != b)
    return pd.Series(out, index=df.index, dtype="object")


VARIANT_GROUPS = {"base": "unmasked", "drop": "evidence hidden", "ctrl": "control hidden"}


def variant_group(variant: Any) -> str | None:
    """unmasked (base), evidence hidden (drop:k) or control hidden (ctrl:k); None for other variants."""
    if variant == "base":
        return VARIANT_GROUPS["base"]
    head, _, tail = str(variant).partition(":")
    if head in ("drop", "ctrl") and tail.isdigit():
        return VARIANT_GROUPS[head]
    return None


def _rate(values: pd.Series) -> float:
    values = values.dropna().astype(bool)
    return float(values.mean()) if len(values) else float("nan")


def masking_response(traces: pd.DataFrame) -> pd.DataFrame:
    """How answers and vision engagement react to a hidden evidence region vs a hidden control region.

    One row per (model, dataset, variant group) over the ok traces of items with
    evidence: mean vision engagement and mean evidence share (whole-trace AUC),
    and the rates of changed answers (vs the item's base trace), abstentions and
    correct answers.
    """
    ok = traces["status"].fillna("ok").eq("ok")
    if "n_evidence_regions" in traces:
        ok &= traces["n_evidence_regions"].fillna(0).astype(int) > 0
    df = traces[ok].copy()
    df["group"] = df["variant"].map(variant_group)
    df = df[df["group"].notna()]
    rows = []
    for (m, d, g), sub in df.groupby(["model", "dataset", "group"], sort=False):
        rows.append({
            "model": m, "dataset": d, "group": g, "n": len(sub),
            "vision": float(sub["vision"].astype(float).mean()),
            "evidence_share": float(sub["evidence_share_auc"].astype(float).mean()) if "evidence_share_auc" in sub else np.nan,
            "answer_changed": _rate(sub["answer_changed"]), "abstained": _rate(sub["abstained"]),
            "accuracy": _rate(sub["correct"]),
        })
    return pd.DataFrame(rows, columns=["model", "dataset", "group", "n", "vision", "evidence_share",
                                       "answer_changed", "abstained", "accuracy"])


def load_features(paths: Sequence[str | Path], variants: Sequence[str] | None = None) -> pd.DataFrame:
    """Concatenate per-trace tables (``collapse/{m}/{d}.traces.parquet``), optionally only some variants."""
    from .tables import read_table

    frames = [read_table(p) for p in paths]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=ID_COLUMNS + OUTCOME_COLUMNS + FEATURE_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    if variants:
        df = df[df["variant"].isin(list(variants))].reset_index(drop=True)
    return df


def feeding(df: pd.DataFrame, analyses: Mapping[str, Sequence[str]], analysis: str) -> pd.DataFrame:
    """The rows of the datasets that feed ``analysis`` (``analyses``: dataset -> the analyses it feeds)."""
    keep = [d for d, feeds in analyses.items() if analysis in feeds]
    return df[df["dataset"].isin(keep)].reset_index(drop=True) if "dataset" in df else df


def measure_views(features: pd.DataFrame, measures: Sequence[str] | None) -> list[tuple[str, pd.DataFrame]]:
    """(measure, rows with ``vision`` holding it) for each measure; ``None``: the table's ``vision`` as it is."""
    if not measures:
        given = features["vision_measure"].dropna().unique() if "vision_measure" in features else []
        return [(str(given[0]) if len(given) == 1 else "", features)]
    return [(m, with_vision(features, m)) for m in measures]
