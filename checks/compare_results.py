"""Are two results folders the same, provenance aside?

    python checks/compare_results.py RESULTS_A RESULTS_B
    python checks/compare_results.py RESULTS_A RESULTS_B --tolerance 1e-6

Compares every file the two folders share, by what it holds rather than by
its bytes where a file records its provenance: parquet tables by schema and
data (their key-value metadata holds the config and code hashes), Zarr stores
by every array and attribute except the provenance ones, a training report and
the regression summary without their provenance and timings; every other file
(images, figures, CSV tables, model weights) byte for byte. Logs and benchmark
timings are skipped. Prints one line per difference and a count; exits 1 when
anything differs or a file is in one folder only.

With ``--tolerance T`` floating-point values are equal when they differ by at
most T times the larger of 1 and their magnitude (T absolute for values up to
1, relative above): float columns and arrays (nested ones too) of parquet
tables and Zarr stores, numbers in JSON reports, and the numbers written in
CSV tables and text summaries. Everything else (verdicts, modes, answers,
correctness, texts, integers, the non-numeric parts of CSV and text) must
still be equal exactly; the first differing row or value is named. Images and
figures are still compared byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

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


# a number as CSV tables and text summaries write it
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)\b", re.IGNORECASE)


def _close(x: float, y: float, tol: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= tol * max(1.0, abs(x), abs(y))


def _show(v: Any) -> str:
    if hasattr(v, "dtype"):  # a numpy scalar: its own precision
        return str(v)
    return f"{v:.10g}" if isinstance(v, float) else repr(v)


def _values_close(a: Any, b: Any, tol: float, where: str = "") -> str | None:
    """None when ``a`` and ``b`` (JSON-like values) are equal, floats within ``tol``; else where they differ."""
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
            return None if _close(float(a), float(b), tol) else f"{where or 'value'}: {_show(a)} against {_show(b)}"
        return f"{where or 'value'}: {_show(a)} against {_show(b)}"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{where or 'keys'}: keys {sorted(map(str, set(a) ^ set(b)))} in one only"
        for key in a:
            why = _values_close(a[key], b[key], tol, f"{where}.{key}" if where else str(key))
            if why:
                return why
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where or 'list'}: {len(a)} against {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b)):
            why = _values_close(x, y, tol, f"{where}[{i}]")
            if why:
                return why
        return None
    return None if a == b else f"{where or 'value'}: {a!r} against {b!r}"


def _text_close(a: str, b: str, tol: float) -> str | None:
    """None when two texts are equal but for the numbers in them, which are within ``tol``; else the first line that differs."""
    la, lb = a.splitlines(), b.splitlines()
    if len(la) != len(lb):
        return f"{len(la)} against {len(lb)} lines"
    for n, (x, y) in enumerate(zip(la, lb), 1):
        if x == y:
            continue
        if _NUMBER.split(x) != _NUMBER.split(y):
            return f"line {n} differs beyond its numbers: {x[:120]!r} against {y[:120]!r}"
        for u, v in zip(_NUMBER.findall(x), _NUMBER.findall(y)):
            if not _close(float(u), float(v), tol):
                return f"line {n}: {u} against {v}"
    return None


def _float_type(t) -> bool:
    import pyarrow as pa

    if pa.types.is_floating(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _float_type(t.value_type)
    if pa.types.is_struct(t):
        return any(_float_type(t.field(i).type) for i in range(t.num_fields))
    return False


def _parquet(a: Path, b: Path, tol: float = 0.0) -> str | None:
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.schema.remove_metadata() != tb.schema.remove_metadata():
        return "schema differs"
    ta, tb = ta.replace_schema_metadata(None), tb.replace_schema_metadata(None)
    if ta.equals(tb):
        return None
    if not tol:
        return "data differs"
    if ta.num_rows != tb.num_rows:
        return f"{ta.num_rows} against {tb.num_rows} rows"
    for name in ta.column_names:
        ca, cb = ta.column(name), tb.column(name)
        if ca.equals(cb):
            continue
        if not _float_type(ca.type):
            return f"column {name} differs (not a float column)"
        for row, (x, y) in enumerate(zip(ca.to_pylist(), cb.to_pylist())):
            why = _values_close(x, y, tol, f"column {name}, row {row}")
            if why:
                return why
    return None


def _zarr(a: Path, b: Path, tol: float = 0.0) -> str | None:
    import numpy as np
    import xarray as xr

    da, db = xr.open_zarr(a), xr.open_zarr(b)
    if set(da.variables) != set(db.variables):
        return f"arrays differ: {sorted(set(da.variables) ^ set(db.variables))}"
    for name in da.variables:
        va, vb = da[name].values, db[name].values
        same = np.array_equal(va, vb, equal_nan=va.dtype.kind == "f")
        if not same and tol and va.dtype.kind == "f" and va.shape == vb.shape:
            scale = np.maximum(1.0, np.maximum(np.abs(va), np.abs(vb)))
            with np.errstate(invalid="ignore"):
                close = (np.abs(va - vb) <= tol * scale) | (np.isnan(va) & np.isnan(vb)) | (va == vb)
            if close.all():
                continue
            worst = np.unravel_index(np.nanargmax(np.where(close, 0, np.abs(va - vb))), va.shape)
            return f"array {name} differs beyond the tolerance at {tuple(map(int, worst))}: {_show(va[worst])} against {_show(vb[worst])}"
        if not same:
            return f"array {name} differs"
    attrs = [{k: v for k, v in d.attrs.items() if k not in PROVENANCE_KEYS} for d in (da, db)]
    if tol:
        why = _values_close(attrs[0], attrs[1], tol, "attributes")
        return why
    return None if attrs[0] == attrs[1] else "attributes differ"


def _training_json(a: Path, b: Path, tol: float = 0.0) -> str | None:
    drop = {"provenance", "seconds", "data_seconds"}
    ja, jb = ({k: v for k, v in json.loads(p.read_text()).items() if k not in drop} for p in (a, b))
    if tol:
        why = _values_close(ja, jb, tol)
        return f"training report differs: {why}" if why else None
    return None if ja == jb else "training report differs"


def _summary_txt(a: Path, b: Path, tol: float = 0.0) -> str | None:
    texts = [[line for line in p.read_text().splitlines() if not line.startswith("provenance:")] for p in (a, b)]
    if tol:
        return _text_close("\n".join(texts[0]), "\n".join(texts[1]), tol)
    return None if texts[0] == texts[1] else "text differs"


def _csv(a: Path, b: Path, tol: float) -> str | None:
    return _text_close(a.read_text(), b.read_text(), tol)


def compare(a_root: Path, b_root: Path, tolerance: float = 0.0) -> list[str]:
    problems = []
    fa, fb = _files(a_root), _files(b_root)
    problems += [f"only in {a_root}: {f}" for f in sorted(fa - fb)]
    problems += [f"only in {b_root}: {f}" for f in sorted(fb - fa)]
    for rel in sorted(fa & fb):
        a, b = a_root / rel, b_root / rel
        tol = tolerance
        if rel.endswith(".zarr"):
            why = _zarr(a, b, tol)
        elif rel.endswith(".parquet"):
            why = _parquet(a, b, tol)
        elif rel.endswith("training.json"):
            why = _training_json(a, b, tol)
        elif rel.endswith("regression/summary.txt"):
            why = _summary_txt(a, b, tol)
        elif _digest(a) == _digest(b):
            why = None
        elif tol and rel.endswith((".csv", ".txt", ".jsonl")):
            why = _csv(a, b, tol)
        else:
            why = "bytes differ"
        if why:
            problems.append(f"{rel}: {why}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="floats equal within this (absolute up to 1, relative above); default 0: exactly")
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        parser.error("--tolerance: must be >= 0")
    problems = compare(args.a, args.b, args.tolerance)
    for line in problems:
        print(line)
    n = len(_files(args.a) | _files(args.b))
    within = f", floats within {args.tolerance:g}" if args.tolerance else ""
    print(f"{n - len(problems)} of {n} files the same (provenance aside{within})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
