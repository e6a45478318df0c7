"""How many threads the clustering stage's libraries (torch, BLAS/OpenMP, sentencepiece) may use, and applying it.

Why: torch and OpenBLAS start one thread per core of the *machine*, and their OpenMP threads spin at every
parallel region's barrier. On a busy machine (other jobs on the same cores, or several assignment workers in
one process) a descheduled thread stalls every region: balanced k-means on 3,233 x 100 features took 33 s with
2 threads against 0.5 s with one on this 2-core machine under load (BENCHMARKS.md, Clustering at scale). So:

- `available_cpus()`: the CPUs this process may use (its affinity mask, which SLURM and taskset set, and a
  cgroup CPU quota when there is one), not the machine's core count.
- `limit_threads(n, encoder=m)`: torch intra-op threads and BLAS/OpenMP pools (threadpoolctl) set to n, and
  sentencepiece's encoder threads to m (default n) inside the block, restored after it.
- `threads_for(elements)`: ops on fewer than `PARALLEL_MIN_ELEMENTS` values run on one thread. Below that an
  op takes well under a millisecond, less than a barrier costs when a core is busy, so the quiet case loses
  nothing measurable (k-means at 3k x 100: 0.3 s with 2 threads, 0.5 s with 1, under load) and the busy
  case stops paying ~70x.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

PARALLEL_MIN_ELEMENTS = 1 << 23  # ~8M float32 values (84k documents x 100 dims)

_LOCK = threading.Lock()
_CURRENT: int | None = None  # the innermost limit_threads value; None = not limited


def _cgroup_quota_cpus() -> int | None:
    """CPUs allowed by a cgroup v2 `cpu.max` quota (containers, SLURM with cgroup CPU limits), else None."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, int(int(quota) // int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    q = _cgroup_quota_cpus()
    return max(1, min(n, q) if q else n)


def current_threads() -> int:
    """Encoder threads one call may use now: the active `limit_threads` value, else `available_cpus()`."""
    return _CURRENT if _CURRENT is not None else available_cpus()


def threads_for(elements: int, limit: int | None = None) -> int:
    """One thread for ops below PARALLEL_MIN_ELEMENTS values, else `limit` (default `current_threads()`)."""
    limit = current_threads() if limit is None else limit
    return 1 if elements < PARALLEL_MIN_ELEMENTS else max(1, limit)


@contextmanager
def limit_threads(n: int, encoder: int | None = None):
    """torch / BLAS / OpenMP use at most `n` threads inside the block, sentencepiece's encoder `encoder`
    (default n; its threads are plain std::threads per call, no spinning barrier). Process-wide: call it from
    the thread that starts the work, not from worker threads."""
    global _CURRENT
    from threadpoolctl import threadpool_limits

    n = max(1, int(n))
    torch = sys.modules.get("torch")  # only when already imported: assignment never imports it (1 CPU-s)
    with _LOCK:
        saved, saved_torch = _CURRENT, torch.get_num_threads() if torch is not None else None
        _CURRENT = max(1, int(encoder)) if encoder is not None else n
        if torch is not None:
            torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        with _LOCK:
            _CURRENT = saved
            if torch is not None:
                torch.set_num_threads(saved_torch)
