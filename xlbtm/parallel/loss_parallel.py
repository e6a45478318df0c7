"""The vocabulary-parallel loss: the tied output projection sharded by vocabulary rows over the TP group.

With the embedding vocab-parallel (each TP rank holds V/tp rows), the output projection is column-parallel for
free: each rank computes the logits of its own rows, and cross-entropy only needs three numbers per token
from the others -- the max, the sum of exponentials and the target's logit -- plus one all-reduce of dh per
batch. No rank ever holds a full row of logits (torchtitan's `loss_parallel`, on top of the chunked loss of
`xlbtm.models.loss`).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

from xlbtm.models.loss import VocabShard, linear_cross_entropy


class _TPVocabShard(VocabShard):
    def __init__(self, group, offset: int):
        self.group = group
        self.offset = offset

    def all_max_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t

    def all_sum_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, group=self.group)
        return t


def _local_rows(weight: DTensor) -> tuple[torch.Tensor, int, object]:
    """(this rank's rows, the index of its first row, the TP group) of a weight sharded on dim 0."""
    mesh = weight.device_mesh
    if mesh.ndim != 1 or not isinstance(weight.placements[0], Shard) or weight.placements[0].dim != 0:
        raise ValueError(
            f"vocabulary-parallel loss needs a weight sharded by rows on a 1-D mesh, got {weight.placements} on {mesh}"
        )
    n, r = mesh.size(), mesh.get_local_rank()
    rows = math.ceil(weight.shape[0] / n)  # DTensor's Shard splits like torch.chunk
    local = weight.to_local()
    offset = min(r * rows, weight.shape[0])
    assert local.shape[0] == min(rows, weight.shape[0] - offset), (local.shape, weight.shape, n)
    return local, offset, mesh.get_group()


def vocab_parallel_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_mib: float | None = None,
) -> torch.Tensor:
    """`linear_cross_entropy` for a row-sharded (DTensor) weight and bias; h and targets replicated over
    the TP group. Every rank returns the same summed loss. The tensor-parallel `LossFn`; chunks hold
    `chunk_mib` MiB of this rank's logits (`xlbtm.models.loss.chunk_tokens`)."""
    if not isinstance(weight, DTensor):  # e.g. TP applied to the blocks only
        return linear_cross_entropy(h, weight, targets, bias, chunk_mib=chunk_mib)
    w, offset, group = _local_rows(weight)
    b = None
    if bias is not None:
        # apply_tp shards the bias with the weight's rows: a DTensor whenever the weight is one
        b, b_offset, _ = _local_rows(cast(DTensor, bias))
        assert b_offset == offset
    return linear_cross_entropy(h, w, targets, b, chunk_mib=chunk_mib, shard=_TPVocabShard(group, offset))
