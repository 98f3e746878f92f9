"""CRM on traces written as the planted reference models are trained to write them, with seeded drift in wording.

    python checks/crm_simulated.py RESULTS_DIR [--dataset panels] [--drift 0.5] [--seed 0] [--out DIR]

Needs only ``RESULTS_DIR/items/{dataset}.parquet`` and ``masks/{dataset}.parquet``
of a panels dataset (``snakemake results/masks/panels.parquet`` makes both in
seconds): no model is trained or run. For each planted behaviour it writes
the traces that behaviour's training targets give on every base, ``drop:k``
and ``ctrl:k`` mask (``synthetic.gold_solution``'s wording: grounded says the
hidden panel is hidden and answers unknown; blind-spot names a colour drawn
at random for the hidden panel; oversensitive says every panel it reads is
hidden under any mask; with ``--forced-choice`` every answer is a letter
and no model abstains: grounded says the panel is hidden and still picks
one), then rewrites each masked trace's steps, with
probability ``--drift``, into one of a few paraphrases (as a model decoding
greedily does when any pixel changes), runs this checkout's CRM on them with
the schema's defaults, writes ``OUT/crm/{behaviour}/{dataset}/`` and judges it
as ``checks/crm_truth.py`` does. Exit status: crm_truth's.

This checks the rules against drift until the reference models themselves
write in several phrasings; it is no substitute for crm_truth on a real run.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from peekaboo import crm  # noqa: E402
from peekaboo.alignment import get_encoder  # noqa: E402
from peekaboo.steps import segment_traces  # noqa: E402
from peekaboo.tables import read_table, write_table  # noqa: E402

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
PARAPHRASES = [
    (r"^(Step \d+: )The (.+?) shape is (\w+)\.$",
     [r"\1The shape in the \2 panel is \3.", r"\1In the \2 panel, the shape is \3.", r"\1The \2 panel's shape is \3."]),
    (r"^(Step \d+: )The (.+?) panel holds a (\w+)\.$",
     [r"\1There is a \3 in the \2 panel.", r"\1The \2 panel contains a \3."]),
    (r"^(Step \d+: )The (.+?) panel is hidden\.$",
     [r"\1The \2 panel is covered.", r"\1I cannot see the \2 panel; it is hidden."]),
    (r"^(Step \d+: )(\w+) and (\w+) differ\.$", [r"\1\2 and \3 are different.", r"\1\2 differs from \3."]),
    (r"^(Step \d+: )(\w+) and (\w+) match\.$", [r"\1\2 and \3 are the same.", r"\1\2 matches \3."]),
]
_LEAD_RE = re.compile(r"^Step \d+: (?:The (.+?) (?:shape is|panel holds))")


def _renumber(lines: list[str]) -> str:
    out, i = [], 0
    for line in lines:
        if line.startswith("Step "):
            i += 1
            line = re.sub(r"^Step \d+:", f"Step {i}:", line)
        out.append(line)
    return "\n".join(out)


def hidden_solution(steps: list[dict], hidden: set[int]) -> str:
    """The gold solution with the panels of ``hidden`` (region indices) hidden: as ``synthetic.gold_solution``."""
    lines = []
    for g in steps:
        if g.get("kind") == "answer":
            lines.append("Answer: unknown" if hidden & set(g.get("depends") or []) else g["text"])
        elif set(g.get("regions") or []) & hidden:
            m = _LEAD_RE.match(g["text"])
            lines.append(f"Step 0: The {m.group(1) if m else 'hidden'} panel is hidden.")
        elif not g.get("regions") and hidden & set(g.get("depends") or []):
            continue  # the comparison of a value that cannot be read goes
        else:
            lines.append(g["text"])
    return _renumber(lines)


def hallucinated(steps: list[dict], k: int, rng: np.random.Generator) -> str:
    """Blind-spot: the steps reading region k name a colour drawn at random; the rest follows from them."""
    lines = []
    for g in steps:
        text = g["text"]
        if k in (g.get("regions") or []):
            for c in COLOURS:
                text = re.sub(rf"\b{c}\b", COLOURS[int(rng.integers(len(COLOURS)))], text)
        lines.append(text)
    return "\n".join(lines)


def drift(text: str, p: float, rng: np.random.Generator) -> str:
    out = []
    for line in text.split("\n"):
        if rng.random() < p:
            for pattern, options in PARAPHRASES:
                if re.match(pattern, line):
                    line = re.sub(pattern, options[int(rng.integers(len(options)))], line)
                    break
        out.append(line)
    return "\n".join(out)


LETTERS = "ABCD"


def forced_choice(text: str, base_letter: str, rng: np.random.Generator) -> tuple[str, str]:
    """The trace as on a forced-choice prompt: the answer line is a letter (``base_letter`` where the answer is
    the base answer, a drawn letter where the model abstained or answered otherwise); no ``unknown``."""
    lines = text.split("\n")
    answer = lines[-1].removeprefix("Answer: ").strip()
    letter = base_letter if answer == "__base__" else LETTERS[int(rng.integers(len(LETTERS)))]
    return "\n".join(lines[:-1] + [f"Answer: {letter}"]), letter


def sidecar_rows(behaviour: str, dataset: str, items: pd.DataFrame, masks: pd.DataFrame, p: float,
                 rng: np.random.Generator, forced: bool = False) -> pd.DataFrame:
    rows = []
    by_item = {k: g for k, g in masks.groupby("item_id", sort=False)}
    for item in items.to_dict("records"):
        steps = json.loads(item["meta"]).get("gold_steps") or []
        if not steps:
            continue
        base = "\n".join(g["text"] for g in steps)
        evidence = {k for g in steps for k in (g.get("regions") or [])}
        for mask in by_item.get(item["item_id"], pd.DataFrame()).to_dict("records"):
            kind, k = crm.region_of_variant(mask["variant"])
            if mask["variant"] == "base":
                text = base
            elif kind == "drop":
                text = {"grounded": hidden_solution(steps, {k}), "oversensitive": hidden_solution(steps, evidence),
                        "blind-spot": hallucinated(steps, k, rng)}[behaviour]
            elif kind == "ctrl":
                text = hidden_solution(steps, evidence) if behaviour == "oversensitive" else base
            else:
                continue
            if mask["variant"] != "base":
                text = drift(text, p, rng)
            if forced:
                # the base answer keeps its letter; any other answer (unknown included) becomes a drawn letter
                base_answer = base.rsplit("Answer: ", 1)[-1].strip()
                last = text.rsplit("Answer: ", 1)
                if last[-1].strip() == base_answer:
                    text = last[0] + "Answer: __base__"
                text, _ = forced_choice(text, LETTERS[sum(map(ord, str(item["item_id"]))) % 4], rng)
            answer = text.rsplit("Answer: ", 1)[-1].strip()
            rows.append({"trace_id": f"{behaviour}|{mask['mask_id']}", "model": behaviour, "dataset": dataset,
                         "item_id": item["item_id"], "mask_id": mask["mask_id"], "variant": mask["variant"],
                         "fill": mask["fill"], "trace_index": len(rows), "status": "ok", "error": None,
                         "text": text, "answer_text": answer, "abstained": answer == "unknown"})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results")
    parser.add_argument("--dataset", default="panels")
    parser.add_argument("--drift", type=float, default=0.5, help="probability that a masked trace's step is reworded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="where the simulated crm/ tables go (default: RESULTS_DIR/simulated)")
    parser.add_argument("--forced-choice", action="store_true",
                        help="items get four options and every answer is a letter: the grounded model says the "
                             "panel is hidden and still picks one (as on VisArgs or MMMU-Pro prompts)")
    args = parser.parse_args(argv)
    res = Path(args.results)
    out_dir = Path(args.out) if args.out else res / "simulated"
    items = read_table(res / "items" / f"{args.dataset}.parquet")
    masks = read_table(res / "masks" / f"{args.dataset}.parquet")
    if args.forced_choice:
        items = items.assign(choices=[list(LETTERS)] * len(items))
    encoder = get_encoder("all-MiniLM-L6-v2", 64)
    # simulated traces have no generated tokens: their steps have no token spans, which steps.py warns about per trace
    logging.getLogger("peekaboo.steps").setLevel(logging.ERROR)
    for behaviour in ("grounded", "blind-spot", "oversensitive"):
        rng = np.random.default_rng([args.seed, len(behaviour)])
        sc = sidecar_rows(behaviour, args.dataset, items, masks, args.drift, rng, args.forced_choice)
        out = crm.run_crm(segment_traces(sc, "auto", {}), sc, masks, items, {}, {}, encoder=encoder)
        od = out_dir / "crm" / behaviour / args.dataset
        od.mkdir(parents=True, exist_ok=True)
        write_table(out.attribution, od / "attribution.parquet", schema=crm.ATTRIBUTION_SCHEMA)
        write_table(out.modes, od / "modes.parquet", schema=crm.MODES_SCHEMA)
        out.summary.to_csv(od / "summary.csv", index=False, float_format="%.6g")
        print(f"{behaviour}: null cut {out.null.threshold:.3f} over {len(out.null.steps)} step changes; modes "
              + ", ".join(f"{m} {n}" for m, n in out.modes["mode"].value_counts().items()))
    sys.path.insert(0, str(REPO / "checks"))
    import crm_truth

    return crm_truth.main([str(out_dir)])


if __name__ == "__main__":
    sys.exit(main())
