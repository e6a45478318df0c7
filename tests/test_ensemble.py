"""Ensemble evaluation: mixing, routing, scoring caches, reports, the eval_ensemble script."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from xlbtm.ensemble import mixing, routing


def _rand_logp(K, N, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(K, N, V, generator=g, dtype=torch.float64)
    tgt = torch.randint(0, V, (N,), generator=g)
    return torch.log_softmax(logits, -1)[:, torch.arange(N), tgt]  # [K, N]


def _rand_log_w(K, N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(K, N, generator=g, dtype=torch.float64) * 3, dim=0)


# ------------------------------------------------------------------------------------------------ mixing

def test_mixture_equals_brute_force():
    K, N = 4, 37
    logp, log_w = _rand_logp(K, N), _rand_log_w(K, N)
    got = mixing.mix(logp, log_w)
    p, w = logp.exp().numpy(), log_w.exp().numpy()
    for n in range(N):
        brute = math.log(sum(w[k, n] * p[k, n] for k in range(K)))
        assert got[n].item() == pytest.approx(brute, rel=1e-12, abs=1e-12)


def test_mixture_in_log_space_does_not_underflow():
    logp = torch.full((3, 5), -2000.0, dtype=torch.float64)  # exp() underflows to 0 in probability space
    out = mixing.mix(logp, mixing.uniform_log_weights(3, 5))
    assert torch.allclose(out, torch.full((5,), -2000.0, dtype=torch.float64))


def test_topk_keeps_largest_and_renormalizes():
    K, N = 5, 20
    log_w = _rand_log_w(K, N)
    out = mixing.topk_renormalize(log_w, 2)
    w, o = log_w.exp(), out.exp()
    assert torch.allclose(o.sum(0), torch.ones(N, dtype=torch.float64))
    assert ((o > 0).sum(0) == 2).all()
    for n in range(N):
        top = torch.topk(w[:, n], 2).indices
        assert torch.allclose(o[top, n], w[top, n] / w[top, n].sum())
    assert mixing.topk_renormalize(log_w, -1) is log_w
    assert mixing.topk_renormalize(log_w, K) is log_w


def test_identical_experts_give_the_single_experts_ppl():
    one = _rand_logp(1, 64)
    logp = one.repeat(3, 1)
    for log_w in (_rand_log_w(3, 64), mixing.uniform_log_weights(3, 64)):
        mixed = mixing.mix(logp, log_w)
        assert mixing.perplexity(mixed.sum(), 64) == pytest.approx(mixing.perplexity(one.sum(), 64), rel=1e-12)


def test_one_hot_posteriors_give_that_experts_ppl():
    K, N = 4, 50
    logp = _rand_logp(K, N)
    for k in range(K):
        log_w = mixing.one_hot_log_weights(torch.full((N,), k), K)
        mixed = mixing.mix(logp, log_w)
        assert mixing.perplexity(mixed.sum(), N) == pytest.approx(mixing.perplexity(logp[k].sum(), N), rel=1e-12)


def test_oracle_picks_best_expert_per_document():
    K = 3
    offsets = [0, 10, 15, 40]
    logp = _rand_logp(K, 40, seed=3)
    best, which = mixing.oracle(logp, offsets)
    for d in range(3):
        sums = [logp[k, offsets[d]:offsets[d + 1]].sum().item() for k in range(K)]
        assert which[d].item() == int(np.argmax(sums))
        assert best[d].item() == pytest.approx(max(sums))


def test_perplexity_empty_is_nan():
    assert math.isnan(mixing.perplexity(0.0, 0))
    assert mixing.perplexity(-10 * math.log(4), 10) == pytest.approx(4.0)


# ----------------------------------------------------------------------------------------------- routing

def _toy_featurizer(V=40, d=6, K=3, tf="raw", seed=0, ignore=(1,)):
    rng = np.random.default_rng(seed)
    idf = 1.0 + rng.random(V) * 3
    comps = rng.standard_normal((d, V))
    cents = rng.standard_normal((K, d))
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    return routing.LinearFeaturizer(idf, comps, tf=tf, ignore_ids=frozenset(ignore)), cents


def _scratch_featurize(f: routing.LinearFeaturizer, ids):
    """sklearn's pipeline written out: counts -> tf weight -> *idf -> l2 norm -> SVD -> l2 norm."""
    V = f.idf.shape[0]
    counts = np.zeros(V)
    for t in ids:
        if t not in f.ignore_ids:
            counts[t] += 1
    tf = {"raw": counts, "binary": (counts > 0).astype(float),
          "sublinear": np.where(counts > 0, 1 + np.log(np.maximum(counts, 1)), 0.0)}[f.tf]
    x = tf * f.idf
    n = np.linalg.norm(x)
    if n == 0:
        return np.zeros(f.dim)
    p = f.components @ (x / n)
    return p / np.linalg.norm(p)


@pytest.mark.parametrize("tf", ["raw", "sublinear", "binary"])
def test_incremental_routing_equals_per_prefix_recompute(tf):
    f, cents = _toy_featurizer(tf=tf)
    rng = np.random.default_rng(5)
    ids = [1] + list(rng.integers(0, 40, size=80)) + [7, 7, 7, 7]
    inc = routing.Router(cents, featurizer=f)
    ref = routing.Router(cents, featurize_prefix=lambda p: _scratch_featurize(f, list(p)))
    d_inc, e_inc = inc.distances(ids)
    d_ref, e_ref = ref.distances(ids)
    assert d_inc.shape == (len(ids), 3)
    np.testing.assert_allclose(d_inc, d_ref, atol=1e-9)
    assert (e_inc == e_ref).all()
    assert e_inc[0] and e_inc[1]  # empty prefix, then a prefix of one ignored token
    for T in (0.05, 1.0):
        assert torch.allclose(routing.log_weights(torch.from_numpy(d_inc), T, empty=torch.from_numpy(e_inc)),
                              routing.log_weights(torch.from_numpy(d_ref), T, empty=torch.from_numpy(e_ref)))


def test_routing_weights_formula_and_empty_prefix_is_uniform():
    f, cents = _toy_featurizer()
    ids = [5, 9, 12, 5]
    d, e = routing.Router(cents, featurizer=f).distances(ids)
    T = 0.1
    lw = routing.log_weights(torch.from_numpy(d), T, empty=torch.from_numpy(e)).exp()
    assert torch.allclose(lw[:, 0], torch.full((3,), 1 / 3, dtype=torch.float64))
    for j in range(1, 4):
        h = _scratch_featurize(f, ids[:j])
        logits = np.array([-np.sum((h - c) ** 2) / T for c in cents])
        expect = np.exp(logits - logits.max())
        np.testing.assert_allclose(lw[:, j].numpy(), expect / expect.sum(), rtol=1e-9)


def test_cbtm_compat_equals_cbtm_formula():
    """c-BTM: distances from kmeans are squared euclidean and are squared again: softmax(-dist**2 / T)."""
    f, cents = _toy_featurizer()
    ids = [5, 9, 12, 5, 30]
    d, e = routing.Router(cents, featurizer=f).distances(ids)
    T = 0.3
    lw = routing.log_weights(torch.from_numpy(d), T, cbtm_compat=True, empty=torch.from_numpy(e)).exp()
    for j in range(len(ids)):
        h = _scratch_featurize(f, ids[:j])  # zero vector at j=0, as c-BTM's Normalizer leaves it
        dist = torch.tensor([np.sum((h - c) ** 2) for c in cents])  # kmeans_pytorch.pairwise_distance
        cbtm = torch.nn.functional.softmax(-dist ** 2 / T, dim=0)
        assert torch.allclose(lw[:, j], cbtm.to(torch.float64), atol=1e-12)
    # and it differs from xlbtm's default weights
    assert not torch.allclose(lw, routing.log_weights(torch.from_numpy(d), T).exp())


def test_document_distances_use_the_whole_document():
    f, cents = _toy_featurizer()
    ids = [3, 4, 5, 6]
    d, empty = routing.Router(cents, featurizer=f).document_distances(ids)
    h = _scratch_featurize(f, ids)
    np.testing.assert_allclose(d, [np.sum((h - c) ** 2) for c in cents], atol=1e-10)
    assert not empty
