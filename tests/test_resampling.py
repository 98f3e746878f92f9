"""Cluster bootstrap helpers: rows of a cluster stay together, the two views of a resample agree, intervals."""

import numpy as np
import pytest

from peekaboo import resampling
from peekaboo.seeding import rng


def test_a_resample_keeps_every_row_of_each_drawn_cluster():
    clusters = ["b", "a", "b", "c", "a", "a"]
    members = resampling.cluster_members(clusters)
    # clusters in sorted order of their labels: a, b, c
    assert [m.tolist() for m in members] == [[1, 4, 5], [0, 2], [3]]
    for pick in resampling.draws(len(members), 50, rng(0, "test")):
        rows = resampling.resampled_rows(members, pick)
        assert sorted(rows.tolist()) == sorted(i for k in pick for i in members[k])
        assert len(pick) == 3


def test_counts_and_rows_are_two_views_of_the_same_resamples():
    clusters = np.array(["x", "x", "y", "z", "z", "z", "w"])
    values = np.array([1.0, 3.0, np.nan, 2.0, 5.0, 7.0, 11.0])
    counts = resampling.row_counts(clusters, 40, rng(3, "views"))
    members = resampling.cluster_members(clusters)
    for b, pick in enumerate(resampling.draws(len(members), 40, rng(3, "views"))):
        rows = resampling.resampled_rows(members, pick)
        np.testing.assert_array_equal(np.bincount(rows, minlength=len(clusters)), counts[b])
        expected = np.nanmean(values[rows]) if np.isfinite(values[rows]).any() else np.nan
        assert resampling.weighted_means(values, counts[b:b + 1])[0] == pytest.approx(expected, nan_ok=True)


def test_weighted_means_by_column_ignore_missing_values():
    values = np.array([[1.0, np.nan], [3.0, np.nan], [5.0, 2.0]])
    counts = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    means = resampling.weighted_means(values, counts)
    assert means[0, 0] == pytest.approx(2.0) and np.isnan(means[0, 1])
    assert means[1, 0] == pytest.approx((3 + 3 + 5) / 3) and means[1, 1] == pytest.approx(2.0)


def test_draws_are_seeded_and_the_interval_is_the_percentile_one():
    a = list(resampling.draws(5, 10, rng(1, "k")))
    b = list(resampling.draws(5, 10, rng(1, "k")))
    c = list(resampling.draws(5, 10, rng(1, "other")))
    assert all((x == y).all() for x, y in zip(a, b)) and not all((x == y).all() for x, y in zip(a, c))
    values = np.arange(1001.0)
    assert resampling.interval(values) == (25.0, 975.0)
    assert resampling.interval(np.r_[values, np.nan, np.inf]) == (25.0, 975.0)
    assert all(np.isnan(resampling.interval(np.array([np.nan]))))
    assert list(resampling.draws(0, 3, rng(0))) and all(len(p) == 0 for p in resampling.draws(0, 3, rng(0)))


def test_weighted_aurocs_equal_auroc_on_the_resampled_rows():
    from peekaboo.interaction import auroc

    g = np.random.default_rng(1)
    n = 60
    y = g.random(n) < 0.5
    score = np.round(g.normal(0, 1, n), 1)  # many ties
    score[[3, 17, 40]] = np.nan  # left out, as auroc leaves them out
    items = np.arange(n) // 3
    counts = resampling.row_counts(items, 50, rng(0, "w"))
    fast = resampling.weighted_aurocs(y, score, counts)
    members = resampling.cluster_members(items)
    slow = [auroc(y[idx], score[idx]) for idx in
            (resampling.resampled_rows(members, pick) for pick in resampling.draws(len(members), 50, rng(0, "w")))]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    # one class in a resample: NaN, as auroc gives
    only_positive = resampling.weighted_aurocs(np.ones(4, bool), np.arange(4.0), np.ones((2, 4)))
    assert np.isnan(only_positive).all()
    assert resampling.weighted_aurocs(y, np.full(n, np.nan), counts).shape == (50,)


def test_paired_auroc_differences_vanish_for_one_score_and_favour_the_better_one():
    g = np.random.default_rng(0)
    y = g.random(300) < 0.6
    good = y + g.normal(0, 0.5, 300)
    noise = g.normal(0, 1, 300)
    items = np.arange(300) // 2
    same = resampling.paired_auroc_differences(y, good, good, items, 100, rng(0, "auc"))
    assert np.allclose(same, 0)
    diff = resampling.paired_auroc_differences(y, good, noise, items, 200, rng(0, "auc"))
    lo, hi = resampling.interval(diff)
    assert lo > 0.1 and hi < 0.6
