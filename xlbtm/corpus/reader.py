"""Reading one corpus file: lines streamed in bounded memory, each parsed into a `Document` with its sp_id.

Errors name `path:line` with a 1-based line number (what an editor shows); sp_ids use the 0-based index
(what c-BTM uses). Blank lines count as lines, so sp_ids never shift when a line is skipped.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from xlbtm.errors import InputError

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
    lang_field: str = "lang"  # the field `lang` came from (a pair's side: "tgt_lang"), named in errors


@dataclass(frozen=True)
class Pair:
    """One line of parallel data: a source text and its translation."""

    sp_id: str
    src: str
    tgt: str
    src_lang: str | None = None
    tgt_lang: str | None = None


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
    return (
        f"line of {size / 1e6:.1f} MB is over the {MAX_DOCUMENT_BYTES / 2**20:g} MiB limit for one document: "
        "split the document, or raise the limit with XLBTM_MAX_DOCUMENT_BYTES"
    )


def open_binary(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        # GzipFile's own line iteration is slow (small reads); a 1 MiB buffer on top makes it ~1.5x faster
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
    return open(path, "rb")


def _parse_object(raw: bytes, path: str, lineno: int, expected: str) -> dict:
    """One raw line as a JSON object; InputError naming `path:line` otherwise."""
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"invalid UTF-8 at byte {e.start} of the line", path, lineno) from None
    if not s or s.isspace():  # = not s.strip(), without copying the line
        raise InputError(f"empty line (expected a JSON object with {expected})", path, lineno)
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} at column {e.colno}", path, lineno) from None
    except RecursionError:
        raise InputError(f"JSON nested too deeply (expected a flat object with {expected})", path, lineno) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", path, lineno)
    return obj


# `\ud...` / `\uD...`: one regex scan (3x faster than two `in` scans; the reader is the GIL-bound part of
# cluster assignment, BENCHMARKS.md, Clustering at scale)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD]")


def _text_field(obj: dict, name: str, raw: bytes, path: str, lineno: int) -> str:
    """The required string field `name`, checked for lone surrogates (not valid Unicode text)."""
    if name not in obj:
        raise InputError(f"missing required field '{name}'", path, lineno)
    text = obj[name]
    if not isinstance(text, str):
        raise InputError(f"field '{name}' must be a string, got {type(text).__name__}", path, lineno)
    if _SURROGATE_ESCAPE.search(raw):  # only a \uXXXX escape can smuggle in a lone surrogate
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(
                f"field '{name}' holds a lone surrogate (\\u{ord(text[e.start]):04x}) at character "
                f"{e.start}: not valid Unicode text",
                path,
                lineno,
            ) from None
    return text


def parse_line(raw: bytes, path: str, line_index: int, sp_id: str) -> Document:
    """Parse one raw line; raises InputError naming `path:line` (1-based) on anything malformed."""
    lineno = line_index + 1
    obj = _parse_object(raw, path, lineno, "a 'text' field")
    if "text" not in obj and "src" in obj and "tgt" in obj:
        raise InputError(
            "missing required field 'text': this line is a translation pair (src, tgt); stages that "
            "cluster pairs take --parallel-side src|tgt|both",
            path,
            lineno,
        )
    text = _text_field(obj, "text", raw, path, lineno)
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


def parse_pair_line(raw: bytes, path: str, line_index: int, sp_id: str) -> Pair:
    """Parse one line of parallel data (`{"src", "tgt", "src_lang", "tgt_lang"}`); InputError naming
    `path:line` on anything malformed, including an empty (or whitespace-only) side: a pair with nothing
    to translate teaches nothing and would make an example without one of its sides."""
    lineno = line_index + 1
    obj = _parse_object(raw, path, lineno, "'src' and 'tgt' fields")
    src = _text_field(obj, "src", raw, path, lineno)
    tgt = _text_field(obj, "tgt", raw, path, lineno)
    for name, text in (("src", src), ("tgt", tgt)):
        if not text.strip():
            raise InputError(f"field '{name}' is empty: a translation pair needs text on both sides", path, lineno)
    langs = [obj.get(k) for k in ("src_lang", "tgt_lang")]
    return Pair(
        sp_id=sp_id,
        src=src,
        tgt=tgt,
        src_lang=langs[0] if isinstance(langs[0], str) else None,
        tgt_lang=langs[1] if isinstance(langs[1], str) else None,
    )


PARALLEL_SIDES = ("src", "tgt", "both")


def pair_as_document(pair: Pair, side: str) -> Document:
    """A translation pair seen as one document, for clustering parallel data (`--parallel-side`): the text of
    `side` (`both`: source, newline, target) and, as its language, the target's (the source's for `src`). A pair
    is routed by the language it teaches, so its TLM examples train the expert of that language."""
    if side not in PARALLEL_SIDES:
        raise ValueError(f"side must be one of {PARALLEL_SIDES}, got {side!r}")
    text = pair.src if side == "src" else pair.tgt if side == "tgt" else f"{pair.src}\n{pair.tgt}"
    field = "src_lang" if side == "src" else "tgt_lang"
    return Document(sp_id=pair.sp_id, text=text, lang=getattr(pair, field), lang_field=field)


def iter_file(
    path: str | os.PathLike,
    rel: str | None = None,
    *,
    skip_bad_lines: bool = False,
    stats: ReadStats | None = None,
    lines: set[int] | None = None,
    parallel_side: str | None = None,
) -> Iterator[Document]:
    """Stream the documents of one file. `rel` is the sp_id path (defaults to `path` as given). `lines`:
    only these 0-based lines are parsed (a sample), the others are passed over unread; reading stops after
    the last of them. `parallel_side`: the file is parallel data, each pair read as `pair_as_document`."""
    parse = parse_line if parallel_side is None else _pair_side_parser(parallel_side)
    return _iter_parsed(path, rel, parse, skip_bad_lines=skip_bad_lines, stats=stats, lines=lines)


def _pair_side_parser(side: str):
    if side not in PARALLEL_SIDES:
        raise ValueError(f"parallel_side must be one of {PARALLEL_SIDES}, got {side!r}")
    return lambda raw, shown, i, sp_id: pair_as_document(parse_pair_line(raw, shown, i, sp_id), side)


def iter_pairs(
    path: str | os.PathLike, rel: str | None = None, *, skip_bad_lines: bool = False, stats: ReadStats | None = None
) -> Iterator[Pair]:
    """Stream the translation pairs of one parallel-data file (same lines, limits, errors and sp_ids as
    `iter_file`; `stats.documents` counts pairs)."""
    return _iter_parsed(path, rel, parse_pair_line, skip_bad_lines=skip_bad_lines, stats=stats)


def iter_json_objects(path: str | os.PathLike, expected: str) -> Iterator[tuple[int, dict]]:
    """`(1-based line, object)` of every non-blank line of a jsonl file that is not a corpus file (prompts, ...),
    through the corpus reader's own line loop: bounded lines, BOM, invalid UTF-8 and bad JSON as one InputError
    naming file:line. `expected` says what a line should hold, for those errors."""
    return _iter_parsed(
        path,
        None,
        lambda raw, shown, i, _: (i + 1, _parse_object(raw, shown, i + 1, expected)),
        skip_bad_lines=False,
        stats=None,
    )


def _iter_parsed(
    path, rel, parse, *, skip_bad_lines: bool, stats: ReadStats | None, lines: set[int] | None = None
) -> Iterator:
    """The one line loop of every jsonl reader: bounded lines, BOM, blank lines, `parse(raw, path, index,
    sp_id)` per line, skipping (and counting) bad lines with `skip_bad_lines`."""
    path = Path(path)
    rel = path.as_posix() if rel is None else rel
    shown = str(path)
    stats = stats if stats is not None else ReadStats()
    i = -1
    try:
        with open_binary(path) as f:
            last = -1 if lines is None else max(lines, default=-1)  # (only read when lines is given)
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
                    raw = raw[len(BOM) :]
                if not raw or raw.isspace():  # blank: not a document (e.g. a trailing newline); its index stays
                    stats.blank += 1
                    continue
                try:
                    doc = parse(raw, shown, i, f"{rel}|{i}")
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
