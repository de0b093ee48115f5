"""The comparison harness: metrics against closed forms, and a small compare run whose results re-score exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from duogen.eval import metrics

# ----------------------------------------------------------------------------- metrics


def test_frechet_identical_sets_is_zero_and_grows_with_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    d = [metrics.frechet_distance(a, a + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert d == sorted(d) and d[-1] > d[1] > 0
    # a pure shift leaves the covariances equal, so the distance is exactly ||shift||^2 = 6 * s^2
    assert d[2] == pytest.approx(6 * 1.0**2, rel=1e-6)


def test_gaussian_frechet_closed_form_for_diagonal_covariances():
    # For diagonal covariances, Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(s1) - sqrt(s2))^2 per dimension.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()  # 5 + 4 + 1 + 0 = 10
    assert metrics.gaussian_frechet(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # a full covariance, rotated: the distance is invariant to rotating both Gaussians together
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    got = metrics.gaussian_frechet(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_rejects_mismatched_features():
    with pytest.raises(ValueError):
        metrics.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


def test_diversity_zero_for_identical_samples_and_exact_for_two_points():
    same = np.tile(np.arange(5.0), (4, 1))
    assert metrics.diversity([same, same]) == 0.0
    pair = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert metrics.mean_pairwise_distance(pair) == pytest.approx(5.0)
    assert metrics.diversity([same, pair]) == pytest.approx(2.5)


def test_temporal_change_counts_moving_pixels():
    still = np.zeros((2, 5, 8, 8, 3), np.uint8)
    assert metrics.temporal_change(still) == 0.0
    flip = still.copy()
    flip[:, 1::2] = 255  # every consecutive pair of frames differs everywhere by 255
    assert metrics.temporal_change(flip) == pytest.approx(1.0)


def test_mean_accuracy_averages_per_kind_and_over_kinds():
    acc = metrics.mean_accuracy([{"color": 1.0, "shape": 0.0}, {"color": 0.5}])
    assert acc == {"color": 0.75, "shape": 0.0, "all": 0.375}
