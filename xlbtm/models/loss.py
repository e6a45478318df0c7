"""Cross-entropy of the output projection, computed in chunks of tokens so the [tokens, V] logits never exist.

At XGLM's vocabulary (V = 256,008) the logits of one B=8, T=2048 batch are 16.8 GB in fp32, and a plain
`F.cross_entropy(linear(h, W))` keeps them, their log-softmax and their gradient alive at once. Here each chunk
of tokens is projected, reduced to its loss and -- when a gradient is wanted -- turned into its share of
dh and dW right away (the gradient of cross-entropy w.r.t. logits is softmax - onehot), so at most one
chunk's logits exist at a time. Backward then only scales the stored dh / dW by the incoming gradient.
Loss and gradients equal the plain computation's (tests/test_models.py checks both at fp32 precision).

Under tensor parallelism the weight holds only this rank's vocabulary rows; a `VocabShard` says which, and
combines the per-token max and sums across ranks (`xlbtm.parallel.loss_parallel`): the same loop, so the
one-rank and the vocabulary-parallel loss cannot drift apart.
"""

from __future__ import annotations

import torch

# the fp32 logits of one chunk: 256 MiB, i.e. ~260 tokens at V = 256k (a single chunk at small vocabularies)
CHUNK_BYTES = 1 << 28


def chunk_tokens(vocab_size: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab_size))


class VocabShard:
    """Where `weight` holds only rows [offset, offset + rows) of the vocabulary (tensor parallel), how the
    per-token max, sums and the gradient of h are combined across the shards. The base class is the whole
    vocabulary on one rank: nothing to combine. (xlbtm.parallel.loss_parallel gives the collective one,
    so this file needs no distributed imports.)"""

    offset = 0

    def all_max_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_sum_(self, t: torch.Tensor) -> torch.Tensor:
        return t


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk, ignore_index, want_grad, shard):
        n, rows = h.shape[0], weight.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.zeros_like(h) if want_grad[0] else None
        # dW summed over chunks in fp32: summing ~60 bf16 partial products would lose precision
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_grad[1] else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
            if bias is not None and want_grad[2] else None
        for s in range(0, n, chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            logits = torch.nn.functional.linear(hc, weight, bias).float()  # [chunk, rows of this shard]
            valid = tc != ignore_index
            local = tc - shard.offset
            mine = valid & (local >= 0) & (local < rows)  # the target's row is in this shard
            local = torch.where(mine, local, 0)
            m = shard.all_max_(logits.max(dim=-1).values)
            sums = torch.stack([(logits - m[:, None]).exp().sum(-1),
                                torch.where(mine, logits.gather(1, local[:, None]).squeeze(1), 0.0)])
            sumexp, picked = shard.all_sum_(sums)  # one collective for both under TP
            lse = sumexp.log() + m
            total += torch.where(valid, lse - picked, 0.0).sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            g[torch.arange(len(tc), device=g.device), local] -= mine.to(g.dtype)
            g.mul_(valid[:, None])
            if grad_b is not None:
                grad_b += g.sum(0)
            g = g.to(h.dtype)
            if grad_h is not None:
                grad_h[s:s + chunk] = g @ weight
            if grad_w is not None:
                grad_w += (g.t() @ hc).float()  # the GEMM in the model's dtype, the running sum in fp32
        if grad_h is not None:
            shard.all_sum_(grad_h)  # dh sums over every vocabulary shard: one collective per batch
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.present = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        out = []
        for present, dtype in zip(ctx.present, ctx.dtypes):
            out.append((next(saved) * grad_out).to(dtype) if present else None)
        return (*out, None, None, None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                         chunk: int | None = None, shard: VocabShard | None = None) -> torch.Tensor:
    """sum over tokens of cross_entropy(h @ weight.T + bias, targets), fp32, ignoring `ignore_index`.

    h [..., D], targets [...] (same leading shape), weight [V, D] (or this rank's rows of it, see `shard`);
    `chunk` tokens per step (default: as many as fit CHUNK_BYTES of fp32 logits)."""
    h2 = h.reshape(-1, h.shape[-1])
    t2 = targets.reshape(-1)
    chunk = chunk or chunk_tokens(weight.shape[0])
    grad_on = torch.is_grad_enabled()
    want = (grad_on and h.requires_grad, grad_on and weight.requires_grad,
            grad_on and bias is not None and bias.requires_grad)
    return _LinearCrossEntropy.apply(h2, weight, bias, t2, chunk, ignore_index, want, shard or VocabShard())
