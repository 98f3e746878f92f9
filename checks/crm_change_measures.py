"""How well each step-change measure tells a paraphrase from a changed fact (docs/crm.md, "Step change").

    python checks/crm_change_measures.py [--pairs tests/data/crm_step_pairs.csv] [--encoder all-MiniLM-L6-v2]

Reads the labelled step pairs (``kind``, ``a``, ``b``, ``changed``: 0 for
paraphrases, 1 for changed colours, numbers, entities, acknowledgements of a
hidden region and unrelated steps) and prints, per measure of
``peekaboo.stepchange``, the AUROC of "changed" against "paraphrase" over all
pairs and per kind of change, and the highest paraphrase score beside the
lowest changed one. Exit status 1 when the configured default
(``crm.change_measure``) is not the best overall.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from peekaboo import schema
from peekaboo.alignment import DEFAULT_ENCODER, StepEncoder
from peekaboo.stepchange import MEASURES, Acknowledgement, auroc, step_change

DEFAULT_PAIRS = Path(__file__).resolve().parent.parent / "tests" / "data" / "crm_step_pairs.csv"


def measure_table(pairs: pd.DataFrame, encoder: StepEncoder, ack: Acknowledgement) -> pd.DataFrame:
    """One row per measure: AUROC over all pairs and per kind of change (each kind against the paraphrases)."""
    a, b = pairs["a"].tolist(), pairs["b"].tolist()
    encoder.embed(sorted(set(a) | set(b)))
    ea, eb = encoder.embed(a), encoder.embed(b)
    cos = np.sum(ea * eb, axis=1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    labels = pairs["changed"].astype(int).to_numpy()
    kinds = [k for k in pairs["kind"].unique() if k != "paraphrase"]
    para = (pairs["kind"] == "paraphrase").to_numpy()
    rows = []
    for measure in MEASURES:
        s = np.array([step_change(x, y, float(c), measure, ack) for x, y, c in zip(a, b, cos)])
        row = {"measure": measure, "auroc_all": auroc(s, labels)}
        for kind in kinds:
            sel = para | (pairs["kind"] == kind).to_numpy()
            row[f"auroc_{kind}"] = auroc(s[sel], labels[sel])
        row["max_paraphrase"] = float(s[para].max())
        row["min_changed"] = float(s[~para].min())
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default=str(DEFAULT_PAIRS))
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    args = parser.parse_args(argv)
    pairs = pd.read_csv(args.pairs)
    missing = {"kind", "a", "b", "changed"} - set(pairs.columns)
    if missing:
        print(f"{args.pairs}: missing columns {sorted(missing)}", file=sys.stderr)
        return 1
    crm_cfg = schema.section("crm", {})
    table = measure_table(pairs, StepEncoder(args.encoder, device="cpu"), Acknowledgement(crm_cfg["acknowledgement_phrases"]))
    counts = pairs["kind"].value_counts()
    print(f"{len(pairs)} labelled step pairs ({args.pairs}): " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    print("AUROC of each measure: a changed pair scoring above a paraphrase (ties half); per kind: that kind "
          "against the paraphrases")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    best = table.sort_values("auroc_all", ascending=False, kind="stable").iloc[0]["measure"]
    default = crm_cfg["change_measure"]
    print(f"\nbest overall: {best}; crm.change_measure default: {default}")
    return 0 if table.set_index("measure").loc[default, "auroc_all"] >= table["auroc_all"].max() else 1


if __name__ == "__main__":
    sys.exit(main())
