"""Load user checkpoints without executing code: torch.load(weights_only=True) plus a short allow-list.

metaseq/fairseq checkpoints pickle an `argparse.Namespace` (the legacy `args`, or `cfg["model"]`) and
sometimes numpy scalars in their training state; those are plain data and allowed. Anything else
(an OmegaConf object, a meter class, ...) is refused with an error that names every such object, so
the user knows what to strip from the file (e.g. with the environment that wrote it).
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from pathlib import Path


def _allowed_globals() -> list:
    allowed: list = [argparse.Namespace]
    try:  # numpy scalars / arrays of plain dtypes, as written by fairseq meters and best-metric fields
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed += [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
        allowed += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    except Exception:  # pragma: no cover - numpy always ships with torch wheels here
        pass
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


def allowed_global_names() -> list[str]:
    return [f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS]


def safe_torch_load(path: str | os.PathLike, map_location="cpu", mmap: bool | None = None):
    """torch.load(path, weights_only=True) with ALLOWED_GLOBALS; InputError naming what else it holds.

    mmap=None maps zip-format files (the default since torch 1.6) so huge checkpoints are paged in
    lazily; legacy (non-zip) files are read normally.
    """
    import torch

    from xlbtm.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint file not found", path)
    if path.stat().st_size == 0:
        raise InputError(f"empty file (0 bytes): {REBUILD_REMEDY}", path)
    if mmap is None:
        mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            found = []
        others = sorted(set(found) - set(allowed_global_names()))
        if others:
            raise InputError(
                "refusing to unpickle objects outside xlbtm's safe allow-list "
                f"({', '.join(allowed_global_names()[:1])} and numpy scalars): this checkpoint also contains "
                f"{', '.join(others)}. Re-save it with only tensors and plain Python values (dicts, lists, "
                "numbers, strings), e.g. `OmegaConf.to_container(cfg)` for configs",
                path,
            ) from None
        raise InputError(f"not a loadable torch checkpoint ({_first_line(e)}); {REBUILD_REMEDY}", path) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise InputError(
            f"not a readable torch checkpoint ({type(e).__name__}: {_first_line(e)}); {REBUILD_REMEDY}", path
        ) from None


# what to do about a checkpoint that cannot be read: it is most often a copy or a write that did not finish
REBUILD_REMEDY = (
    "if it is a run's consolidated.pt, rebuild it from the run's checkpoints/ with `python -m "
    "xlbtm.scripts.consolidate RUN_DIR`; else copy or convert it again"
)


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (some have none), at most 200 characters."""
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else "no message"
