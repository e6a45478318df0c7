"""Tolerances for one float quantity computed two ways: other batch shapes, other chunking, another code path,
or another CPU kernel (torch dispatches on the CPU's capability: `ATEN_CPU_CAPABILITY=default|avx2|avx512`, and
on the thread count; BLAS the same).

Such a pair differs by rounding, and the rounding scales with the dtype's machine epsilon and the magnitude of
what is compared, not with a fixed number: 1e-6 on a log-likelihood of ~10 is ~1e-7 relative, under float32's
epsilon (1.19e-7), so such a test passes or fails with the machine's kernel choice. `ULPS` units in the last
place of the magnitude cover the reductions in these tests (matmuls over d <= 256, log-softmax over V <= 1,000,
sums over <= ~100 tokens), measured at a few ulps on the kernels above; the defects the tests look for (a token
scored against the wrong prefix, a dropped or repeated term, logits mixed instead of probabilities) move the
value by 1e-3 and more, ~1,000 times the bound.

Where one computation runs twice on one machine (kill and resume, the same forward in another process) the
tests keep their bitwise asserts: that is a determinism claim, not a rounding one."""

from __future__ import annotations

import math

import torch

ULPS = 64


def eps(dtype: torch.dtype = torch.float32) -> float:
    return torch.finfo(dtype).eps


def fp_tol(*magnitudes: float, dtype: torch.dtype = torch.float32, ulps: int = ULPS) -> float:
    """Absolute tolerance for values of about these magnitudes (the largest counts; at least 1, since a value
    near 0 is the difference of terms of order 1)."""
    m = max([1.0] + [float(abs(x)) for x in magnitudes])
    return ulps * eps(dtype) * m


def ppl_rel_tol(*ppls: float, dtype: torch.dtype = torch.float32, ulps: int = ULPS) -> float:
    """Relative tolerance for perplexities: ppl = exp(mean nll), so its relative error is the mean nll's absolute
    error, rounding at the nll's magnitude."""
    return fp_tol(*[math.log(p) for p in ppls], dtype=dtype, ulps=ulps)


def tensor_tol(*tensors: torch.Tensor, dtype: torch.dtype = torch.float32, ulps: int = ULPS) -> dict:
    """`torch.testing.assert_close` keywords: absolute, at the largest element's magnitude."""
    return {"atol": fp_tol(*[float(t.detach().abs().max()) for t in tensors], dtype=dtype, ulps=ulps), "rtol": 0}
