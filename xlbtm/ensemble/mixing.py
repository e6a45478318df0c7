"""Mixing experts' per-token log-probs. Everything stays in log space.

Shapes: `logp` is [K, N] (expert k's log p(token n | prefix)), `log_w` is [K, N] (log weight of expert k at
token n; each column sums to 1 in probability space). The ensemble's log-prob of token n is

    log sum_k w_kn p_kn = logsumexp_k(log w_kn + log p_kn)

which never underflows, unlike c-BTM's `einsum(weights, probs).log()` over probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def mix(logp: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """[K, N] x [K, N] -> [N] ensemble log-probs."""
    if logp.shape != log_w.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and log_w {tuple(log_w.shape)} must have the same shape")
    return torch.logsumexp(log_w + logp, dim=0)


def topk_renormalize(log_w: torch.Tensor, topk: int) -> torch.Tensor:
    """Keep the `topk` largest weights of every column, renormalize them to sum to 1; -inf elsewhere.

    `topk <= 0` or `topk >= K` keeps every expert (c-BTM's `--topk -1`). Ties are broken by expert index
    (torch.topk), so the result is deterministic.
    """
    K = log_w.shape[0]
    if topk <= 0 or topk >= K:
        return log_w
    vals, idx = torch.topk(log_w, topk, dim=0)
    out = torch.full_like(log_w, float("-inf"))
    out.scatter_(0, idx, vals)
    return out - torch.logsumexp(out, dim=0, keepdim=True)


def uniform_log_weights(K: int, N: int, dtype=torch.float64) -> torch.Tensor:
    return torch.full((K, N), -math.log(K), dtype=dtype)


def one_hot_log_weights(experts: torch.Tensor, K: int, dtype=torch.float64) -> torch.Tensor:
    """Hard routing: token n goes entirely to expert `experts[n]` ([N] long)."""
    out = torch.full((K, experts.numel()), float("-inf"), dtype=dtype)
    out.scatter_(0, experts.view(1, -1).long(), 0.0)
    return out


def doc_sums(values: torch.Tensor, offsets: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Sum a [..., N] tensor within documents; `offsets` has D+1 entries (doc d is offsets[d]:offsets[d+1])."""
    offsets = torch.as_tensor(offsets, dtype=torch.long)
    lengths = offsets[1:] - offsets[:-1]
    doc_ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    out = torch.zeros(values.shape[:-1] + (len(lengths),), dtype=torch.float64)
    return out.index_add_(-1, doc_ids, values.to(torch.float64))


def oracle(logp: torch.Tensor, offsets) -> tuple[torch.Tensor, torch.Tensor]:
    """Best single expert per document (an upper bound on any document-level routing).

    Returns ([D] summed log-prob of the best expert, [D] its index).
    """
    per_doc = doc_sums(logp, offsets)  # [K, D]
    best, which = per_doc.max(dim=0)
    return best, which


def perplexity(total_logprob: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood); nan for an empty set (never a silent 1.0)."""
    if n_tokens <= 0:
        return float("nan")
    return math.exp(-float(total_logprob) / n_tokens)
