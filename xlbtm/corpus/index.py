"""Random access into a corpus file: the byte offset of every line, cached beside the file or in the user cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO

from xlbtm.corpus import reader
from xlbtm.corpus.reader import BOM, iter_raw_lines, open_binary, too_long
from xlbtm.errors import InputError


def _cache_root() -> Path:
    base = os.environ.get("XLBTM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "xlbtm"
    )
    return Path(base) / "line-index"


def dir_is_writable(d: Path) -> bool:
    """May xlbtm write into `d`? Also False for a directory whose write bits are off when running as root:
    root can write anywhere, but a dir marked read-only (a shared corpus) is meant to be left alone."""
    if not os.access(d, os.W_OK):
        return False
    if getattr(os, "geteuid", lambda: -1)() == 0:
        return bool(d.stat().st_mode & 0o222)
    return True


CHANGED = (
    "this corpus file changed {when} (its size or mtime differs), so its line offsets would point into "
    "another version of it; run the command again once nothing writes the corpus any more"
)


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class LineIndex:
    """Byte offset of every line of a file (of the decompressed stream for .gz), for random access.

    Cached as `.<name>.<key>.xlbtm-idx.npy` beside the file when that directory is writable (see
    `dir_is_writable`), otherwise under `$XLBTM_CACHE_DIR/line-index` (default `~/.cache/xlbtm`), so a
    read-only data dir is never written to. The key covers the resolved path, size and mtime, so an edited
    file is re-indexed. The file handle stays open between reads: seeking forward in a .gz stream continues
    decompression instead of restarting it from the top. The index is only ever used with the version of
    the file it describes: a file that changes while it is indexed is refused (not cached under the old
    key), and a read from a file edited since (same object, e.g. a long-lived Corpus) is refused rather than
    served from stale offsets.
    """

    def __init__(self, path: Path, offsets, cache_file: Path | None = None, identity: tuple[int, int] | None = None):
        self.path = path
        self.offsets = offsets  # numpy uint64, len = number of lines + 1
        self.cache_file = cache_file  # where the index was loaded from / saved to (None: not cached)
        self.identity = identity  # (size, mtime_ns) of the file the offsets describe (None: not checked)
        self._fh: IO[bytes] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @staticmethod
    def build(path: Path):
        import numpy as np

        offsets = [0]
        pos = 0
        with open_binary(path) as f:
            for _, size in iter_raw_lines(f):  # a huge line streams past: offsets need sizes only
                pos += size
                offsets.append(pos)
        return np.asarray(offsets, dtype=np.uint64)

    @staticmethod
    def cache_paths(path: Path, st: os.stat_result | None = None) -> list[Path]:
        """Candidate cache files, in preference order: beside the file if its dir is writable, then the user
        cache; keyed by `st` (the file's stat: the version indexed), by default the file's stat now."""
        st = st or path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
        out = []
        if dir_is_writable(path.parent):
            out.append(path.parent / f".{path.name}.{key}.xlbtm-idx.npy")
        out.append(_cache_root() / f"{key}.npy")
        return out

    @classmethod
    def load_or_build(cls, path: Path) -> LineIndex:
        import numpy as np

        from xlbtm.io import atomic_path

        if not path.is_file():
            raise InputError("file not found", path)
        st = path.stat()
        identity = (st.st_size, st.st_mtime_ns)
        candidates = cls.cache_paths(path, st)
        for c in candidates:
            if c.is_file():
                try:
                    return cls(path, np.load(c, allow_pickle=False), c, identity)
                except (OSError, ValueError):  # unreadable cache: rebuild it
                    continue
        offsets = cls.build(path)
        if _identity(path) != identity:  # offsets of a mix of versions: neither cached nor used
            raise InputError(CHANGED.format(when="while it was indexed"), path)
        for c in candidates:
            try:
                with atomic_path(c, suffix=".npy") as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, offsets, allow_pickle=False)
                return cls(path, offsets, c, identity)
            except OSError:
                continue
        return cls(path, offsets, None, identity)

    def read_line(self, line: int) -> bytes:
        if not 0 <= line < len(self):
            raise InputError(f"line index {line} out of range (file has {len(self)} lines)", self.path)
        start, end = int(self.offsets[line]), int(self.offsets[line + 1])
        if end - start > reader.MAX_DOCUMENT_BYTES + 2:  # (+ the line's own \r\n)
            raise InputError(too_long(end - start), self.path, line + 1)
        if self._fh is None or self._pid != os.getpid():  # reopen after fork: never share a file offset
            self._fh = open_binary(self.path)
            self._pid = os.getpid()
        if self.identity is not None:  # one fstat a read: an in-place edit since indexing moves every offset
            st = os.fstat(self._fh.fileno())
            if (st.st_size, st.st_mtime_ns) != self.identity:
                self.close()
                raise InputError(CHANGED.format(when="since it was indexed"), self.path)
        self._fh.seek(start)
        raw = self._fh.read(end - start)
        if line == 0 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        return raw.rstrip(b"\r\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
