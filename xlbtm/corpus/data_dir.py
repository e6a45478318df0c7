"""A data dir in the c-BTM layout: its splits' documents streamed, any document fetched by sp_id, split stats."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from xlbtm.corpus.files import relative_name, split_files
from xlbtm.corpus.index import LineIndex
from xlbtm.corpus.reader import Document, Pair, ReadStats, iter_file, iter_pairs, parse_line
from xlbtm.corpus.sp_ids import resolve_sp_id
from xlbtm.errors import InputError


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

    def iter_file(self, path: Path, parallel_side: str | None = None) -> Iterator[Document]:
        return iter_file(
            path, self.rel(path), skip_bad_lines=self.skip_bad_lines, stats=self.stats, parallel_side=parallel_side
        )

    def iter_pairs(self, split: str) -> Iterator[Pair]:
        """All translation pairs of a split of parallel data (same layout, `{"src", "tgt", "src_lang",
        "tgt_lang"}` per line), in file order; a split without a single pair is an error."""
        before = self.stats.documents
        for path in self.files(split):
            yield from iter_pairs(path, self.rel(path), skip_bad_lines=self.skip_bad_lines, stats=self.stats)
        if self.stats.documents == before:
            raise InputError(f"split '{split}' has no translation pairs", self.data_dir / split)

    # random access ------------------------------------------------------------------------------------
    def index(self, rel: str) -> LineIndex:
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
        "split": split,
        "files": len(files),
        "documents": stats.documents,
        "bytes": stats.bytes,
        "skipped_lines": stats.skipped,
        "skipped_examples": stats.examples,
        "blank_lines": stats.blank,
        "per_lang": dict(sorted(per_lang.items())),
    }
