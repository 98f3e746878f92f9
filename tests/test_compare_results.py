"""checks/compare_results.py: two results folders compared by content, exactly or with floats within a tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from fixtures.scripts import load_script



CMP = load_script("checks/compare_results.py")


def _write(root: Path, share: float, verdict: str = "consistent", nested: float = 0.5, array: float = 0.25,
           csv: float = 0.123456789) -> Path:
    (root / "collapse").mkdir(parents=True)
    pd.DataFrame({"trace_id": ["a", "b"], "share": [0.1, share], "correct": [True, False],
                  "curve": [[0.1, nested], [0.3]]}).to_parquet(root / "collapse" / "t.parquet")
    pd.DataFrame({"id": ["x"], "estimate": [csv], "verdict": [verdict]}).to_csv(root / "claims.csv", index=False)
    xr.Dataset({"attention": (("t", "k"), np.array([[array, 0.5]], dtype=np.float32))},
               attrs={"provenance": "p", "n": 2}).to_zarr(root / "s.zarr")
    (root / "reference").mkdir()
    (root / "reference" / "training.json").write_text(json.dumps({"loss": {"last": share}, "steps": 3, "seconds": 1}))
    return root


def test_exact_by_default_and_floats_within_the_tolerance(tmp_path):
    a = _write(tmp_path / "a", 0.2)
    b = _write(tmp_path / "b", 0.2 + 4e-7, nested=0.5 - 3e-7, array=0.25 + 2e-7, csv=0.1234572)
    assert CMP.compare(a, a) == []
    exact = CMP.compare(a, b)
    assert sorted(p.split(":")[0] for p in exact) == ["claims.csv", "collapse/t.parquet", "reference/training.json", "s.zarr"]
    assert CMP.compare(a, b, 1e-6) == []
    # beyond the tolerance: the column, the row and both values are named
    assert CMP.compare(a, b, 1e-7) == [
        "claims.csv: line 2: 0.123456789 against 0.1234572",
        "collapse/t.parquet: column share, row 1: 0.2 against 0.2000004",
        "reference/training.json: training report differs: loss.last: 0.2 against 0.2000004",
        "s.zarr: array attention differs beyond the tolerance at (0, 0): 0.25 against 0.2500002",
    ]


def test_verdicts_and_other_non_floats_must_still_be_equal(tmp_path):
    a = _write(tmp_path / "a", 0.2)
    b = _write(tmp_path / "b", 0.2, verdict="inconsistent")
    assert CMP.compare(a, b, 1e-6) == [
        "claims.csv: line 2 differs beyond its numbers: 'x,0.123456789,consistent' against 'x,0.123456789,inconsistent'"]
    pd.DataFrame({"trace_id": ["a", "b"], "share": [0.1, 0.2], "correct": [True, True], "curve": [[0.1, 0.5], [0.3]]}
                 ).to_parquet(b / "collapse" / "t.parquet")
    assert "collapse/t.parquet: column correct differs (not a float column)" in CMP.compare(a, b, 1e-6)


def test_main_prints_the_count_and_rejects_a_negative_tolerance(tmp_path, capsys):
    a = _write(tmp_path / "a", 0.2)
    b = _write(tmp_path / "b", 0.2 + 4e-7)
    assert CMP.main([str(a), str(b), "--tolerance", "1e-6"]) == 0
    assert "files the same (provenance aside, floats within 1e-06)" in capsys.readouterr().out
    assert CMP.main([str(a), str(b)]) == 1
    with pytest.raises(SystemExit):
        CMP.main([str(a), str(b), "--tolerance", "-1"])
