"""Planted collapse tables for the collapse-findings, claims and figure tests.

``planted_collapse`` builds per-trace and per-step tables with exactly the
columns the collapse stage writes (``collapse/{m}/{d}.traces.parquet`` and
``collapse/{m}/{d}.parquet``) for base traces whose relative drop over the
reasoning, and whose correctness given that drop, are planted; traces that
must be left out (failed, one reasoning step, no evidence regions) are planted
in known numbers. ``findings_tree`` adds the findings and claims tables to the
results tree of ``_fixtures_collapse.write_results_tree``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from peekaboo.stage import StageCall


def planted_collapse(
    models: Sequence[str] = ("m",),
    datasets: Sequence[str] = ("d",),
    n_items: int = 300,
    drop: dict[str, float] | None = None,
    image_drop: float = 0.2,
    accuracy: tuple[float, float] = (0.9, 0.3),
    n_failed: int = 0,
    n_one_step: int = 0,
    n_no_evidence: int = 0,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-trace table, per-step table) of base traces with planted drops.

    Each trace has 2 to 5 reasoning steps and an answer step; its evidence
    share falls linearly from a first value to ``first * (1 - drop)``, with
    ``drop`` drawn uniformly in ``planted +- 0.15`` (``drop[model]``, default
    0.6); its image share falls by ``image_drop``. P(correct) falls linearly
    with the drop from ``accuracy[0]`` (drop 0) to ``accuracy[1]`` (drop 1).
    The first ``n_failed`` items of each (model, dataset) are failed traces,
    the next ``n_one_step`` have one reasoning step, the next
    ``n_no_evidence`` have no evidence regions.
    """
    drop = drop or {}
    rng = np.random.default_rng(seed)
    traces, steps = [], []
    for model in models:
        for dataset in datasets:
            for i in range(n_items):
                item = f"{dataset}-{i:04d}"
                tid = f"{model}|{item}|base|none"
                failed = i < n_failed
                one_step = n_failed <= i < n_failed + n_one_step
                no_evidence = n_failed + n_one_step <= i < n_failed + n_one_step + n_no_evidence
                k = 1 if one_step else int(rng.integers(2, 6))
                d = float(np.clip(drop.get(model, 0.6) + rng.uniform(-0.15, 0.15), -0.5, 0.99))
                first = float(rng.uniform(0.3, 0.6))
                evidence = first * (1 - d * np.linspace(0, 1, k)) if k > 1 else np.array([first])
                image = 0.5 * (1 - image_drop * np.linspace(0, 1, k)) if k > 1 else np.array([0.5])
                answer_e, answer_i = evidence[-1] * 0.8, image[-1] * 0.9
                if no_evidence:
                    evidence, answer_e = np.full(k, np.nan), np.nan
                correct = bool(rng.random() < accuracy[0] + (accuracy[1] - accuracy[0]) * max(0.0, d))
                row = {"trace_id": tid, "model": model, "dataset": dataset, "item_id": item, "mask_id": f"{item}|base|none",
                       "variant": "base", "fill": "none", "region": None, "task_type": "visual_reference",
                       "status": "failed" if failed else "ok", "correct": None if failed else correct,
                       "n_think_steps": 0 if failed else k, "n_steps": 0 if failed else k + 1,
                       "n_evidence_regions": 0 if no_evidence else 1, "sinks_excluded": False}
                for measure, values, answer in (("evidence_share", evidence, answer_e), ("image_share", image, answer_i)):
                    if failed:
                        values, answer = np.array([]), np.nan
                    finite = values[np.isfinite(values)]
                    f = float(finite[0]) if len(finite) else np.nan
                    last = float(finite[-1]) if len(finite) else np.nan
                    row[f"{measure}_reasoning_first"] = f
                    row[f"{measure}_reasoning_last"] = last
                    row[f"{measure}_reasoning_drop"] = (f - last) / f if len(finite) >= 2 and f > 0 else np.nan
                    row[f"{measure}_answer"] = answer
                traces.append(row)
                if failed:
                    continue
                for j in range(k + 1):
                    think = j < k
                    steps.append({"trace_id": tid, "model": model, "dataset": dataset, "item_id": item,
                                  "variant": "base", "step": j, "step_index": j, "n_steps": k + 1,
                                  "kind": "think" if think else "answer",
                                  "evidence_share": evidence[j] if think else answer_e,
                                  "image_share": image[j] if think else answer_i})
    t = pd.DataFrame(traces)
    t["correct"] = t["correct"].astype("boolean")
    return t, pd.DataFrame(steps)


def findings_tree(root, **kwargs):
    """``write_results_tree`` plus the collapse findings, the regression's task table and the claims table.

    Returns the figure inputs (with the new tables) and the claims stage's inputs.
    """
    from _fixtures_collapse import write_results_tree

    from peekaboo import claims, collapse_findings

    root = Path(root)
    inputs = write_results_tree(root, **kwargs)
    outs = {name: root / "collapse" / f"{name}.csv" for name in ("summary", "trajectory", "accuracy")}
    collapse_findings.run_stage(StageCall(
        inputs={"traces": [str(p) for p in inputs["collapse_traces"]],
                "steps": [str(p) for p in inputs["collapse_steps"]]},
        outputs={k: str(v) for k, v in outs.items()},
        config={"collapse": {"position_bins": 4, "bootstrap": 50}, "seed": 0}, results_dir=root))
    claim_inputs = {
        "collapse_summary": str(outs["summary"]),
        "interaction_by_task": str(root / "regression" / "interaction_by_task.csv"),
        "transfer": str(root / "regression" / "transfer.csv"),
        "selective_summary": str(root / "selective" / "summary.csv"),
        "entropy_comparison": str(root / "selective" / "entropy_comparison.csv"),
        "modes": [str(p) for p in inputs["modes"]],
    }
    claims.run_stage(StageCall(inputs=claim_inputs, outputs={"claims": str(root / "claims.csv")},
                               config={"features": {"vision": ["evidence_share", "image_share"]},
                                       "claims": {"bootstrap": 50}, "seed": 0},
                               results_dir=root))
    inputs.update(collapse_trajectory=outs["trajectory"], collapse_accuracy=outs["accuracy"],
                  collapse_summary=outs["summary"], entropy_comparison=root / "selective" / "entropy_comparison.csv",
                  transfer=root / "regression" / "transfer.csv",
                  interaction_by_task=root / "regression" / "interaction_by_task.csv", claims=root / "claims.csv")
    return inputs, claim_inputs
