"""sp_ids: `"<path relative to the data dir>|<0-based line index>"`, e.g. `train/00000/manpages.jsonl|17`.
c-BTM wrote absolute paths there; `resolve_sp_id` accepts those too."""

from __future__ import annotations

import functools
import os
from pathlib import Path


def parse_sp_id(sp_id: str) -> tuple[str, int]:
    """Split `path|line` into its parts; raises ValueError on anything else."""
    if not isinstance(sp_id, str) or "|" not in sp_id:
        raise ValueError(f"sp_id {sp_id!r} is not of the form 'path|line'")
    path, _, line = sp_id.rpartition("|")
    if not (line.isascii() and line.isdigit()) or not path:
        raise ValueError(f"sp_id {sp_id!r} is not of the form 'path|line'")
    return path, int(line)


def resolve_sp_id(sp_id: str, data_dir: str | os.PathLike) -> tuple[str, int]:
    """Normalize an sp_id to (path relative to data_dir, line).

    Absolute c-BTM sp_ids are made relative to `data_dir`; when they were written on another machine (a
    different prefix), the longest trailing part of the path that exists under `data_dir` is used, so a
    moved corpus still matches. A path that matches nothing is an error, never a silent drop.
    Cluster files hold millions of sp_ids over a handful of files, so the path part is resolved once.
    """
    path, line = parse_sp_id(sp_id)
    if not path.startswith("/"):
        return Path(path).as_posix(), line
    rel = _resolve_abs_path(path, os.fspath(data_dir))
    if rel is None:
        raise ValueError(f"sp_id {sp_id!r} points to a file that is not under {data_dir}")
    return rel, line


@functools.lru_cache(maxsize=4096)
def _resolve_abs_path(path: str, data_dir: str) -> str | None:
    p, d = Path(path), Path(data_dir)
    for base in (d.absolute(), d.resolve()):
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            pass
    parts = p.parts[1:]
    for start in range(len(parts)):  # longest suffix first: the most specific match wins
        cand = Path(*parts[start:])
        if (d / cand).is_file():
            return cand.as_posix()
    return None
