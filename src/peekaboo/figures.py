"""Every figure of the report, regenerated from the result tables alone, plus ``figures/manifest.json``.

A figure whose tables hold nothing to draw becomes a panel saying so (and the
manifest says why), so the set of files is fixed and one empty input never
stops the others. Every figure drawn from attention states whether attention
sinks were excluded. Matplotlib runs on the Agg backend; PDF and PNG files
carry no timestamps, so the same tables give the same bytes.
"""

from __future__ import annotations

import json
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import schema
from .logs import get_logger
from .stage import StageCall

log = get_logger("figures")

# name -> (input keys it reads, caption)
FIGURES: dict[str, tuple[tuple[str, ...], str]] = {
    "collapse_curve": (("collapse_trajectory",),
                       "Evidence collapse over the reasoning: image share (attention on all image tokens), "
                       "evidence share (the part of it on the evidence boxes) and the chance-corrected focus on the "
                       "evidence ((share - area) / (1 - area)) against normalised reasoning position "
                       "(reasoning steps only, in bins; 0 = first reasoning step, 1 = last), and at the answer step "
                       "apart, unmasked traces with at least two reasoning steps, mean with 95% bootstrap interval "
                       "over items, per model (colour) and dataset (column)."),
    "collapse_accuracy": (("collapse_accuracy",),
                          "Accuracy against evidence collapse: accuracy by tercile of the relative drop from the "
                          "first to the last reasoning step (1 = smallest drop), with 95% bootstrap intervals, per "
                          "model (colour), dataset (column) and vision measure (row); the legend gives the mean drop "
                          "of correct minus incorrect traces with its interval."),
    "collapse_layers": (("collapse_layers",),
                        "Evidence collapse per layer and head: the evidence share (image share where the items have "
                        "no evidence) of every layer against normalised reasoning position (top; colour: layer "
                        "depth; the grounding layer chosen by collapse.layers: select drawn thick), and the relative "
                        "drop of the image share of every head from the first to the last window of the reasoning "
                        "(bottom; layer x head), unmasked traces, per model and dataset (column)."),
    "masking_response": (("collapse_traces",),
                         "Response to a hidden panel: vision engagement (mean evidence share over the reasoning "
                         "steps) and the share of answers that change or abstain, for the unmasked image, "
                         "an evidence region hidden (drop) and a same-size control region hidden (ctrl)."),
    "crm_dependence": (("attribution",),
                       "Contrastive Region Masking: dependence of each base reasoning step (rows) on each "
                       "evidence region (columns), 1 - best-match similarity after hiding the region, for a "
                       "few example items."),
    "crm_modes": (("modes",),
                  "Share of CRM failure modes (grounded, hallucination, collapse, insensitive; undecided where the mask "
                  "changed nothing that the gold solution reads) per model and "
                  "dataset over (item, region, fill) cases."),
    "attention_strip": (("collapse_maps",),
                        "Attention drawn over the item's image, one panel per reasoning step (share of image "
                        "attention per image token, normalised per panel); evidence boxes outlined."),
    "interaction": (("coefficients",),
                    "Predicted probability of a correct answer against standardised full-response entropy at "
                    "low (z = -1) and high (z = +1) vision engagement, by task type, from the pooled "
                    "interaction logit of each model."),
    "coefficients": (("coefficients",),
                     "Interaction logit coefficients (standardised entropy and vision engagement, their product "
                     "and task-type terms) with 95% intervals clustered by item, per model and fit."),
    "entropy_comparison": (("entropy_comparison",),
                           "Full-response against answer-span entropy: in-domain, the difference in AURC (full minus "
                           "answer; negative favours full-response entropy) per model and dataset; under transfer, "
                           "the difference in AUROC of an entropy-only logit fitted on one dataset and scored on "
                           "another (positive favours full-response entropy); paired bootstrap 95% intervals."),
    "reliability": (("selective_reliability",),
                    "Reliability under transfer: observed accuracy against the predicted probability of a correct "
                    "answer from an entropy-only logit fitted on one dataset and applied to another (equal-width "
                    "bins; marker area: answers in the bin), full-response entropy, per model (panel) and "
                    "(train -> test) pair; the legend gives each pair's expected calibration error. The diagonal is "
                    "perfect calibration."),
    "vision_transfer": (("transfer",),
                        "Vision features under transfer: AUROC of each feature set with vision (vision alone, "
                        "entropy + vision, their interaction) minus entropy alone, fitted on one dataset and scored "
                        "on another, on the same test answers, with paired bootstrap 95% intervals, per vision "
                        "measure (panel); negative: adding vision hurts transfer."),
    "interaction_by_task": (("interaction_by_task",),
                            "Entropy x vision interaction by task type from each model's pooled fit, with 95% "
                            "intervals from the item-clustered covariance, per vision measure (panel); the papers "
                            "expect it negative on visual-reference tasks and near zero or positive on symbolic ones. "
                            "A task type the fit cannot speak for is listed as not estimable."),
    "risk_coverage": (("selective_curves", "selective_summary"),
                      "Risk-coverage curves per confidence signal (negative entropy, vision engagement, the "
                      "model-based score) and entropy with the vision veto; the title gives the veto's change in "
                      "risk at 90% coverage with its bootstrap interval (threshold fitted on the other datasets)."),
}
ATTENTION_FIGURES = {"collapse_curve", "collapse_accuracy", "masking_response", "attention_strip", "interaction",
                     "coefficients", "risk_coverage", "vision_transfer", "interaction_by_task"}


def _pyplot():
    """matplotlib.pyplot on the Agg backend (imported late: the rules file reads FIGURES at parse time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class NothingToDraw(Exception):
    """The tables hold nothing this figure can show; the message says why."""


@dataclass
class Tables:
    """Every table the figures read, concatenated over models and datasets."""

    results_dir: Path
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    paths: dict[str, list[str]] = field(default_factory=dict)

    def get(self, key: str) -> pd.DataFrame:
        df = self.frames.get(key)
        if df is None or df.empty:
            raise NothingToDraw(f"no rows in {key.replace('_', ' ')} tables")
        return df


def load_tables(inputs: Mapping[str, Sequence[str | Path] | str | Path], results_dir: str | Path) -> Tables:
    """Read the input tables (parquet or csv); a missing or unreadable file is logged and skipped."""
    from .tables import read_table

    out = Tables(results_dir=Path(results_dir))
    for key, paths in inputs.items():
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        frames = []
        for p in paths:
            p = Path(p)
            try:
                df = pd.read_csv(p) if p.suffix == ".csv" else read_table(p)
            except Exception as exc:  # one unreadable table must not stop the other figures
                log.warning("cannot read %s: %s", p, exc)
                continue
            if len(df):
                if "model" not in df and "dataset" not in df:
                    # crm/{m}/{d}/*.parquet carry their model and dataset in the path only
                    df = df.assign(model=p.parent.parent.name, dataset=p.parent.name)
                frames.append(df)
        out.frames[key] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        out.paths[key] = [_rel(p, out.results_dir) for p in paths]
    return out


def _rel(p: str | Path, root: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def sinks_status(df: pd.DataFrame | None) -> str:
    if df is None or df.empty or "sinks_excluded" not in df:
        return "not applicable"
    values = set(df["sinks_excluded"].dropna().astype(bool))
    return "mixed" if len(values) > 1 else ("excluded" if values == {True} else "kept")


def _sink_line(status: str) -> str:
    return f"attention sinks: {status}"


# ----------------------------------------------------------------------------- the figures


MEASURE_LABELS = {"image_share": "image share of attention", "evidence_share": "evidence share of image attention",
                  "focus": "focus on the evidence (0 = chance)"}


def _grid(table: pd.DataFrame, width: float = 4.2, height: float = 3.2):
    """A figure with a row per vision measure and a column per dataset of ``table``, and both lists."""
    plt = _pyplot()
    measures = [m for m in MEASURE_LABELS if m in set(table["measure"])]
    datasets = list(dict.fromkeys(table["dataset"].dropna()))
    fig, axes = plt.subplots(len(measures), len(datasets), figsize=(width * len(datasets), height * len(measures)),
                             squeeze=False)
    return fig, axes, measures, datasets


def _errors(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Error-bar lengths below and above (0 where the interval is missing)."""
    mean, low, high = (np.asarray(x, dtype=float) for x in (mean, low, high))
    return np.nan_to_num(np.vstack([np.clip(mean - low, 0, None), np.clip(high - mean, 0, None)]))


def _notes(table: pd.DataFrame) -> str:
    """The table's distinct notes in order, joined by "; ": why a figure or a panel has nothing to draw."""
    return "; ".join(dict.fromkeys(table.get("note", pd.Series(dtype=str)).dropna().astype(str)))


def _say(ax, text: str) -> None:
    ax.text(0.5, 0.5, textwrap.fill(text, 40), ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def fig_collapse_curve(t: Tables, cfg: Mapping[str, Any]):
    traj = t.get("collapse_trajectory")
    if "measure" not in traj or not (traj["status"] == "ok").any():
        raise NothingToDraw("no trajectory row with a value: "
                            + _notes(traj)[:300])
    fig, axes, measures, datasets = _grid(traj)
    models = list(dict.fromkeys(traj["model"].dropna()))
    colours = {m: f"C{k}" for k, m in enumerate(models)}
    for i, measure in enumerate(measures):
        for j, d in enumerate(datasets):
            ax = axes[i, j]
            sub = traj[(traj["measure"] == measure) & (traj["dataset"] == d)]
            ok = sub[sub["status"] == "ok"]
            ax.set_title(f"{d}", fontsize=9)
            if ok.empty:
                _say(ax, f"{MEASURE_LABELS[measure]}: " + _notes(sub))
                continue
            offsets = np.linspace(-0.02, 0.02, len(models)) if len(models) > 1 else [0.0]
            for off, m in zip(offsets, models):
                r = ok[(ok["model"] == m) & (ok["segment"] == "reasoning")].sort_values("bin")
                a = ok[(ok["model"] == m) & (ok["segment"] == "answer")]
                if len(r):
                    ax.errorbar(r["position"].astype(float) + off, r["mean"], yerr=_errors(r["mean"], r["ci_low"],
                                r["ci_high"]), marker="o", markersize=3, capsize=2, color=colours[m], label=m)
                if len(a):
                    ax.errorbar([1.25 + off], a["mean"], yerr=_errors(a["mean"], a["ci_low"], a["ci_high"]), marker="s",
                                markersize=4, capsize=2, color=colours[m], linestyle="none",
                                label=None if len(r) else m)
            ax.axvline(1.125, color="grey", linewidth=0.6, linestyle=":")
            ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0, 1.25], ["0", ".25", ".5", ".75", "1", "answer"], fontsize=7)
            ax.set_xlim(-0.06, 1.33)
            ax.set_xlabel("normalised reasoning position", fontsize=8)
            ax.set_ylabel(MEASURE_LABELS[measure], fontsize=8)
            ax.legend(fontsize=6)
    status = sinks_status(traj)
    fig.suptitle(f"Evidence over the reasoning, the answer step apart ({_sink_line(status)})", fontsize=10)
    fig.tight_layout()
    return fig, status


def fig_collapse_accuracy(t: Tables, cfg: Mapping[str, Any]):
    acc = t.get("collapse_accuracy")
    acc = acc[acc["scope"] == "dataset"] if "scope" in acc else acc.iloc[0:0]
    terciles = acc[(acc["statistic"] == "accuracy") & (acc["status"] == "ok")]
    if terciles.empty:
        raise NothingToDraw("no tercile accuracy: " + _notes(acc)[:300])
    fig, axes, measures, datasets = _grid(acc)
    models = list(dict.fromkeys(acc["model"].dropna()))
    for i, measure in enumerate(measures):
        for j, d in enumerate(datasets):
            ax = axes[i, j]
            ax.set_title(d, fontsize=9)
            sub = acc[(acc["measure"] == measure) & (acc["dataset"] == d)]
            tsub = sub[(sub["statistic"] == "accuracy") & (sub["status"] == "ok")]
            if tsub.empty:
                _say(ax, f"{MEASURE_LABELS[measure]}: " + _notes(sub))
                continue
            offsets = np.linspace(-0.15, 0.15, len(models)) if len(models) > 1 else [0.0]
            for k, (off, m) in enumerate(zip(offsets, models)):
                r = tsub[tsub["model"] == m].sort_values("tercile")
                if r.empty:
                    continue
                gap = sub[(sub["model"] == m) & (sub["statistic"] == "mean_drop_difference")]
                label = m
                if len(gap) and np.isfinite(float(gap["estimate"].iloc[0])):
                    g = gap.iloc[0]
                    label += (f" (drop, correct - incorrect: {float(g['estimate']):+.2f} "
                              f"[{float(g['ci_low']):+.2f}, {float(g['ci_high']):+.2f}])")
                ax.errorbar(r["tercile"].astype(float) + off, r["estimate"], yerr=_errors(r["estimate"], r["ci_low"],
                            r["ci_high"]), marker="o", markersize=3, capsize=2, color=f"C{k}", label=label)
            ax.set_xticks([1, 2, 3], ["1 (smallest\ndrop)", "2", "3 (largest\ndrop)"], fontsize=7)
            ax.set_xlim(0.6, 3.4)
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel(f"accuracy ({measure.replace('_', ' ')} drop)", fontsize=8)
            ax.legend(fontsize=5)
    status = sinks_status(acc)
    fig.suptitle(f"Accuracy by tercile of the drop over the reasoning ({_sink_line(status)})", fontsize=10)
    fig.tight_layout()
    return fig, status


def _forest(ax, labels: Sequence[str], est, low, high, colour: str = "C0", offset: float = 0.0, label=None) -> None:
    y = np.arange(len(labels)) + offset
    ax.errorbar(est, y, xerr=_errors(est, low, high), fmt="o", markersize=3, capsize=2, color=colour, label=label)


def _finish_forest(ax, labels: Sequence[str], xlabel: str) -> None:
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(xlabel, fontsize=8)


def fig_entropy_comparison(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    comp = t.get("entropy_comparison")
    panels = (("in_domain", "aurc", "AURC, full minus answer-span (< 0: full better)"),
              ("transfer", "auroc", "transfer AUROC, full minus answer-span (> 0: full better)"))
    usable = comp[np.isfinite(pd.to_numeric(comp["difference"], errors="coerce"))]
    if usable.empty:
        raise NothingToDraw("no difference between the entropies: " + _notes(comp)[:300])
    n = max(len(usable[usable["scope"] == s]) for s, _, _ in panels)
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.3 * max(n, 2)))
    for ax, (scope, metric, xlabel) in zip(axes, panels):
        sub = usable[(usable["scope"] == scope) & (usable["metric"] == metric)]
        if sub.empty:
            _say(ax, f"no {scope.replace('_', '-')} comparison")
            continue
        signal = sub["answer_signal"] if "answer_signal" in sub else pd.Series("answer_span", index=sub.index)
        key = (sub["model"].astype(str) + " | " + (sub["train_dataset"].astype(str) + " -> " if scope == "transfer"
                                                    else "") + sub["dataset"].astype(str))
        labels = list(dict.fromkeys(key))
        # the answer span (the paper's comparison) and the answer tokens alone, side by side on each row
        for k, (name, label) in enumerate((("answer_span", "vs answer span"), ("answer_tokens", "vs answer tokens"))):
            part = sub[signal == name].set_index(key[signal == name])
            part = part.reindex(labels)
            if part["difference"].notna().any():
                _forest(ax, labels, part["difference"], part["difference_low"], part["difference_high"],
                        colour=f"C{k}", offset=0.15 * (k - 0.5) * 2, label=label)
        _finish_forest(ax, labels, xlabel)
        ax.legend(fontsize=7)
        ax.set_title(scope.replace("_", "-"), fontsize=9)
    fig.suptitle("Full-response against answer-span entropy (paired bootstrap 95% intervals)", fontsize=10)
    fig.tight_layout()
    return fig, "not applicable"


def fig_collapse_layers(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    layers = t.get("collapse_layers")
    cells = list(dict.fromkeys(zip(layers["model"], layers["dataset"])))
    fig, axes = plt.subplots(2, len(cells), figsize=(4.2 * len(cells), 6.4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for j, (model, dataset) in enumerate(cells):
        cell = layers[(layers["model"] == model) & (layers["dataset"] == dataset)]
        curves = cell[(cell["kind"] == "curve") & (cell["head"] == -1)]
        measure = "evidence_share" if (curves["measure"] == "evidence_share").any() else "image_share"
        curves = curves[curves["measure"] == measure]
        n_layers = int(curves["layer"].max()) + 1 if len(curves) else 1
        ax = axes[0, j]
        for layer, sub in curves.groupby("layer"):
            sub = sub[np.isfinite(pd.to_numeric(sub["mean"], errors="coerce"))].sort_values("bin")  # empty bins: gaps
            chosen = bool(sub["selected"].any())
            ax.plot(sub["position"], sub["mean"], color=cmap(int(layer) / max(n_layers - 1, 1)), marker="o",
                    markersize=2.5, lw=2.5 if chosen else 0.9, label=f"layer {int(layer)} (chosen)" if chosen else None)
        ax.set(xlabel="reasoning position", ylabel=MEASURE_LABELS.get(measure, measure), title=f"{model} | {dataset}")
        if curves["selected"].any():
            ax.legend(fontsize=7)
        heads = cell[(cell["kind"] == "summary") & (cell["measure"] == "image_share") & (cell["head"] >= 0)]
        ax = axes[1, j]
        if heads.empty:
            _say(ax, "no per-head rows")
            continue
        grid = heads.pivot_table(index="layer", columns="head", values="drop_of_means")
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", origin="lower", cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set(xlabel="head", ylabel="layer", title="image-share drop per head",
               xticks=range(grid.shape[1]), yticks=range(grid.shape[0]))
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig, "not applicable"


def fig_reliability(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    bins = t.get("selective_reliability")
    bins = bins[bins["signal"] == "full"] if "signal" in bins else bins
    if bins.empty:
        raise NothingToDraw("no reliability bins of the full-response entropy")
    models = list(dict.fromkeys(bins["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        sub = bins[bins["model"] == model]
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
        for k, ((train, test), pair) in enumerate(sub.groupby(["train_dataset", "dataset"], sort=False)):
            pair = pair.sort_values("mean_predicted")
            n = pair["n"].to_numpy(dtype=float)
            ece = float(np.sum(n / n.sum() * np.abs(pair["accuracy"] - pair["mean_predicted"])))
            ax.plot(pair["mean_predicted"], pair["accuracy"], color=f"C{k % 10}", lw=1,
                    label=f"{train} -> {test} (ECE {ece:.3f})")
            ax.scatter(pair["mean_predicted"], pair["accuracy"], s=8 + 60 * n / n.max(), color=f"C{k % 10}")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(correct)", ylabel="observed accuracy", title=model)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig, "not applicable"


VISION_SETS = ("vision", "additive", "interaction")


def fig_vision_transfer(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    tr = t.get("transfer")
    if "difference" not in tr:
        raise NothingToDraw("the transfer table has no comparison with entropy alone")
    usable = tr[tr["features"].isin(VISION_SETS) & np.isfinite(pd.to_numeric(tr["difference"], errors="coerce"))]
    if usable.empty:
        raise NothingToDraw("no vision feature set scored under transfer: "
                            + _notes(tr)[:300])
    measures = list(dict.fromkeys(usable["vision_measure"].dropna()))
    pairs = list(dict.fromkeys(zip(usable["model"], usable["train_dataset"], usable["test_dataset"])))
    labels = [f"{m} | {a} -> {b}" for m, a, b in pairs]
    fig, axes = plt.subplots(1, len(measures), figsize=(6.0 * len(measures), 1.2 + 0.35 * max(len(pairs), 2)),
                             squeeze=False, sharey=True)
    for ax, measure in zip(axes[0], measures):
        for k, (name, off) in enumerate(zip(VISION_SETS, (-0.2, 0.0, 0.2))):
            sub = usable[(usable["vision_measure"] == measure) & (usable["features"] == name)]
            sub = sub.set_index(["model", "train_dataset", "test_dataset"]).reindex(pairs)
            _forest(ax, labels, sub["difference"], sub["difference_low"], sub["difference_high"], colour=f"C{k}",
                    offset=off, label=name)
        _finish_forest(ax, labels, "AUROC minus entropy alone's")
        ax.set_title(f"vision: {measure}", fontsize=9)
        ax.legend(fontsize=6)
    status = sinks_status(t.frames.get("collapse_traces"))
    fig.suptitle(f"Vision features under transfer ({_sink_line(status)})", fontsize=10)
    fig.tight_layout()
    return fig, status


def fig_interaction_by_task(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    by = t.get("interaction_by_task")
    measures = list(dict.fromkeys(by["vision_measure"].dropna()))
    if not measures:
        raise NothingToDraw("no task-type rows")
    height = 1.4 + 0.35 * max(len(by) // len(measures), 2)
    fig, axes = plt.subplots(1, len(measures), figsize=(6.0 * len(measures), height), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        sub = by[by["vision_measure"] == measure]
        labels = [f"{r.model} | {r.task_type}" + ("" if r.status in ("ok", "unstable") else " (not estimable)")
                  for r in sub.itertuples()]
        colours = ["#e76f51" if tt == "visual_reference" else "#2a9d8f" for tt in sub["task_type"]]
        for k, r in enumerate(sub.itertuples()):
            if np.isfinite(float(r.estimate)):
                ax.errorbar([r.estimate], [k], xerr=_errors([r.estimate], [r.ci_low], [r.ci_high]), fmt="o",
                            markersize=3, capsize=2, color=colours[k], mfc="white" if r.status == "unstable" else None)
        _finish_forest(ax, labels, "entropy x vision (logit, 95% CI)")
        ax.set_title(f"vision: {measure}", fontsize=9)
    status = sinks_status(t.frames.get("collapse_traces"))
    fig.suptitle(f"Entropy x vision interaction by task type ({_sink_line(status)})", fontsize=10)
    fig.tight_layout()
    return fig, status


def fig_masking_response(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    from .features import VARIANT_GROUPS, masking_response

    traces = t.get("collapse_traces")
    table = masking_response(traces)
    if table.empty or set(table["group"]) == {VARIANT_GROUPS["base"]}:
        raise NothingToDraw("no masked traces of items with evidence regions")
    import seaborn as sns

    order = [g for g in VARIANT_GROUPS.values() if g in set(table["group"])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, col, label in zip(axes, ("vision", "answer_changed", "abstained"),
                              ("vision engagement (evidence share)", "answer changed vs unmasked", "abstained")):
        sns.barplot(data=table, x="model", y=col, hue="group", hue_order=order, errorbar=None, ax=ax)
        ax.set_ylabel(label)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=20)
        if ax is not axes[-1]:
            ax.get_legend().remove()
    status = sinks_status(traces)
    fig.suptitle(f"Response to a hidden panel, mean over datasets ({_sink_line(status)})", fontsize=10)
    fig.tight_layout()
    return fig, status


def fig_crm_dependence(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    att = t.get("attribution")
    att = att[np.isfinite(att["dependence"].astype(float))]
    if att.empty:
        raise NothingToDraw("no attribution with a dependence score")
    import seaborn as sns

    n_items = max(1, int(cfg["example_items"]))
    models = list(dict.fromkeys(att["model"])) if "model" in att else [""]
    dataset = att["dataset"].iloc[0] if "dataset" in att else None
    sub = att[att["dataset"] == dataset] if dataset is not None else att
    items = sorted(set(sub["item_id"].astype(str)))[:n_items]
    fig, axes = plt.subplots(len(models), len(items), figsize=(2.8 * len(items), 2.4 * len(models)),
                             squeeze=False)
    for i, m in enumerate(models):
        for j, item in enumerate(items):
            ax = axes[i, j]
            cell = sub[(sub["item_id"].astype(str) == item) & ((sub["model"] == m) if "model" in sub else True)]
            if cell.empty:
                ax.axis("off")
                continue
            grid = cell.groupby(["base_step", "region"])["dependence"].mean().unstack("region")
            sns.heatmap(grid, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", cbar=False, ax=ax,
                        annot_kws={"fontsize": 7})
            ax.set_title(f"{m} | {item}", fontsize=8)
            ax.set_xlabel("hidden region")
            ax.set_ylabel("base step")
    fig.suptitle(f"Step x region dependence ({dataset})", fontsize=10)
    fig.tight_layout()
    return fig, "not applicable"


MODES = ("grounded", "hallucination", "collapse", "insensitive", "undecided", "no_control")


def fig_crm_modes(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    modes = t.get("modes")
    share = (modes.groupby(["model", "dataset"])["mode"].value_counts(normalize=True).rename("share").reset_index())
    pivot = share.pivot_table(index=["model", "dataset"], columns="mode", values="share", fill_value=0.0, sort=False)
    cols = [m for m in MODES if m in pivot.columns] + [c for c in pivot.columns if c not in MODES]
    pivot = pivot[cols]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(pivot), 3.4))
    bottom = np.zeros(len(pivot))
    colours = dict(zip(MODES, ("#2a9d8f", "#e76f51", "#8d6cab", "#bbbbbb", "#e9e9e9", "#f4d58d")))
    for c in cols:
        ax.bar(range(len(pivot)), pivot[c].to_numpy(), bottom=bottom, label=c, color=colours.get(c))
        bottom += pivot[c].to_numpy()
    ax.set_xticks(range(len(pivot)), [f"{m}\n{d}" for m, d in pivot.index], fontsize=7)
    ax.set_ylabel("share of (item, region) cases")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title("CRM failure modes", fontsize=10)
    fig.tight_layout()
    return fig, "not applicable"


def fig_attention_strip(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    maps = t.get("collapse_maps")
    first = maps.iloc[0]
    item, dataset = first["item_id"], first["dataset"]
    sub = maps[(maps["item_id"] == item) & (maps["dataset"] == dataset)]
    models = list(dict.fromkeys(sub["model"]))
    n_steps = int(sub.groupby("model")["step_index"].nunique().max())
    fig, axes = plt.subplots(len(models), n_steps, figsize=(2.2 * n_steps, 2.5 * len(models)), squeeze=False)
    image = _load_image(t.results_dir, first.get("image"))
    from matplotlib.patches import Rectangle

    for i, m in enumerate(models):
        msub = sub[sub["model"] == m]
        for j in range(n_steps):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            step = msub[msub["step_index"] == j]
            if step.empty:
                ax.axis("off")
                continue
            width = float(step["width"].iloc[0]) if np.isfinite(step["width"].iloc[0]) else float(step["x1"].max())
            height = float(step["height"].iloc[0]) if np.isfinite(step["height"].iloc[0]) else float(step["y1"].max())
            if image is not None:
                ax.imshow(image, extent=(0, width, height, 0))
            else:
                ax.imshow(np.full((2, 2), 0.85), cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0))
            heat = _heat(step, width, height)
            ax.imshow(heat, extent=(0, width, height, 0), cmap="magma", alpha=0.55, vmin=0, vmax=1)
            for box in step["evidence_boxes"].iloc[0]:
                x0, y0, x1, y1 = (float(v) for v in box)
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", linewidth=1.5))
            sinks = step[step["is_sink"].astype(bool)]
            for r in sinks.itertuples(index=False):
                ax.plot([(r.x0 + r.x1) / 2], [(r.y0 + r.y1) / 2], marker="x", color="white", markersize=4)
            kind = step["kind"].iloc[0]
            text = str(step["step_text"].iloc[0])
            ax.set_title(f"{kind} {j}: {text[:28]}{'...' if len(text) > 28 else ''}", fontsize=6)
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            if j == 0:
                ax.set_ylabel(m, fontsize=8)
    status = sinks_status(sub)
    fig.suptitle(f"{dataset} | {item}: attention per step (x: sink tokens; {_sink_line(status)})", fontsize=9)
    fig.tight_layout()
    return fig, status


def _heat(step: pd.DataFrame, width: float, height: float, resolution: int = 128) -> np.ndarray:
    """A raster of the step's attention share per pixel (each patch's share painted over its box), max 1."""
    h = max(1, int(round(resolution * height / max(width, height))))
    w = max(1, int(round(resolution * width / max(width, height))))
    heat = np.zeros((h, w))
    sx, sy = w / width, h / height
    share = step["share"].to_numpy(dtype=float)
    excluded = step["is_sink"].astype(bool).to_numpy() & step["sinks_excluded"].astype(bool).to_numpy()
    share = np.where(excluded, 0.0, share)
    for (x0, y0, x1, y1), s in zip(step[["x0", "y0", "x1", "y1"]].to_numpy(dtype=float), share):
        a, b = int(np.floor(y0 * sy)), int(np.ceil(y1 * sy))
        c, d = int(np.floor(x0 * sx)), int(np.ceil(x1 * sx))
        heat[a:b, c:d] = np.maximum(heat[a:b, c:d], s)
    top = heat.max()
    return heat / top if top > 0 else heat


def _load_image(results_dir: Path, image: Any):
    if not isinstance(image, str) or not image:
        return None
    path = Path(image) if Path(image).is_absolute() else results_dir / image
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        log.warning("cannot read image %s: %s (drawn without it)", path, exc)
        return None


def _fits(coef: pd.DataFrame) -> pd.DataFrame:
    return coef[coef["status"].isin(["ok", "unstable"]) & coef["term"].notna()]


def fig_interaction(t: Tables, cfg: Mapping[str, Any]):
    from .interaction import linear_predictor

    plt = _pyplot()
    coef = _fits(t.get("coefficients"))
    pooled = coef[coef["scope"] == "pooled"]
    if pooled.empty:
        raise NothingToDraw("no pooled interaction fit (see regression/summary.txt for why)")
    models = list(dict.fromkeys(pooled["model"]))
    # one pooled fit per (model, vision measure): a row of panels per measure, the primary first
    if "vision_measure" not in pooled.columns:
        pooled = pooled.assign(vision_measure="")
    measures = list(dict.fromkeys(pooled["vision_measure"].fillna("")))
    z = np.linspace(-2.5, 2.5, 101)
    fig, axes = plt.subplots(len(measures), len(models), figsize=(4.0 * len(models), 3.4 * len(measures)),
                             squeeze=False, sharey=True)
    styles = ["-", "--", ":", "-."]
    for ax, (measure, m) in zip(axes.flat, [(v, m) for v in measures for m in models]):
        fit = pooled[(pooled["model"] == m) & (pooled["vision_measure"].fillna("") == measure)]
        if fit.empty:
            ax.axis("off")
            ax.set_title(f"{m}: no pooled fit with vision {measure}", fontsize=8)
            continue
        params = dict(zip(fit["term"], fit["estimate"].astype(float)))
        ref = fit["reference_level"].iloc[0]
        types = [x for x in str(fit["task_types"].iloc[0] or "").split(",") if x] if "task_types" in fit else []
        moderated = isinstance(ref, str) and ref
        levels = types if moderated else [", ".join(types) or "all task types"]
        for k, level in enumerate(levels):
            for zv, colour in ((-1.0, "#e76f51"), (1.0, "#2a9d8f")):
                eta = linear_predictor(params, z, zv, level if moderated else None)
                ax.plot(z, 1 / (1 + np.exp(-eta)), styles[k % len(styles)], color=colour,
                        label=f"{level}, vision {'low' if zv < 0 else 'high'}")
        ax.set_title(f"{m}{f' (vision: {measure})' if measure else ''}: {fit['status'].iloc[0]}, "
                     f"n={int(fit['n'].iloc[0])}, errors={int(fit['n_errors'].iloc[0])}", fontsize=8)
        ax.set_xlabel("z(full-response entropy)")
        ax.set_ylabel("P(correct)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6)
    status = sinks_status(t.frames.get("collapse_traces"))  # vision engagement is built on attention
    fig.suptitle(f"Entropy x vision interaction (pooled fits; {_sink_line(status)})", fontsize=10)
    fig.tight_layout()
    return fig, status


def fig_coefficients(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    coef = _fits(t.get("coefficients"))
    coef = coef[coef["term"] != "const"]
    if coef.empty:
        raise NothingToDraw("no fitted interaction model (see regression/summary.txt for why)")
    models = list(dict.fromkeys(coef["model"]))
    # one fit per vision measure (features.vision): a row of panels each, the primary measure first
    if "vision_measure" not in coef.columns:
        coef = coef.assign(vision_measure="")
    measures = list(dict.fromkeys(coef["vision_measure"].fillna("")))
    fig, axes = plt.subplots(len(measures), len(models),
                             figsize=(4.2 * len(models), len(measures) * (1.4 + 0.5 * coef["term"].nunique())),
                             squeeze=False, sharey=False)
    for ax, (measure, m) in zip(axes.flat, [(v, m) for v in measures for m in models]):
        sub = coef[(coef["model"] == m) & (coef["vision_measure"].fillna("") == measure)]
        if sub.empty:
            ax.axis("off")
            ax.set_title(f"{m}: no fit with vision {measure}", fontsize=8)
            continue
        terms = list(dict.fromkeys(sub["term"]))
        fits = list(dict.fromkeys(sub["dataset"]))
        offsets = np.linspace(-0.25, 0.25, len(fits)) if len(fits) > 1 else [0.0]
        for off, d in zip(offsets, fits):
            f = sub[sub["dataset"] == d].set_index("term").reindex(terms)
            y = np.arange(len(terms)) + off
            est = f["estimate"].to_numpy(float)
            err = np.vstack([est - f["ci_low"].to_numpy(float), f["ci_high"].to_numpy(float) - est])
            ax.errorbar(est, y, xerr=err, fmt="o", markersize=3, capsize=2, label=str(d))
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_yticks(range(len(terms)), terms, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("estimate (logit, 95% CI)")
        ax.set_title(f"{m}" + (f" (vision: {measure})" if measure else ""), fontsize=9)
        ax.legend(fontsize=6)
    status = sinks_status(t.frames.get("collapse_traces"))
    fig.suptitle(f"Interaction logit coefficients ({_sink_line(status)})", fontsize=10)
    fig.tight_layout()
    return fig, status


SIGNAL_LABELS = {"neg_entropy": "entropy", "neg_entropy_answer": "answer-span entropy", "vision": "vision",
                 "model": "model-based", "entropy+veto": "entropy + veto"}


def fig_risk_coverage(t: Tables, cfg: Mapping[str, Any]):
    plt = _pyplot()
    curves = t.get("selective_curves")
    summary = t.frames.get("selective_summary", pd.DataFrame())
    # the vision-based signals exist once per vision measure: draw the primary one's (selective writes it first)
    measures = [m for m in dict.fromkeys(curves["vision_measure"].fillna("")) if m] if "vision_measure" in curves else []
    primary = measures[0] if measures else ""
    if "vision_measure" in curves:
        curves = curves[curves["vision_measure"].fillna("").isin(["", primary])]
    if primary and "vision_measure" in summary:
        summary = summary[summary["vision_measure"].fillna("").isin(["", primary])]
    panels = list(dict.fromkeys(zip(curves["model"], curves["dataset"])))
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (m, d) in zip(axes.flat, panels):
        sub = curves[(curves["model"] == m) & (curves["dataset"] == d)]
        for s, label in SIGNAL_LABELS.items():
            c = sub[sub["signal"] == s]
            if c.empty:
                continue
            ax.plot(c["coverage"], c["risk"], "--" if s == "entropy+veto" else "-", label=label, linewidth=1.2)
        title = f"{m} | {d}"
        if not summary.empty and "delta_risk" in summary:
            row = summary[(summary["model"] == m) & (summary["dataset"] == d) & (summary["signal"] == "entropy+veto")]
            if len(row) and np.isfinite(float(row["delta_risk"].iloc[0])):
                r = row.iloc[0]
                state = "on" if bool(r.get("veto_active")) else "off"
                title += (f"\nveto {state}: delta risk@{float(r['veto_coverage']):.0%} {float(r['delta_risk']):+.3f} "
                          f"[{float(r['delta_risk_low']):+.3f}, {float(r['delta_risk_high']):+.3f}]")
        ax.set_title(title, fontsize=7)
        ax.axvline(0.9, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlabel("coverage")
        ax.set_ylabel("selective risk")
        ax.legend(fontsize=6)
    status = sinks_status(t.frames.get("collapse_traces"))
    vision = f"vision: {primary}; " if primary else ""
    fig.suptitle(f"Risk-coverage with and without the vision veto ({vision}{_sink_line(status)})", fontsize=10)
    fig.tight_layout()
    return fig, status


DRAW: dict[str, Callable[[Tables, Mapping[str, Any]], tuple[Any, str]]] = {
    "collapse_curve": fig_collapse_curve,
    "collapse_accuracy": fig_collapse_accuracy,
    "collapse_layers": fig_collapse_layers,
    "entropy_comparison": fig_entropy_comparison,
    "reliability": fig_reliability,
    "vision_transfer": fig_vision_transfer,
    "interaction_by_task": fig_interaction_by_task,
    "masking_response": fig_masking_response,
    "crm_dependence": fig_crm_dependence,
    "crm_modes": fig_crm_modes,
    "attention_strip": fig_attention_strip,
    "interaction": fig_interaction,
    "coefficients": fig_coefficients,
    "risk_coverage": fig_risk_coverage,
}


# ----------------------------------------------------------------------------- files


def figure_files(out_dir: str | Path, formats: Sequence[str]) -> dict[str, list[Path]]:
    """The files ``make_figures`` writes: ``{name: [out_dir/name.fmt, ...]}`` (fixed, for the rule's outputs)."""
    return {name: [Path(out_dir) / f"{name}.{fmt}" for fmt in formats] for name in FIGURES}


def _placeholder(message: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9)
    return fig


def _save(fig, paths: Sequence[Path], dpi: int) -> None:
    plt = _pyplot()
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        fmt = p.suffix.lstrip(".")
        # no timestamps or software versions: same tables, same bytes
        meta = {"Software": None} if fmt == "png" else {"CreationDate": None, "Producer": None, "Creator": None}
        fig.savefig(p, format=fmt, dpi=dpi, metadata=meta, bbox_inches="tight")
    plt.close(fig)


def make_figures(
    inputs: Mapping[str, Sequence[str | Path] | str | Path],
    results_dir: str | Path,
    out_dir: str | Path,
    figures_cfg: Mapping[str, Any],
    manifest_path: str | Path | None = None,
) -> dict[str, Any]:
    """Draw every figure from the tables in ``inputs`` and write the manifest; returns the manifest.

    ``figures_cfg`` is the config's ``figures`` section (absent keys take the schema's defaults).
    """
    figures_cfg = schema.section("figures", figures_cfg)
    formats = list(figures_cfg["formats"])
    dpi = int(figures_cfg["dpi"])
    results_dir = Path(results_dir)
    tables = load_tables(inputs, results_dir)
    files = figure_files(out_dir, formats)
    plt = _pyplot()
    entries = []
    with plt.rc_context({"pdf.fonttype": 42}):
        for name, (keys, caption) in FIGURES.items():
            entries.append(_one_figure(name, keys, caption, tables, files[name], results_dir, figures_cfg, dpi))
    manifest = {"figures": entries, "formats": formats}
    if manifest_path is not None:
        Path(manifest_path).parent.mkdir(parents=True, exist_ok=True)
        Path(manifest_path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _one_figure(name, keys, caption, tables: Tables, files: Sequence[Path], results_dir: Path,
                figures_cfg: Mapping[str, Any], dpi: int) -> dict[str, Any]:
    """Draw one figure (or a panel saying why not), save it in every format, return its manifest entry."""
    plt = _pyplot()
    entry = {"name": name, "files": [_rel(p, results_dir) for p in files],
             "sources": sorted({p for k in keys for p in tables.paths.get(k, [])}), "caption": caption}
    try:
        fig, status = DRAW[name](tables, figures_cfg)
        entry.update(status="ok", reason="")
    except NothingToDraw as exc:
        plt.close("all")
        fig, status = _placeholder(f"{name}: nothing to draw\n{exc}"), "not applicable"
        entry.update(status="empty", reason=str(exc))
        log.warning("%s: nothing to draw: %s", name, exc)
    except Exception as exc:  # a bug in one figure must not cost the others; logged with its traceback
        log.error("%s failed:\n%s", name, traceback.format_exc())
        plt.close("all")
        fig, status = _placeholder(f"{name}: failed\n{type(exc).__name__}: {exc}"), "not applicable"
        entry.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    entry["attention_sinks"] = status
    if name in ATTENTION_FIGURES and status != "not applicable":
        entry["caption"] = f"{caption} Attention sinks {status}."
    _save(fig, files, dpi)
    return entry


# the table inputs of the ``figures`` rule: lists of files, then single files
LIST_INPUTS = ("collapse_traces", "collapse_maps", "collapse_layers", "attribution", "modes")
FILE_INPUTS = ("collapse_trajectory", "collapse_accuracy", "coefficients", "transfer", "interaction_by_task",
               "selective_curves", "selective_summary", "entropy_comparison", "selective_reliability")


def run_stage(call: StageCall) -> None:
    """The ``figures`` rule: every figure into ``figures/`` and the manifest (``config``: ``figures``)."""
    inputs: dict[str, Any] = {key: [str(p) for p in call.paths(key)] for key in LIST_INPUTS}
    inputs.update({key: str(call.path(key)) for key in FILE_INPUTS})
    manifest = call.output("manifest")
    make_figures(inputs=inputs, results_dir=call.results_dir, out_dir=manifest.parent,
                 figures_cfg=call.config["figures"], manifest_path=manifest)
