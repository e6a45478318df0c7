"""Balanced k-means in torch (GPU when there is one, CPU otherwise: `xlbtm.runtime.resolve_device`).

- init: k-means++ (greedy, 2 + log k local trials per center, like scikit-learn), from a seeded generator.
- Lloyd iterations. With `balanced=True` the assignment step is a *balanced* assignment: cluster sizes are
  floor(n/k) or ceil(n/k) (they differ by at most 1), solved as a transportation problem: annealed Sinkhorn
  duals, an exact-size repair, then negative-cycle canceling on the k-node residual graph (min-cost-flow
  optimality: no negative cycle left means optimal). The tests check the cost against the exact optimum
  from scipy's linear_sum_assignment (to 1e-9, on fixtures where Sinkhorn + repair alone fall short).
  Duals are kept between Lloyd iterations (warm start), so later iterations cost a few Sinkhorn sweeps
  more than a plain nearest-centroid step.
- stop when the squared centroid shift summed over centroids is <= tol * mean feature variance (sklearn's
  rule) or after `max_iter` iterations.
- deterministic for a seed on a given device (stable sorts, no atomics-dependent reductions on CPU).

Prediction is nearest centroid (c-BTM does this at assignment time); `balanced_assign` is the batch version
that keeps the sizes balanced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from xlbtm.cluster.distance import sq_distances  # noqa: F401 - re-exported: k-means' distance
from xlbtm.errors import UsageError
from xlbtm.runtime import resolve_device


@dataclass
class KMeansResult:
    centroids: np.ndarray  # [k, d] float32
    labels: np.ndarray  # [n] int64, labels of the fit data (balanced if fit balanced)
    inertia: float  # sum of squared distances to the assigned centroid
    n_iter: int
    converged: bool


def _as_tensor(x, device=None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
    return t.to(device=device, dtype=torch.float32)


def default_device() -> torch.device:
    """`xlbtm.runtime.resolve_device`'s: $XLBTM_DEVICE, else cuda when visible, else cpu."""
    return torch.device(resolve_device())


# ------------------------------------------------------------------------------------------------ k-means++


def kmeans_plusplus(x: torch.Tensor, k: int, gen: torch.Generator, n_local_trials: int | None = None) -> torch.Tensor:
    n = x.shape[0]
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    centers = [x[first]]
    closest = sq_distances(x, x[first][None])[:, 0]
    for _ in range(1, k):
        pot = closest.sum()
        if pot <= 0:  # all remaining points coincide with a center: pick uniformly
            idx = torch.randint(n, (n_local_trials,), generator=gen)
        else:
            r = torch.rand(n_local_trials, generator=gen, dtype=torch.float64) * float(pot)
            cum = torch.cumsum(closest.double().cpu(), 0)
            idx = torch.searchsorted(cum, r).clamp_(max=n - 1)
        idx = idx.to(x.device)
        d_cand = sq_distances(x, x[idx])  # [n, trials]
        new_closest = torch.minimum(closest[:, None], d_cand)
        best = int(torch.argmin(new_closest.sum(0)))
        centers.append(x[idx[best]])
        closest = new_closest[:, best].contiguous()
    return torch.stack(centers)


# ---------------------------------------------------------------------------------------- balanced assignment


def _target_caps(sizes: torch.Tensor, n: int, k: int, g: torch.Tensor) -> torch.Tensor:
    """Capacities floor/ceil(n/k); the ceil goes to the clusters that want the most points (then highest dual)."""
    q, r = divmod(n, k)
    cap = torch.full((k,), q, dtype=torch.long, device=sizes.device)
    if r:
        key = sizes.double() * 1e6 + g.double() / (g.abs().max() + 1e-12)
        cap[torch.argsort(-key, stable=True)[:r]] += 1
    return cap


def _sinkhorn_duals(cn: torch.Tensor, cap: torch.Tensor, g: torch.Tensor | None, iters: int) -> torch.Tensor:
    """Log-domain Sinkhorn between n unit-mass points and k clusters of mass cap[j] with epsilon annealing;
    returns the cluster potentials g, so argmin_j(cost_ij - g_j) is (nearly) the balanced optimum."""
    logcap = torch.log(cap.to(cn.dtype))
    schedule = [0.3, 0.1, 0.03, 0.01] if g is None else [0.03, 0.01]
    if g is None:
        g = torch.zeros(cn.shape[1], dtype=cn.dtype, device=cn.device)
    for eps in schedule:
        for _ in range(iters):
            f = -eps * torch.logsumexp((g[None, :] - cn) / eps, dim=1)
            g_new = eps * logcap - eps * torch.logsumexp((f[:, None] - cn) / eps, dim=0)
            # |g_new - g| / eps is the log-ratio of each cluster's mass to its target before this update:
            # stop this epsilon once every cluster is within 0.1%
            done = float((g_new - g).abs().max()) < 1e-3 * eps
            g = g_new
            if done:
                break
    return g


def _repair(cost: torch.Tensor, labels: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """Move the cheapest points from over-full to under-full clusters until sizes == cap."""
    k = cost.shape[1]
    sizes = torch.bincount(labels, minlength=k)
    while True:
        over = sizes > cap
        if not bool(over.any()):
            return labels
        under = sizes < cap
        idx = torch.nonzero(over[labels]).flatten()
        own = cost[idx, labels[idx]]
        delta = cost[idx][:, under] - own[:, None]  # [m, n_under]
        flat = int(torch.argmin(delta))
        i = int(idx[flat // delta.shape[1]])
        b = int(torch.nonzero(under).flatten()[flat % delta.shape[1]])
        sizes[labels[i]] -= 1
        sizes[b] += 1
        labels[i] = b


def _negative_cycle(w: np.ndarray, tol: float) -> list[int] | None:
    """A negative-weight cycle of the dense graph `w` (inf = no edge) by Bellman-Ford, or None."""
    m = w.shape[0]
    dist = np.zeros(m)
    pred = np.full(m, -1)
    cols = np.arange(m)
    upd = None
    for _ in range(m + 1):
        cand = dist[:, None] + w
        src = cand.argmin(0)
        best = cand[src, cols]
        upd = best < dist - tol
        if not upd.any():
            return None
        dist[upd] = best[upd]
        pred[upd] = src[upd]
    assert upd is not None  # range(m + 1) is never empty
    v = int(np.nonzero(upd)[0][0])
    for _ in range(m):
        v = int(pred[v])
    cycle = [v]
    u = int(pred[v])
    while u != v:
        cycle.append(u)
        u = int(pred[u])
    cycle.reverse()  # now edges go cycle[i] -> cycle[i+1] -> ... -> cycle[0]
    weight = sum(w[cycle[i], cycle[(i + 1) % len(cycle)]] for i in range(len(cycle)))
    return cycle if weight < -tol else None


def _cancel_cycles(
    cost: torch.Tensor, labels: torch.Tensor, flexible: bool, q: int, tol: float, max_cycles: int
) -> torch.Tensor:
    """Improve a balanced assignment to optimality: a min-cost-flow solution has no negative cycle in its
    residual graph. Over k cluster nodes, edge a->b costs the cheapest move of one point from a to b. With
    sizes q/q+1 (flexible) a virtual node lets a (q+1)-cluster hand its extra point to a q-cluster."""
    n, k = cost.shape
    ar = torch.arange(n, device=cost.device)
    for _ in range(max_cycles):
        rel = cost - cost[ar, labels][:, None]  # cost of moving point i to each cluster
        rel[ar, labels] = float("inf")
        lab2 = labels[:, None].expand(n, k)
        wmin = torch.full((k, k), float("inf"), dtype=cost.dtype, device=cost.device)
        wmin.scatter_reduce_(0, lab2, rel, reduce="amin")
        hit = rel == wmin[labels]  # which point attains each edge's minimum (lowest index wins)
        who = torch.where(hit, ar[:, None].expand(n, k), torch.full_like(lab2, n))
        arg_t = torch.full((k, k), n, dtype=torch.long, device=cost.device)
        arg_t.scatter_reduce_(0, lab2, who, reduce="amin")
        m = k + 1 if flexible else k
        w = np.full((m, m), np.inf)
        w[:k, :k] = wmin.cpu().numpy()
        arg = arg_t.cpu().numpy()
        lab = labels.cpu().numpy()
        if flexible:
            sizes = np.bincount(lab, minlength=k)
            w[k, :k] = np.where(sizes == q + 1, 0.0, np.inf)  # may give away its extra point
            w[:k, k] = np.where(sizes == q, 0.0, np.inf)  # may take one more
        cycle = _negative_cycle(w, tol)
        if cycle is None:
            break
        for i in range(len(cycle)):
            a, b = cycle[i], cycle[(i + 1) % len(cycle)]
            if a < k and b < k:
                labels[int(arg[a, b])] = b
    return labels


def balanced_assign(
    x, centroids, *, g: torch.Tensor | None = None, sinkhorn_iters: int = 25, max_cycles: int = 200, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign n points to k centroids minimizing total squared distance with sizes floor/ceil(n/k).

    1. Sinkhorn (entropic OT, annealed) gives cluster potentials g; points go to argmin_j(cost_ij - g_j).
    2. A repair pass moves the cheapest points until sizes are exactly floor/ceil(n/k).
    3. Negative-cycle canceling on the k-node residual graph removes what entropy and repair left on the
       table (at most `max_cycles` cycles; each strictly lowers the cost).
    Returns (labels [n], g) so the next Lloyd iteration can warm-start from g.
    """
    device = device or (x.device if isinstance(x, torch.Tensor) else default_device())
    x = _as_tensor(x, device)
    c = _as_tensor(centroids, device)
    n, k = x.shape[0], c.shape[0]
    if n < k:
        raise UsageError(f"balanced assignment needs at least as many points ({n}) as clusters ({k})")
    cost = sq_distances(x, c).double()
    scale = float(cost.min(1).values.mean()) or 1.0
    cn = cost / scale
    q, r = divmod(n, k)
    cap0 = torch.full((k,), n / k, dtype=torch.float64, device=device)
    g = _sinkhorn_duals(cn, cap0, None if g is None else g.to(device=device, dtype=cn.dtype), sinkhorn_iters)
    labels = torch.argmin(cn - g[None, :], 1)
    cap = _target_caps(torch.bincount(labels, minlength=k), n, k, g)
    labels = _repair(cn, labels, cap)
    labels = _cancel_cycles(cn, labels, r > 0, q, 1e-9, max_cycles)
    return labels, g


# ---------------------------------------------------------------------------------------------------- fit


def fit_kmeans(
    x, k: int, *, balanced: bool = True, max_iter: int = 100, tol: float = 1e-4, seed: int = 0, device=None
) -> KMeansResult:
    """k-means (balanced or plain) of the rows of `x` ([n, d]); see the module docstring. On CPU, torch runs
    single-threaded unless x is large (`xlbtm.cluster.threads.threads_for`): its ops are small, and on a busy
    machine every parallel region's barrier stalled (33 s instead of 0.5 s at 3k x 100)."""
    from contextlib import nullcontext

    from xlbtm.cluster.threads import limit_threads, threads_for

    device = torch.device(resolve_device(device))  # the flag, else $XLBTM_DEVICE, else cuda when visible
    x = _as_tensor(x, device)
    with limit_threads(threads_for(x.numel())) if device.type == "cpu" else nullcontext():
        return _fit(x, k, balanced, max_iter, tol, seed, device)


def _fit(x: torch.Tensor, k: int, balanced: bool, max_iter: int, tol: float, seed: int, device) -> KMeansResult:
    n = x.shape[0]
    if k < 1:
        raise UsageError(f"--num-clusters must be >= 1, got {k}")
    if n < k:
        raise UsageError(
            f"need at least --num-clusters={k} documents to fit, got {n} (lower --num-clusters or give more data)"
        )
    gen = torch.Generator().manual_seed(int(seed))
    c = kmeans_plusplus(x, k, gen)
    threshold = tol * float(x.var(0).mean()) if n > 1 else 0.0
    g = None
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007  (`it` is reported after the loop)
        if balanced:
            # few cycles while centroids still move; the final assignment below is polished fully
            labels, g = balanced_assign(x, c, g=g, max_cycles=min(k, 16), device=device)
        else:
            labels = torch.argmin(sq_distances(x, c), 1)
        new_c = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        empty = counts == 0
        new_c = new_c / counts.clamp_min(1)[:, None]
        if bool(empty.any()):  # plain k-means only: move empty centers to the worst-served points
            d = sq_distances(x, c).gather(1, labels[:, None])[:, 0]
            far = torch.argsort(-d, stable=True)[: int(empty.sum())]
            new_c[empty] = x[far]
        shift = float(((new_c - c) ** 2).sum())
        c = new_c
        if shift <= threshold:
            converged = True
            break
    if balanced:
        labels, _ = balanced_assign(x, c, g=g, device=device)
    else:
        labels = torch.argmin(sq_distances(x, c), 1)
    inertia = float(sq_distances(x, c).gather(1, labels[:, None]).sum())
    return KMeansResult(
        c.cpu().numpy().astype(np.float32), labels.cpu().numpy().astype(np.int64), inertia, it, converged
    )


def predict_nearest(x, centroids, device=None) -> np.ndarray:
    """Nearest-centroid labels (c-BTM's assignment rule)."""
    device = device or "cpu"
    d = sq_distances(_as_tensor(x, device), _as_tensor(centroids, device))
    return torch.argmin(d, 1).cpu().numpy()


def predict_balanced(x, centroids, device=None) -> np.ndarray:
    """Balanced batch assignment (sizes floor/ceil(n/k))."""
    labels, _ = balanced_assign(x, centroids, device=device or "cpu")
    return labels.cpu().numpy()
