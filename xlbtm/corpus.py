"""The jsonl corpus: file discovery, streaming reader with sp_ids, random access by sp_id.

Layout (c-BTM / X-ELM): `<data>/train/<shard>/*.jsonl[.gz]` and `<data>/valid[/<subset>]/*.jsonl[.gz]`.
One JSON object per line with `text` (str, required) and optional `id`, `lang`, `url`.

A document's `sp_id` is `"<path relative to the data dir>|<0-based line index>"`, e.g.
`train/00000/manpages.jsonl|17`. c-BTM wrote absolute paths there; `resolve_sp_id` accepts those too.

Errors name `path:line` with a 1-based line number (what an editor shows); sp_ids use the 0-based index
(what c-BTM uses). Blank lines count as lines, so sp_ids never shift when a line is skipped.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from xlbtm.errors import InputError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
BOM = b"\xef\xbb\xbf"  # some editors/exporters start UTF-8 files with it; json.loads rejects it
# One document (line) may not exceed this many bytes. Every stage holds a document whole (JSON parse,
# tokenization, tf-idf), at ~100x its size in the worst case; a stray multi-GB line (a dump without
# newlines) must be refused while it streams past, not after it has filled memory.
MAX_DOCUMENT_BYTES = int(os.environ.get("XLBTM_MAX_DOCUMENT_BYTES", 16 << 20))


@dataclass(frozen=True)
class Document:
    sp_id: str
    text: str
    lang: str | None = None
    id: str | None = None
    url: str | None = None


@dataclass
class ReadStats:
    """What a reader saw: documents, bytes, and the lines it skipped (with `skip_bad_lines`)."""

    documents: int = 0
    bytes: int = 0
    skipped: int = 0
    blank: int = 0  # whitespace-only lines: not documents, not errors
    examples: list[str] = field(default_factory=list)  # first few skipped lines, as `path:line: why`

    def record_skip(self, message: str) -> None:
        self.skipped += 1
        if len(self.examples) < 5:
            self.examples.append(message)

    def summary(self) -> str:
        s = f"{self.documents} documents, {self.bytes / 1e6:.1f} MB"
        if self.skipped:
            s += f"; skipped {self.skipped} bad lines (first: {self.examples[0]})"
        return s


def add_skip_bad_lines_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-bad-lines", action="store_true",
        help="skip malformed lines (bad JSON, missing/non-string 'text', invalid UTF-8) and report how many "
             "were skipped, instead of stopping at the first one with exit status 2",
    )


# ----------------------------------------------------------------------------------------------- discovery

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
        raise InputError(f"cannot read this directory ({err.strerror}); fix its permissions or remove it from "
                         "the corpus", err.filename)

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
                raise InputError(f"dangling symlink (its target {os.readlink(p)} does not exist); restore the "
                                 "target or remove the link", p)
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
            raise InputError(f"both {stems[stem].name} and {p.name} are in this shard; they map to the same "
                             "cluster file and sp_ids: keep one of them", p.parent)
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


# --------------------------------------------------------------------------------------------- line parsing

def iter_raw_lines(f: IO[bytes], limit: int | None = None) -> Iterator[tuple[bytes | None, int]]:
    """`(line, size in bytes)` for every line of a binary stream, newline included. A line longer than
    `limit` (default MAX_DOCUMENT_BYTES) is streamed past in bounded chunks and yielded as `(None, size)`,
    so memory never holds more than `limit` bytes of it."""
    limit = MAX_DOCUMENT_BYTES if limit is None else limit
    while True:
        raw = f.readline(limit + 2)  # room for the line's own \r\n
        if not raw:
            return
        size = len(raw)
        if size == limit + 2 and not raw.endswith(b"\n"):  # cut off by the limit: stream past the rest
            while not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
                if not raw:
                    break
                size += len(raw)
            yield None, size
        elif len(raw.rstrip(b"\r\n")) > limit:
            yield None, size
        else:
            yield raw, size


def too_long(size: int) -> str:
    return (f"line of {size / 1e6:.1f} MB is over the {MAX_DOCUMENT_BYTES / 2 ** 20:g} MiB limit for one document: "
            "split the document, or raise the limit with XLBTM_MAX_DOCUMENT_BYTES")


def open_binary(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        # GzipFile's own line iteration is slow (small reads); a 1 MiB buffer on top makes it ~1.5x faster
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
    return open(path, "rb")


def parse_line(raw: bytes, path: str, line_index: int, sp_id: str) -> Document:
    """Parse one raw line; raises InputError naming `path:line` (1-based) on anything malformed."""
    lineno = line_index + 1
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"invalid UTF-8 at byte {e.start} of the line", path, lineno) from None
    if not s.strip():
        raise InputError("empty line (expected a JSON object with a 'text' field)", path, lineno)
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} at column {e.colno}", path, lineno) from None
    except RecursionError:
        raise InputError("JSON nested too deeply (expected a flat object with a 'text' field)", path, lineno) \
            from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", path, lineno)
    if "text" not in obj:
        raise InputError("missing required field 'text'", path, lineno)
    text = obj["text"]
    if not isinstance(text, str):
        raise InputError(f"field 'text' must be a string, got {type(text).__name__}", path, lineno)
    if b"\\ud" in raw or b"\\uD" in raw:  # only a \uXXXX escape can smuggle in a lone surrogate
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"field 'text' holds a lone surrogate (\\u{ord(text[e.start]):04x}) at character "
                             f"{e.start}: not valid Unicode text", path, lineno) from None
    lang = obj.get("lang")
    doc_id = obj.get("id")
    url = obj.get("url")
    return Document(
        sp_id=sp_id,
        text=text,
        lang=lang if isinstance(lang, str) else None,
        id=None if doc_id is None else str(doc_id),
        url=url if isinstance(url, str) else None,
    )


def iter_file(path: str | os.PathLike, rel: str | None = None, *, skip_bad_lines: bool = False,
              stats: ReadStats | None = None, lines: set[int] | None = None) -> Iterator[Document]:
    """Stream the documents of one file. `rel` is the sp_id path (defaults to `path` as given). `lines`:
    only these 0-based lines are parsed (a sample), the others are passed over unread; reading stops after
    the last of them."""
    path = Path(path)
    rel = path.as_posix() if rel is None else rel
    shown = str(path)
    stats = stats if stats is not None else ReadStats()
    i = -1
    try:
        with open_binary(path) as f:
            last = None if lines is None else max(lines, default=-1)
            for i, (raw, size) in enumerate(iter_raw_lines(f)):
                if lines is not None:
                    if i > last:
                        break
                    if i not in lines:
                        continue
                stats.bytes += size
                if raw is None:
                    err = InputError(too_long(size), shown, i + 1)
                    if not skip_bad_lines:
                        raise err
                    stats.record_skip(str(err))
                    continue
                if raw.endswith(b"\n"):
                    raw = raw[:-1]
                    if raw.endswith(b"\r"):
                        raw = raw[:-1]
                if i == 0 and raw.startswith(BOM):
                    raw = raw[len(BOM):]
                if not raw.strip():  # a blank line is not a document (e.g. a trailing newline); its index stays
                    stats.blank += 1
                    continue
                try:
                    doc = parse_line(raw, shown, i, f"{rel}|{i}")
                except InputError as e:
                    if not skip_bad_lines:
                        raise
                    stats.record_skip(str(e))
                    continue
                stats.documents += 1
                yield doc
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncated: EOFError; corrupt: zlib
        if isinstance(e, FileNotFoundError):
            raise InputError("file not found", path) from None
        raise InputError(f"cannot read file: {e or type(e).__name__}", path, i + 2) from None


class Corpus:
    """A data dir in the c-BTM layout. sp_ids are relative to `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike, *, skip_bad_lines: bool = False):
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise InputError("data directory not found (check --data-dir / --path-to-data)", self.data_dir)
        self.skip_bad_lines = skip_bad_lines
        self.stats = ReadStats()
        self._indexes: dict[str, LineIndex] = {}

    def files(self, split: str) -> list[Path]:
        return split_files(self.data_dir, split)

    def rel(self, path: Path) -> str:
        return relative_name(path, self.data_dir)

    def iter_documents(self, split: str) -> Iterator[Document]:
        """All documents of a split in file order; an empty split (no documents at all) is an error."""
        before = self.stats.documents
        for path in self.files(split):
            yield from self.iter_file(path)
        if self.stats.documents == before:
            raise InputError(f"split '{split}' has no documents", self.data_dir / split)

    def iter_file(self, path: Path) -> Iterator[Document]:
        return iter_file(path, self.rel(path), skip_bad_lines=self.skip_bad_lines, stats=self.stats)

    # random access ------------------------------------------------------------------------------------
    def index(self, rel: str) -> "LineIndex":
        if rel not in self._indexes:
            self._indexes[rel] = LineIndex.load_or_build(self.data_dir / rel)
        return self._indexes[rel]

    def close(self) -> None:
        """Close the file handles random access keeps open."""
        for idx in self._indexes.values():
            idx.close()

    def get_many(self, sp_ids) -> list[Document]:
        """Documents for many sp_ids, in the order given; reads each file in line order (a .gz file
        cannot seek backwards without decompressing from the start again)."""
        keyed = []
        for k, sp_id in enumerate(sp_ids):
            try:
                rel, line = resolve_sp_id(sp_id, self.data_dir)
            except ValueError as e:
                raise InputError(str(e)) from None
            keyed.append((rel, line, k))
        out: list[Document | None] = [None] * len(keyed)
        for rel, line, k in sorted(keyed):
            out[k] = self.get(f"{rel}|{line}")
        return out  # type: ignore[return-value]

    def get(self, sp_id: str) -> Document:
        """The document with this sp_id (relative or c-BTM absolute), read via the byte-offset index."""
        try:
            rel, line = resolve_sp_id(sp_id, self.data_dir)
        except ValueError as e:
            raise InputError(str(e)) from None
        idx = self.index(rel)
        raw = idx.read_line(line)
        return parse_line(raw, str(self.data_dir / rel), line, f"{rel}|{line}")


# ------------------------------------------------------------------------------------------------- sp_ids

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


# ------------------------------------------------------------------------------------- byte-offset index

def _cache_root() -> Path:
    base = os.environ.get("XLBTM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "xlbtm")
    return Path(base) / "line-index"


def dir_is_writable(d: Path) -> bool:
    """May xlbtm write into `d`? Also False for a directory whose write bits are off when running as root:
    root can write anywhere, but a dir marked read-only (a shared corpus) is meant to be left alone."""
    if not os.access(d, os.W_OK):
        return False
    if getattr(os, "geteuid", lambda: -1)() == 0:
        return bool(d.stat().st_mode & 0o222)
    return True


class LineIndex:
    """Byte offset of every line of a file (of the decompressed stream for .gz), for random access.

    Cached as `.<name>.<key>.xlbtm-idx.npy` beside the file when that directory is writable (see
    `dir_is_writable`), otherwise under `$XLBTM_CACHE_DIR/line-index` (default `~/.cache/xlbtm`), so a
    read-only data dir is never written to. The key covers the resolved path, size and mtime, so an edited
    file is re-indexed. The file handle stays open between reads: seeking forward in a .gz stream continues
    decompression instead of restarting it from the top.
    """

    def __init__(self, path: Path, offsets, cache_file: Path | None = None):
        self.path = path
        self.offsets = offsets  # numpy uint64, len = number of lines + 1
        self.cache_file = cache_file  # where the index was loaded from / saved to (None: not cached)
        self._fh: IO[bytes] | None = None
        self._pid = None

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
    def cache_paths(path: Path) -> list[Path]:
        """Candidate cache files, in preference order: beside the file if its dir is writable, then the user cache."""
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
        out = []
        if dir_is_writable(path.parent):
            out.append(path.parent / f".{path.name}.{key}.xlbtm-idx.npy")
        out.append(_cache_root() / f"{key}.npy")
        return out

    @classmethod
    def load_or_build(cls, path: Path) -> "LineIndex":
        import numpy as np

        from xlbtm.io import atomic_path

        if not path.is_file():
            raise InputError("file not found", path)
        candidates = cls.cache_paths(path)
        for c in candidates:
            if c.is_file():
                try:
                    return cls(path, np.load(c, allow_pickle=False), c)
                except (OSError, ValueError):  # unreadable cache: rebuild it
                    continue
        offsets = cls.build(path)
        for c in candidates:
            try:
                with atomic_path(c, suffix=".npy") as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, offsets, allow_pickle=False)
                return cls(path, offsets, c)
            except OSError:
                continue
        return cls(path, offsets, None)

    def read_line(self, line: int) -> bytes:
        if not 0 <= line < len(self):
            raise InputError(f"line index {line} out of range (file has {len(self)} lines)", self.path)
        start, end = int(self.offsets[line]), int(self.offsets[line + 1])
        if end - start > MAX_DOCUMENT_BYTES + 2:  # (+ the line's own \r\n)
            raise InputError(too_long(end - start), self.path, line + 1)
        if self._fh is None or self._pid != os.getpid():  # reopen after fork: never share a file offset
            self._fh = open_binary(self.path)
            self._pid = os.getpid()
        self._fh.seek(start)
        raw = self._fh.read(end - start)
        if line == 0 and raw.startswith(BOM):
            raw = raw[len(BOM):]
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


# ------------------------------------------------------------------------------------------------- stats

def split_stats(corpus: Corpus, split: str) -> dict:
    """Documents, bytes (of the files as read, decompressed) and per-language document counts of a split."""
    files = corpus.files(split)
    stats = ReadStats()
    per_lang: dict[str, int] = {}
    for path in files:
        for doc in iter_file(path, corpus.rel(path), skip_bad_lines=corpus.skip_bad_lines, stats=stats):
            key = doc.lang or "?"
            per_lang[key] = per_lang.get(key, 0) + 1
    if stats.documents == 0:
        raise InputError(f"split '{split}' has no documents", corpus.data_dir / split)
    return {
        "split": split, "files": len(files), "documents": stats.documents, "bytes": stats.bytes,
        "skipped_lines": stats.skipped, "skipped_examples": stats.examples, "blank_lines": stats.blank,
        "per_lang": dict(sorted(per_lang.items())),
    }
