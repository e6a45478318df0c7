"""Build the README's two real corpora from the Debian packages they come from (their licences keep them out of
the repository): `build_corpus manpages` and `build_corpus gettext`; `scripts/build_corpora.sh` installs the
packages and runs both.

- manpages: translated Linux manual pages (Debian's `manpages-*`), each rendered by `man -l` at width 100,
  whitespace-folded, capped in characters; one jsonl line `{"text", "lang", "url": "man://de/man1/ls.1", "id"}`
  per page in train/00000/manpages.jsonl and valid/manpages.jsonl.
- gettext: English msgid -> translation pairs from the `.mo` catalogs installed packages put under
  /usr/share/locale; `{"src", "tgt", "src_lang": "en", "tgt_lang", "domain", "id"}` lines in
  train/00000/<lang>.jsonl and valid/<lang>.jsonl.

Everything random is a hash of (--seed, a name): the split of a page by its name (`man1/ls.1`, so every
translation of a page lands in one split) and of a catalog by its domain (one package's strings are all in one
split), which pages a language keeps, which pairs a capped language keeps and the order of the lines. The same
sources and flags give byte-identical files.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xlbtm.cli import get_logger
from xlbtm.config import option
from xlbtm.corpus.mo import read_mo
from xlbtm.errors import InputError, UsageError
from xlbtm.io import atomic_dir, atomic_open, check_replaceable, output_owner, refuse_overlap, write_output_record

log = get_logger("corpus.build")

CorpusKind = Literal["manpages", "gettext"]

# The languages of the shared corpora (their README): the default of --langs.
MANPAGES_LANGS = tuple("cs da de en es fi fr hu it ja nb nl pl pt ru sr sv tr uk vi zh".split())
GETTEXT_LANGS = tuple("ar bg de el es fr hi it ja ko nl pt ru tr vi zh".split())
# The Debian package with each language's manual pages (scripts/build_corpora.sh installs these; its test
# checks the two lists agree). English pages are the untranslated ones under the man root itself.
MANPAGES_PACKAGES = {
    "en": "manpages",
    "pt": "manpages-pt-br",  # manpages-pt is a dummy package that pulls in the Brazilian pages
    **{lang: f"manpages-{lang}" for lang in MANPAGES_LANGS if lang not in ("en", "pt")},
}
# Locale directories of a language that are written in another script: traditional Chinese is not `zh`'s
# simplified (the shared corpus' zh holds simplified only).
OTHER_SCRIPT_LOCALES = frozenset({"zh_TW", "zh_HK", "zh_MO", "zh_Hant"})
# Source encodings of manual pages from before the UTF-8 move, for a page that is not valid UTF-8 and declares
# no coding (man-db's own table, abridged to the languages built here); anything else falls back to Latin-1.
LEGACY_MAN_ENCODINGS = {
    "cs": "iso-8859-2",
    "hu": "iso-8859-2",
    "pl": "iso-8859-2",
    "ja": "euc-jp",
    "zh": "gb18030",
    "ru": "koi8-r",
    "uk": "koi8-u",
    "sr": "iso-8859-5",
    "tr": "iso-8859-9",
}
_DECOMPRESS = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress, ".lzma": lzma.decompress}
_CODING = re.compile(rb"-\*-\s*coding:\s*([^\s;]+)\s*-\*-")
_CODING_TEXT = re.compile(_CODING.pattern.decode())
_OVERSTRIKE = re.compile(r".\x08")  # bold / underline as `c\bc` or `_\bc`, should a pager's formatting leak in
MAN_WIDTH = 100
MAN_TIMEOUT_S = 120


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


@dataclass(kw_only=True)
class BuildCorpusConfig:
    corpus: CorpusKind  # the positional argument: which corpus
    output_dir: str = option(
        help="corpus directory to write (train/00000/*.jsonl, valid/*.jsonl); an existing one is replaced only "
        "when it is this command's own earlier output from the same sources"
    )
    langs: tuple[str, ...] | None = option(
        None,
        f"comma-separated language codes (default: the shared corpora's, manpages: {','.join(MANPAGES_LANGS)}; "
        f"gettext: {','.join(GETTEXT_LANGS)}); a language is every locale directory named <lang> or "
        "<lang>_<REGION> (traditional Chinese left out of zh)",
        parse=_comma_list,
    )
    man_root: str = option(
        "/usr/share/man", "manpages: where the pages are (English in man<N>/, the others in <locale>/man<N>/)"
    )
    locale_root: str = option("/usr/share/locale", "gettext: where the catalogs are (<locale>/LC_MESSAGES/*.mo)")
    max_chars: int = option(6000, "manpages: a rendered page is cut after this many characters")
    max_pages: int = option(
        220,
        "manpages: at most this many pages per language (the same page names in every language where they "
        "exist, picked by --seed)",
    )
    max_train_pairs: int = option(10000, "gettext: at most this many train pairs per language (sampled by --seed)")
    max_valid_pairs: int = option(1000, "gettext: at most this many valid pairs per language (sampled by --seed)")
    valid_fraction: float = option(
        0.1, "share of page names (manpages) or domains (gettext) that go to the valid split"
    )
    seed: int = option(0, "seed of the split, the sampling and the line order; same seed and sources, same bytes")
    workers: int | None = option(None, "manpages: `man` processes at once (default: one per CPU this process may use)")

    def __post_init__(self):
        if not 0 < self.valid_fraction < 1:
            raise UsageError(f"--valid-fraction must be between 0 and 1 (exclusive), got {self.valid_fraction}")
        for flag, value in [
            ("--max-chars", self.max_chars),
            ("--max-pages", self.max_pages),
            ("--max-train-pairs", self.max_train_pairs),
            ("--max-valid-pairs", self.max_valid_pairs),
            ("--workers", self.workers),
        ]:
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be >= 1, got {value}")
        if self.langs is not None and not self.langs:
            raise UsageError("--langs names no language")

    def languages(self) -> tuple[str, ...]:
        return self.langs or (MANPAGES_LANGS if self.corpus == "manpages" else GETTEXT_LANGS)


# ------------------------------------------------------------------------------------------------ shared


def _unit(seed: int, *names: str) -> float:
    """A number in [0, 1) fixed by the seed and the names: the same on every machine and Python run (unlike
    hash()), so it decides splits and samples reproducibly."""
    digest = hashlib.sha256("\0".join((str(seed), *names)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fold_whitespace(text: str) -> str:
    """Runs of whitespace (newlines too) as one space, none at the ends."""
    return " ".join(text.split())


def locale_matches(name: str, lang: str) -> bool:
    """Whether a locale directory (`de`, `pt_BR`, `de.UTF-8`) holds language `lang`. `@` variants
    (`sr@latin`) are another script and left out, so are OTHER_SCRIPT_LOCALES."""
    if "@" in name or name in OTHER_SCRIPT_LOCALES:
        return False
    return re.split(r"[_.]", name, maxsplit=1)[0] == lang


def _locale_dirs(root: Path, lang: str) -> list[Path]:
    """`root/<lang>` first, then its regional variants by name: where a page or catalog exists in several,
    the first wins, so a language gets one translation of each."""
    names = sorted(
        (d.name for d in root.iterdir() if d.is_dir() and locale_matches(d.name, lang)), key=lambda n: (n != lang, n)
    )
    return [root / n for n in names]


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _check_output(config: BuildCorpusConfig, inputs: dict[str, str]) -> dict:
    """Refuse, before any work, an output that overlaps a source or is not this command's earlier output."""
    refuse_overlap({"--output-dir": config.output_dir}, inputs)
    owner = output_owner(f"build_corpus {config.corpus}", inputs)
    check_replaceable(config.output_dir, "--output-dir", owner, is_dir=True)
    return owner


def build_corpus(config: BuildCorpusConfig) -> dict:
    """Write the corpus `config.corpus`; returns its summary (per split documents / pairs and characters, per
    language counts)."""
    if config.corpus == "manpages":
        return build_manpages(config)
    return build_gettext(config)


def _publish(config: BuildCorpusConfig, owner: dict, files: dict[str, list[dict]]) -> None:
    """Write `files` (relative path -> rows) as the output directory, whole or not at all."""
    with atomic_dir(config.output_dir) as tmp:
        for rel, rows in files.items():
            _write_jsonl(tmp / rel, rows)
        write_output_record(tmp, owner, is_dir=True)


# ---------------------------------------------------------------------------------------------- manpages


@dataclass(frozen=True)
class ManPage:
    lang: str
    key: str  # "man1/ls.1": the page's name, the same in every language
    path: Path
    lang_dir: Path  # the directory above man<N>/: `.so` requests resolve from there

    @property
    def url(self) -> str:
        return f"man://{self.lang}/{self.key}"


def _page_name(path: Path) -> str | None:
    """`ls.1` for `ls.1.gz`; None for a compression this reader does not know."""
    if path.suffix in _DECOMPRESS:
        return path.stem
    return None if path.suffix in (".zst", ".Z", ".bz", ".lz") else path.name


def _man_dirs(root: Path, lang: str) -> list[Path]:
    """English: the man root itself (its untranslated pages), then any `en*` locale directories."""
    dirs = _locale_dirs(root, lang)
    return [root, *dirs] if lang == "en" else dirs


def find_man_pages(root: Path, lang: str) -> list[ManPage]:
    """The pages of one language, one per name (`man1/ls.1`). Symbolic links are aliases of a page listed
    under its own name (or of another language's page) and are left out."""
    pages: dict[str, ManPage] = {}
    for lang_dir in _man_dirs(root, lang):
        for section in sorted(lang_dir.glob("man*")):
            if not section.is_dir():
                continue
            for path in sorted(section.iterdir()):
                name = _page_name(path)
                if name is None or path.is_symlink() or not path.is_file():
                    continue
                key = f"{section.name}/{name}"
                pages.setdefault(key, ManPage(lang, key, path, lang_dir))
    return list(pages.values())


def read_man_source(page: ManPage) -> bytes | None:
    """The page's troff source as UTF-8 (decompressed; re-encoded from its declared coding, else from the
    language's legacy encoding when it is not UTF-8); None for an alias (`.so other.1` and nothing else)."""
    raw = page.path.read_bytes()
    decompress = _DECOMPRESS.get(page.path.suffix)
    if decompress is not None:
        raw = decompress(raw)
    body = [line for line in raw.splitlines() if line.strip() and not line.startswith((b'.\\"', b"'\\\"", b".\\#"))]
    if len(body) == 1 and body[0].startswith(b".so "):
        return None
    declared = _CODING.search(raw.split(b"\n", 1)[0])
    encodings = [declared.group(1).decode("ascii", "replace")] if declared else []
    encodings += ["utf-8", LEGACY_MAN_ENCODINGS.get(page.lang, "latin-1")]
    for encoding in encodings:
        try:
            text = raw.decode(encoding)
            break
        except (UnicodeDecodeError, LookupError):
            continue
    else:
        text = raw.decode("latin-1")  # every byte is a character: never fails
    if declared:  # man-db honours a coding line; the source is UTF-8 now, so the line must say so
        first, sep, rest = text.partition("\n")
        text = _CODING_TEXT.sub("-*- coding: UTF-8 -*-", first, count=1) + sep + rest
    return text.encode("utf-8")


def clean_man_output(rendered: str) -> str:
    """man's plain-text output as corpus text: overstrikes removed, every line whitespace-folded, blank
    lines dropped, and the running header (first line: `LS(1) User Commands LS(1)`) and footer (last line:
    version, date, title) left out."""
    lines = [fold_whitespace(line) for line in _OVERSTRIKE.sub("", rendered).splitlines()]
    lines = [line for line in lines if line]
    return "\n".join(lines[1:-1]) if len(lines) > 2 else ""


def man_command() -> str:
    """The `man` program, or a UsageError saying how to install it."""
    found = shutil.which("man")
    if found is None:
        raise UsageError(
            "`man` is not installed (it renders the pages): install it with `apt-get install man-db` "
            "(as root), then rerun"
        )
    return found


def render_man_page(page: ManPage, man: str, max_chars: int) -> str:
    """The page as plain text by `man -l` at width 100 (empty when man fails on it or it is an alias)."""
    try:
        source = read_man_source(page)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:  # a damaged compressed file: one page lost
        log.warning("%s: unreadable (%s); left out", page.path, e)
        return ""
    if source is None:
        return ""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAN", "LC_", "LANG"))}
    # plain UTF-8 text at a fixed width, whatever the caller's terminal, locale or man settings say
    env.update(MANWIDTH=str(MAN_WIDTH), LC_ALL="C.UTF-8", MANPAGER="cat", PAGER="cat")
    try:
        proc = subprocess.run(
            [man, "--encoding=UTF-8", "--local-file", "-"],
            input=source,
            cwd=page.lang_dir,
            env=env,
            capture_output=True,
            timeout=MAN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        log.warning("%s: man took over %d s; left out", page.path, MAN_TIMEOUT_S)
        return ""
    if proc.returncode != 0:
        log.debug("%s: man exited %d: %s", page.path, proc.returncode, proc.stderr[-200:])
        return ""
    return clean_man_output(proc.stdout.decode("utf-8", errors="replace"))[:max_chars]


def _pick_pages(
    pages: Sequence[ManPage], config: BuildCorpusConfig, man: str, pool: ThreadPoolExecutor, workers: int
) -> list[tuple[ManPage, str]]:
    """Up to --max-pages rendered pages of one language: pages in order of a hash of their name (the same
    order in every language, so languages keep the same pages where they have them), rendered in batches
    until enough came out non-empty and distinct (two names of one text keep the first)."""
    order = sorted(pages, key=lambda p: (_unit(config.seed, "pick", p.key), p.key))
    kept: list[tuple[ManPage, str]] = []
    seen: set[str] = set()
    start = 0
    while len(kept) < config.max_pages and start < len(order):
        batch = order[start : start + config.max_pages - len(kept) + workers]
        start += len(batch)
        for page, text in zip(batch, pool.map(lambda p: render_man_page(p, man, config.max_chars), batch)):
            if text and text not in seen and len(kept) < config.max_pages:
                seen.add(text)
                kept.append((page, text))
    return kept


def _split_rows(config: BuildCorpusConfig, docs: list[tuple[ManPage, str]], split: str) -> list[dict]:
    rows = [
        (page, text)
        for page, text in docs
        if (_unit(config.seed, "split", page.key) < config.valid_fraction) == (split == "valid")
    ]
    rows.sort(key=lambda d: (_unit(config.seed, "order", d[0].lang, d[0].key), d[0].url))
    return [{"text": text, "lang": page.lang, "url": page.url, "id": i} for i, (page, text) in enumerate(rows)]


def build_manpages(config: BuildCorpusConfig) -> dict:
    root = Path(config.man_root)
    owner = _check_output(config, {"--man-root": config.man_root})
    if not root.is_dir():
        raise UsageError(f"--man-root {root} is not a directory")
    langs = config.languages()
    found = {lang: find_man_pages(root, lang) for lang in langs}
    translated = {page.key for lang in langs if lang != "en" for page in found[lang]}
    if "en" in found and translated:
        # English is every untranslated page on the machine (a cloud SDK's thousands, say): draw it from the
        # pages the other languages have, so that it is the same set wherever the packages are the same
        found["en"] = [page for page in found["en"] if page.key in translated] or found["en"]
    missing = [lang for lang in langs if not found[lang]]
    if missing:
        packages = " ".join(MANPAGES_PACKAGES.get(lang, f"manpages-{lang}") for lang in missing)
        raise UsageError(
            f"no manual pages for {','.join(missing)} under {root}: install them with `apt-get install "
            f"{packages}` (as root; scripts/build_corpora.sh installs every language's), or leave "
            f"{'it' if len(missing) == 1 else 'them'} out of --langs"
        )
    man = man_command()
    workers = config.workers or len(os.sched_getaffinity(0))
    docs: list[tuple[ManPage, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for lang in langs:
            kept = _pick_pages(found[lang], config, man, pool, workers)
            if not kept:
                raise InputError(f"none of the {len(found[lang])} {lang} pages rendered to any text with man", root)
            log.info("%s: kept %d of %d pages", lang, len(kept), len(found[lang]))
            docs += kept
    files = {
        "train/00000/manpages.jsonl": _split_rows(config, docs, "train"),
        "valid/manpages.jsonl": _split_rows(config, docs, "valid"),
    }
    _publish(config, owner, files)
    summary = _summary(files, lambda row: row["lang"], lambda row: len(row["text"]))
    summary["languages"] = list(langs)
    return summary


def _summary(files: dict[str, list[dict]], lang_of, chars_of) -> dict:
    out: dict = {"train": {"lines": 0, "chars": 0}, "valid": {"lines": 0, "chars": 0}, "per_lang": {}}
    for rel, rows in files.items():
        split = rel.split("/")[0]
        out[split]["lines"] += len(rows)
        out[split]["chars"] += sum(chars_of(r) for r in rows)
        for r in rows:
            counts = out["per_lang"].setdefault(lang_of(r), {"train": 0, "valid": 0})
            counts[split] += 1
    return out


# ----------------------------------------------------------------------------------------------- gettext


def find_catalogs(root: Path, lang: str) -> dict[str, Path]:
    """domain -> its .mo catalog for one language. The first locale directory with a domain wins (see
    `_locale_dirs`); a symbolic link to a catalog listed under its own name (iso-codes' legacy `iso_639.mo`
    -> `iso_639-2.mo`) is an alias and left out."""
    catalogs: dict[str, Path] = {}
    for locale_dir in _locale_dirs(root, lang):
        files = sorted((locale_dir / "LC_MESSAGES").glob("*.mo"))
        real = {p.resolve() for p in files if not p.is_symlink()}
        for path in files:
            if path.is_symlink() and path.resolve() in real:
                continue
            if path.is_file():
                catalogs.setdefault(path.stem, path)
    return catalogs


def catalog_pairs(path: Path) -> list[tuple[str, str]]:
    """(English, translation) of a catalog in its own order, whitespace-folded, form 0 of a plural entry,
    context dropped; empty ones left out. A file that is not a catalog gives none, with a warning."""
    try:
        entries = read_mo(path)
    except InputError as e:
        log.warning("skipped: %s", e)
        return []
    pairs = []
    for entry in entries:
        src, tgt = fold_whitespace(entry.msgid), fold_whitespace(entry.msgstr)
        if src and tgt:
            pairs.append((src, tgt))
    return pairs


def _cap(rows: list[dict], cap: int, seed: int) -> list[dict]:
    """At most `cap` rows, drawn by a hash of each pair (so a capped language keeps the same pairs on every
    run), in their original order."""
    if len(rows) <= cap:
        return rows
    ranked = sorted(
        range(len(rows)), key=lambda i: _unit(seed, "pick", rows[i]["tgt_lang"], rows[i]["src"], rows[i]["tgt"])
    )
    return [rows[i] for i in sorted(ranked[:cap])]


def _refuse_missing(missing: list[str], root: Path) -> None:
    if missing:
        raise UsageError(
            f"no translated gettext catalogs for {','.join(missing)} under {root}: install packages that carry "
            "them (scripts/build_corpora.sh installs a set; a minimal image may exclude /usr/share/locale, see "
            f"/etc/dpkg/dpkg.cfg.d), or leave {'it' if len(missing) == 1 else 'them'} out of --langs"
        )


def build_gettext(config: BuildCorpusConfig) -> dict:
    root = Path(config.locale_root)
    owner = _check_output(config, {"--locale-root": config.locale_root})
    if not root.is_dir():
        raise UsageError(f"--locale-root {root} is not a directory")
    langs = config.languages()
    found = {lang: find_catalogs(root, lang) for lang in langs}
    _refuse_missing([lang for lang in langs if not found[lang]], root)
    files: dict[str, list[dict]] = {}
    missing = []
    for lang in langs:
        catalogs = found[lang]
        by_split: dict[str, list[dict]] = {"valid": [], "train": []}
        seen: set[tuple[str, str]] = set()
        # valid first: a pair in both a valid and a train package stays in valid only (no train/valid leak)
        for split in ("valid", "train"):
            for domain in sorted(catalogs):
                if (_unit(config.seed, "split", domain) < config.valid_fraction) != (split == "valid"):
                    continue
                for src, tgt in catalog_pairs(catalogs[domain]):
                    if (src, tgt) not in seen:
                        seen.add((src, tgt))
                        by_split[split].append(
                            {"src": src, "tgt": tgt, "src_lang": "en", "tgt_lang": lang, "domain": domain}
                        )
        if not seen:
            missing.append(lang)
            continue
        train = _cap(by_split["train"], config.max_train_pairs, config.seed)
        valid = _cap(by_split["valid"], config.max_valid_pairs, config.seed)
        if not valid:
            log.warning("%s: no catalog of its %d fell in the valid split", lang, len(catalogs))
        files[f"train/00000/{lang}.jsonl"] = [{**r, "id": i} for i, r in enumerate(train)]
        files[f"valid/{lang}.jsonl"] = [{**r, "id": i} for i, r in enumerate(valid)]
        log.info(
            "%s: %d train + %d valid pairs (of %d + %d) from %d catalogs",
            lang,
            len(train),
            len(valid),
            len(by_split["train"]),
            len(by_split["valid"]),
            len(catalogs),
        )
    _refuse_missing(missing, root)
    _publish(config, owner, files)
    summary = _summary(files, lambda row: row["tgt_lang"], lambda row: len(row["src"]) + len(row["tgt"]))
    summary["languages"] = list(langs)
    return summary
