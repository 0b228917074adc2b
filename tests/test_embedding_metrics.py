"""Distribution metrics of feature sets (molgen.metrics.embedding) against independent references:
closed forms, brute-force double loops, scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.special import logsumexp
from scipy.stats import gaussian_kde, multivariate_normal, norm

from molgen.metrics.embedding import (
    drop_nan_rows,
    frechet_distance_features,
    kde_cv_bandwidth,
    kde_log_density,
    kde_scores,
    kid,
    mmd_rbf,
    wasserstein1,
)

ENTROPY_STD_NORMAL = 0.5 * math.log(2 * math.pi * math.e)  # 1.4189...


# ----------------------------------------------------------------------------- Fréchet distance


def test_fd_matches_gaussian_closed_form_on_large_samples() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
    a1, a2 = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    s1, s2 = a1 @ a1.T + 0.5 * np.eye(3), a2 @ a2.T + 0.2 * np.eye(3)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))
    X = rng.multivariate_normal(mu1, s1, size=200_000)
    Y = rng.multivariate_normal(mu2, s2, size=200_000)
    assert frechet_distance_features(X, Y) == pytest.approx(expected, rel=0.02, abs=0.02)


def test_fd_exact_for_diagonal_sample_covariances() -> None:
    # points mu ± a e_1, mu ± b e_2: sample mean mu, unbiased covariance diag(2a²/3, 2b²/3) exactly
    def cross(mu, a, b):
        return np.array(mu) + np.array([[a, 0.0], [-a, 0.0], [0.0, b], [0.0, -b]])

    X, Y = cross([1.0, 2.0], 3.0, 0.6), cross([-1.0, 0.5], 1.5, 1.2)
    v1, v2 = np.array([2 * 9.0 / 3, 2 * 0.36 / 3]), np.array([2 * 2.25 / 3, 2 * 1.44 / 3])
    by_hand = (2.0**2 + 1.5**2) + float(np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2))
    assert frechet_distance_features(X, Y) == pytest.approx(by_hand, rel=1e-12)
    assert frechet_distance_features(X, X) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- KID / MMD


def brute_mmd2(X, Y, k) -> float:
    n, m = len(X), len(Y)
    xx = sum(k(X[i], X[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(Y[i], Y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(X[i], Y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_kid_tiny_inputs_equal_brute_force_unbiased_mmd() -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(6, 3)), rng.normal(0.5, 1.2, size=(6, 3))
    cubic = lambda x, y: (float(np.dot(x, y)) / 3 + 1) ** 3  # noqa: E731
    # subsets of min(1000, 6, 6) = 6 rows are permutations of the whole sets
    mean, std = kid(X, Y, n_subsets=5)
    assert mean == pytest.approx(brute_mmd2(X, Y, cubic), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-10)


def test_kid_same_distribution_near_zero_shifted_clearly_positive() -> None:
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    mean, std = kid(X, Y, subset_size=500, n_subsets=50)
    assert abs(mean) < 3 * std
    shifted, shifted_std = kid(X, Y + 0.5, subset_size=500, n_subsets=50)
    assert shifted > 10 * shifted_std and shifted > 20 * abs(mean)


def test_mmd_rbf_equals_brute_force_with_given_and_median_bandwidth() -> None:
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(5, 2)), rng.normal(1.0, 1.0, size=(7, 2))
    gauss = lambda s: (lambda x, y: math.exp(-float(np.sum((x - y) ** 2)) / (2 * s * s)))  # noqa: E731
    assert mmd_rbf(X, Y, bandwidth=0.7) == pytest.approx(brute_mmd2(X, Y, gauss(0.7)), rel=1e-10)
    pooled = np.concatenate([X, Y])
    median = float(np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(pooled, 2)]))
    assert mmd_rbf(X, Y) == pytest.approx(brute_mmd2(X, Y, gauss(median)), rel=1e-10)


def test_mmd_rbf_same_distribution_near_zero() -> None:
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4))
    same = mmd_rbf(X, Y)
    assert abs(same) < 3e-3
    assert mmd_rbf(X, Y + 0.5) > 10 * abs(same) + 0.01


# ----------------------------------------------------------------------------- KDE


def test_kde_log_density_matches_scipy_and_brute_force() -> None:
    rng = np.random.default_rng(5)
    train, query = rng.normal(size=(50, 1)), rng.normal(size=(20, 1))
    h = 0.4
    ref = gaussian_kde(train[:, 0], bw_method=h / train[:, 0].std(ddof=1))  # kernel std = h
    np.testing.assert_allclose(kde_log_density(train, query, h), ref.logpdf(query[:, 0]), rtol=1e-10)
    train3, query3 = rng.normal(size=(40, 3)), rng.normal(size=(10, 3))
    brute = [logsumexp([multivariate_normal(x, h * h * np.eye(3)).logpdf(q) for x in train3]) - math.log(40)
             for q in query3]
    np.testing.assert_allclose(kde_log_density(train3, query3, h), brute, rtol=1e-10)


def test_kde_cv_bandwidth_smaller_for_tight_cluster() -> None:
    rng = np.random.default_rng(6)
    grid = np.logspace(-3, 1, 30)
    tight = kde_cv_bandwidth(0.1 * rng.normal(size=(300, 2)), candidates=grid)
    spread = kde_cv_bandwidth(3.0 * rng.normal(size=(300, 2)), candidates=grid)
    assert tight < spread / 5


def test_kde_standard_normal_mean_log_density_is_minus_entropy() -> None:
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(1000, 1)), rng.normal(size=(1000, 1))
    h = kde_cv_bandwidth(X)
    assert 0.1 < h < 0.6
    mean_log_density = kde_log_density(X, Y, h).mean()
    assert mean_log_density == pytest.approx(-ENTROPY_STD_NORMAL, abs=0.06)
    assert mean_log_density == pytest.approx(norm.logpdf(Y).mean(), abs=0.03)  # the true density
    # kde_scores works in coordinates standardized by Y: the true density there is sd_Y * phi(x)
    scores = kde_scores(X, Y)
    log_sd = math.log(Y.std())
    assert scores["KDE_ref_under_samples"] == pytest.approx(norm.logpdf(Y).mean() + log_sd, abs=0.03)
    assert scores["KDE_samples_under_ref"] == pytest.approx(norm.logpdf(X).mean() + log_sd, abs=0.03)


# ----------------------------------------------------------------------------- W1, NaN rows


def test_wasserstein1_by_hand() -> None:
    assert wasserstein1([0, 1, 3], [5, 6, 8]) == pytest.approx(5.0)
    assert wasserstein1([0, 0, 1], [0, 1, 1]) == pytest.approx(1 / 3)  # |2/3 - 1/3| on [0, 1)
    assert wasserstein1([0, 1], [0, 0, 0, 1]) == pytest.approx(1 / 4)  # |1/2 - 3/4| on [0, 1)


def test_drop_nan_rows_counts() -> None:
    a = np.array([[1.0, 2.0], [np.nan, 0.0], [3.0, np.inf], [4.0, 5.0]])
    clean, dropped = drop_nan_rows(a)
    assert dropped == 2 and clean.tolist() == [[1.0, 2.0], [4.0, 5.0]]
    with pytest.raises(ValueError):
        frechet_distance_features(clean[:1], clean)
