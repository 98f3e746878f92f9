"""Does CRM recover the planted truth of the default run?

    python checks/crm_truth.py RESULTS_DIR [--config config.yaml]

Reads ``RESULTS_DIR/crm/{model}/{dataset}/attribution.parquet`` and
``modes.parquet`` and prints, per model and dataset: precision and recall of
the ``depends`` flags against ``gold_depends`` (the steps whose gold solution
changes when the panel is hidden), the share of each mode (``no_control``
included) with the most frequent one, and, for a model with a planted
behaviour, the precision and recall of its planted mode: recall = the share
of its cases in that mode (every case counts, undecided and without a
control included); precision = of the cases that the models with a planted
behaviour on that dataset have in that mode, the share that are its own.
Targets (issues 5 and 24): the planted mode (``grounded`` for grounded,
``hallucination`` for blind-spot, ``collapse`` for oversensitive) with
precision and recall >= 0.9 and most frequent; ``depends`` precision and
recall >= 0.9 for the ``grounded`` model. A model's planted behaviour comes
from its reference spec in ``--config``, else from its name. Exit status 1
when a model with a planted behaviour misses a target.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from peekaboo.crm import MODES, depends_precision_recall
from peekaboo.tables import read_table

EXPECTED_MODE = {"grounded": "grounded", "blind-spot": "hallucination", "oversensitive": "collapse"}
MIN_PRECISION_RECALL = 0.9  # for the grounded model


def behaviours(config_path: str | None, models: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {m: (m if m in EXPECTED_MODE else None) for m in models}
    if config_path:
        import peekaboo.config as pcfg

        cfg = pcfg.load(config_path, check_paths=False)
        for m, spec in cfg["models"].items():
            if spec.get("reference"):
                out[m] = spec["reference"]["behaviour"]
    return out


def planted_mode_scores(tables: dict, planted: dict, model: str, dataset: str) -> tuple[float, float]:
    """Precision and recall of ``model``'s planted mode on ``dataset`` (NaN without a planted behaviour or cases)."""
    expected = EXPECTED_MODE.get(planted.get(model) or "")
    modes = tables[(model, dataset)][1]
    if expected is None or not len(modes):
        return math.nan, math.nan
    recall = float((modes["mode"] == expected).mean())
    # every case in that mode of the models with a planted behaviour on this dataset
    labelled = {m: int((t[1]["mode"] == expected).sum()) for (m, d), t in tables.items()
                if d == dataset and EXPECTED_MODE.get(planted.get(m) or "") and len(t[1])}
    total = sum(labelled.values())
    own = sum(n for m, n in labelled.items() if EXPECTED_MODE.get(planted.get(m) or "") == expected)
    return (own / total if total else math.nan), recall


def fmt(x: float) -> str:
    return "  n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:5.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="results directory of a run")
    parser.add_argument("--config", help="the run's config (to read each reference model's behaviour)")
    args = parser.parse_args(argv)

    crm_dir = Path(args.results) / "crm"
    pairs = sorted((p.parent.parent.name, p.parent.name) for p in crm_dir.glob("*/*/modes.parquet"))
    if not pairs:
        print(f"no CRM tables under {crm_dir}", file=sys.stderr)
        return 1
    planted = behaviours(args.config, sorted({m for m, _ in pairs}))

    tables = {(m, d): (read_table(crm_dir / m / d / "attribution.parquet"), read_table(crm_dir / m / d / "modes.parquet"))
              for m, d in pairs}
    rows, failures = [], []
    for model, dataset in pairs:
        attribution, modes = tables[(model, dataset)]
        precision, recall, n_known = depends_precision_recall(attribution)
        counts = modes["mode"].value_counts()
        top = counts.index[0] if len(counts) else None
        behaviour = planted.get(model)
        mode_precision, mode_recall = planted_mode_scores(tables, planted, model, dataset)
        row = {
            "model": model,
            "dataset": dataset,
            "behaviour": behaviour or "-",
            "cases": len(modes),
            "steps_with_gold": n_known,
            "precision": precision,
            "recall": recall,
            **{m: counts.get(m, 0) / len(modes) if len(modes) else math.nan for m in MODES},
            "most_frequent": top or "-",
            "expected": EXPECTED_MODE.get(behaviour or "", "-"),
            "mode_precision": mode_precision,
            "mode_recall": mode_recall,
        }
        checks = []
        if not len(modes):
            # a dataset run without masks (masks: false) has nothing for CRM to judge
            row["verdict"] = "no masked traces"
            rows.append(row)
            continue
        if behaviour in EXPECTED_MODE:
            checks.append(("most frequent mode", top == EXPECTED_MODE[behaviour]))
            for name, value in (("mode precision", mode_precision), ("mode recall", mode_recall)):
                checks.append((f"{name} >= {MIN_PRECISION_RECALL}", not math.isnan(value) and value >= MIN_PRECISION_RECALL))
        if behaviour == "grounded":
            for name, value in (("precision", precision), ("recall", recall)):
                checks.append((f"{name} >= {MIN_PRECISION_RECALL}", not math.isnan(value) and value >= MIN_PRECISION_RECALL))
        row["verdict"] = "-" if not checks else ("ok" if all(ok for _, ok in checks) else "MISS")
        failures += [f"{model}/{dataset}: {name}" for name, ok in checks if not ok]
        rows.append(row)

    table = pd.DataFrame(rows)
    for col in ("precision", "recall", *MODES, "mode_precision", "mode_recall"):
        table[col] = table[col].map(fmt)
    print(f"CRM against the planted truth ({args.results})")
    print("precision/recall: `depends` against `gold_depends` over attribution rows where both are known; "
          "mode_precision/mode_recall: the planted mode among the planted models' cases on the dataset")
    print(table.to_string(index=False))
    if failures:
        print("\nmissed: " + "; ".join(failures))
        return 1
    judged = [r for r in rows if r["verdict"] in ("ok", "MISS")]
    if not judged:
        print("\nno dataset with masked traces: nothing to judge")
        return 1
    print("\nall planted-truth targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
