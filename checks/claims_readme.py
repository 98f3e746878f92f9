"""The README's claims table from a run's results/claims.csv, and whether the README holds it.

    .venv/bin/python checks/claims_readme.py results                  # print the table (markdown) for README.md
    .venv/bin/python checks/claims_readme.py results --check README.md  # exit 1 unless README.md's table is this run's

The README shows the default run's claims table (``reason`` left out):
finding, the paper's figure, the vision measure (``(secondary)`` where it is
not the primary one), this run's estimate with its 95% interval (three
significant digits, signed; ``n/a`` without an estimate), the unit and the
verdict. ``--check`` compares the README's table row by row with the one this
run's claims.csv gives and prints every row that differs; tests/test_readme_claims.py
runs it whenever a default run's results are at hand.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

HEADER = "| finding | paper | vision measure | this run: estimate [95% interval] | unit | verdict |"


def _g(x) -> str:
    return f"{float(x):+.3g}"


def _blank(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or str(x) in ("", "nan")


def estimate_text(estimate, low, high) -> str:
    """``+26 [+23.6, +28.6]``, ``-0.119`` without an interval, ``n/a`` without an estimate."""
    if _blank(estimate) or not math.isfinite(float(estimate)):
        return "n/a"
    if _blank(low) or _blank(high) or not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return _g(estimate)
    return f"{_g(estimate)} [{_g(low)}, {_g(high)}]"


def rows(claims) -> list[list[str]]:
    """The README's cells of each row of a claims table (a DataFrame of claims.csv)."""
    out = []
    for r in claims.to_dict("records"):
        measure = "" if _blank(r.get("vision_measure")) else str(r["vision_measure"])
        primary = r.get("primary")
        if measure and not _blank(primary) and str(primary).strip().lower() in ("false", "0"):
            measure += " (secondary)"
        out.append([f"`{r['id']}`", "" if _blank(r.get("paper_figure")) else str(r["paper_figure"]), measure,
                    estimate_text(r.get("estimate"), r.get("ci_low"), r.get("ci_high")), str(r["unit"]),
                    str(r["verdict"])])
    return out


def markdown(claims) -> str:
    lines = [HEADER, "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows(claims)]
    return "\n".join(lines)


def readme_rows(text: str) -> list[list[str]]:
    """The cells of each row of the claims table in a README's text (the table under HEADER)."""
    lines = text.splitlines()
    try:
        start = lines.index(HEADER)
    except ValueError:
        raise ValueError(f"no claims table (a line {HEADER!r}) in the README") from None
    out = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        out.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return out


def differences(readme_text: str, claims) -> list[str]:
    """One line per README row that is not the run's (empty: the README holds this run's table)."""
    want, have = rows(claims), readme_rows(readme_text)
    out = []
    for i in range(max(len(want), len(have))):
        w = want[i] if i < len(want) else None
        h = have[i] if i < len(have) else None
        if w != h:
            out.append(f"row {i + 1}: README {' | '.join(h) if h else '(none)'}  //  this run {' | '.join(w) if w else '(none)'}")
    return out


def main(argv=None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="?", default=Path("results"))
    ap.add_argument("--check", type=Path, default=None, help="a README whose claims table must be this run's")
    args = ap.parse_args(argv)
    claims = pd.read_csv(args.results / "claims.csv", keep_default_na=False, na_values=[""])
    if args.check is None:
        print(markdown(claims))
        return 0
    diffs = differences(args.check.read_text(), claims)
    for line in diffs:
        print(line)
    print(f"{len(rows(claims)) - len(diffs)} of {len(rows(claims))} rows of {args.check} are this run's claims table")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
