"""Constructed trace stores and tables for the collapse, features, regression, selective and figure tests.

``make_traces`` builds an xarray Dataset with exactly the arrays and dims of a
trace store (docs/architecture.md "Traces"), padded like the real one, so the
collapse code reads it through the same path as ``open_traces`` output.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from peekaboo.stage import StageCall

# a 32 x 32 image cut into four 16 x 16 patches (row-major)
QUAD_BOXES = np.array([[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]], dtype=float)


def make_traces(traces: Sequence[dict[str, Any]]) -> xr.Dataset:
    """A trace store from per-trace dicts.

    Each dict: ``trace_id``, ``entropy [T]``, ``image_mass [T, L, H]``,
    ``region_mass [T, L, R]``, ``image_attn [T, M, P]``, ``patch_box [P, 4]``,
    optional ``patch_image [P]``. Shapes are padded to the largest trace.
    """
    n = len(traces)
    T = max(len(t["entropy"]) for t in traces)
    L, H = np.asarray(traces[0]["image_mass"]).shape[1:]
    M = np.asarray(traces[0]["image_attn"]).shape[1]
    P = max(len(t["patch_box"]) for t in traces)
    R = max(max(np.asarray(t["region_mass"]).shape[2], 1) for t in traces)
    entropy = np.full((n, T), np.nan, np.float32)
    token_id = np.full((n, T), -1, np.int32)
    image_mass = np.zeros((n, T, L, H), np.float16)
    region_mass = np.zeros((n, T, L, R), np.float16)
    image_attn = np.zeros((n, T, M, P), np.float16)
    patch_box = np.zeros((n, P, 4), np.float32)
    patch_image = np.zeros((n, P), np.int16)
    n_tokens = np.zeros(n, np.int32)
    n_patches = np.zeros(n, np.int32)
    n_regions = np.zeros(n, np.int32)
    for i, t in enumerate(traces):
        k = len(t["entropy"])
        entropy[i, :k] = t["entropy"]
        token_id[i, :k] = np.arange(k)
        image_mass[i, :k] = t["image_mass"]
        rm = np.asarray(t["region_mass"])
        region_mass[i, :k, :, : rm.shape[2]] = rm
        attn = np.asarray(t["image_attn"])
        image_attn[i, :k, :, : attn.shape[2]] = attn
        pb = np.asarray(t["patch_box"])
        patch_box[i, : len(pb)] = pb
        if "patch_image" in t:
            patch_image[i, : len(pb)] = t["patch_image"]
        n_tokens[i], n_patches[i], n_regions[i] = k, len(pb), rm.shape[2]
    return xr.Dataset(
        {
            "trace_id": ("trace", np.array([t["trace_id"] for t in traces], dtype=object)),
            "token_id": (("trace", "token"), token_id),
            "n_tokens": ("trace", n_tokens),
            "logprob": (("trace", "token"), np.where(np.isnan(entropy), np.nan, -0.1).astype(np.float32)),
            "entropy": (("trace", "token"), entropy),
            "image_attn": (("trace", "token", "map_layer", "patch"), image_attn),
            "image_mass": (("trace", "token", "layer", "head"), image_mass),
            "region_mass": (("trace", "token", "layer", "region"), region_mass),
            "patch_box": (("trace", "patch", "box"), patch_box),
            "patch_image": (("trace", "patch"), patch_image),
            "n_patches": ("trace", n_patches),
            "n_regions": ("trace", n_regions),
        },
        attrs={"map_layers": "[-1]", "model_id": "constructed"},
    )


def sidecar_rows(rows: Sequence[dict[str, Any]], model: str = "m", dataset: str = "d") -> pd.DataFrame:
    """Sidecar frame with the documented columns; each row needs ``item_id`` and ``variant``."""
    out = []
    for i, r in enumerate(rows):
        mask_id = f"{r['item_id']}|{r['variant']}|{'none' if r['variant'] == 'base' else 'gray'}"
        out.append({
            "trace_id": r.get("trace_id", f"{model}|{mask_id}"), "model": model, "dataset": dataset,
            "item_id": r["item_id"], "mask_id": mask_id, "variant": r["variant"],
            "fill": "none" if r["variant"] == "base" else "gray", "trace_index": i,
            "status": r.get("status", "ok"), "error": r.get("error"), "text": r.get("text", ""),
            "answer_text": r.get("answer_text", "x"), "correct": r.get("correct", True),
            "abstained": r.get("abstained", False), "truncated": False, "n_tokens": r.get("n_tokens", 0),
            "token_char_start": [], "token_char_end": [], "retries": 0,
        })
    return pd.DataFrame(out)


def steps_rows(spans: dict[str, Sequence[tuple[str, int, int]]]) -> pd.DataFrame:
    """Steps frame from ``trace_id -> [(kind, token_start, token_end), ...]``."""
    rows = []
    for tid, items in spans.items():
        for k, (kind, s, e) in enumerate(items):
            rows.append({"trace_id": tid, "item_id": tid.split("|")[1] if "|" in tid else tid, "mask_id": "",
                         "variant": "base", "fill": "none", "step": k, "kind": kind, "text": f"step {k}",
                         "char_start": 0, "char_end": 0, "token_start": s, "token_end": e})
    return pd.DataFrame(rows)


def items_rows(items: Sequence[dict[str, Any]], dataset: str = "d") -> pd.DataFrame:
    """Items frame: each dict has ``item_id`` and ``regions`` (list of boxes); 32 x 32 images."""
    rows = []
    for it in items:
        rows.append({
            "item_id": it["item_id"], "dataset": dataset, "image": it.get("image"), "images": [],
            "width": it.get("width", 32), "height": it.get("height", 32), "question": "q", "choices": None,
            "answer": "a", "answer_type": "text", "task_type": it.get("task_type", "visual_reference"),
            "regions": [{"label": f"r{k}", "box": list(map(float, b)), "image": 0} for k, b in enumerate(it["regions"])],
            "meta": "{}", "source_line": None,
        })
    return pd.DataFrame(rows)


def simulate_features(
    n_items: int,
    seed: int,
    coef: dict[str, float],
    datasets: Sequence[str] = ("d1",),
    models: Sequence[str] = ("m",),
    task_types: Sequence[str] = ("visual_reference",),
    entropy_mean: float = 2.0,
    entropy_sd: float = 0.5,
    vision_mean: float = 0.3,
    vision_sd: float = 0.1,
    answer_noise: float = 1.0,
) -> pd.DataFrame:
    """Per-trace feature rows with correctness drawn from a known logit on the standardised features.

    ``coef`` holds ``const``, ``entropy``, ``vision``, ``entropy:vision`` (and
    optionally per-task overrides as ``<term>@<task>``) on the population z-scale.
    Correctness follows the full-response entropy; the answer-span entropy is
    built to be the weaker signal: the same z plus ``answer_noise`` times
    independent noise (rescaled to the same spread).
    """
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([seed, 1])  # its own stream: the features above do not depend on it
    rows = []
    for model in models:
        for dataset in datasets:
            for i in range(n_items):
                task = task_types[i % len(task_types)]
                ze, zv = rng.standard_normal(2)
                noise = noise_rng.standard_normal()

                def c(term):
                    return coef.get(f"{term}@{task}", coef.get(term, 0.0))

                eta = c("const") + c("entropy") * ze + c("vision") * zv + c("entropy:vision") * ze * zv
                correct = rng.random() < 1 / (1 + np.exp(-eta))
                rows.append({
                    "trace_id": f"{model}|{dataset}-{i:05d}|base|none", "model": model, "dataset": dataset,
                    "item_id": f"{dataset}-{i:05d}", "variant": "base", "task_type": task, "status": "ok",
                    "correct": bool(correct), "entropy_full": entropy_mean + entropy_sd * ze,
                    "entropy_answer": entropy_mean + entropy_sd * (ze + answer_noise * noise)
                    / np.sqrt(1 + answer_noise**2),
                    "vision": vision_mean + vision_sd * zv,
                    # the measures a per-trace table holds: the simulated engagement stands for each
                    "vision_evidence_share": vision_mean + vision_sd * zv,
                    "vision_image_share": vision_mean + vision_sd * zv,
                    "vision_evidence_lift": (vision_mean + vision_sd * zv) / 0.25,
                })
    df = pd.DataFrame(rows)
    df["correct"] = df["correct"].astype("boolean")
    return df


def write_results_tree(root, models=("grounded", "blind-spot"), datasets=("panels", "panels-hard"), n_items=40,
                       bootstrap=20):
    """A small results directory with every table the figures, regression and selective stages read.

    Collapse tables come from ``collapse.compute`` on constructed traces: the
    ``grounded`` model looks at the evidence unless it is hidden (and then
    abstains), ``blind-spot`` keeps looking and keeps answering. CRM tables are
    constructed frames with the documented columns. Returns the figure inputs.
    """
    from pathlib import Path

    from PIL import Image

    from peekaboo import collapse, regression, selective
    from peekaboo.tables import write_table

    root = Path(root)
    rng = np.random.default_rng(0)
    cfg_collapse = {"layers": "all", "top_k": 2, "sinks": {"detect": True, "exclude": False, "ratio": 5.0,
                                                          "min_fraction": 0.5}, "map_items": 2}
    inputs = {k: [] for k in ("collapse_steps", "collapse_traces", "collapse_maps", "attribution", "modes")}
    for d in datasets:
        img_dir = root / "items" / d / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        items = []
        for i in range(n_items):
            item_id = f"{d}-{i:03d}"
            Image.new("RGB", (32, 32), (200, 40 * (i % 5), 90)).save(img_dir / f"{item_id}.png")
            items.append({"item_id": item_id, "regions": [[0, 0, 16, 16]] if i % 5 else [],
                          "task_type": "visual_reference" if i % 5 else "symbolic",
                          "image": f"items/{d}/images/{item_id}.png"})
        items_df = items_rows(items, dataset=d)
        for m in models:
            traces, side, spans = [], [], {}
            for it in items:
                for variant in ("base", "drop:0", "ctrl:0"):
                    if variant != "base" and not it["regions"]:
                        continue
                    hidden = variant == "drop:0"
                    look = 0.15 if (m == "grounded" and hidden) else rng.uniform(0.3, 0.8)
                    T = 6
                    ent = rng.uniform(0.2, 2.0, T)
                    attn = np.full((T, 1, 4), (1 - look) / 3)
                    attn[:, 0, 0] = look * np.linspace(1.0, 0.5, T)  # attention to the evidence decays
                    mass = np.full((T, 2, 2), 0.5)
                    region = (attn[:, :, 0] * 0.5)[:, None, :].repeat(2, axis=1) if it["regions"] else np.zeros((T, 2, 0))
                    tid = f"{m}|{it['item_id']}|{variant}|{'none' if variant == 'base' else 'gray'}"
                    traces.append({"trace_id": tid, "entropy": ent, "image_mass": mass, "region_mass": region,
                                   "image_attn": attn, "patch_box": QUAD_BOXES})
                    spans[tid] = [("think", 0, 2), ("think", 2, 4), ("answer", 4, 6)]
                    abstain = m == "grounded" and hidden
                    correct = (not abstain) and bool(rng.random() < 1 / (1 + np.exp(-(2.0 - 1.2 * ent.mean() + 3 * (look - 0.55)))))
                    side.append({"item_id": it["item_id"], "variant": variant, "trace_id": tid,
                                 "answer_text": "unknown" if abstain else ("red" if correct else "blue"),
                                 "abstained": abstain, "correct": correct, "n_tokens": T})
            tables = collapse.compute(make_traces(traces), sidecar_rows(side, m, d), steps_rows(spans), items_df,
                                      cfg_collapse, {"vision": "evidence_share"}, m, d)
            base = root / "collapse" / m
            for key, suffix, frame in (("collapse_steps", ".parquet", tables.steps),
                                       ("collapse_traces", ".traces.parquet", tables.traces),
                                       ("collapse_maps", ".maps.parquet", tables.maps)):
                inputs[key].append(write_table(frame, base / f"{d}{suffix}"))
            write_table(tables.sinks, base / f"{d}.sinks.parquet")
            att, modes = [], []
            for it in items[:6]:
                if not it["regions"]:
                    continue
                for step in range(3):
                    dep = float(rng.uniform(0.5, 1.0) if m == "grounded" and step == 0 else rng.uniform(0, 0.1))
                    att.append({"item_id": it["item_id"], "region": 0, "fill": "gray",
                                "base_step": step, "dependence": dep, "control_dependence": 0.05,
                                "changed": dep > 0.1, "depends": dep > 0.15, "gold_depends": step == 0})
                modes.append({"item_id": it["item_id"], "region": 0, "fill": "gray",
                              "mode": "grounded" if m == "grounded" else "hallucination", "rule": "constructed"})
            crm = root / "crm" / m / d
            inputs["attribution"].append(write_table(pd.DataFrame(att), crm / "attribution.parquet"))
            inputs["modes"].append(write_table(pd.DataFrame(modes), crm / "modes.parquet"))
    config = {"regression": {"variants": ["base"], "min_errors": 3}, "features": {"vision": "evidence_share"},
              "selective": {"bootstrap": bootstrap, "seed": 0, "veto_quantiles": [0.1, 0.3], "coverages": [0.8, 0.9, 0.95]}}
    reg_out = {"coefficients": root / "regression" / "coefficients.csv", "transfer": root / "regression" / "transfer.csv",
               "interaction_by_task": root / "regression" / "interaction_by_task.csv",
               "summary": root / "regression" / "summary.txt"}
    traces = {"traces": [str(p) for p in inputs["collapse_traces"]]}
    config["analyses"] = {d: ["crm", "collapse", "regression", "transfer", "selective"] for d in datasets}
    regression.run_stage(StageCall(inputs=traces, outputs={k: str(v) for k, v in reg_out.items()},
                                   config={**{k: config[k] for k in ("regression", "features", "analyses")}, "seed": 0},
                                   results_dir=root))
    sel_out = {"curves": root / "selective" / "curves.parquet", "summary": root / "selective" / "summary.csv",
               "entropy_comparison": root / "selective" / "entropy_comparison.csv"}
    selective.run_stage(StageCall(inputs=traces, outputs={k: str(v) for k, v in sel_out.items()}, config=config,
                                  results_dir=root))
    inputs.update(coefficients=reg_out["coefficients"], selective_curves=sel_out["curves"],
                  selective_summary=sel_out["summary"])
    return inputs
