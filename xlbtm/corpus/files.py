"""Finding a corpus's files: every `*.jsonl[.gz]` of a split, shards in numeric order, each file once."""

from __future__ import annotations

import os
import re
from pathlib import Path

from xlbtm.errors import InputError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


def natural_key(text: str) -> tuple:
    """Sort key where digit runs compare as numbers: shard `2` before shard `10`."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def is_jsonl(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES)


def find_jsonl_files(root: str | os.PathLike) -> list[Path]:
    """Every `*.jsonl` / `*.jsonl.gz` below `root` (or `root` itself if it is one), shards in numeric order."""
    root = Path(root)
    if root.is_file():
        if not is_jsonl(root):
            raise InputError("not a .jsonl or .jsonl.gz file", root)
        return [root]
    if not root.is_dir():
        raise InputError("directory not found (check --data-dir and the split name)", root)

    # os.walk(followlinks=True): shard dirs are often symlinks into other storage, and Path.rglob
    # (Python < 3.13) does not descend into symlinked directories. Hidden files/dirs (ours: temp files,
    # line indexes) are not data. Every directory and file is taken once by its identity (device, inode):
    # a symlink loop or a second link to a shard would otherwise feed the same documents again.
    def unreadable(err: OSError) -> None:
        raise InputError(
            f"cannot read this directory ({err.strerror}); fix its permissions or remove it from the corpus",
            err.filename,
        )

    seen_dirs = {_identity(root)}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        keep = []
        for d in sorted(dirnames, key=natural_key):
            if d.startswith("."):
                continue
            ident = _identity(Path(dirpath) / d)
            if ident not in seen_dirs:  # a loop back to an ancestor, or a second link to a visited dir
                seen_dirs.add(ident)
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith("."):
                continue
            if p.is_symlink() and not p.exists():
                raise InputError(
                    f"dangling symlink (its target {os.readlink(p)} does not exist); restore the "
                    "target or remove the link",
                    p,
                )
            if is_jsonl(p) and p.is_file():
                found.append(p)
    found.sort(key=lambda p: natural_key(p.relative_to(root).as_posix()))
    files, seen_files = [], {}
    for p in found:
        ident = _identity(p)
        if ident in seen_files:  # the same file under two names: read it once, under its first name
            continue
        seen_files[ident] = p
        files.append(p)
    stems: dict[Path, Path] = {}
    for p in files:  # a.jsonl and a.jsonl.gz would write the same cluster file and sp_ids
        stem = p.parent / p.name.removesuffix(".gz")
        if stem in stems:
            raise InputError(
                f"both {stems[stem].name} and {p.name} are in this shard; they map to the same "
                "cluster file and sp_ids: keep one of them",
                p.parent,
            )
        stems[stem] = p
    return files


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)  # follows symlinks: the identity of what the path names
    return st.st_dev, st.st_ino


def split_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """Files of `split` (`train`, `valid`, `valid/<subset>`) under `data_dir`; an empty split is an error."""
    d = Path(data_dir) / split
    files = find_jsonl_files(d)
    if not files:
        raise InputError(f"split '{split}' is empty: no *.jsonl or *.jsonl.gz files below it", d)
    return files


def relative_name(path: Path, data_dir: Path) -> str:
    """sp_id path of `path`: relative to `data_dir`, lexically first so a symlinked shard keeps its name."""
    for p, d in ((path, data_dir), (path.absolute(), data_dir.absolute()), (path.resolve(), data_dir.resolve())):
        try:
            return p.relative_to(d).as_posix()
        except ValueError:
            continue
    return path.as_posix()
