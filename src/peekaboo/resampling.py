"""Bootstrap over clusters (items): the resampling every interval of the analysis stages is built on.

A resample draws as many clusters as there are, with replacement, and keeps
every row of a drawn cluster as often as it was drawn, so rows of one item
(several traces of an item, or one item answered by several models) stay
together. :func:`draws` is the one definition of those draws: the selective,
regression, collapse-findings and claims stages all resample through it, with
generators from :func:`peekaboo.seeding.rng`, so the same seed and keys give
the same intervals everywhere.

- :func:`cluster_members` and :func:`resampled_rows`: a resample as row
  indices (for statistics that need the rows in order, such as a ranking);
- :func:`row_counts` and :func:`weighted_means`: a resample as how often each
  row was drawn (for means and shares, vectorised over the resamples);
- :func:`weighted_aurocs` and :func:`paired_auroc_differences`: AUROC on every
  resample at once, and AUROC(a) - AUROC(b) on the same resamples;
- :func:`interval`: the percentile interval of the replicates.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd


LEVEL = 0.95


def cluster_codes(clusters: Sequence) -> tuple[np.ndarray, int]:
    """Each row's cluster number (clusters in sorted order of their labels as text) and the number of clusters."""
    codes, uniques = pd.factorize(pd.Series(list(clusters), dtype="object").astype(str), sort=True)
    return codes, len(uniques)


def cluster_members(clusters: Sequence) -> list[np.ndarray]:
    """The row indices of each cluster, clusters in sorted order of their labels."""
    codes, n = cluster_codes(clusters)
    return [np.flatnonzero(codes == k) for k in range(n)]


def draws(n_clusters: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The clusters each of ``n_boot`` resamples draws (``n_clusters`` of them, with replacement)."""
    for _ in range(n_boot):
        # one call per resample: the stream stays the same whatever else is drawn around it
        yield rng.integers(0, n_clusters, n_clusters) if n_clusters else np.array([], dtype=int)


def resampled_rows(members: Sequence[np.ndarray], pick: np.ndarray) -> np.ndarray:
    """The row indices of one resample: every row of each drawn cluster, in draw order."""
    return np.concatenate([members[k] for k in pick]) if len(pick) else np.array([], dtype=int)


def row_counts(clusters: Sequence, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n_rows]``: how many times each row is drawn in each resample."""
    codes, n = cluster_codes(clusters)
    out = np.zeros((n_boot, len(codes)))
    for b, pick in enumerate(draws(n, n_boot, rng)):
        out[b] = np.bincount(pick, minlength=n)[codes]
    return out


def weighted_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Means of ``values`` (``[n_rows]`` or ``[n_rows, k]``) under each resample's ``counts``, NaN ignored.

    Returns ``[n_boot]`` or ``[n_boot, k]``; NaN where a resample holds no
    finite value of a column.
    """
    v = np.asarray(values, dtype=float)
    flat = v.ndim == 1
    v = v[:, None] if flat else v
    finite = np.isfinite(v)
    totals = counts @ np.where(finite, v, 0.0)
    weights = counts @ finite.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(weights > 0, totals / np.where(weights > 0, weights, 1.0), np.nan)
    return means[:, 0] if flat else means


def weighted_aurocs(y: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney, ties count half) of each resample given as row counts ``[n_boot, n_rows]``.

    The same numbers as :func:`peekaboo.interaction.auroc` on the resampled
    rows (a row drawn k times counts k times; rows without a finite score are
    left out; NaN with one class), computed for all resamples at once from one
    sort: per group of tied scores, the positives' weight times the weight of
    the negatives below plus half of those tied with them.
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(score, dtype=float)
    counts = np.asarray(counts, dtype=float)
    ok = np.isfinite(s)
    y, s, counts = y[ok], s[ok], counts[:, ok]
    if not len(s):
        return np.full(len(counts), np.nan)
    order = np.argsort(s, kind="stable")
    s, y, counts = s[order], y[order], counts[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first row of each group of tied scores
    pos = np.add.reduceat(counts * y, starts, axis=1)
    neg = np.add.reduceat(counts * ~y, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives with a strictly lower score
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / np.where(pairs > 0, pairs, 1.0), np.nan)


def paired_auroc_differences(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, clusters: Sequence,
                             n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates (over clusters) of AUROC(a) - AUROC(b), both on the same resamples (:func:`draws`)."""
    counts = row_counts(clusters, n_boot, rng)
    return weighted_aurocs(y, score_a, counts) - weighted_aurocs(y, score_b, counts)


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (non-finite replicates left out); NaN without any."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    tail = round((1.0 - level) * 50.0, 10)  # 2.5 exactly for 0.95, not 2.5000000000000022
    lo, hi = np.percentile(v, [tail, 100.0 - tail])
    return float(lo), float(hi)
