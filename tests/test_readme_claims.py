"""The README's claims table is the default run's: checks/claims_readme.py, and the comparison with a run's claims.csv.

The comparison runs whenever a default run's results are at hand: the folder
named by PEEKABOO_DEFAULT_RESULTS, else the checkout's results/ when it holds a
claims.csv of the default config's datasets and models (otherwise skipped, as
the README's screenshot test is without its run).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures.scripts import load_script

REPO = Path(__file__).resolve().parents[1]


CR = load_script("checks/claims_readme.py")


def test_rows_are_written_as_the_readme_writes_them():
    claims = pd.DataFrame([
        {"id": "evidence_collapse", "paper_figure": "57-91%", "vision_measure": "image_share", "primary": False,
         "estimate": 48.96, "ci_low": 48.04, "ci_high": 49.91, "unit": "%", "verdict": "inconsistent"},
        {"id": "entropy_transfer", "paper_figure": np.nan, "vision_measure": np.nan, "primary": np.nan,
         "estimate": -0.11904, "ci_low": -0.16812, "ci_high": -0.07093, "unit": "AUROC", "verdict": "inconsistent"},
        {"id": "interaction_symbolic", "paper_figure": "", "vision_measure": "evidence_share", "primary": True,
         "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "unit": "logit", "verdict": "not estimable"},
    ])
    assert CR.rows(claims) == [
        ["`evidence_collapse`", "57-91%", "image_share (secondary)", "+49 [+48, +49.9]", "%", "inconsistent"],
        ["`entropy_transfer`", "", "", "-0.119 [-0.168, -0.0709]", "AUROC", "inconsistent"],
        ["`interaction_symbolic`", "", "evidence_share", "n/a", "logit", "not estimable"],
    ]
    text = "intro\n\n" + CR.markdown(claims) + "\n\nafter\n"
    assert CR.differences(text, claims) == []
    changed = claims.copy()
    changed.loc[1, "verdict"] = "consistent"
    assert CR.differences(text, changed) == [
        "row 2: README `entropy_transfer` |  |  | -0.119 [-0.168, -0.0709] | AUROC | inconsistent  //  this run "
        "`entropy_transfer` |  |  | -0.119 [-0.168, -0.0709] | AUROC | consistent"]
    assert len(CR.differences(text, claims.iloc[:2])) == 1


def _default_results() -> Path | None:
    named = os.environ.get("PEEKABOO_DEFAULT_RESULTS")
    if named:
        return Path(named)
    results = REPO / "results"
    if not (results / "claims.csv").exists():
        return None
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    claims = pd.read_csv(results / "claims.csv", keep_default_na=False)
    used = {name for col in ("datasets", "models") for cell in claims[col] for name in (n.strip() for n in str(cell).split(",")) if name}
    # a run of another config (other datasets or models) is not the README's
    return results if used and used <= set(cfg["datasets"]) | set(cfg["models"]) else None


def test_the_readme_claims_table_is_the_default_runs():
    results = _default_results()
    if results is None:
        pytest.skip("no default run's results (PEEKABOO_DEFAULT_RESULTS, or results/ of config.yaml): the README's "
                    "claims table is compared with such a run only")
    claims = pd.read_csv(results / "claims.csv", keep_default_na=False, na_values=[""])
    diffs = CR.differences((REPO / "README.md").read_text(), claims)
    assert diffs == [], "README.md's claims table is not this run's (checks/claims_readme.py prints it):\n" + "\n".join(diffs)
