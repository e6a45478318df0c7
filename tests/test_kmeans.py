import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from xlbtm.cluster.kmeans import balanced_assign, fit_kmeans, predict_balanced, predict_nearest, sq_distances
from xlbtm.errors import UsageError


def _blobs(n, k, d, seed, spread=0.3, skew=False):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    # skewed blob sizes, so a plain nearest assignment would be unbalanced
    p = np.arange(1, k + 1, dtype=float) ** 2 if skew else np.ones(k)
    which = rng.choice(k, size=n, p=p / p.sum())
    return (centers[which] + spread * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("n,k", [(60, 4), (61, 4), (203, 7), (300, 10), (150, 1), (12, 12)])
def test_balanced_assignment_exact_sizes_and_near_optimal(n, k):
    rng = np.random.default_rng(n + k)
    x = _blobs(n, k, 6, seed=n, skew=True)
    c = rng.normal(size=(k, 6)).astype(np.float32)
    labels, _ = balanced_assign(x, c, device="cpu")
    labels = labels.numpy()
    sizes = np.bincount(labels, minlength=k)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == n
    cost = sq_distances(torch.tensor(x), torch.tensor(c)).double().numpy()
    q, r = divmod(n, k)
    # exact optimum: every choice of which r clusters get ceil(n/k), each solved by linear_sum_assignment
    opt = np.inf
    for extra in itertools.combinations(range(k), r):
        reps = [q + (j in extra) for j in range(k)]
        big = np.repeat(cost, reps, axis=1)
        ri, ci = linear_sum_assignment(big)
        opt = min(opt, big[ri, ci].sum())
    mine = cost[np.arange(n), labels].sum()
    assert mine <= opt * 1.01 + 1e-9, (mine, opt)
    # and it is really balanced-constrained: plain nearest assignment is cheaper but unbalanced
    nearest = cost.argmin(1)
    if k > 1:
        assert np.bincount(nearest, minlength=k).max() - np.bincount(nearest, minlength=k).min() > 1


def test_fit_balanced_deterministic_and_balanced():
    x = _blobs(997, 8, 16, seed=1, skew=True)
    a = fit_kmeans(x, 8, balanced=True, seed=3, device="cpu")
    b = fit_kmeans(x, 8, balanced=True, seed=3, device="cpu")
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.labels, b.labels)
    sizes = np.bincount(a.labels, minlength=8)
    assert sizes.max() - sizes.min() <= 1
    c = fit_kmeans(x, 8, balanced=True, seed=4, device="cpu")
    assert not np.array_equal(a.centroids, c.centroids)
    # predict_balanced on the fit data keeps the balance; nearest-centroid is the unconstrained rule
    pb = predict_balanced(x, a.centroids)
    assert np.bincount(pb, minlength=8).max() - np.bincount(pb, minlength=8).min() <= 1
    pn = predict_nearest(x, a.centroids)
    d = sq_distances(torch.tensor(x), torch.tensor(a.centroids)).numpy()
    np.testing.assert_array_equal(pn, d.argmin(1))


def test_fit_plain_recovers_blobs_and_converges():
    x = _blobs(400, 4, 8, seed=2, spread=0.05)
    r = fit_kmeans(x, 4, balanced=False, seed=0, device="cpu", max_iter=50)
    assert r.converged and r.n_iter < 50
    # every blob is one cluster
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(4, 8))
    which = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), 1)
    from sklearn.metrics import normalized_mutual_info_score
    assert normalized_mutual_info_score(which, r.labels) > 0.99


def test_iteration_cap_and_bad_k():
    x = _blobs(200, 5, 4, seed=5)
    r = fit_kmeans(x, 5, max_iter=2, tol=0.0, seed=0, device="cpu")
    assert r.n_iter == 2 and not r.converged
    with pytest.raises(UsageError, match="at least"):
        fit_kmeans(x[:3], 5, device="cpu")
    with pytest.raises(UsageError, match=">= 1"):
        fit_kmeans(x, 0, device="cpu")
