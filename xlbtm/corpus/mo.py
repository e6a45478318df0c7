"""A reader of gettext's binary `.mo` catalogs, after the format GNU gettext documents ("The Format of GNU MO
Files"): a header of 32-bit words (magic 0x950412de in the file's byte order, revision, N strings, the offsets
of the original and translation tables), then per table N (length, offset) pairs of NUL-terminated strings.

Written here rather than through `gettext.GNUTranslations` on purpose: that class compiles the catalog's
`Plural-Forms` expression into Python code and runs it, and a corpus builder reads catalogs it has not
vetted. This reader only slices bytes; nothing in a file is ever executed.
"""

from __future__ import annotations

import codecs
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from xlbtm.errors import InputError

MAGIC = 0x950412DE
CONTEXT_SEPARATOR = "\x04"  # msgctxt EOT msgid: how a context entry's key is stored
PLURAL_SEPARATOR = "\x00"  # msgid NUL msgid_plural, and msgstr[0] NUL msgstr[1] ...
_CHARSET = re.compile(r"charset=\s*([^\s;]+)", re.IGNORECASE)


@dataclass(frozen=True)
class MoEntry:
    """One translated message: `msgid` and `msgstr` are form 0 (singular) of a plural entry; `context` is its
    msgctxt (None when it has none)."""

    msgid: str
    msgstr: str
    context: str | None = None
    plural: bool = False


def _charset(header: bytes) -> str:
    """The catalog's charset from its header's Content-Type (UTF-8 when missing, a placeholder or unknown)."""
    m = _CHARSET.search(header.decode("ascii", errors="replace"))
    if m:
        try:
            return codecs.lookup(m.group(1)).name
        except LookupError:
            pass
    return "utf-8"


def read_mo(path: str | Path) -> list[MoEntry]:
    """The catalog's translated entries in file order (msgid order: msgfmt sorts them), the header entry
    (empty msgid) left out. An entry that does not decode in the catalog's charset is left out too.

    Raises InputError naming the file when it is not a .mo catalog or a table points outside it."""
    data = Path(path).read_bytes()
    if len(data) < 20:
        raise InputError("not a gettext .mo catalog (shorter than its header)", path)
    for order in "<>":
        if struct.unpack(order + "I", data[:4])[0] == MAGIC:
            break
    else:
        raise InputError("not a gettext .mo catalog (bad magic number)", path)
    revision, count, originals, translations = struct.unpack(order + "4I", data[4:20])
    if revision >> 16 not in (0, 1):
        raise InputError(f"unsupported .mo format revision {revision >> 16}", path)

    def string(table: int, i: int) -> bytes:
        start = table + 8 * i
        if start + 8 > len(data):
            raise InputError(f"string table entry {i} lies outside the file", path)
        length, offset = struct.unpack(order + "2I", data[start : start + 8])
        if offset + length > len(data):
            raise InputError(f"string {i} lies outside the file", path)
        return data[offset : offset + length]

    raw = [(string(originals, i), string(translations, i)) for i in range(count)]
    charset = next((_charset(tgt) for src, tgt in raw if src == b""), "utf-8")
    entries = []
    for src_bytes, tgt_bytes in raw:
        if src_bytes == b"":
            continue
        try:
            src, tgt = src_bytes.decode(charset), tgt_bytes.decode(charset)
        except UnicodeDecodeError:
            continue
        context, _, msgid = src.rpartition(CONTEXT_SEPARATOR)
        entries.append(
            MoEntry(
                msgid=msgid.split(PLURAL_SEPARATOR)[0],
                msgstr=tgt.split(PLURAL_SEPARATOR)[0],
                context=context if CONTEXT_SEPARATOR in src else None,
                plural=PLURAL_SEPARATOR in msgid,
            )
        )
    return entries
