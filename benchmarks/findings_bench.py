"""What the findings stages cost at the study's scale: collapse findings, the transfer bootstrap, the claims.

Builds planted per-trace and per-step tables (``tests/fixtures/findings.py``,
the same generator the tests use) for ``--models`` x ``--datasets`` x
``--items`` base traces with 2 to 5 reasoning steps each (``--steps``
multiplies the steps to mimic long chains), adds entropies and vision values
with a planted logit, and times, in this process, each library entry the
stages run, with ``--bootstrap`` resamples:

- ``collapse_findings.findings`` (summary, trajectory, accuracy);
- ``regression.transfer`` and ``regression.interaction_by_task`` (one
  vision measure; the transfer's paired bootstrap is the expensive part);
- ``claims.claims_table`` on those tables.

    .venv/bin/python benchmarks/findings_bench.py                  # 3 models x 4 datasets x 1,000 items
    .venv/bin/python benchmarks/findings_bench.py --items 200      # a quick look

Not a test: nothing is asserted. Peak memory is the process's resident peak
(``ru_maxrss``) after each step, so it only grows.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--datasets", type=int, default=4)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10, help="repeat every planted step this many times")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)

    from fixtures.findings import planted_collapse

    from peekaboo import claims, collapse_findings, regression

    models = [f"m{i}" for i in range(args.models)]
    datasets = [f"d{i}" for i in range(args.datasets)]
    traces, steps = planted_collapse(models=models, datasets=datasets, n_items=args.items, n_one_step=20,
                                     n_no_evidence=50, seed=0)
    if args.steps > 1:  # long chains: every step repeated, in order
        steps = steps.loc[steps.index.repeat(args.steps)].reset_index(drop=True)
        steps["step_index"] = steps.groupby("trace_id").cumcount()
    rng = np.random.default_rng(1)
    z_e, z_v = rng.standard_normal((2, len(traces)))
    p = 1 / (1 + np.exp(-(0.5 - z_e + 0.5 * z_v - 0.5 * z_e * z_v)))
    traces = traces.assign(entropy_full=2 + 0.5 * z_e, entropy_answer=2 + 0.5 * z_e + rng.normal(0, 0.5, len(z_e)),
                           vision_evidence_share=0.3 + 0.1 * z_v, vision_image_share=0.3 + 0.1 * z_v,
                           vision_evidence_lift=1 + 0.4 * z_v,
                           correct=pd.array(rng.random(len(p)) < p, dtype="boolean"))
    timings = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        timings[name] = (time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return out

    cfg = {"position_bins": 5, "bootstrap": args.bootstrap}
    tables = timed("collapse_findings.findings", lambda: collapse_findings.findings(traces, steps, cfg, seed=0))
    reg_cfg = {"min_errors": 5, "bootstrap": args.bootstrap}
    transfer = timed("regression.transfer", lambda: regression.transfer(traces, reg_cfg, ["evidence_share"], seed=0))
    by_task = timed("regression.interaction_by_task",
                    lambda: regression.interaction_by_task(traces, reg_cfg, ["evidence_share"]))
    empty = pd.DataFrame()
    timed("claims.claims_table", lambda: claims.claims_table(
        claims.Tables(tables["summary"], transfer, by_task, empty, empty, empty), ["evidence_share"],
        args.bootstrap, 0))

    print(f"{args.models} models x {args.datasets} datasets x {args.items} items; {len(traces)} traces, "
          f"{len(steps)} steps; {args.bootstrap} bootstrap resamples\n")
    print(f"| {'step':<32} | {'wall s':>7} | {'peak RSS MB':>11} |")
    print(f"| {'-' * 32} | {'-' * 7}: | {'-' * 11}: |")
    for name, (seconds, peak) in timings.items():
        print(f"| {name:<32} | {seconds:7.2f} | {peak:11.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
