"""Do the interaction model and the veto's pooled interval behave over many simulated studies?

Each simulated study has one model and ``--datasets`` datasets of
``--items`` questions. Datasets differ (offsets): their entropy and vision
sit at different means and spreads (vision scaled as evidence shares scale
with box area) and their accuracy differs. Questions come in clusters of
``--cluster-size`` (figure groups, as HallusionBench's) sharing a random
intercept and part of their vision value; half the clusters are
visual-reference, half symbolic. On the latent, within-dataset standardised
features the logit of correctness is

    1.2 + dataset offset + cluster effect - 1.0 z(entropy)
        + [visual reference only] 2.0 z(vision) - 1.0 z(entropy) z(vision)

so confident, disengaged visual-reference answers are the dangerous ones and
vision does nothing on symbolic questions. Printed:

- how often the pooled interaction model (``regression.pooled_fit``: dataset
  effects, features standardised within each dataset, SEs clustered by the
  clusters) recovers the sign of the planted visual-reference interaction
  (-1.0), over ``--studies-sign`` studies, and how often its 95% interval
  lies below 0 (target: at least 90 of 100 by sign);
- the coverage of the veto's pooled 95% interval (``selective.veto_bootstrap``,
  the rule refitted on every resample, ``--boot`` resamples) over
  ``--studies`` studies (target: at least 0.90). The veto's target is the
  expected pooled change in risk of the whole procedure (the rule fitted on
  the other datasets, then applied); it has no closed form, so it is the mean
  point estimate over ``--truth-studies`` further independent studies.

    /work/main/.venv/bin/python benchmarks/stats_simulation.py            # 200 studies, 2 processes
    /work/main/.venv/bin/python benchmarks/stats_simulation.py --studies 40 --boot 20   # a quick look

The defaults cost about 6,400 leave-one-dataset-out veto fits (each three
interaction fits and a threshold search): 28 minutes with 2 processes on a
2-core machine shared with other jobs (load about 10), a few minutes alone.

Not part of the test suite; every study is seeded (``--seed``), so the
printed figures are the same on every run.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peekaboo import interaction, regression, schema, selective  # noqa: E402

PLANTED_INTERACTION = -1.0
SELECTIVE = {"veto_quantiles": [0.1, 0.2, 0.3], "veto_alpha": 0.05, "veto_coverage": 0.9}


def study(seed: int, n_datasets: int, n_items: int, cluster_size: int) -> pd.DataFrame:
    """One simulated study's per-trace rows (the columns the regression and selective stages read)."""
    rng = np.random.default_rng(seed)
    frames = []
    for d in range(n_datasets):
        name = f"d{d}"
        offset = rng.normal(0.0, 0.6)  # the dataset's accuracy offset
        e_mean, e_sd = 2.0 + rng.normal(0.0, 0.5), 0.5 * rng.uniform(0.6, 1.6)
        v_mean, v_sd = 0.3 * rng.uniform(0.4, 2.0), 0.1 * rng.uniform(0.5, 2.0)  # shares scale with box area
        n_clusters = n_items // cluster_size
        cluster = np.repeat(np.arange(n_clusters), cluster_size)
        u = rng.normal(0.0, 0.8, n_clusters)[cluster]  # the figure's own difficulty
        visual = (np.arange(n_clusters) % 2 == 0)[cluster]
        ze = rng.standard_normal(len(cluster))
        zv = np.sqrt(0.7) * rng.standard_normal(len(cluster)) + np.sqrt(0.3) * rng.standard_normal(n_clusters)[cluster]
        eta = 1.2 + offset + u - 1.0 * ze + np.where(visual, 2.0 * zv + PLANTED_INTERACTION * ze * zv, 0.0)
        correct = rng.random(len(cluster)) < 1.0 / (1.0 + np.exp(-eta))
        items = [f"{name}-{i:04d}" for i in range(len(cluster))]
        frames.append(pd.DataFrame({
            "trace_id": [f"m|{i}|base|none" for i in items], "model": "m", "dataset": name, "item_id": items,
            "cluster_id": [f"{name}-fig{c}" for c in cluster], "variant": "base", "status": "ok",
            "task_type": np.where(visual, "visual_reference", "symbolic"), "correct": correct,
            "entropy_full": e_mean + e_sd * ze, "vision": v_mean + v_sd * zv}))
    return pd.concat(frames, ignore_index=True)


def sign_study(args: tuple[int, int, int, int]) -> tuple[float, float, float, str]:
    """The pooled fit's visual-reference interaction (estimate, 95% interval) and the fit's status."""
    seed, n_datasets, n_items, cluster_size = args
    fit = regression.pooled_fit(study(seed, n_datasets, n_items, cluster_size), 5)
    if fit.status != "ok":
        return np.nan, np.nan, np.nan, fit.status
    weights = {"entropy:vision": 1.0, "entropy:vision:task[visual_reference]": 1.0}
    grad = np.array([weights.get(t, 0.0) for t in fit.terms])
    est = float(grad @ fit.params)
    se = float(np.sqrt(grad @ fit.cov @ grad))
    return est, est - 1.96 * se, est + 1.96 * se, fit.status


def veto_point(args: tuple[int, int, int, int]) -> float:
    seed, n_datasets, n_items, cluster_size = args
    data = study(seed, n_datasets, n_items, cluster_size)
    return selective.pooled_veto_effect(selective.veto_lodo(data, schema.section("selective", SELECTIVE), 5))[0]


def veto_interval(args: tuple[int, int, int, int, int]) -> tuple[float, float, float]:
    seed, n_datasets, n_items, cluster_size, n_boot = args
    data = study(seed, n_datasets, n_items, cluster_size)
    cfg = schema.section("selective", SELECTIVE)
    point = selective.pooled_veto_effect(selective.veto_lodo(data, cfg, 5))[0]
    boots = selective.veto_bootstrap(data, cfg, 5, n_boot, np.random.default_rng([seed, 7]))
    lo, hi = selective.interval(boots["pooled"])
    return point, lo, hi


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=200, help="studies for the veto's coverage")
    ap.add_argument("--studies-sign", type=int, default=100, help="studies for the interaction's sign")
    ap.add_argument("--truth-studies", type=int, default=200, help="studies whose mean is the veto's target")
    ap.add_argument("--boot", type=int, default=30, help="bootstrap resamples per study (the rule refitted in each)")
    ap.add_argument("--datasets", type=int, default=3)
    ap.add_argument("--items", type=int, default=120, help="questions per dataset")
    ap.add_argument("--cluster-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    shape = (a.datasets, a.items, a.cluster_size)
    start = time.time()
    with ProcessPoolExecutor(a.workers) as pool:
        signs = list(pool.map(sign_study, [(a.seed * 10**6 + s, *shape) for s in range(a.studies_sign)]))
        est = np.array([s[0] for s in signs])
        lo = np.array([s[1] for s in signs])
        hi = np.array([s[2] for s in signs])
        fitted = np.isfinite(est)
        print(f"interaction model, {a.studies_sign} studies ({a.datasets} datasets x {a.items} questions in clusters "
              f"of {a.cluster_size}, dataset offsets): planted visual-reference interaction {PLANTED_INTERACTION:+.1f}")
        print(f"  sign recovered (estimate < 0): {int((est[fitted] < 0).sum())} of {a.studies_sign} "
              f"({int((~fitted).sum())} fits not ok: {sorted(set(s[3] for s in signs if s[3] != 'ok'))})")
        print(f"  95% interval below 0: {int((hi[fitted] < 0).sum())} of {a.studies_sign}; median estimate "
              f"{np.median(est[fitted]):+.3f}", flush=True)
        truth_points = np.array(list(pool.map(
            veto_point, [(a.seed * 10**6 + 500_000 + s, *shape) for s in range(a.truth_studies)])))
        truth = float(np.nanmean(truth_points))
        runs = list(pool.map(veto_interval, [(a.seed * 10**6 + 100_000 + s, *shape, a.boot)
                                             for s in range(a.studies)]))
    points = np.array([r[0] for r in runs])
    lows = np.array([r[1] for r in runs])
    highs = np.array([r[2] for r in runs])
    ok = np.isfinite(lows) & np.isfinite(highs)
    covered = (lows <= truth) & (truth <= highs)
    truth_se = float(np.nanstd(truth_points) / np.sqrt(np.isfinite(truth_points).sum()))
    print(f"veto, {a.studies} studies, {a.boot} resamples each (the rule refitted in every resample): target "
          f"{100 * truth:+.2f} points (mean of {a.truth_studies} further studies, SE {100 * truth_se:.2f})")
    print(f"  coverage of the pooled 95% interval: {covered[ok].mean():.3f} ({int(covered[ok].sum())} of {int(ok.sum())}"
          f"); intervals below the target {int((highs[ok] < truth).sum())}, above {int((lows[ok] > truth).sum())}")
    print(f"  mean point estimate {100 * np.nanmean(points):+.2f} points, median interval width "
          f"{100 * np.median(highs[ok] - lows[ok]):.2f} points; interval below 0 in {int((highs[ok] < 0).sum())}")
    print(f"elapsed {time.time() - start:.0f} s with {a.workers} processes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
