"""checks/blink_truth.py: its measures on hand-built results tables whose answers are known."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peekaboo.tables import write_table
from fixtures.scripts import load_script



@pytest.fixture(scope="module")
def check():
    return load_script("checks/blink_truth.py")


def write_results(root: Path, dataset: str, rows: list[dict]) -> None:
    """items/{d}.parquet (meta.blink) and collapse/blinker/{d}.traces.parquet (base traces) from ``rows``."""
    items = pd.DataFrame({
        "item_id": [r["item_id"] for r in rows],
        "meta": [json.dumps({"blink": r["blink"], "gold_steps": r.get("gold_steps", [])}) for r in rows],
    })
    write_table(items, root / "items" / f"{dataset}.parquet")
    traces = pd.DataFrame({
        "trace_id": [f"blinker|{r['item_id']}|base|none" for r in rows],
        "model": "blinker", "dataset": dataset, "item_id": [r["item_id"] for r in rows],
        "variant": "base", "task_type": [r["task"] for r in rows], "status": "ok",
        "correct": [r["correct"] for r in rows], "entropy_full": [r["entropy"] for r in rows],
        "vision": [r["vision"] for r in rows], "vision_measure": "evidence_share", "vision_steps": "think",
    })
    write_table(traces, root / "collapse" / "blinker" / f"{dataset}.traces.parquet")


def dataset_rows(n_look=14, n_blink=3, n_symbolic=3, seed=0, blink_vision=0.01):
    g = np.random.default_rng(seed)
    rows = []
    for i in range(n_look):  # look: vision high, the least confident wrong
        rows.append({"item_id": f"l{i}", "blink": False, "task": "visual_reference", "correct": i >= 2,
                     "entropy": 0.5 - 0.01 * i, "vision": 0.6 + 0.3 * g.random()})
    for i in range(n_blink):  # blink: confident, disengaged, wrong
        rows.append({"item_id": f"b{i}", "blink": True, "task": "visual_reference", "correct": False,
                     "entropy": 0.001 * (i + 1), "vision": blink_vision})
    for i in range(n_symbolic):
        rows.append({"item_id": f"s{i}", "blink": False, "task": "symbolic", "correct": True,
                     "entropy": 0.05, "vision": np.nan})
    return rows


def test_separation_and_confident_errors_on_known_tables(check, tmp_path):
    write_results(tmp_path, "d", dataset_rows())
    df = check.base_rows(tmp_path, "blinker", ["base"])
    assert df["blink"].sum() == 3 and df["blink"].notna().all()

    sep = check.separation(df).set_index("dataset")
    assert sep.loc["d", "auroc"] == 1.0 and sep.loc["d", "n_blink"] == 3 and sep.loc["d", "n_look"] == 14
    # vision that does not separate: AUROC 0 when every blink item looks more than every look item
    write_results(tmp_path, "d", dataset_rows(blink_vision=0.95))
    assert check.separation(check.base_rows(tmp_path, "blinker", ["base"])).iloc[0]["auroc"] == 0.0

    # 20 answers: 90% coverage keeps 18; the two least confident (l0, l1) are the look errors
    conf = check.confident_errors(df).set_index("dataset").loc["d"]
    assert (conf["blink_errors"], conf["kept"], conf["share_kept"]) == (3, 3, 1.0)
    assert (conf["other_errors"], conf["other_kept"]) == (2, 0)


def test_blink_errors_at_high_entropy_are_not_kept(check, tmp_path):
    rows = dataset_rows()
    for r in rows:
        if r["blink"]:
            r["entropy"] = 0.9  # the least confident: rejected first
    write_results(tmp_path, "d", rows)
    conf = check.confident_errors(check.base_rows(tmp_path, "blinker", ["base"])).iloc[0]
    assert conf["kept"] == 1 and conf["share_kept"] == pytest.approx(1 / 3)


def test_veto_recheck_and_oracle_never_touch_symbolic_items(check, tmp_path):
    for k, name in enumerate(("a", "b", "c")):
        write_results(tmp_path, name, dataset_rows(n_look=30, n_blink=4, n_symbolic=6, seed=k))
    df = check.base_rows(tmp_path, "blinker", ["base"])
    from peekaboo import schema

    recheck, replicates = check.veto_recheck(df, schema.section("selective", {"bootstrap": 200}), 2, "blinker")
    recheck = recheck.set_index("dataset")
    assert (recheck["vetoed_symbolic"] == 0).all() and (recheck["n_symbolic"] == 6).all()
    # the oracle demotes exactly the 4 blink answers: 40 answers, 36 accepted, so all 4 leave
    # and the 4 least confident look answers (2 of them wrong) come in: 4 - 2 = 2 fewer errors
    assert recheck.loc["a", "oracle"] == pytest.approx(-2 / 36)
    assert set(replicates) == {"a", "b", "c"} and all(len(v) == 200 for v in replicates.values())

    # pooled: each dataset weighted by its answers; the interval from the datasets' replicates together
    estimate, low, high = check.pooled_change(recheck.reset_index(), replicates)
    assert estimate == pytest.approx(float(np.average(recheck["delta"], weights=recheck["n"])))
    pooled = sum(recheck.loc[d, "n"] * replicates[d] for d in replicates) / recheck["n"].sum()
    assert (low, high) == pytest.approx(tuple(np.percentile(pooled, [2.5, 97.5])))
    assert low <= estimate <= high


def test_describing_steps_and_crm_response(check, tmp_path):
    gold = [{"text": "Step 1: The top-left shape is red.", "regions": [0], "kind": "step"},
            {"text": "Step 2: The bottom-left shape is red.", "regions": [1], "kind": "step"},
            {"text": "Step 3: red and red match.", "regions": [], "kind": "step"},
            {"text": "Answer: yes", "regions": [], "kind": "answer"}]
    meta = json.dumps({"gold_steps": gold})
    assert check.describing_steps(meta) == {0: 0, 1: 1}

    rows = [{"item_id": "look", "blink": False, "task": "visual_reference", "correct": True, "entropy": 0.1,
             "vision": 0.9, "gold_steps": gold},
            {"item_id": "blink", "blink": True, "task": "visual_reference", "correct": False, "entropy": 0.0,
             "vision": 0.0, "gold_steps": gold[:1] + gold[-1:]}]
    write_results(tmp_path, "p", rows)
    crm = tmp_path / "crm" / "blinker" / "p"
    attribution = pd.DataFrame({
        "item_id": ["look"] * 4 + ["look"] * 4 + ["blink"] * 2, "region": [0] * 4 + [1] * 4 + [0] * 2,
        "fill": "gray", "base_step": [0, 1, 2, 3] * 2 + [0, 1],
        "base_kind": ["think", "think", "think", "answer"] * 2 + ["think", "answer"],
        # hiding region 0 changes its describing step; hiding region 1 does not (a miss)
        "changed": [True, False, True, True, True, False, True, True, False, False],
    })
    write_table(attribution, crm / "attribution.parquet")
    alignment = pd.DataFrame({"item_id": ["look", "look", "blink", "blink"],
                              "variant": ["drop:0", "drop:1", "drop:0", "ctrl:0"],
                              "answer_changed": [True, True, False, True], "abstained": [True, True, False, False]})
    write_table(alignment, crm / "alignment.parquet")
    out = check.crm_response(tmp_path, "blinker").iloc[0]
    assert (out["look_cases"], out["look_step_changed"]) == (2, 0.5)
    assert (out["blink_cases"], out["blink_answer_kept"], out["blink_abstained"]) == (1, 1.0, 0.0)


def test_main_says_when_there_is_nothing_to_judge(check, tmp_path, capsys):
    assert check.main([str(tmp_path), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no blinker model" in capsys.readouterr().out
