"""Do evidence share and answers react to a hidden panel the way the planted behaviour says?

    python checks/collapse_truth.py RESULTS_DIR

Reads ``RESULTS_DIR/collapse/*/*.traces.parquet`` (and, when present,
``regression/coefficients.csv`` and ``selective/summary.csv``) and prints the
numbers behind issue 6's sentence "for blind-spot the evidence share and the
answers do not react to a hidden panel the way they do for grounded":

- per model and dataset, for unmasked traces, traces with an evidence panel
  hidden (``drop:k``) and traces with a same-size control region hidden
  (``ctrl:k``), over items with evidence regions: n, vision engagement (mean
  evidence share over the reasoning steps), whole-trace evidence share (AUC),
  and the rates of changed answers, abstentions and correct answers;
- the reaction: evidence hidden minus control hidden (answers) and evidence
  hidden minus unmasked (evidence share);
- whether grounded reacts more than blind-spot (exit status 1 when both are
  present and it does not);
- where attention sits step by step on unmasked traces (``collapse/*/*.parquet``,
  ``localisation_by_step``): the evidence share at each reasoning step and at
  the answer against the evidence's area share. Issue 4's "Done when": for
  ``blind-spot`` and ``grounded``, on traces with one reasoning step (a colour
  question: the step names the one evidence panel's colour), that step's
  evidence share is well above the area share (lift >= 1.25 here) and the
  answer's is lower (exit status 1 otherwise). Traces with more steps (two
  panel reads and a verdict) are printed, not judged: their evidence is both
  panels, while each read looks at one;
- how many errors each regression fit had, and the veto's change in risk.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from peekaboo.collapse import localisation_by_step
from peekaboo.features import VARIANT_GROUPS, masking_response
from peekaboo.tables import read_table

HIDDEN, CONTROL, BASE = VARIANT_GROUPS["drop"], VARIANT_GROUPS["ctrl"], VARIANT_GROUPS["base"]
MIN_READING_LIFT = 1.25  # "well above the panel's area share"
LOCALISED_MODELS = ("blind-spot", "grounded")


def fmt(x) -> str:
    return "   -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.3f}"


def reactions(table: pd.DataFrame) -> pd.DataFrame:
    """Per model and dataset: answer reaction (hidden - control) and evidence reaction (hidden - unmasked)."""
    rows = []
    for (m, d), sub in table.groupby(["model", "dataset"], sort=False):
        g = sub.set_index("group")

        def val(group, col):
            return float(g.loc[group, col]) if group in g.index else float("nan")

        rows.append({
            "model": m, "dataset": d,
            "answer_changed": val(HIDDEN, "answer_changed") - val(CONTROL, "answer_changed"),
            "abstained": val(HIDDEN, "abstained") - val(CONTROL, "abstained"),
            "vision": val(HIDDEN, "vision") - val(BASE, "vision"),
            "evidence_share": val(HIDDEN, "evidence_share") - val(BASE, "evidence_share"),
            "vision_control": val(CONTROL, "vision") - val(BASE, "vision"),
        })
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    paths = sorted(args.results.glob("collapse/*/*.traces.parquet"))
    if not paths:
        print(f"no collapse/*/*.traces.parquet under {args.results}")
        return 2
    traces = pd.concat([read_table(p) for p in paths], ignore_index=True)
    table = masking_response(traces)
    sinks = sorted(set(traces["sinks_excluded"].dropna().astype(bool))) if "sinks_excluded" in traces else []
    print("Response to a hidden panel (items with evidence regions; vision = mean evidence share over the "
          f"reasoning steps; attention sinks {'excluded' if sinks == [True] else 'kept' if sinks == [False] else 'mixed'})")
    print()
    print(f"{'model':<16}{'dataset':<16}{'group':<17}{'n':>5} {'vision':>6} {'ev.AUC':>6} {'changed':>7} "
          f"{'abstain':>7} {'correct':>7}")
    for r in table.itertuples(index=False):
        print(f"{r.model:<16}{r.dataset:<16}{r.group:<17}{r.n:>5} {fmt(r.vision)} {fmt(r.evidence_share)} "
              f"{fmt(r.answer_changed)}  {fmt(r.abstained)}  {fmt(r.accuracy)}")
    react = reactions(table)
    print()
    print("Reaction: answers = evidence hidden minus control hidden; evidence = evidence hidden minus unmasked")
    print(f"{'model':<16}{'dataset':<16}{'changed':>8} {'abstain':>8} {'vision':>8} {'ev.AUC':>8} {'vision(ctrl)':>12}")
    for r in react.itertuples(index=False):
        print(f"{r.model:<16}{r.dataset:<16}{r.answer_changed:+8.3f} {r.abstained:+8.3f} {r.vision:+8.3f} "
              f"{r.evidence_share:+8.3f} {r.vision_control:+12.3f}")
    status = 0
    by_model = react.groupby("model")[["answer_changed", "abstained", "vision"]].mean()
    if {"grounded", "blind-spot"} <= set(by_model.index):
        g, b = by_model.loc["grounded"], by_model.loc["blind-spot"]
        shown = g["answer_changed"] > b["answer_changed"] and g["abstained"] > b["abstained"]
        print()
        print(f"grounded vs blind-spot, mean over datasets: answers changed by hiding the evidence "
              f"{g['answer_changed']:+.3f} vs {b['answer_changed']:+.3f}, abstentions {g['abstained']:+.3f} vs "
              f"{b['abstained']:+.3f}, vision engagement {g['vision']:+.3f} vs {b['vision']:+.3f}")
        print(f"planted structure shown (grounded reacts more than blind-spot): {'yes' if shown else 'NO'}")
        status = 0 if shown else 1

    # the per-step table beside each per-trace one: collapse/{m}/{d}.parquet
    step_paths = [p.with_name(p.name.removesuffix(".traces.parquet") + ".parquet") for p in paths]
    step_paths = [p for p in step_paths if p.exists()]
    if step_paths:
        loc = localisation_by_step(pd.concat([read_table(p) for p in step_paths], ignore_index=True))
        print()
        print("Attention localisation on unmasked traces: evidence share of image attention per step "
              "(traces grouped by their number of reasoning steps), against the evidence's area share")
        print(f"{'model':<16}{'dataset':<16}{'steps':>5}  {'step':<8}{'n':>5} {'ev.share':>8} {'area':>6} {'lift':>6}")
        for r in loc.itertuples(index=False):
            print(f"{r.model:<16}{r.dataset:<16}{r.n_reasoning_steps:>5}  {r.step:<8}{r.n:>5} "
                  f"{r.evidence_share:8.3f} {r.evidence_area_fraction:6.3f} {r.lift:6.2f}")
        for m in LOCALISED_MODELS:
            single = loc[(loc["model"] == m) & (loc["n_reasoning_steps"] == 1)]
            for (mm, d, k), sub in single.groupby(["model", "dataset", "n_reasoning_steps"]):
                s = sub.set_index("step")
                if "step 1" not in s.index or "answer" not in s.index:
                    continue
                ok = s.loc["step 1", "lift"] >= MIN_READING_LIFT and \
                    s.loc["answer", "evidence_share"] < s.loc["step 1", "evidence_share"]
                print(f"  {m} / {d}, {k}-step traces: step 1 lift {s.loc['step 1', 'lift']:.2f}, answer lift "
                      f"{s.loc['answer', 'lift']:.2f}: {'localised' if ok else 'NOT localised'}")
                status = status or (0 if ok else 1)

    coef_path = args.results / "regression" / "coefficients.csv"
    if coef_path.exists():
        coef = pd.read_csv(coef_path).drop_duplicates(["model", "dataset", "scope"])
        print()
        print("Errors per regression fit (regression/coefficients.csv)")
        for r in coef.itertuples(index=False):
            note = f"  [{r.note}]" if isinstance(r.note, str) and r.note else ""
            print(f"  {r.model:<16}{r.dataset:<16}{r.status:<11} n={int(r.n):<5} errors={int(r.n_errors)}{note}")
    sel_path = args.results / "selective" / "summary.csv"
    if sel_path.exists():
        sel = pd.read_csv(sel_path)
        veto = sel[sel["signal"] == "entropy+veto"]
        if "scope" in veto.columns:  # the per-model pooled rows: no dataset, no counts of their own
            veto = veto[veto["scope"] != "pooled"]
        if len(veto):
            print()
            print("Vision veto: change in risk at the veto coverage (threshold fitted on the other datasets)")
            measure = veto["vision_measure"] if "vision_measure" in veto else pd.Series("", index=veto.index)
            for r, m in zip(veto.itertuples(index=False), measure.fillna("")):
                print(f"  {r.model:<16}{r.dataset:<16}{m:<16}veto {'on ' if r.veto_active else 'off'} "
                      f"n={int(r.n):<5} errors={int(r.n_errors):<4} delta={r.delta_risk:+.4f} "
                      f"[{r.delta_risk_low:+.4f}, {r.delta_risk_high:+.4f}]")
    return status


if __name__ == "__main__":
    sys.exit(main())
