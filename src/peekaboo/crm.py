"""Contrastive Region Masking: which reasoning step depends on which region, and how a model fails.

Every masked trace is aligned to its item's ``base`` trace (same model and
dataset) with :mod:`peekaboo.alignment`; each base step's change against its
aligned counterpart is measured with :mod:`peekaboo.stepchange`
(``crm.change_measure``; 1 when the step has no counterpart). Then:

- the null, per model and dataset: the step changes under every control mask
  (``ctrl:j``, every placement of every item) and under re-generations of the
  unmasked item (further ``base`` traces of an item); a step *changed* when its
  change exceeds the null's ``crm.null_quantile`` (``crm.fallback_change`` when
  the null has fewer than ``crm.null_min_size`` values, flagged);
- attribution, per (item, region k, fill) and base step: the change under
  ``drop:k`` (``dependence``) and under ``ctrl:k`` (``control_dependence``);
  ``depends`` = changed under ``drop:k``, not under ``ctrl:k``, and ahead of it
  by ``crm.control_margin`` (null without a control trace); ``gold_depends``
  from the item's gold solution;
- a failure mode with the rule that decided it (``MODE_RULES``; written out
  in docs/crm.md): every rule contrasts the evidence mask with its control,
  and a case without a control trace is its own category, ``no_control``.

Failed traces are reported and left out; items without regions are skipped
and counted; an item without a usable base trace is reported and skipped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from .alignment import MatchResult, StepEncoder, get_encoder, greedy_match, match_scores
from . import schema
from .cells import as_list, is_missing, parse_meta
from .logs import get_logger, progress
from .segmentation import ANSWER_RE, MARKER_RE
from .stepchange import Acknowledgement, named_values, step_change, values_distance
from .stage import StageCall
from .tables import read_table, write_table
from .tracestore import read_sidecars

log = get_logger("crm")

MODES = ("grounded", "hallucination", "collapse", "insensitive", "undecided", "no_control")
# modes that make no claim about the model: the claims and shares of decided cases leave them out
UNDECIDED_MODES = ("undecided", "no_control")

# rule id -> (mode, what it checks); applied in this order, the first that holds decides.
# "Changed" is always beyond the null (docs/crm.md); the "gold steps" are the base steps whose gold
# solution reads region k (without a gold solution: the steps that changed under the evidence mask).
MODE_RULES: dict[str, tuple[str, str]] = {
    "no_control_trace": (
        "no_control",
        "there is no control trace for the region: without the contrast CRM gives no verdict",
    ),
    "control_as_strong": (
        "collapse",
        "the control mask disrupted the trace (flipped the answer, made it abstain or acknowledge a hidden "
        "region) and its mean step change is at least crm.collapse_ratio x the evidence mask's",
    ),
    "unchanged_not_needed": (
        "insensitive",
        "the evidence mask changed no step beyond the null, not the answer, and caused no abstention or "
        "acknowledgement, and no gold step reads the region (or there is no gold solution)",
    ),
    "gold_steps_yield_control_quiet": (
        "grounded",
        "under the evidence mask no gold step goes on asserting content about the region (each acknowledges "
        "it cannot be seen, is dropped, or is rewritten without naming values; or the model abstains), "
        "something changed, the steps that do not read the region do not depend on it (or the model "
        "abstains), and the control leaves the gold steps alone",
    ),
    "asserts_hidden_content": (
        "hallucination",
        "under the evidence mask a gold step goes on asserting content about the region (unchanged, or "
        "changed to other named values) without acknowledging that it cannot be seen, the model does not "
        "abstain, and the control leaves the gold steps alone",
    ),
    "fell_apart": (
        "collapse",
        "the steps that do not read the region depend on it (changed beyond the null and in content under "
        "the evidence mask, not under the control) and the model does not abstain",
    ),
    "control_not_quiet": (
        "undecided",
        "anything else: the control changed the gold steps too, beyond the null and in content (or disrupted "
        "the trace, though less than the evidence mask), so evidence and control cannot be told apart",
    ),
}

ALIGNMENT_SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("base_trace_id", pa.string()),
        ("item_id", pa.string()),
        ("mask_id", pa.string()),
        ("variant", pa.string()),
        ("fill", pa.string()),
        ("region", pa.int32()),
        ("n_base_steps", pa.int32()),
        ("n_steps", pa.int32()),
        ("n_matched", pa.int32()),
        ("precision", pa.float64()),
        ("recall", pa.float64()),
        ("match_f1", pa.float64()),
        ("ordered_match_f1", pa.float64()),
        ("kendall_tau", pa.float64()),
        ("order_score", pa.float64()),
        ("answer_changed", pa.bool_()),
        ("abstained", pa.bool_()),
        ("base_abstained", pa.bool_()),
        (
            "pairs",
            pa.list_(pa.struct([("base_step", pa.int32()), ("step", pa.int32()), ("similarity", pa.float64())])),
        ),
    ]
)
ATTRIBUTION_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("region", pa.int32()),
        ("region_label", pa.string()),
        ("fill", pa.string()),
        ("base_step", pa.int32()),
        ("base_kind", pa.string()),
        ("base_text", pa.string()),
        ("dependence", pa.float64()),
        ("control_dependence", pa.float64()),
        ("dependence_pct", pa.float64()),
        ("control_dependence_pct", pa.float64()),
        ("changed", pa.bool_()),
        ("control_changed", pa.bool_()),
        ("depends", pa.bool_()),
        ("gold_depends", pa.bool_()),
        ("acknowledged", pa.bool_()),
        ("asserts", pa.bool_()),
        ("base_trace_id", pa.string()),
        ("trace_id", pa.string()),
        ("control_trace_id", pa.string()),
    ]
)
MODES_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("region", pa.int32()),
        ("region_label", pa.string()),
        ("fill", pa.string()),
        ("mode", pa.string()),
        ("rule", pa.string()),
        ("detail", pa.string()),
        ("needed", pa.bool_()),
        ("has_control", pa.bool_()),
        ("evidence_change", pa.float64()),
        ("control_change", pa.float64()),
        ("evidence_change_pct", pa.float64()),
        ("control_change_pct", pa.float64()),
        ("null_threshold", pa.float64()),
        ("null_fallback", pa.bool_()),
        ("match_f1", pa.float64()),
        ("abstained", pa.bool_()),
        ("acknowledged", pa.bool_()),
        ("answer_changed", pa.bool_()),
        ("control_answer_changed", pa.bool_()),
        ("control_abstained", pa.bool_()),
        ("control_acknowledged", pa.bool_()),
    ]
)

_VARIANT_RE = re.compile(r"^(drop|ctrl):(\d+)$")
_LEADING_MARKER_RE = re.compile(r"^\s*(?:" + MARKER_RE.pattern + r")\s*")
_LEADING_ANSWER_RE = re.compile(r"^\s*(?:" + ANSWER_RE.pattern + r")\s*")


# --- small helpers -------------------------------------------------------------


def region_of_variant(variant: str) -> tuple[str, int | None]:
    """``drop:3`` -> ("drop", 3); ``ctrl:1`` -> ("ctrl", 1); others -> (variant, None)."""
    m = _VARIANT_RE.match(str(variant))
    return (m.group(1), int(m.group(2))) if m else (str(variant), None)


def normalise_answer(value: Any) -> str | None:
    """Answer text compared across traces: lower case, single spaces, no trailing full stop."""
    if is_missing(value):
        return None
    text = " ".join(str(value).lower().split()).strip(" .")
    return text or None


def _flag(value: Any) -> bool:
    return False if is_missing(value) else bool(value)


def item_regions(item: Mapping[str, Any]) -> list[str]:
    """The labels of an item's regions (index = region number); empty when it has none."""
    labels = []
    for k, region in enumerate(as_list(item.get("regions"))):
        label = region.get("label") if isinstance(region, Mapping) else None
        labels.append(str(label) if label else f"region {k}")
    return labels


# --- gold dependencies -----------------------------------------------------------


@dataclass(frozen=True)
class GoldStep:
    text: str  # content without its marker
    regions: frozenset[int]
    is_answer: bool = False


def _strip_marker(text: str) -> tuple[str, bool]:
    m = _LEADING_ANSWER_RE.match(text)
    if m:
        return text[m.end():].strip(), True
    return _LEADING_MARKER_RE.sub("", text, count=1).strip(), False


def _label_index(labels: Sequence[str]) -> dict[str, int]:
    """Region label -> index; a label ``VP1: the text`` also answers to ``VP1``."""
    out: dict[str, int] = {}
    for k, label in enumerate(labels):
        out.setdefault(label, k)
        short = re.split(r"[:\s]", label, maxsplit=1)[0]
        if short:
            out.setdefault(short, k)
    return out


def gold_steps(item: Mapping[str, Any]) -> list[GoldStep] | None:
    """The item's gold steps with the regions each reads; None when the item has no gold solution.

    ``meta.gold_steps`` ([{text, regions: [k], depends: [k], kind}], panels) or
    ``meta.expected_dependencies`` ([{step, uses, text}], VisArgs: ``uses``
    names regions by label and earlier steps by name, followed transitively).
    """
    try:
        meta = parse_meta(item.get("meta"))
    except (ValueError, TypeError) as exc:
        log.warning("item %s: meta is not JSON (%s); no gold dependencies", item.get("item_id"), exc)
        return None
    n_regions = len(item_regions(item))
    if meta.get("gold_steps"):
        out = []
        for g in meta["gold_steps"]:
            text, is_answer = _strip_marker(str(g.get("text", "")))
            # ``depends`` (regions whose hiding changes the step) is the truth CRM measures;
            # ``regions`` (regions the step reads) stands in where a solution gives only that
            listed = g.get("depends") if g.get("depends") is not None else g.get("regions")
            regions = frozenset(int(k) for k in listed or [] if 0 <= int(k) < n_regions)
            out.append(GoldStep(text, regions, is_answer or g.get("kind") == "answer"))
        return out
    if meta.get("expected_dependencies"):
        labels = _label_index(item_regions(item))
        resolved: dict[str, frozenset[int]] = {}
        out = []
        for dep in meta["expected_dependencies"]:
            regions: set[int] = set()
            for use in dep.get("uses") or []:
                use = str(use).strip()
                if use in labels:
                    regions.add(labels[use])
                elif use in resolved:  # an earlier intermediate conclusion
                    regions |= resolved[use]
            name = str(dep.get("step", ""))
            resolved[name] = frozenset(regions)
            out.append(GoldStep(str(dep.get("text") or name), frozenset(regions)))
        return out
    return None


def map_gold_to_steps(
    kinds: Sequence[str],
    texts: Sequence[str],
    gold: Sequence[GoldStep],
    encoder: StepEncoder | None,
    threshold: float,
) -> list[frozenset[int] | None]:
    """The gold regions of each base step (None where unknown).

    Reasoning steps map to gold reasoning steps by index when the counts agree,
    else by greedy matching of their embeddings; the answer step maps to the
    gold answer when the solution has one, else to every region the solution reads.
    """
    out: list[frozenset[int] | None] = [None] * len(kinds)
    gold_think = [g for g in gold if not g.is_answer]
    gold_answer = [g for g in gold if g.is_answer]
    union = frozenset().union(*(g.regions for g in gold)) if gold else frozenset()
    think_idx = [i for i, k in enumerate(kinds) if k != "answer"]
    if think_idx and gold_think:
        if len(think_idx) == len(gold_think):
            for i, g in zip(think_idx, gold_think):
                out[i] = g.regions
        elif encoder is not None:
            sim = encoder.similarity([texts[i] for i in think_idx], [g.text for g in gold_think])
            for r, c, _ in greedy_match(sim, threshold):
                out[think_idx[r]] = gold_think[c].regions
    for i, k in enumerate(kinds):
        if k == "answer":
            out[i] = gold_answer[-1].regions if gold_answer else union
    return out


# --- traces --------------------------------------------------------------------


@dataclass
class Trace:
    trace_id: str
    item_id: str
    mask_id: str
    variant: str
    fill: str
    region: int | None
    answer: str | None
    abstained: bool
    kinds: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def has_answer(self) -> bool:
        return self.answer is not None or "answer" in self.kinds


def _traces(sidecar_df: pd.DataFrame, steps_df: pd.DataFrame, masks_df: pd.DataFrame | None, counts: dict) -> list[Trace]:
    region_by_mask: dict[str, int] = {}
    if masks_df is not None and len(masks_df) and "region" in masks_df.columns:
        for mask_id, region in zip(masks_df["mask_id"], masks_df["region"]):
            if not is_missing(region):
                region_by_mask[str(mask_id)] = int(region)
    by_trace: dict[str, list[tuple[int, str, str]]] = {}
    for tid, step, kind, text in zip(steps_df["trace_id"], steps_df["step"], steps_df["kind"], steps_df["text"]):
        by_trace.setdefault(str(tid), []).append((int(step), str(kind), str(text)))
    traces = []
    for row in sidecar_df.to_dict("records"):
        tid = str(row["trace_id"])
        if str(row.get("status", "ok")) != "ok":
            counts["failed_traces"] += 1
            log.warning("trace %s: status %s (%s); left out", tid, row.get("status"), row.get("error"))
            continue
        variant = str(row["variant"])
        _, k = region_of_variant(variant)
        steps = sorted(by_trace.get(tid, []))
        traces.append(
            Trace(
                trace_id=tid,
                item_id=str(row["item_id"]),
                mask_id=str(row.get("mask_id")),
                variant=variant,
                fill=str(row.get("fill")),
                region=region_by_mask.get(str(row.get("mask_id")), k),
                answer=normalise_answer(row.get("answer_text")),
                abstained=_flag(row.get("abstained")),
                kinds=[s[1] for s in steps],
                texts=[s[2] for s in steps],
            )
        )
    return traces


def answer_changed(trace: Trace, base: Trace) -> bool:
    return trace.answer != base.answer or trace.abstained != base.abstained


# --- the stage -----------------------------------------------------------------------


@dataclass
class CrmTables:
    alignment: pd.DataFrame
    attribution: pd.DataFrame
    modes: pd.DataFrame
    summary: pd.DataFrame
    counts: dict[str, int]
    null: "Null | None" = None


def _frame(records: list[dict], schema: pa.Schema) -> pd.DataFrame:
    table = pa.Table.from_pylist(records, schema=schema) if records else schema.empty_table()
    return table.to_pandas(
        types_mapper={pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype()}.get
    )


def _alignment_row(trace: Trace, base: Trace, result: MatchResult) -> dict[str, Any]:
    return {
        "trace_id": trace.trace_id,
        "base_trace_id": base.trace_id,
        "item_id": trace.item_id,
        "mask_id": trace.mask_id,
        "variant": trace.variant,
        "fill": trace.fill,
        "region": trace.region,
        "n_base_steps": len(base.texts),
        "n_steps": len(trace.texts),
        "n_matched": len(result.pairs),
        "precision": result.precision,
        "recall": result.recall,
        "match_f1": result.match_f1,
        "ordered_match_f1": result.ordered_match_f1,
        "kendall_tau": result.kendall_tau,
        "order_score": result.order_score,
        "answer_changed": answer_changed(trace, base),
        "abstained": trace.abstained,
        "base_abstained": base.abstained,
        "pairs": [{"base_step": b, "step": s, "similarity": sim} for s, b, sim in sorted(result.pairs, key=lambda p: p[1])],
    }


# float noise: identical texts' embeddings can differ in the last bits, so a change must pass the cut by this
_EPS = 1e-6


@dataclass
class StepChanges:
    """Each base step against its aligned counterpart in one masked (or re-generated) trace."""

    change: np.ndarray  # in [0, 1]; 1 where the step has no counterpart
    matched: np.ndarray  # bool: the step has a counterpart
    acknowledged: np.ndarray  # bool: its counterpart says part of the image cannot be seen
    names_values: np.ndarray  # bool: its counterpart names values (numbers, colours, entities, ...)
    content_changed: np.ndarray  # bool: no counterpart, other named values, or an acknowledgement gained or lost

    @property
    def mean(self) -> float:
        return float(self.change.mean()) if len(self.change) else 0.0


def step_changes(base: Trace, trace: Trace, result: MatchResult, measure: str, ack: Acknowledgement) -> StepChanges:
    """Change of every base step (``crm.change_measure``) against its match in ``trace``."""
    n = len(base.texts)
    out = StepChanges(np.ones(n), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool), np.ones(n, bool))
    for s, b, sim in result.pairs:
        a, t = base.texts[b], trace.texts[s]
        out.change[b] = step_change(a, t, float(sim), measure, ack)
        out.matched[b] = True
        out.acknowledged[b] = ack(t)
        out.names_values[b] = bool(named_values(t))
        out.content_changed[b] = values_distance(a, t) > 0 or ack(a) != out.acknowledged[b]
    return out


@dataclass
class Null:
    """Step change under null perturbations, per model and dataset, and the cut it sets for "changed".

    ``steps``: every base step's change under every control mask and re-generation;
    ``traces``: the mean step change of each of those traces (the null of a case's change).
    """

    steps: np.ndarray
    traces: np.ndarray
    quantile: float
    threshold: float
    fallback: bool  # too few values: crm.fallback_change decided instead of the quantile
    n_control_traces: int = 0
    n_regenerations: int = 0

    @classmethod
    def build(cls, changes: Sequence[StepChanges], crm_cfg: Mapping[str, Any], n_regenerations: int = 0) -> "Null":
        steps = np.concatenate([c.change for c in changes]) if changes else np.zeros(0)
        traces = np.array([c.mean for c in changes if len(c.change)])
        q = float(crm_cfg["null_quantile"])
        fallback = len(steps) < int(crm_cfg["null_min_size"])
        threshold = float(crm_cfg["fallback_change"]) if fallback else float(np.quantile(steps, q))
        return cls(steps, traces, q, threshold, fallback, len(changes) - n_regenerations, n_regenerations)

    def changed(self, x: np.ndarray | float) -> np.ndarray:
        return np.asarray(x, dtype=float) > self.threshold + _EPS

    @staticmethod
    def _pct(values: np.ndarray, x: float) -> float:
        """Mid-rank percentile of ``x`` in ``values`` (ties, within float noise, count half); NaN without values."""
        if not len(values) or x is None or math.isnan(x):
            return math.nan
        below = np.sum(values < x - _EPS)
        ties = np.sum(np.abs(values - x) <= _EPS)
        return float(100.0 * (below + 0.5 * ties) / len(values))

    def step_pct(self, x: float) -> float:
        return self._pct(self.steps, x)

    def trace_pct(self, x: float) -> float:
        return self._pct(self.traces, x)

    def describe(self) -> dict[str, Any]:
        """The null's columns of the summary."""
        s, t = self.steps, self.traces
        return {
            "null_n_steps": len(s),
            "null_n_control_traces": self.n_control_traces,
            "null_n_regenerations": self.n_regenerations,
            "null_quantile": self.quantile,
            "null_threshold": self.threshold,
            "null_fallback": self.fallback,
            "null_step_mean": float(s.mean()) if len(s) else math.nan,
            "null_step_median": float(np.median(s)) if len(s) else math.nan,
            "null_step_share_changed_fact": float(np.mean(s >= 0.5)) if len(s) else math.nan,
            "null_trace_median": float(np.median(t)) if len(t) else math.nan,
            "null_trace_q": float(np.quantile(t, self.quantile)) if len(t) else math.nan,
        }


def depends_flags(
    dependence: np.ndarray, control_dependence: np.ndarray | None, null: Null, margin: float
) -> list[bool | None]:
    """Per base step: changed beyond the null under the evidence mask, not under the control, and ahead of it by ``margin``.

    None everywhere without a control trace: without the contrast there is no verdict.
    """
    if control_dependence is None:
        return [None] * len(dependence)
    changed, ctrl_changed = null.changed(dependence), null.changed(control_dependence)
    return [
        bool(ch and not cc and d - c >= margin)
        for ch, cc, d, c in zip(changed, ctrl_changed, dependence, control_dependence)
    ]


@dataclass
class Case:
    """What the mode rules look at for one (item, region, fill)."""

    evidence_change: float  # mean step change under drop:k
    evidence_changed: bool  # a step beyond the null, the answer, a new abstention or acknowledgement
    abstained: bool  # abstained, or acknowledged where that counts as abstaining (crm.acknowledgement_abstains)
    n_gold: int  # base steps whose gold solution reads the region (without gold: the steps that depend on it)
    asserting: int  # ... of which go on asserting content about it under the evidence mask
    off_target_depends: bool  # a step whose gold does not read the region depends on it (in content)
    needed: bool | None  # some gold step reads the region (None: no gold)
    has_control: bool
    control_change: float = math.nan
    control_disrupted: bool = False  # the control flipped the answer, or made the model abstain or acknowledge
    control_moved_gold: bool = False  # a gold step changed beyond the null, and in content, under the control
    acknowledged: bool = False  # the evidence trace newly acknowledges a hidden region


def decide_mode(case: Case, crm_cfg: Mapping[str, Any]) -> tuple[str, str, str]:
    """(mode, rule id, detail with the numbers) for one case; rules in ``MODE_RULES`` order."""
    ratio = float(crm_cfg["collapse_ratio"])
    e, c = case.evidence_change, case.control_change
    gold = f"{case.asserting} of {case.n_gold} gold steps assert content"
    if not case.has_control:
        return "no_control", "no_control_trace", f"evidence change {e:.3f}; no control trace"
    if case.control_disrupted and c >= ratio * e:
        return "collapse", "control_as_strong", f"control change {c:.3f} >= {ratio} x evidence change {e:.3f}"
    if not case.evidence_changed and case.needed is not True:
        why = "no gold solution" if case.needed is None else "no gold step reads the region"
        return "insensitive", "unchanged_not_needed", f"evidence change {e:.3f}, nothing beyond the null; {why}"
    control_quiet = not (case.control_disrupted or case.control_moved_gold)
    if control_quiet and case.evidence_changed and not case.asserting and (
        case.abstained or not case.off_target_depends
    ):
        how = "abstained" if case.abstained else ("acknowledged" if case.acknowledged else "other steps kept")
        return ("grounded", "gold_steps_yield_control_quiet",
                f"evidence change {e:.3f}, {gold}, {how}, control change {c:.3f}")
    if control_quiet and case.asserting and not case.abstained:
        return ("hallucination", "asserts_hidden_content",
                f"{gold} without acknowledging the hidden region; evidence change {e:.3f}, control change {c:.3f}")
    if case.off_target_depends and not case.abstained:
        return "collapse", "fell_apart", f"steps that do not read the region depend on it; evidence change {e:.3f}"
    return ("undecided", "control_not_quiet",
            f"control disrupted: {case.control_disrupted}, control moved gold steps: {case.control_moved_gold}; "
            f"{gold}; evidence change {e:.3f}, control change {c:.3f}")


def _new_acknowledgement(trace: Trace, base: Trace, ack: Acknowledgement) -> bool:
    """The trace has more steps acknowledging a hidden region than its base trace."""
    return sum(map(ack, trace.texts)) > sum(map(ack, base.texts))


def attribute_region(
    k: int,
    label: str,
    base: Trace,
    ev: Trace,
    ev_changes: StepChanges,
    ev_res: MatchResult,
    ctrl: Trace | None,
    ctrl_changes: StepChanges | None,
    gold_regions: Sequence[frozenset[int] | None] | None,
    needed: bool | None,
    null: Null,
    ack: Acknowledgement,
    ack_abstains: bool,
    crm_cfg: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Attribution rows (one per base step) and the mode row of one (item, region k, fill).

    ``ev``/``ctrl`` are the ``drop:k``/``ctrl:k`` traces with their step changes against ``base``;
    ``gold_regions`` the gold regions of each base step (None: no gold solution);
    ``needed`` whether the gold solution uses region k at all (None: no gold);
    ``ack_abstains`` whether an acknowledgement counts as abstaining for this item.
    """
    margin = float(crm_cfg["control_margin"])
    n = len(base.texts)
    dep = ev_changes.change
    ctrl_dep = ctrl_changes.change if ctrl_changes is not None else np.full(n, np.nan)
    changed = null.changed(dep)
    ctrl_changed = null.changed(np.nan_to_num(ctrl_dep, nan=0.0)) & (ctrl is not None)
    depends = depends_flags(dep, ctrl_dep if ctrl is not None else None, null, margin)
    gold_depends = [None if g is None else k in g for g in gold_regions] if gold_regions is not None else [None] * n
    acknowledged = _new_acknowledgement(ev, base, ack)
    abstained = ev.abstained or (ack_abstains and acknowledged)
    # the steps that read the region: by gold where known, else those that depend on it
    if gold_regions is not None:
        gold_mask = np.array([g is True for g in gold_depends], dtype=bool)
        off_target = np.array([g is False for g in gold_depends], dtype=bool)
    else:
        gold_mask = np.array([d is True for d in depends], dtype=bool)
        off_target = np.zeros(n, dtype=bool)  # unknown without gold
    is_answer = np.array([kind == "answer" for kind in base.kinds], dtype=bool)
    # a gold step asserts content about the hidden region when its counterpart does not acknowledge it and
    # either kept the content or names other values; an abstaining answer asserts nothing
    asserts = (
        gold_mask & ev_changes.matched & ~ev_changes.acknowledged & ~(is_answer & abstained)
        & (~changed | ev_changes.names_values)
    )
    rows = [
        {
            "item_id": base.item_id,
            "region": k,
            "region_label": label,
            "fill": ev.fill,
            "base_step": b,
            "base_kind": base.kinds[b],
            "base_text": base.texts[b],
            "dependence": float(dep[b]),
            "control_dependence": float(ctrl_dep[b]),
            "dependence_pct": null.step_pct(float(dep[b])),
            "control_dependence_pct": null.step_pct(float(ctrl_dep[b])),
            "changed": bool(changed[b]),
            "control_changed": None if ctrl is None else bool(ctrl_changed[b]),
            "depends": depends[b],
            "gold_depends": gold_depends[b],
            "acknowledged": bool(ev_changes.acknowledged[b]),
            "asserts": bool(asserts[b]) if gold_mask[b] else None,
            "base_trace_id": base.trace_id,
            "trace_id": ev.trace_id,
            "control_trace_id": ctrl.trace_id if ctrl else None,
        }
        for b in range(n)
    ]
    case = Case(
        evidence_change=ev_changes.mean,
        evidence_changed=bool(changed.any()) or answer_changed(ev, base) or (ev.abstained and not base.abstained)
        or acknowledged,
        abstained=abstained,
        n_gold=int(gold_mask.sum()),
        asserting=int(asserts.sum()),
        # drift in wording beyond the null is not enough: the step's content must have changed too
        off_target_depends=bool(np.any(off_target & np.array([d is True for d in depends], dtype=bool)
                                       & ev_changes.content_changed)),
        needed=needed,
        has_control=ctrl is not None,
        acknowledged=acknowledged,
    )
    control_ack = None
    if ctrl is not None:
        control_ack = _new_acknowledgement(ctrl, base, ack)
        case.control_change = ctrl_changes.mean
        case.control_disrupted = (
            answer_changed(ctrl, base) or (ctrl.abstained and not base.abstained) or control_ack
        )
        case.control_moved_gold = bool(np.any(ctrl_changed & gold_mask & ctrl_changes.content_changed))
    mode, rule, detail = decide_mode(case, crm_cfg)
    e_pct, c_pct = null.trace_pct(case.evidence_change), null.trace_pct(case.control_change)
    # where the case sits in the null, for the tables and the viewer
    detail += f"; null: changed beyond {null.threshold:.3f} (q{null.quantile:g}), evidence at pct {e_pct:.0f}" + (
        f", control at pct {c_pct:.0f}" if ctrl is not None else "")
    if null.fallback:
        detail += f" (null too small: fallback cut {null.threshold:g})"
    mode_row = {
        "item_id": base.item_id,
        "region": k,
        "region_label": label,
        "fill": ev.fill,
        "mode": mode,
        "rule": rule,
        "detail": detail,
        "needed": case.needed,
        "has_control": case.has_control,
        "evidence_change": case.evidence_change,
        "control_change": case.control_change,
        "evidence_change_pct": e_pct,
        "control_change_pct": c_pct,
        "null_threshold": null.threshold,
        "null_fallback": null.fallback,
        "match_f1": 0.0 if math.isnan(ev_res.match_f1) else float(ev_res.match_f1),
        "abstained": ev.abstained,
        "acknowledged": acknowledged,
        "answer_changed": answer_changed(ev, base),
        "control_answer_changed": answer_changed(ctrl, base) if ctrl else None,
        "control_abstained": ctrl.abstained if ctrl else None,
        "control_acknowledged": control_ack,
    }
    return rows, mode_row


def run_crm(
    steps_df: pd.DataFrame,
    sidecar_df: pd.DataFrame,
    masks_df: pd.DataFrame | None,
    items_df: pd.DataFrame,
    alignment_cfg: Mapping[str, Any],
    crm_cfg: Mapping[str, Any],
    encoder: StepEncoder | None = None,
) -> CrmTables:
    """Alignment, attribution, modes and the summary for one (model, dataset).

    ``alignment_cfg`` and ``crm_cfg`` are the config's sections (absent keys take the schema's defaults).
    """
    alignment_cfg = schema.section("alignment", alignment_cfg)
    crm_cfg = schema.section("crm", crm_cfg)
    threshold = float(alignment_cfg["threshold"])
    alpha = float(alignment_cfg["alpha"])
    if encoder is None:
        encoder = get_encoder(alignment_cfg["encoder"], alignment_cfg["batch_size"])

    counts = {
        "traces": len(sidecar_df),
        "failed_traces": 0,
        "masked_without_base": 0,
        "items": len(items_df),
        "items_without_regions": 0,
        "items_without_base": 0,
        "items_without_masked_traces": 0,
        "cases": 0,
        "cases_without_evidence_trace": 0,
        "cases_without_control": 0,
    }
    traces = _traces(sidecar_df, steps_df, masks_df, counts)

    ack = Acknowledgement(crm_cfg["acknowledgement_phrases"])
    measure = str(crm_cfg["change_measure"])
    base_by_item: dict[str, Trace] = {}
    regenerations: list[Trace] = []  # further unmasked traces of an item (another seed): part of the null
    for t in traces:
        if t.variant == "base":
            if t.item_id in base_by_item:
                regenerations.append(t)
                continue
            base_by_item[t.item_id] = t
    counts["regenerations"] = len(regenerations)

    # one pass over every distinct text, batched; later look-ups hit the cache
    all_texts = {s for t in traces for s in t.texts}
    items = items_df.to_dict("records")
    golds = {str(it["item_id"]): gold_steps(it) for it in items}
    all_texts |= {g.text for gs in golds.values() if gs for g in gs}
    encoder.embed(sorted(all_texts))
    log.info("embedded %d distinct texts with %s", len(all_texts), encoder.name)

    alignment_rows = []
    results: dict[str, MatchResult] = {}
    changes: dict[str, StepChanges] = {}
    null_changes: list[StepChanges] = []
    for t in regenerations:
        base = base_by_item[t.item_id]
        res = match_scores(encoder.similarity(t.texts, base.texts), threshold, alpha)
        null_changes.append(step_changes(base, t, res, measure, ack))
    masked = [t for t in traces if t.variant != "base"]
    for t in progress(masked, total=len(masked), desc="align", unit="trace"):
        base = base_by_item.get(t.item_id)
        if base is None:
            counts["masked_without_base"] += 1
            log.warning("trace %s: item %s has no usable base trace; not aligned", t.trace_id, t.item_id)
            continue
        res = match_scores(encoder.similarity(t.texts, base.texts), threshold, alpha)
        results[t.trace_id] = res
        changes[t.trace_id] = step_changes(base, t, res, measure, ack)
        if region_of_variant(t.variant)[0] == "ctrl":
            null_changes.append(changes[t.trace_id])
        alignment_rows.append(_alignment_row(t, base, res))
    null = Null.build(null_changes, crm_cfg, len(regenerations))
    if null.fallback:
        log.warning("null of %d step changes (%d control traces, %d re-generations) is below crm.null_min_size "
                    "%s: 'changed' uses crm.fallback_change %s instead (flagged null_fallback)", len(null.steps),
                    null.n_control_traces, null.n_regenerations, crm_cfg["null_min_size"], null.threshold)
    else:
        log.info("null: %d step changes (%d control traces, %d re-generations); q%g = %.4f",
                 len(null.steps), null.n_control_traces, null.n_regenerations, null.quantile, null.threshold)

    by_key: dict[tuple[str, str, int, str], Trace] = {}
    fills_by_item: dict[str, set[str]] = {}
    for t in traces:
        kind, k = region_of_variant(t.variant)
        if k is not None and t.trace_id in results:
            by_key[(t.item_id, kind, k, t.fill)] = t
            fills_by_item.setdefault(t.item_id, set()).add(t.fill)

    attribution_rows, mode_rows = [], []
    for item in items:
        item_id = str(item["item_id"])
        labels = item_regions(item)
        if not labels:
            counts["items_without_regions"] += 1
            continue
        base = base_by_item.get(item_id)
        if base is None:
            counts["items_without_base"] += 1
            log.warning("item %s: no usable base trace; no attribution", item_id)
            continue
        fills = sorted(fills_by_item.get(item_id, ()))
        if not fills:
            counts["items_without_masked_traces"] += 1
            continue
        gold = golds.get(item_id)
        gold_regions = map_gold_to_steps(base.kinds, base.texts, gold, encoder, threshold) if gold else None
        gold_union = frozenset().union(*(g.regions for g in gold)) if gold else None
        ack_abstains = _acknowledgement_abstains(item, crm_cfg["acknowledgement_abstains"])
        for k, label in enumerate(labels):
            for fill in fills:
                counts["cases"] += 1
                ev = by_key.get((item_id, "drop", k, fill))
                if ev is None:
                    counts["cases_without_evidence_trace"] += 1
                    log.warning("item %s region %d fill %s: no drop trace; skipped", item_id, k, fill)
                    continue
                ctrl = by_key.get((item_id, "ctrl", k, fill))
                if ctrl is None:
                    counts["cases_without_control"] += 1
                rows, mode_row = attribute_region(
                    k, label, base, ev, changes[ev.trace_id], results[ev.trace_id],
                    ctrl, changes[ctrl.trace_id] if ctrl else None,
                    gold_regions, None if gold_union is None else k in gold_union, null, ack, ack_abstains, crm_cfg,
                )
                attribution_rows.extend(rows)
                mode_rows.append(mode_row)

    alignment = _frame(alignment_rows, ALIGNMENT_SCHEMA)
    attribution = _frame(attribution_rows, ATTRIBUTION_SCHEMA)
    modes = _frame(mode_rows, MODES_SCHEMA)
    model = _single(sidecar_df, "model")
    dataset = _single(sidecar_df, "dataset")
    base_abst = [t.abstained for t in base_by_item.values()]
    summary = summarise(alignment, attribution, modes, counts, model, dataset, base_abst, null)
    log.info("CRM %s/%s: %s", model, dataset, ", ".join(f"{k}={v}" for k, v in counts.items()))
    if len(modes):
        log.info("modes: %s", modes["mode"].value_counts().to_dict())
    return CrmTables(alignment, attribution, modes, summary, counts, null)


def _acknowledgement_abstains(item: Mapping[str, Any], when: str) -> bool:
    """Whether an acknowledged hidden region counts as abstaining for ``item`` (``crm.acknowledgement_abstains``).

    ``choices``: on items with answer options, whose prompt forces a letter, acknowledging is all a model can do.
    """
    if when == "always":
        return True
    if when == "never":
        return False
    return len(as_list(item.get("choices"))) > 0


def _single(df: pd.DataFrame, column: str) -> str | None:
    if column not in df.columns or not len(df):
        return None
    values = sorted({str(v) for v in df[column].dropna()})
    return values[0] if len(values) == 1 else ",".join(values) or None


def _rate(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.astype(float).mean()) if len(values) else math.nan


def _median(values: pd.Series | None) -> float:
    values = pd.Series(dtype=float) if values is None else pd.to_numeric(values, errors="coerce").dropna()
    return float(values.median()) if len(values) else math.nan


def depends_precision_recall(attribution: pd.DataFrame) -> tuple[float, float, int]:
    """Precision and recall of ``depends`` against ``gold_depends`` over rows where both are known."""
    known = attribution.dropna(subset=["depends", "gold_depends"])
    pred = known["depends"].astype(bool).to_numpy()
    gold = known["gold_depends"].astype(bool).to_numpy()
    tp = int(np.sum(pred & gold))
    precision = tp / int(pred.sum()) if pred.sum() else math.nan
    recall = tp / int(gold.sum()) if gold.sum() else math.nan
    return precision, recall, len(known)


def summarise(
    alignment: pd.DataFrame,
    attribution: pd.DataFrame,
    modes: pd.DataFrame,
    counts: Mapping[str, int],
    model: str | None,
    dataset: str | None,
    base_abstained: Sequence[bool] = (),
    null: Null | None = None,
) -> pd.DataFrame:
    """One row per fill: mode shares, answer flips and abstention under evidence and control masks, Match F1,
    percentiles of the cases' changes in the null, and the null itself (per model and dataset, on every row)."""
    fills = sorted(set(modes["fill"]) | {f for v, f in zip(alignment["variant"], alignment["fill"]) if region_of_variant(v)[1] is not None})
    rows = []
    for fill in fills or [None]:
        al = alignment[alignment["fill"] == fill] if fill is not None else alignment.iloc[0:0]
        kinds = al["variant"].map(lambda v: region_of_variant(v)[0])
        ev, ctrl = al[kinds == "drop"], al[kinds == "ctrl"]
        md = modes[modes["fill"] == fill]
        at = attribution[attribution["fill"] == fill]
        precision, recall, n_known = depends_precision_recall(at)
        row: dict[str, Any] = {"model": model, "dataset": dataset, "fill": fill, "n_cases": len(md)}
        for mode in MODES:
            row[f"share_{mode}"] = float((md["mode"] == mode).mean()) if len(md) else math.nan
        row.update(
            {
                "answer_flip_evidence": _rate(ev["answer_changed"]),
                "answer_flip_control": _rate(ctrl["answer_changed"]),
                "abstention_evidence": _rate(ev["abstained"]),
                "abstention_control": _rate(ctrl["abstained"]),
                "abstention_base": float(np.mean(base_abstained)) if len(base_abstained) else math.nan,
                "match_f1_evidence": _rate(ev["match_f1"]),
                "match_f1_control": _rate(ctrl["match_f1"]),
                "match_f1_all_masks": _rate(al["match_f1"]),
                "ordered_match_f1_all_masks": _rate(al["ordered_match_f1"]),
                "depends_precision": precision,
                "depends_recall": recall,
                "n_attribution_with_gold": n_known,
                "evidence_change_pct_median": _median(md.get("evidence_change_pct")),
                "control_change_pct_median": _median(md.get("control_change_pct")),
            }
        )
        if null is not None:
            row.update(null.describe())
        row.update({f"n_{k}": int(v) for k, v in counts.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def run_stage(call: StageCall) -> None:
    """The ``crm`` rule: alignment, attribution, modes and summary of one (model, dataset).

    ``config``: ``alignment`` and ``crm`` (the sections). Inputs: ``steps``,
    ``sidecars``, ``masks_table``, ``items_table``; outputs: ``alignment``,
    ``attribution``, ``modes`` (parquet) and ``summary`` (CSV).
    """
    import torch

    torch.set_num_threads(call.threads)
    tables = run_crm(
        read_table(call.path("steps")),
        read_sidecars(call.paths("sidecars")),
        read_table(call.path("masks_table")),
        read_table(call.path("items_table")),
        call.config["alignment"],
        call.config["crm"],
    )
    provenance = call.provenance(counts=tables.counts)
    write_table(tables.alignment, call.output("alignment"), provenance, schema=ALIGNMENT_SCHEMA)
    write_table(tables.attribution, call.output("attribution"), provenance, schema=ATTRIBUTION_SCHEMA)
    write_table(tables.modes, call.output("modes"), provenance, schema=MODES_SCHEMA)
    summary = call.output("summary")
    summary.parent.mkdir(parents=True, exist_ok=True)
    tables.summary.to_csv(summary, index=False, float_format="%.6g")
