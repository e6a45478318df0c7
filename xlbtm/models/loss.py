"""Cross-entropy of the output projection, computed in chunks of tokens so the [tokens, V] logits never exist.

At XGLM's vocabulary (V = 256,008) the logits of one B=8, T=2048 batch are 16.8 GB in fp32, and a plain
`F.cross_entropy(linear(h, W))` keeps them, their log-softmax and their gradient alive at once. Here each chunk
of tokens is projected, reduced to its loss and -- when a gradient is wanted -- turned into its share of
dh and dW right away (the gradient of cross-entropy w.r.t. logits is softmax - onehot), so at most one
chunk's logits exist at a time. Backward then only scales the stored dh / dW by the incoming gradient.
Loss and gradients equal the plain computation's (tests/test_models.py checks both at fp32 precision).

The loss is not part of the model: a model returns the hidden states its output projection reads
(`model(x, pad, hidden=True)`) and that projection's weights (`model.output_projection()`), and a `LossFn`
-- this module's `linear_cross_entropy`, or under tensor parallelism the vocabulary-parallel one of
`xlbtm.parallel.loss_parallel` -- turns them and the targets into the summed loss. The trainer picks the
component once, when it parallelizes the model (`xlbtm.parallel.parallelize.build_loss_fn`); `model_loss`
puts the pieces together.

Under tensor parallelism the weight holds only this rank's vocabulary rows; a `VocabShard` says which, and
combines the per-token max and sums across ranks (`xlbtm.parallel.loss_parallel`): the same loop, so the
one-rank and the vocabulary-parallel loss cannot drift apart.

Chunk size (`chunk_tokens`): `chunk_mib` MiB of fp32 logits per chunk when given (training's
`--loss-chunk-mib`); by default twice the fp32 size of the [V, D] weight, within [MIN_CHUNK_BYTES, CHUNK_BYTES].
A chunk's logits become its softmax and its gradient in place (one [chunk, V] buffer, and the exp of
SUM_ROWS rows at a time while their sums are taken), and the loss holds two fp32 [V, D] tensors anyway (the dW
accumulator, then the weight's gradient), so the chunks add about as much as the loss needs regardless; and
a chunk of 2 D tokens keeps the projection's GEMMs efficient (at d = 64 and V = 256k on a CPU, 64-token chunks cost ~25% more time than 128- or 262-token ones,
benchmarks/BENCHMARKS.md). At XGLM's vocabulary that is 128 tokens (125 MiB) for a d = 64 body and the
256 MiB cap (262 tokens) from d = 132 up; small vocabularies take the 16 MiB floor (one chunk for most
batches).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

# at most this many bytes of fp32 logits per chunk by default: ~260 tokens at V = 256k
CHUNK_BYTES = 1 << 28
# at least this many by default (a chunk the size of a small vocabulary's weight would be too small a step)
MIN_CHUNK_BYTES = 1 << 24
# rows of exp(logits - max) materialized at once while their sums are taken
SUM_ROWS = 16


def chunk_tokens(vocab_size: int, d_model: int | None = None, chunk_mib: float | None = None) -> int:
    """Tokens per chunk for `vocab_size` rows of logits (this rank's, under TP): `chunk_mib` MiB of fp32
    logits, or by default twice the bytes of the fp32 [V, d_model] weight (2 d_model tokens), clamped to
    [MIN_CHUNK_BYTES, CHUNK_BYTES] (just CHUNK_BYTES without d_model)."""
    row = 4 * vocab_size  # one token's fp32 logits
    if chunk_mib is not None:
        budget = chunk_mib * (1 << 20)
    elif d_model is None:
        budget = CHUNK_BYTES
    else:
        budget = min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, 2 * row * d_model))
    return max(1, int(budget // row))


class LossFn(Protocol):
    """A loss component: (h [..., D], weight [V, D], targets [...], bias [V] | None) -> the summed
    cross-entropy of F.linear(h, weight, bias) against targets (fp32 scalar; -100 = ignored)."""

    __name__: str

    def __call__(
        self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor: ...


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
        grad_b = (
            torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            if bias is not None and want_grad[2]
            else None
        )
        for s in range(0, n, chunk):
            hc, tc = h[s : s + chunk], targets[s : s + chunk]
            logits = F.linear(hc, weight, bias).float()  # [chunk, rows of this shard]
            valid = tc != ignore_index
            local = tc - shard.offset
            mine = valid & (local >= 0) & (local < rows)  # the target's row is in this shard
            local = torch.where(mine, local, 0)
            picked = torch.where(mine, logits.gather(1, local[:, None]).squeeze(1), 0.0)
            m = shard.all_max_(logits.max(dim=-1).values)
            # sum of exp(logits - max), a few rows at a time: the [rows, V] temporary stays small, and each row's
            # sum is the same reduction over V as for the whole chunk at once (the loss's established numbers)
            if not any(want_grad):
                # no gradient (validation, scoring): the logits are not needed again, so the same per-row
                # reduction runs in place over the whole chunk, three ops instead of three per SUM_ROWS rows
                # (validation's cost on CPU was these small ops' dispatch, not their arithmetic)
                sums = logits.sub_(m[:, None]).exp_().sum(-1)
            else:
                sums = torch.empty(len(tc), dtype=logits.dtype, device=logits.device)
                for r in range(0, len(tc), SUM_ROWS):
                    sums[r : r + SUM_ROWS] = (logits[r : r + SUM_ROWS] - m[r : r + SUM_ROWS, None]).exp_().sum(-1)
            sumexp, picked = shard.all_sum_(torch.stack([sums, picked]))  # one collective for both under TP
            lse = sumexp.log() + m
            total += torch.where(valid, lse - picked, 0.0).sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            # softmax as exp(logits - lse), in place of the logits: the arithmetic the loss always had (the
            # quickstart's numbers), not exp(logits - max) / sum, which rounds differently
            g = logits.sub_(lse[:, None]).exp_()
            g[torch.arange(len(tc), device=g.device), local] -= mine.to(g.dtype)
            g.mul_(valid[:, None])
            if grad_b is not None:
                grad_b += g.sum(0)
            g = g.to(h.dtype)
            if grad_h is not None:
                grad_h[s : s + chunk] = g @ weight
            if grad_w is not None:
                # the GEMM, then the running sum in fp32 (a fused addmm_ would save a [V, D] temporary but adds
                # inside the GEMM's blocking, which rounds differently from the loss's established arithmetic)
                grad_w += (g.t() @ hc).float()
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
            if not present:
                out.append(None)
                continue
            g = next(saved)
            # in place where the dtype allows: no second [V, D] tensor (a second backward through this graph
            # fails loudly on the saved tensors' version, as retain_graph reuse should)
            out.append(g.mul_(grad_out) if g.dtype == dtype else (g * grad_out).to(dtype))
        return (*out, None, None, None, None, None)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    chunk: int | None = None,
    chunk_mib: float | None = None,
    shard: VocabShard | None = None,
) -> torch.Tensor:
    """sum over tokens of cross_entropy(h @ weight.T + bias, targets), fp32, ignoring `ignore_index`.

    h [..., D], targets [...] (same leading shape), weight [V, D] (or this rank's rows of it, see `shard`);
    `chunk` tokens per step (default: `chunk_tokens` of this weight and `chunk_mib`). The one-rank `LossFn`."""
    h2 = h.reshape(-1, h.shape[-1])
    t2 = targets.reshape(-1)
    chunk = chunk or chunk_tokens(weight.shape[0], weight.shape[1], chunk_mib)
    grad_on = torch.is_grad_enabled()
    want = (
        grad_on and h.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    return _LinearCrossEntropy.apply(h2, weight, bias, t2, chunk, ignore_index, want, shard or VocabShard())


def model_loss(
    model,
    tokens: torch.Tensor,
    padding_mask: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    loss_fn: LossFn = linear_cross_entropy,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """The summed cross-entropy (fp32) of `model` (XGLM or XLM-R, plain or parallelized) on `tokens` against
    `targets` [B, T] (-100 = ignored): the hidden states its output projection reads, reduced by `loss_fn`
    together with that projection's weight and bias -- the [B, T, V] logits never exist. `positions`: XLM-R's
    explicit positions (TLM). The model is called as a module, so FSDP's hooks gather its weights; its root
    keeps them gathered after forward, which is when `output_projection()` is read."""
    kw = {} if positions is None else {"positions": positions}
    h = model(tokens, padding_mask, hidden=True, **kw)
    weight, bias = model.output_projection()
    return loss_fn(h, weight, targets, bias)
