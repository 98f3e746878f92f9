"""Are two results folders the same, provenance aside?

    python checks/compare_results.py RESULTS_A RESULTS_B

Compares every file the two folders share, by what it holds rather than by
its bytes where a file records its provenance: parquet tables by schema and
data (their key-value metadata holds the config and code hashes), Zarr stores
by every array and attribute except the provenance ones, a training report and
the regression summary without their provenance and timings; every other file
(images, figures, CSV tables, model weights) byte for byte. Logs and benchmark
timings are skipped. Prints one line per difference and a count; exits 1 when
anything differs or a file is in one folder only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

PROVENANCE_KEYS = {"config_hash", "code_hash", "package_version", "provenance", "model_revision"}
SKIPPED_DIRS = {"logs", "benchmarks", ".snakemake"}


def _files(root: Path) -> set[str]:
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIPPED_DIRS or any(p.endswith(".zarr") for p in rel.parts[:-1]):
            continue
        if path.is_file() or path.suffix == ".zarr":
            out.add(rel.as_posix())
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parquet(a: Path, b: Path) -> str | None:
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.schema.remove_metadata() != tb.schema.remove_metadata():
        return "schema differs"
    if not ta.replace_schema_metadata(None).equals(tb.replace_schema_metadata(None)):
        return "data differs"
    return None


def _zarr(a: Path, b: Path) -> str | None:
    import numpy as np
    import xarray as xr

    da, db = xr.open_zarr(a), xr.open_zarr(b)
    if set(da.variables) != set(db.variables):
        return f"arrays differ: {sorted(set(da.variables) ^ set(db.variables))}"
    for name in da.variables:
        va, vb = da[name].values, db[name].values
        same = np.array_equal(va, vb, equal_nan=va.dtype.kind == "f")
        if not same:
            return f"array {name} differs"
    attrs = [{k: v for k, v in d.attrs.items() if k not in PROVENANCE_KEYS} for d in (da, db)]
    return None if attrs[0] == attrs[1] else "attributes differ"


def _training_json(a: Path, b: Path) -> str | None:
    drop = {"provenance", "seconds", "data_seconds"}
    ja, jb = ({k: v for k, v in json.loads(p.read_text()).items() if k not in drop} for p in (a, b))
    return None if ja == jb else "training report differs"


def _summary_txt(a: Path, b: Path) -> str | None:
    texts = [[line for line in p.read_text().splitlines() if not line.startswith("provenance:")] for p in (a, b)]
    return None if texts[0] == texts[1] else "text differs"


def compare(a_root: Path, b_root: Path) -> list[str]:
    problems = []
    fa, fb = _files(a_root), _files(b_root)
    problems += [f"only in {a_root}: {f}" for f in sorted(fa - fb)]
    problems += [f"only in {b_root}: {f}" for f in sorted(fb - fa)]
    for rel in sorted(fa & fb):
        a, b = a_root / rel, b_root / rel
        if rel.endswith(".zarr"):
            why = _zarr(a, b)
        elif rel.endswith(".parquet"):
            why = _parquet(a, b)
        elif rel.endswith("training.json"):
            why = _training_json(a, b)
        elif rel.endswith("regression/summary.txt"):
            why = _summary_txt(a, b)
        else:
            why = None if _digest(a) == _digest(b) else "bytes differ"
        if why:
            problems.append(f"{rel}: {why}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    problems = compare(args.a, args.b)
    for line in problems:
        print(line)
    n = len(_files(args.a) | _files(args.b))
    print(f"{n - len(problems)} of {n} files the same (provenance aside)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
