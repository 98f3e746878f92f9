"""CRM: attribution with control contrast, each mode rule, gold dependencies, bad traces, the stage's files."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from fixtures.crm import item_row, masks_for, sidecar, sidecar_row
from peekaboo.alignment import StepEncoder
from peekaboo.crm import (
    MODE_RULES,
    Case,
    Null,
    StepChanges,
    decide_mode,
    depends_flags,
    gold_steps,
    map_gold_to_steps,
    region_of_variant,
    run_crm,
)
from peekaboo.stage import StageCall
from peekaboo.steps import segment_traces
from peekaboo.tables import read_provenance, read_table, write_table
from fixtures.scripts import load_script

CRM_CFG = {"null_quantile": 0.95, "null_min_size": 5, "fallback_change": 0.1, "control_margin": 0.1, "collapse_ratio": 0.75}
ALIGN_CFG = {"threshold": 0.35, "alpha": 0.3}

ATTRIBUTE = item_row(
    "a1",
    ["top-left"],
    [
        {"text": "Step 1: The top-left shape is red.", "regions": [0], "depends": [0], "kind": "step"},
        {"text": "Answer: red", "regions": [], "depends": [0], "kind": "answer"},
    ],
)
COMPARISON = item_row(
    "c1",
    ["top-left", "bottom-right"],
    [
        {"text": "Step 1: The top-left shape is red.", "regions": [0], "depends": [0], "kind": "step"},
        {"text": "Step 2: The bottom-right shape is blue.", "regions": [1], "depends": [1], "kind": "step"},
        {"text": "Step 3: They differ.", "regions": [], "depends": [0, 1], "kind": "step"},
        {"text": "Answer: no", "regions": [], "depends": [0, 1], "kind": "answer"},
    ],
)
ARITHMETIC = item_row("s1", [], [{"text": "Step 1: 3 + 4 = 7.", "regions": []}, {"text": "Answer: 7", "regions": []}])
ITEMS = [ATTRIBUTE, COMPARISON, ARITHMETIC]

A_BASE = "Step 1: The top-left shape is red.\nAnswer: red"
C_BASE = "Step 1: The top-left shape is red.\nStep 2: The bottom-right shape is blue.\nStep 3: They differ.\nAnswer: no"


def hidden(label):
    return f"The {label} panel is hidden."


def traces_of(behaviour, model="m"):
    """Sidecar rows of a reference model with the planted behaviour (texts as the panels template writes them)."""
    row = lambda item, variant, text, answer, abstained=False: sidecar_row(  # noqa: E731
        model, "panels", item, variant, text, answer_text=answer, abstained=abstained
    )
    rows = [
        row("a1", "base", A_BASE, "red"),
        row("c1", "base", C_BASE, "no"),
        row("s1", "base", "Step 1: 3 + 4 = 7.\nAnswer: 7", "7"),
    ]
    if behaviour == "blind-spot":
        rows += [
            row("a1", "drop:0", "Step 1: The top-left shape is green.\nAnswer: green", "green"),
            row("c1", "drop:0", C_BASE.replace("top-left shape is red", "top-left shape is blue").replace(
                "They differ.", "They match.").replace("no", "yes"), "yes"),
            row("c1", "drop:1", C_BASE.replace("bottom-right shape is blue", "bottom-right shape is yellow"), "no"),
        ]
    else:
        rows += [
            row("a1", "drop:0", f"Step 1: {hidden('top-left')}\nAnswer: unknown", "unknown", True),
            row("c1", "drop:0", f"Step 1: {hidden('top-left')}\nStep 2: The bottom-right shape is blue.\nAnswer: unknown",
                "unknown", True),
            row("c1", "drop:1", f"Step 1: The top-left shape is red.\nStep 2: {hidden('bottom-right')}\nAnswer: unknown",
                "unknown", True),
        ]
    if behaviour == "oversensitive":
        rows += [
            row("a1", "ctrl:0", f"Step 1: {hidden('top-left')}\nAnswer: unknown", "unknown", True),
            row("c1", "ctrl:0", f"Step 1: {hidden('top-left')}\nStep 2: The bottom-right shape is blue.\nAnswer: unknown",
                "unknown", True),
            row("c1", "ctrl:1", f"Step 1: The top-left shape is red.\nStep 2: {hidden('bottom-right')}\nAnswer: unknown",
                "unknown", True),
        ]
    else:
        rows += [row("a1", "ctrl:0", A_BASE, "red"), row("c1", "ctrl:0", C_BASE, "no"), row("c1", "ctrl:1", C_BASE, "no")]
    return sidecar(rows)


@pytest.fixture(scope="module")
def encoder():
    # the real MiniLM-L6 on CPU, shared by the module; its text cache makes repeated texts free
    return StepEncoder("all-MiniLM-L6-v2", batch_size=16, device="cpu")


def crm_of(sc, encoder, items=ITEMS, masks=True):
    steps = segment_traces(sc, "auto", {})
    items_df = pd.DataFrame(items)
    return run_crm(steps, sc, masks_for(items) if masks else None, items_df, ALIGN_CFG, CRM_CFG, encoder=encoder)


# --- planted behaviour end to end (constructed traces, real encoder) --------------------


def test_grounded_model_is_grounded_and_depends_matches_gold(encoder):
    out = crm_of(traces_of("grounded"), encoder)
    assert out.modes["mode"].tolist() == ["grounded"] * 3
    assert set(out.modes["rule"]) == {"gold_steps_yield_control_quiet"}
    at = out.attribution
    assert at["depends"].astype(bool).tolist() == at["gold_depends"].astype(bool).tolist()
    # the step reading the other panel is untouched; the step reading the hidden one is not
    c0 = at[(at["item_id"] == "c1") & (at["region"] == 0)].set_index("base_step")
    assert c0.loc[1, "dependence"] == pytest.approx(0.0, abs=1e-6)
    assert c0.loc[0, "dependence"] > 0.5
    assert c0.loc[2, "dependence"] == 1.0  # "They differ." has no counterpart when the model abstains
    s = out.summary.iloc[0]
    assert (s["depends_precision"], s["depends_recall"]) == (1.0, 1.0)
    assert (s["share_grounded"], s["answer_flip_evidence"], s["answer_flip_control"]) == (1.0, 1.0, 0.0)
    assert (s["abstention_evidence"], s["abstention_control"], s["abstention_base"]) == (1.0, 0.0, 0.0)
    assert s["n_items_without_regions"] == 1  # the arithmetic item


def test_blind_spot_model_hallucinates(encoder):
    out = crm_of(traces_of("blind-spot"), encoder)
    assert out.modes["mode"].tolist() == ["hallucination"] * 3
    assert set(out.modes["rule"]) == {"asserts_hidden_content"}
    assert out.summary.iloc[0]["match_f1_evidence"] == 1.0  # structure kept, content made up
    assert out.summary.iloc[0]["abstention_evidence"] == 0.0
    at = out.attribution.set_index(["item_id", "region", "base_step"])
    # the step that reads the hidden panel names another colour; the other panel's step asserts nothing about it
    assert at.loc[("c1", 0, 0), "asserts"] and at.loc[("c1", 0, 0), "dependence"] >= 0.5
    assert pd.isna(at.loc[("c1", 0, 1), "asserts"]) and at.loc[("c1", 0, 1), "dependence"] < 1e-6


def test_oversensitive_model_collapses(encoder):
    out = crm_of(traces_of("oversensitive"), encoder)
    assert out.modes["mode"].tolist() == ["collapse"] * 3
    assert set(out.modes["rule"]) == {"control_as_strong"}
    # what changes under the evidence mask changes under the control too: nothing depends
    assert not out.attribution["depends"].astype(bool).any()
    assert out.summary.iloc[0]["answer_flip_control"] == 1.0


def test_alignment_table_rows_and_pairs(encoder):
    out = crm_of(traces_of("grounded"), encoder)
    assert len(out.alignment) == 6  # every masked trace, none for base
    row = out.alignment[(out.alignment["item_id"] == "c1") & (out.alignment["variant"] == "drop:0")].iloc[0]
    assert (row["n_base_steps"], row["n_steps"], row["region"]) == (4, 3, 0)
    assert row["base_trace_id"] == "m|c1|base|none"
    pairs = {(p["base_step"], p["step"]) for p in row["pairs"]}
    assert (1, 1) in pairs and (2, 2) not in pairs
    assert row["answer_changed"] and row["abstained"] and not row["base_abstained"]
    assert row["precision"] == pytest.approx(row["n_matched"] / 3)


# --- attribution with control contrast --------------------------------------------------


def null_of(values, **cfg):
    """A null built from one control trace whose base steps changed by ``values``."""
    n = len(values)
    sc = StepChanges(np.asarray(values, float), np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool))
    return Null.build([sc], {**CRM_CFG, **cfg})


def test_depends_needs_change_under_evidence_and_quiet_control():
    null = null_of(np.linspace(0.0, 0.1, 21))  # q95 = 0.095
    assert null.threshold == pytest.approx(0.095) and not null.fallback
    dep = np.array([0.9, 0.9, 0.05, 0.15, 0.6])
    ctrl = np.array([0.0, 0.8, 0.0, 0.08, 0.45])
    # changed and control quiet; changed under both; unchanged; ahead of a quiet control by < margin;
    # control changed (0.45 beyond the null) though far behind
    assert depends_flags(dep, ctrl, null, 0.1) == [True, False, False, False, False]
    assert depends_flags(dep, ctrl, null, 0.0)[3] is True
    assert depends_flags(dep, None, null, 0.1) == [None] * 5
    # the null's quantile, not a fixed cut, decides: a noisier model's null makes 0.15 no change
    assert depends_flags(dep, ctrl, null_of(np.linspace(0.0, 0.3, 21)), 0.0)[3] is False


def test_null_percentiles_and_fallback():
    null = null_of([0.0] * 30 + [0.2] * 10)
    assert null.threshold == pytest.approx(0.2)
    assert null.step_pct(0.0) == pytest.approx(100 * 15 / 40)  # ties count half
    assert null.step_pct(0.5) == 100.0 and null.step_pct(0.1) == 75.0
    # one control trace, mean change 0.05: the null of a case's (mean) change
    assert (null.trace_pct(0.05), null.trace_pct(0.5)) == (50.0, 100.0) and math.isnan(null.trace_pct(math.nan))
    small = null_of([0.0, 0.3, 0.6], null_min_size=5, fallback_change=0.25)
    assert small.fallback and small.threshold == 0.25
    assert small.describe()["null_fallback"] and small.describe()["null_n_steps"] == 3


def test_step_changed_under_control_too_does_not_depend(encoder):
    sc = traces_of("grounded")
    # the control rewrites step 2 of the comparison as well: under drop:1 it changed, but not because of region 1
    i = sc.index[sc["trace_id"] == "m|c1|ctrl:1|gray"][0]
    sc.at[i, "text"] = C_BASE.replace("The bottom-right shape is blue.", "The bottom-right one might be a kind of teal.")
    out = crm_of(sc, encoder)
    at = out.attribution.set_index(["item_id", "region", "base_step"])
    assert at.loc[("c1", 1, 1), "changed"] and at.loc[("c1", 1, 1), "control_changed"]
    assert not at.loc[("c1", 1, 1), "depends"]
    assert at.loc[("c1", 1, 1), "control_dependence"] > out.null.threshold
    # the other steps keep their verdicts
    assert at.loc[("c1", 1, 3), "depends"] and not at.loc[("c1", 1, 0), "depends"]


def test_missing_control_is_its_own_category_never_quiet(encoder):
    sc = traces_of("grounded")
    sc = sc[sc["trace_id"] != "m|a1|ctrl:0|gray"]
    out = crm_of(sc, encoder)
    a = out.attribution[out.attribution["item_id"] == "a1"]
    assert a["depends"].isna().all() and a["control_dependence"].isna().all()
    assert a["changed"].all()
    mode = out.modes[out.modes["item_id"] == "a1"].iloc[0]
    assert (mode["mode"], mode["rule"]) == ("no_control", "no_control_trace") and not mode["has_control"]
    assert "no control trace" in mode["detail"] and math.isnan(mode["control_change_pct"])
    assert out.counts["cases_without_control"] == 1
    s = out.summary.iloc[0]
    assert (s["share_no_control"], s["share_grounded"]) == pytest.approx((1 / 3, 2 / 3))


# --- bad input ---------------------------------------------------------------------------


def test_failed_and_missing_traces_are_skipped_and_counted(encoder, peekaboo_log):
    sc = traces_of("grounded")
    fail = lambda tid: sc.index[sc["trace_id"] == tid][0]  # noqa: E731
    for tid in ("m|c1|base|none", "m|a1|ctrl:0|gray"):
        sc.loc[fail(tid), ["status", "error", "text"]] = ["failed", "out of memory", None]
    out = crm_of(sc, encoder)
    assert out.counts["failed_traces"] == 2
    assert out.counts["items_without_base"] == 1  # c1 lost its base: no attribution, no crash
    assert out.counts["masked_without_base"] == 4  # c1's drop:0, drop:1, ctrl:0, ctrl:1
    assert set(out.modes["item_id"]) == {"a1"}
    assert set(out.alignment["item_id"]) == {"a1"}
    assert out.summary.iloc[0]["n_failed_traces"] == 2
    assert "m|c1|base|none: status failed (out of memory)" in peekaboo_log.text
    assert "item c1: no usable base trace" in peekaboo_log.text


def test_missing_drop_trace_is_counted(encoder):
    sc = traces_of("grounded")
    sc = sc[sc["trace_id"] != "m|c1|drop:1|gray"]
    out = crm_of(sc, encoder)
    assert out.counts["cases_without_evidence_trace"] == 1
    assert len(out.modes) == 2


def test_no_traces_at_all_gives_empty_typed_tables(encoder):
    empty = sidecar([sidecar_row("m", "panels", "a1", "base", None, status="failed")])
    out = crm_of(empty, encoder)
    assert len(out.alignment) == len(out.attribution) == len(out.modes) == 0
    assert "mode" in out.modes.columns and "dependence" in out.attribution.columns
    assert out.counts["failed_traces"] == 1
    assert len(out.summary) == 1 and math.isnan(out.summary.iloc[0]["share_grounded"])


# --- the mode rules on constructed cases --------------------------------------------------------


def case(**kw):
    base = dict(
        evidence_change=0.5, evidence_changed=True, abstained=False, n_gold=2, asserting=0,
        off_target_depends=False, needed=True, has_control=True, control_change=0.0,
    )
    base.update(kw)
    return Case(**base)


def test_rule_no_control_comes_first():
    assert decide_mode(case(has_control=False, control_change=math.nan), CRM_CFG)[:2] == ("no_control",
                                                                                          "no_control_trace")
    # even a case that would otherwise hallucinate: without the contrast there is no verdict
    assert decide_mode(case(has_control=False, asserting=2), CRM_CFG)[0] == "no_control"


def test_rule_collapse_when_the_control_disrupts_as_much():
    mode, rule, detail = decide_mode(case(abstained=True, control_change=0.45, control_disrupted=True), CRM_CFG)
    assert (mode, rule) == ("collapse", "control_as_strong")
    assert "0.450 >= 0.75 x evidence change 0.500" in detail
    # a control change below collapse_ratio x the evidence change is not collapse by this rule
    assert decide_mode(case(abstained=True, control_change=0.2, control_disrupted=True), CRM_CFG)[:2] == (
        "undecided", "control_not_quiet")
    # drift alone (the control changed as much but flipped nothing) is no collapse
    assert decide_mode(case(abstained=True, control_change=0.6), CRM_CFG)[0] == "grounded"
    assert decide_mode(case(abstained=True, control_change=0.3, control_disrupted=True),
                       {**CRM_CFG, "collapse_ratio": 0.5})[0] == "collapse"


def test_rule_insensitive_only_when_the_region_is_not_needed():
    quiet = dict(evidence_change=0.01, evidence_changed=False, n_gold=0)
    assert decide_mode(case(needed=False, **quiet), CRM_CFG)[:2] == ("insensitive", "unchanged_not_needed")
    assert decide_mode(case(needed=None, **quiet), CRM_CFG)[:2] == ("insensitive", "unchanged_not_needed")
    # needed and unchanged: the gold steps still assert what the model cannot see
    assert decide_mode(case(needed=True, evidence_change=0.0, evidence_changed=False, asserting=2),
                       CRM_CFG)[:2] == ("hallucination", "asserts_hidden_content")


def test_rule_grounded_before_hallucination_and_contrasted_with_the_control():
    assert decide_mode(case(), CRM_CFG)[:2] == ("grounded", "gold_steps_yield_control_quiet")
    assert decide_mode(case(abstained=True, off_target_depends=True), CRM_CFG)[0] == "grounded"
    # a gold step still asserts content: not grounded, hallucination when the control is quiet
    assert decide_mode(case(asserting=1), CRM_CFG)[:2] == ("hallucination", "asserts_hidden_content")
    # ... and no verdict when the control moved the gold steps too
    assert decide_mode(case(asserting=1, control_moved_gold=True), CRM_CFG)[:2] == ("undecided", "control_not_quiet")
    assert decide_mode(case(control_moved_gold=True), CRM_CFG)[0] == "undecided"
    # abstaining (or acknowledging where that counts) is never hallucination
    assert decide_mode(case(asserting=1, abstained=True), CRM_CFG)[0] == "undecided"


def test_rule_fell_apart_is_collapse():
    assert decide_mode(case(off_target_depends=True), CRM_CFG)[:2] == ("collapse", "fell_apart")
    assert decide_mode(case(off_target_depends=True, abstained=True), CRM_CFG)[0] == "grounded"
    assert set(MODE_RULES) == {"no_control_trace", "control_as_strong", "unchanged_not_needed",
                               "gold_steps_yield_control_quiet", "asserts_hidden_content", "fell_apart",
                               "control_not_quiet"}


# --- hand-built step triples (base, evidence mask, control mask) through run_crm -----------------

TWO = [
    {"text": "Step 1: The top-left shape is red.", "depends": [0], "kind": "step"},
    {"text": "Step 2: The bottom-right shape is blue.", "depends": [1], "kind": "step"},
    {"text": "Answer: B", "depends": [0, 1], "kind": "answer"},
]
TWO_BASE = "Step 1: The top-left shape is red.\nStep 2: The bottom-right shape is blue.\nAnswer: B"


def triples(cases, model="m", items=None):
    """run_crm on items t0.. each with two panels; ``cases``: per item {variant: (text, answer, abstained)}."""
    rows, items_out = [], []
    for i, variants in enumerate(cases):
        item = dict(item_row(f"t{i}", ["top-left", "bottom-right"], TWO), choices=(items or {}).get("choices"))
        items_out.append(item)
        rows.append(sidecar_row(model, "panels", f"t{i}", "base", TWO_BASE, answer_text="B"))
        for variant, (text, answer, abstained) in variants.items():
            rows.append(sidecar_row(model, "panels", f"t{i}", variant, text, answer_text=answer, abstained=abstained))
    return sidecar(rows), items_out


def run_triples(encoder, cases, cfg=None, **kw):
    sc, items = triples(cases, **kw)
    steps = segment_traces(sc, "auto", {})
    return run_crm(steps, sc, masks_for(items), pd.DataFrame(items), ALIGN_CFG, {**CRM_CFG, **(cfg or {})},
                   encoder=encoder)


KEEP = (TWO_BASE, "B", False)
ACK0 = ("Step 1: The top-left panel is covered, so I cannot see its colour.\nStep 2: The bottom-right shape is blue."
        "\nAnswer: B", "B", False)


def mode_of(out, item="t0", region=0):
    row = out.modes[(out.modes["item_id"] == item) & (out.modes["region"] == region)].iloc[0]
    return row["mode"], row["rule"]


def test_triple_only_the_dependent_step_rewritten_with_a_quiet_control_is_grounded(encoder):
    # forced choice (the item has options): the model says it cannot see the panel and still picks a letter
    out = run_triples(encoder, [{"drop:0": ACK0, "ctrl:0": KEEP}], items={"choices": ["red", "blue"]})
    assert mode_of(out) == ("grounded", "gold_steps_yield_control_quiet")
    at = out.attribution.set_index(["region", "base_step"])
    assert at.loc[(0, 0), "acknowledged"] and not at.loc[(0, 0), "asserts"] and at.loc[(0, 0), "depends"]
    assert at.loc[(0, 1), "dependence"] < 1e-6  # the other panel's step untouched
    # without options the letter after the acknowledgement is a guess about the hidden panel ...
    out = run_triples(encoder, [{"drop:0": ACK0, "ctrl:0": KEEP}])
    assert mode_of(out) == ("hallucination", "asserts_hidden_content")
    # ... unless acknowledging counts as abstaining everywhere (crm.acknowledgement_abstains)
    out = run_triples(encoder, [{"drop:0": ACK0, "ctrl:0": KEEP}], cfg={"acknowledgement_abstains": "always"})
    assert mode_of(out)[0] == "grounded"
    # the acknowledgement is recognised by the configured phrases: with none, the step is just changed text
    out = run_triples(encoder, [{"drop:0": ACK0, "ctrl:0": KEEP}], items={"choices": ["red", "blue"]},
                      cfg={"acknowledgement_phrases": []})
    assert mode_of(out)[0] == "hallucination"


def test_triple_dependent_step_unchanged_while_hidden_is_hallucination(encoder):
    out = run_triples(encoder, [{"drop:0": KEEP, "ctrl:0": KEEP}])
    assert mode_of(out) == ("hallucination", "asserts_hidden_content")
    row = out.modes.iloc[0]
    assert row["evidence_change"] < 1e-6 and not row["answer_changed"]
    assert out.attribution.set_index(["region", "base_step"]).loc[(0, 0), "asserts"]


def test_triple_dependent_step_changed_to_other_content_is_hallucination(encoder):
    other = (TWO_BASE.replace("red", "green"), "B", False)
    out = run_triples(encoder, [{"drop:0": other, "ctrl:0": KEEP}])
    assert mode_of(out) == ("hallucination", "asserts_hidden_content")


def test_triple_control_as_strong_as_evidence_is_collapse(encoder):
    hid = ("Step 1: The top-left panel is hidden.\nStep 2: The bottom-right shape is blue.\nAnswer: unknown",
           "unknown", True)
    out = run_triples(encoder, [{"drop:0": hid, "ctrl:0": hid}])
    assert mode_of(out) == ("collapse", "control_as_strong")
    row = out.modes.iloc[0]
    assert row["control_acknowledged"] and row["control_change"] == pytest.approx(row["evidence_change"])


DRIFT = [  # paraphrases, as a model decoding greedily writes them when any pixel changes (MiniLM 1 - cosine)
    "Step 1: The shape in the top-left panel is red.\nStep 2: The bottom-right shape is blue.\nAnswer: B",  # 0.155, 0
    "Step 1: The top-left shape is red.\nStep 2: The shape at the bottom right is blue.\nAnswer: B",  # 0, 0.033
    "Step 1: In the top-left panel, the shape is red.\nStep 2: In the bottom-right panel, the shape is blue."
    "\nAnswer: B",  # 0.122, 0.134
]
HEAVY_DRIFT = ("Step 1: The top-left panel's shape is red.\nStep 2: The shape in the bottom-right panel is blue."
               "\nAnswer: B")  # 0.207, 0.172


def test_triple_paraphrase_drift_under_both_masks_is_insensitive(encoder):
    # region 1 (bottom-right) is not needed here: its gold step depends on nothing
    gold = [dict(TWO[0]), dict(TWO[1], depends=[]), dict(TWO[2], depends=[0])]
    cases = [{"drop:1": (DRIFT[i % 3], "B", False), "ctrl:1": (DRIFT[(i + 1) % 3], "B", False),
              "ctrl:0": (HEAVY_DRIFT, "B", False), "drop:0": ACK0} for i in range(4)]
    sc, items = triples(cases)
    for it in items:
        it["meta"] = json.dumps({"gold_steps": gold})
    out = run_crm(segment_traces(sc, "auto", {}), sc, masks_for(items), pd.DataFrame(items), ALIGN_CFG,
                  {**CRM_CFG, "acknowledgement_abstains": "always"}, encoder=encoder)
    assert len(out.null.steps) == 4 * 2 * 3 and out.null.threshold == pytest.approx(0.207, abs=0.01)
    m1 = out.modes[out.modes["region"] == 1]
    assert set(m1["mode"]) == {"insensitive"}, m1[["mode", "detail"]]
    a1 = out.attribution[out.attribution["region"] == 1]
    assert a1["dependence"].max() > 0.15 and not a1["changed"].any()  # the old fixed cut (0.1) called it change
    assert (out.modes["evidence_change_pct"] <= 100).all() and (m1["evidence_change_pct"] < 100).all()
    # the hidden panel that is needed still comes out grounded, drift in the other steps notwithstanding
    assert set(out.modes[out.modes["region"] == 0]["mode"]) == {"grounded"}
    s = out.summary.iloc[0]
    assert s["null_n_control_traces"] == 8 and not s["null_fallback"]
    assert s["null_threshold"] == pytest.approx(out.null.threshold)
    # with a lower quantile the same drift is change: the quantile, not a fixed cut, decides
    low = run_crm(segment_traces(sc, "auto", {}), sc, masks_for(items), pd.DataFrame(items), ALIGN_CFG,
                  {**CRM_CFG, "acknowledgement_abstains": "always", "null_quantile": 0.5}, encoder=encoder)
    assert low.attribution[low.attribution["region"] == 1]["changed"].any()
    # there the control's drift on the needed panel's step passes the null too, but its content (red, top-left)
    # stayed: the control still leaves the gold step alone, and the case stays grounded
    a0 = low.attribution[(low.attribution["region"] == 0) & (low.attribution["base_step"] == 0)]
    assert a0["control_changed"].all()
    assert set(low.modes[low.modes["region"] == 0]["mode"]) == {"grounded"}


def test_triple_without_control_is_its_own_category(encoder):
    out = run_triples(encoder, [{"drop:0": KEEP}])
    assert mode_of(out) == ("no_control", "no_control_trace")
    assert out.summary.iloc[0]["share_no_control"] == 1.0 and out.summary.iloc[0]["share_hallucination"] == 0.0
    assert out.summary.iloc[0]["null_fallback"]  # no control traces: the null is empty
    assert "null too small" in out.modes.iloc[0]["detail"]


def test_regenerations_join_the_null(encoder):
    sc, items = triples([{"drop:0": ACK0, "ctrl:0": KEEP}])
    regen = sidecar_row("m", "panels", "t0", "base", DRIFT[2], answer_text="B")
    regen["trace_id"] += "|seed1"
    sc = sidecar(sc.to_dict("records") + [regen])
    out = run_crm(segment_traces(sc, "auto", {}), sc, masks_for(items), pd.DataFrame(items), ALIGN_CFG,
                  {**CRM_CFG, "null_min_size": 1}, encoder=encoder)
    assert out.counts["regenerations"] == 1
    assert (out.null.n_control_traces, out.null.n_regenerations, len(out.null.steps)) == (1, 1, 6)
    assert out.null.steps.max() > 0.05  # the re-generation's drift
    assert out.summary.iloc[0]["null_n_regenerations"] == 1


def test_a_world_that_contradicts_the_paper_makes_the_crm_claims_inconsistent(encoder):
    from peekaboo import claims

    # every model grounds tightly and none collapses: the paper's CRM findings must not come out consistent
    frames = []
    for model in ("m1", "m2"):
        out = crm_of(traces_of("grounded", model=model), encoder)
        frames.append(out.modes.assign(model=model, dataset="panels"))
    modes = pd.concat(frames, ignore_index=True)
    assert set(modes["mode"]) == {"grounded"}
    for mode in ("hallucination", "collapse"):
        row = claims.crm_pattern(modes, mode, 200, 0)
        assert row["verdict"] == claims.INCONSISTENT, row
        assert "no model's most frequent mode is " + mode in row["reason"]
    # cases without a control are no verdict, never counted as decided
    no_ctrl = modes.assign(mode="no_control")
    assert "undecided" in claims.crm_pattern(no_ctrl, "collapse", 10, 0)["reason"]


# --- gold dependencies ---------------------------------------------------------------------------


def test_gold_from_panels_prefers_depends_over_regions():
    gold = gold_steps(COMPARISON)
    assert [g.regions for g in gold] == [{0}, {1}, {0, 1}, {0, 1}]
    assert [g.is_answer for g in gold] == [False, False, False, True]
    assert gold[0].text == "The top-left shape is red." and gold[3].text == "no"
    assert gold_steps({"item_id": "x", "regions": [], "meta": "{}"}) is None
    assert gold_steps({"item_id": "x", "regions": [], "meta": "not json"}) is None


def test_gold_from_visargs_expected_dependencies_is_transitive():
    item = {
        "item_id": "v1",
        "regions": [{"label": "VP1"}, {"label": "VP2"}],
        "meta": json.dumps({"expected_dependencies": [
            {"step": "IC1", "uses": ["VP1", "CP1"], "text": "The man holds an umbrella."},
            {"step": "IC2", "uses": ["IC1", "VP2"], "text": "It is raining."},
            {"step": "C", "uses": ["CP2"], "text": "Bring a coat."},
        ]}),
    }
    assert [g.regions for g in gold_steps(item)] == [{0}, {0, 1}, set()]


def test_gold_maps_by_index_or_by_text(encoder):
    gold = gold_steps(COMPARISON)
    kinds = ["think", "think", "think", "answer"]
    texts = ["The top-left shape is red.", "The bottom-right shape is blue.", "They differ.", "no"]
    assert map_gold_to_steps(kinds, texts, gold, encoder, 0.35) == [{0}, {1}, {0, 1}, {0, 1}]
    # an extra opening sentence: counts differ, so steps are matched to gold by text
    kinds = ["think"] + kinds
    texts = ["Let me compare the two shapes carefully."] + texts
    mapped = map_gold_to_steps(kinds, texts, gold, encoder, 0.35)
    assert mapped[1:] == [{0}, {1}, {0, 1}, {0, 1}]
    assert mapped[0] is None


def test_region_of_variant():
    assert region_of_variant("drop:2") == ("drop", 2)
    assert region_of_variant("ctrl:0") == ("ctrl", 0)
    assert region_of_variant("drop:all") == ("drop:all", None)
    assert region_of_variant("base") == ("base", None)


# --- the stage's files --------------------------------------------------------------------------


def test_crm_run_stage_writes_its_tables(tmp_path, encoder, monkeypatch):
    import peekaboo.crm as crm

    sc = traces_of("grounded")
    sidecar_path = tmp_path / "traces" / "shard-0.parquet"
    write_table(sc, sidecar_path)
    steps_path = tmp_path / "steps.parquet"
    write_table(segment_traces(sc, "auto", {}), steps_path)
    items_path, masks_path = tmp_path / "items.parquet", tmp_path / "masks.parquet"
    write_table(pd.DataFrame(ITEMS), items_path)
    write_table(masks_for(ITEMS), masks_path)
    outputs = {name: str(tmp_path / "crm" / f"{name}.parquet") for name in ("alignment", "attribution", "modes")}
    outputs["summary"] = str(tmp_path / "crm" / "summary.csv")
    # the stage builds its encoder from the config; hand it the module's already loaded one
    monkeypatch.setattr(crm, "get_encoder", lambda *a, **k: encoder)
    crm.run_stage(StageCall(
        inputs={"steps": [str(steps_path)], "sidecars": [str(sidecar_path)], "masks_table": [str(masks_path)],
                "items_table": [str(items_path)]},
        outputs=outputs, config={"alignment": {**ALIGN_CFG, "encoder": "all-MiniLM-L6-v2"}, "crm": CRM_CFG},
        results_dir=tmp_path))
    modes = read_table(outputs["modes"])
    assert modes["mode"].tolist() == ["grounded"] * 3
    assert len(read_table(outputs["attribution"])) == 2 + 2 * 4
    assert read_provenance(outputs["alignment"])["counts"]["items_without_regions"] == 1
    summary = pd.read_csv(outputs["summary"])
    assert summary.loc[0, "share_grounded"] == 1.0 and summary.loc[0, "model"] == "m"


def test_items_with_regions_but_no_masked_traces_are_counted(encoder):
    # a dataset run with masks off: base traces only
    sc = traces_of("grounded")
    sc = sc[sc["variant"] == "base"]
    out = crm_of(sc, encoder)
    assert len(out.modes) == 0 and len(out.alignment) == 0
    assert out.counts["items_without_masked_traces"] == 2
    assert out.counts["items_without_regions"] == 1


# --- checks/crm_truth.py: precision and recall of each planted mode --------------------------------


def _load_check(name):
    return load_script(f"checks/{name}.py")


def test_crm_truth_judges_each_planted_mode_by_precision_and_recall(tmp_path, capsys):
    truth = _load_check("crm_truth")

    def write(model, modes):
        d = tmp_path / "crm" / model / "panels"
        d.mkdir(parents=True, exist_ok=True)
        write_table(pd.DataFrame({"item_id": [f"i{j}" for j in range(len(modes))], "mode": modes}), d / "modes.parquet")
        gold = [True, False] * 5
        write_table(pd.DataFrame({"depends": gold, "gold_depends": gold}), d / "attribution.parquet")

    write("grounded", ["grounded"] * 19 + ["undecided"])  # recall 0.95
    write("blind-spot", ["hallucination"] * 20)
    write("oversensitive", ["collapse"] * 18 + ["no_control"] * 2)  # recall 0.9: no-control cases count against it
    assert truth.main([str(tmp_path)]) == 0
    assert "all planted-truth targets met" in capsys.readouterr().out
    # blind-spot's cases in mode grounded cost grounded its precision (19 of 22), and blind-spot its recall
    write("blind-spot", ["hallucination"] * 17 + ["grounded"] * 3)
    assert truth.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "grounded/panels: mode precision >= 0.9" in out and "blind-spot/panels: mode recall >= 0.9" in out


def test_claims_leave_out_the_same_modes_as_crm():
    from peekaboo import claims
    from peekaboo.crm import UNDECIDED_MODES

    for mode in UNDECIDED_MODES:
        modes = pd.DataFrame({"model": "m", "dataset": "d", "item_id": ["a", "b"], "mode": mode})
        assert "cases undecided or without a control trace" in claims.crm_pattern(modes, "collapse", 10, 0)["reason"]
    # one decided case among them decides
    modes = pd.DataFrame({"model": "m", "dataset": "d", "item_id": ["a", "b", "c"],
                          "mode": [*UNDECIDED_MODES, "collapse"]})
    assert claims.crm_pattern(modes, "collapse", 0, 0)["reason"].startswith("no interval")


def test_simulated_traces_write_what_the_planted_models_are_trained_on():
    # checks/crm_simulated.py stands in for the reference models: its hidden-panel traces must be the training
    # targets (synthetic.gold_solution) word for word
    from peekaboo import synthetic

    sim = _load_check("crm_simulated")
    opts = synthetic.resolve_options({"seed": 3, "n_items": 12})
    seen = set()
    for item in synthetic.generate_items(opts):
        if not item.evidence:
            continue
        _, steps = synthetic.gold_solution(item)
        for hidden in [{k} for k in range(len(item.evidence))] + [set(range(len(item.evidence)))]:
            assert sim.hidden_solution(steps, hidden) == synthetic.gold_solution(item, sorted(hidden))[0]
        seen.add(item.question_type)
    assert seen == {"attribute", "comparison"}
    text, letter = sim.forced_choice("Step 1: The top-left panel is hidden.\nAnswer: unknown", "B",
                                     np.random.default_rng(0))
    assert text.endswith(f"Answer: {letter}") and letter in "ABCD" and "unknown" not in text
