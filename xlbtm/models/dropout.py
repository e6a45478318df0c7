"""Dropout whose masks are a function of each sample's seed, not of the batch it happens to be in.

With the usual global RNG, a sample's dropout masks depend on which rank and micro-batch it landed in, so a
run resumed at another data-parallel degree trains the same samples with other masks. Inside `with
sample_seeds(seeds)` (one seed per row of the batch; the trainer derives them from the global sample
index) every dropout site draws each row's mask from a generator seeded by (that row's seed, the site), and
attention runs row by row with the RNG seeded the same way, so masks follow samples across any layout.
Outside it (evaluation, or a model used without the trainer) this is plain `F.dropout` / SDPA dropout.

A site is a fixed number per dropout call in the model (layer index and position in the block), so a block
recomputed by activation checkpointing draws exactly the masks of its forward.

Exact across data-parallel layouts, not across tensor-parallel ones: under TP each rank draws a row's mask for
the part it holds (its heads; under sequence parallelism its tokens) from the same seed, so with dropout > 0
a TP run draws other (still independent of the batch) masks than a 1-rank run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

# Read by the forward and by activation-checkpoint recomputation, which on CUDA runs in an autograd worker
# thread: a module global, not a ContextVar (those do not follow into other threads).
_SEEDS: list[int] | None = None

_MASK64 = (1 << 64) - 1


def _mix(seed: int, site: int) -> int:
    """splitmix64 of (seed, site): independent-looking 63-bit seeds for nearby inputs."""
    z = (seed * 0x9E3779B97F4A7C15 + site * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


@contextlib.contextmanager
def sample_seeds(seeds: Sequence[int] | None) -> Iterator[None]:
    global _SEEDS
    previous, _SEEDS = _SEEDS, (None if seeds is None else [int(s) for s in seeds])
    try:
        yield
    finally:
        _SEEDS = previous


def _row_seeds(batch: int) -> list[int] | None:
    return _SEEDS if _SEEDS is not None and len(_SEEDS) == batch else None


def dropout(x: torch.Tensor, p: float, training: bool, site: int) -> torch.Tensor:
    """`F.dropout(x, p, training)` for x [B, ...]; per-row masks under `sample_seeds`."""
    seeds = _row_seeds(x.shape[0]) if training and p > 0 else None
    if seeds is None:
        return F.dropout(x, p, training)
    gen = torch.Generator(device=x.device)
    keep = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    for b, s in enumerate(seeds):
        gen.manual_seed(_mix(s, site))
        keep[b] = torch.rand(x.shape[1:], generator=gen, device=x.device) >= p
    return x * keep / (1.0 - p)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attn_mask, dropout_p: float, is_causal: bool, site: int
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` ([B, H, T, hd]); under `sample_seeds` with dropout, row by row,
    each with the RNG seeded by (row seed, site) -- the fused kernel draws its mask from the global RNG."""
    seeds = _row_seeds(q.shape[0]) if dropout_p > 0 else None
    if seeds is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
    devices = [q.device] if q.device.type == "cuda" else []
    out = []
    for b, s in enumerate(seeds):
        m = attn_mask[b : b + 1] if attn_mask is not None and attn_mask.shape[0] == q.shape[0] else attn_mask
        with torch.random.fork_rng(devices=devices, device_type=q.device.type):
            torch.manual_seed(_mix(s, site))
            out.append(
                F.scaled_dot_product_attention(
                    q[b : b + 1], k[b : b + 1], v[b : b + 1], attn_mask=m, dropout_p=dropout_p, is_causal=is_causal
                )
            )
    return torch.cat(out)
