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
    sc = StepChanges(np.asarray(values, float), np.ones(len(values), bool), np.zeros(len(values), bool),
                     np.zeros(len(values), bool))
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

QUIET_CONTROL = dict(has_control=True, control_change=0.0)


def case(**kw):
    base = dict(
        evidence_change=0.5, evidence_step_changed=True, answer_changed=True, abstained=False, newly_abstained=False,
        has_answer=True, match_f1=1.0, off_target_changed=False, needed=True,
    )
    base.update(QUIET_CONTROL)
    base.update(kw)
    return Case(**base)


def test_rule_collapse_when_the_control_changes_as_much():
    mode, rule, detail = decide_mode(
        case(abstained=True, newly_abstained=True, control_change=0.45, control_step_changed=True,
             control_answer_changed=True), CRM_CFG)
    assert (mode, rule) == ("collapse", "control_as_strong")
    assert "0.450 >= 0.75 x evidence change 0.500" in detail
    # a control change below collapse_ratio x the evidence change is not collapse by this rule
    mode, rule, _ = decide_mode(case(abstained=True, newly_abstained=True, control_change=0.2,
                                     control_step_changed=True), CRM_CFG)
    assert (mode, rule) == ("grounded", "changed_dependent_control_quiet")


def test_rule_insensitive_when_nothing_changes_and_the_region_is_not_needed():
    quiet = dict(evidence_change=0.01, evidence_step_changed=False, answer_changed=False)
    assert decide_mode(case(needed=False, **quiet), CRM_CFG)[:2] == ("insensitive", "unchanged_not_needed")
    assert decide_mode(case(needed=None, **quiet), CRM_CFG)[:2] == ("insensitive", "unchanged_not_needed")
    # needed but unchanged: CRM decides only on change, so it says nothing (the model may ignore the image)
    assert decide_mode(case(needed=True, **quiet), CRM_CFG)[:2] == ("undecided", "unchanged_but_needed")


@pytest.mark.parametrize("needed", [True, False, None])
@pytest.mark.parametrize("has_answer", [True, False])
@pytest.mark.parametrize("has_control", [True, False])
@pytest.mark.parametrize("match_f1", [1.0, 0.4, 0.0])
@pytest.mark.parametrize("abstained", [True, False])
def test_a_case_where_nothing_changed_is_only_ever_insensitive_or_undecided(needed, has_answer, has_control,
                                                                          match_f1, abstained):
    # the traces did not change under either mask (an abstaining base trace that still abstains included)
    c = Case(evidence_change=0.0, evidence_step_changed=False, answer_changed=False, abstained=abstained,
             newly_abstained=False, has_answer=has_answer, match_f1=match_f1, off_target_changed=False,
             needed=needed, has_control=has_control, control_change=0.0 if has_control else math.nan)
    mode, rule, detail = decide_mode(c, CRM_CFG)
    assert mode in ("insensitive", "undecided"), (mode, rule, detail)
    assert (mode == "undecided") == (needed is True)


def test_rule_hallucination_keeps_structure_without_abstaining():
    assert decide_mode(case(match_f1=0.5), CRM_CFG)[:2] == ("hallucination", "kept_structure_no_abstention")
    # structure lost: not hallucination
    assert decide_mode(case(match_f1=0.3), CRM_CFG)[0] != "hallucination"
    # no answer at all (e.g. truncated): not asserting anything
    assert decide_mode(case(has_answer=False), CRM_CFG)[0] != "hallucination"


def test_rule_grounded_changes_dependent_steps_and_abstains():
    assert decide_mode(case(abstained=True, newly_abstained=True, match_f1=0.6), CRM_CFG)[:2] == (
        "grounded", "changed_dependent_control_quiet")
    # no abstention, structure gone, only the dependent steps changed
    assert decide_mode(case(match_f1=0.3), CRM_CFG)[0] == "grounded"
    # abstaining is enough even when other steps went too (the chain stops at the hidden panel)
    assert decide_mode(case(abstained=True, off_target_changed=True, match_f1=0.2), CRM_CFG)[0] == "grounded"


def test_rule_fell_apart_is_collapse():
    # the steps that do not read the region changed and the model did not abstain
    assert decide_mode(case(match_f1=0.2, off_target_changed=True), CRM_CFG)[:2] == ("collapse", "fell_apart")
    # the control flipped the answer, though it changed less than the evidence mask
    assert decide_mode(case(abstained=True, newly_abstained=True, control_change=0.1,
                            control_answer_changed=True), CRM_CFG)[:2] == ("collapse", "fell_apart")


def test_thresholds_come_from_the_config():
    c = case(match_f1=0.6)
    assert decide_mode(c, CRM_CFG)[0] == "hallucination"
    assert decide_mode(c, {**CRM_CFG, "structure_f1": 0.7})[0] == "grounded"
    c = case(abstained=True, newly_abstained=True, control_change=0.3, control_step_changed=True)
    assert decide_mode(c, CRM_CFG)[0] == "grounded"
    assert decide_mode(c, {**CRM_CFG, "collapse_ratio": 0.5})[0] == "collapse"
    assert set(MODE_RULES) == {"control_as_strong", "unchanged_not_needed", "unchanged_but_needed",
                               "kept_structure_no_abstention", "changed_dependent_control_quiet", "fell_apart"}


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
