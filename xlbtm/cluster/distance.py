"""Squared Euclidean distances between rows and centroids: the one formula k-means (torch, on GPU when there
is one), assignment (numpy: the `cluster` command never imports torch, 1 CPU-s per process) and the ensemble's
router all use, so they measure distance the same way. Written once over the operations numpy arrays and torch
tensors share."""

from __future__ import annotations


def sq_distances(x, c):
    """[n, k] ||x_i - c_j||^2 of x [n, d] and c [k, d] (both numpy arrays or both torch tensors), clamped at 0
    against rounding."""
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    d[d < 0] = 0.0
    return d
