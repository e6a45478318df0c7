"""build_corpus: the README's real corpora rebuilt from their Debian sources. Fixtures are made here: .mo catalogs
written byte by byte (header, plural and context entries) and a tiny man tree of troff sources in two
languages. The .mo tests always run; the rendering ones need `man` (man-db) and skip without it."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from xlbtm.cli import main_wrapper
from xlbtm.corpus.build import MANPAGES_PACKAGES, fold_whitespace, locale_matches
from xlbtm.corpus.mo import MoEntry, read_mo
from xlbtm.errors import InputError
from xlbtm.scripts import build_corpus as script

REPO = Path(__file__).resolve().parents[1]
HEADER = b"Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"
needs_man = pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) is not installed")


def write_mo(path: Path, messages: dict[bytes, bytes], *, byte_order: str = "<", header: bytes = HEADER) -> Path:
    """A .mo catalog as msgfmt writes it: magic, revision 0, N, the offsets of the two (length, offset) tables,
    an empty hash table, then the NUL-terminated strings; the header is the empty msgid's translation."""
    entries = sorted({b"": header, **messages}.items())
    n = len(entries)
    originals, translations = 28, 28 + 8 * n
    ids_start = translations + 8 * n
    ids = b"".join(k + b"\0" for k, _ in entries)
    strs_start = ids_start + len(ids)
    table_o, table_t, pos_o, pos_t = b"", b"", ids_start, strs_start
    for k, v in entries:
        table_o += struct.pack(byte_order + "2I", len(k), pos_o)
        table_t += struct.pack(byte_order + "2I", len(v), pos_t)
        pos_o, pos_t = pos_o + len(k) + 1, pos_t + len(v) + 1
    head = struct.pack(byte_order + "7I", 0x950412DE, 0, n, originals, translations, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + table_o + table_t + ids + b"".join(v + b"\0" for _, v in entries))
    return path


def run(argv, capsys) -> tuple[int, str]:
    rc = main_wrapper("build_corpus", script.main, [str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xlbtm build_corpus: error: "), err
    return lines[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------ .mo


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_read_mo_takes_form_0_of_plurals_drops_context_and_the_header(tmp_path, byte_order):
    path = write_mo(
        tmp_path / "x.mo",
        {
            b"Open File": "Datei öffnen".encode(),
            b"%d file\x00%d files": b"%d Datei\x00%d Dateien",
            b"menu\x04Quit": b"Beenden",
            b"Untranslated": b"",
        },
        byte_order=byte_order,
    )
    entries = {e.msgid: e for e in read_mo(path)}
    assert entries["Open File"] == MoEntry("Open File", "Datei öffnen")
    assert entries["%d file"] == MoEntry("%d file", "%d Datei", plural=True)
    assert entries["Quit"] == MoEntry("Quit", "Beenden", context="menu")
    assert "" not in entries and entries["Untranslated"].msgstr == ""


def test_read_mo_decodes_the_declared_charset(tmp_path):
    path = write_mo(
        tmp_path / "x.mo",
        {b"Size": "Größe".encode("latin-1")},
        header=b"Content-Type: text/plain; charset=ISO-8859-1\n",
    )
    assert read_mo(path) == [MoEntry("Size", "Größe")]


def test_read_mo_refuses_what_is_not_a_catalog(tmp_path):
    (tmp_path / "bad.mo").write_bytes(b"\x00" * 40)
    with pytest.raises(InputError, match=r"bad\.mo: not a gettext \.mo catalog \(bad magic number\)"):
        read_mo(tmp_path / "bad.mo")
    good = write_mo(tmp_path / "cut.mo", {b"a": b"b"}).read_bytes()
    (tmp_path / "cut.mo").write_bytes(good[:40])
    with pytest.raises(InputError, match="outside the file"):
        read_mo(tmp_path / "cut.mo")


# ------------------------------------------------------------------------------------------- gettext

DOMAINS = [f"pkg{i}" for i in range(8)]


@pytest.fixture
def locale_root(tmp_path) -> Path:
    """8 packages (domains) in de, fr, pt_BR and zh_TW: each with its own strings, a plural, a context entry,
    an untranslated entry, a multi-line string, and one pair every package shares (dedup); a legacy alias
    (symlink) of pkg0; a broken catalog."""
    root = tmp_path / "locale"
    for locale, word in [("de", "Datei"), ("fr", "Fichier"), ("pt_BR", "Arquivo"), ("zh_TW", "檔案")]:
        for domain in DOMAINS:
            write_mo(
                root / locale / "LC_MESSAGES" / f"{domain}.mo",
                {
                    f"{domain} File".encode(): f"{domain} {word}".encode(),
                    f"{domain} %d item\x00{domain} %d items".encode(): f"{domain} %d {word}\x00plural".encode(),
                    f"{domain}\x04Open".encode(): f"{domain} öffnen".encode(),
                    f"{domain} Untranslated".encode(): b"",
                    f"{domain} line one\n   line two".encode(): f"{domain} {word}\n\tzwei".encode(),
                    b"Cancel": f"{word}!".encode(),
                },
            )
        (root / locale / "LC_MESSAGES" / "legacy.mo").symlink_to("pkg0.mo")
    (root / "de" / "LC_MESSAGES" / "broken.mo").write_bytes(b"not a catalog at all")
    return root


def gettext_files(out: Path) -> dict[str, list[dict]]:
    return {str(p.relative_to(out)): read_jsonl(p) for p in sorted(out.rglob("*.jsonl"))}


def test_gettext_corpus_lines_splits_and_dedup(tmp_path, locale_root, capsys):
    out = tmp_path / "gettext"
    rc, err = run(
        [
            "gettext",
            "--output-dir",
            out,
            "--locale-root",
            locale_root,
            "--langs",
            "de,fr,pt",
            "--valid-fraction",
            "0.5",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "skipped:" in err and "broken.mo" in err  # a broken catalog is named and left out
    files = gettext_files(out)
    assert sorted(files) == [f"{s}/{lang}.jsonl" for s in ("train/00000", "valid") for lang in ("de", "fr", "pt")]
    first = (out / "train/00000/de.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert re.fullmatch(
        r'\{"src": ".+", "tgt": ".+", "src_lang": "en", "tgt_lang": "de", "domain": "pkg\d", "id": 0\}', first
    )
    assert "ö" in (out / "train/00000/de.jsonl").read_text(encoding="utf-8") or "ö" in (
        out / "valid/de.jsonl"
    ).read_text(encoding="utf-8")  # written as UTF-8, not \u escapes
    split_of: dict[str, set[str]] = {}
    for rel, rows in files.items():
        lang = Path(rel).stem
        assert [r["id"] for r in rows] == list(range(len(rows)))
        assert all(r["tgt_lang"] == lang and r["src_lang"] == "en" for r in rows)
        assert [r["domain"] for r in rows] == sorted(r["domain"] for r in rows)
        for r in rows:
            split_of.setdefault(r["domain"], set()).add(rel.split("/")[0])
    # split by package: a domain is in one split, in every language
    assert all(len(s) == 1 for s in split_of.values()) and {"train", "valid"} == set().union(*split_of.values())
    assert set(split_of) == set(DOMAINS)  # the alias legacy.mo is pkg0, not a domain of its own
    for lang in ("de", "fr", "pt"):
        rows = files[f"train/00000/{lang}.jsonl"] + files[f"valid/{lang}.jsonl"]
        pairs = [(r["src"], r["tgt"]) for r in rows]
        assert len(pairs) == len(set(pairs))  # dedup per language, across splits too
        assert sum(src == "Cancel" for src, _ in pairs) == 1
        assert len(rows) == 4 * len(DOMAINS) + 1  # file, plural, context, multi-line per domain + Cancel once
        srcs = {src for src, _ in pairs}
        assert "pkg3 %d item" in srcs and "Open" in srcs and "pkg3 line one line two" in srcs
        assert not any("Untranslated" in s or "\x04" in s or "\x00" in s for s in srcs)
    tgts = {r["tgt"] for r in files["train/00000/pt.jsonl"] + files["valid/pt.jsonl"]}
    assert "pkg1 Arquivo" in tgts and "pkg1 Arquivo zwei" in tgts  # pt_BR is pt, newlines and tabs folded


def test_gettext_leaves_traditional_chinese_out_of_zh(tmp_path, locale_root, capsys):
    rc, err = run(["gettext", "--output-dir", tmp_path / "o", "--locale-root", locale_root, "--langs", "de,zh"], capsys)
    assert rc == 2
    assert "no translated gettext catalogs for zh under" in one_error_line(err)
    assert locale_matches("zh_CN", "zh") and locale_matches("pt_BR", "pt") and locale_matches("de.UTF-8", "de")
    assert not locale_matches("zh_TW", "zh") and not locale_matches("sr@latin", "sr") and not locale_matches("da", "d")


def test_gettext_is_deterministic_and_capped(tmp_path, locale_root, capsys):
    argv = ["gettext", "--locale-root", locale_root, "--langs", "de,fr", "--valid-fraction", "0.5"]
    assert run([*argv, "--output-dir", tmp_path / "a"], capsys)[0] == 0
    assert run([*argv, "--output-dir", tmp_path / "b"], capsys)[0] == 0
    a, b = gettext_files(tmp_path / "a"), gettext_files(tmp_path / "b")
    assert a == b
    for rel in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    capped = [*argv, "--max-train-pairs", "5", "--max-valid-pairs", "2", "--output-dir", tmp_path / "c"]
    assert run(capped, capsys)[0] == 0
    c = gettext_files(tmp_path / "c")
    for lang in ("de", "fr"):
        train, valid = c[f"train/00000/{lang}.jsonl"], c[f"valid/{lang}.jsonl"]
        assert len(train) == 5 and len(valid) == 2
        full = a[f"train/00000/{lang}.jsonl"]
        keep = [(r["src"], r["tgt"]) for r in train]
        assert keep == [(r["src"], r["tgt"]) for r in full if (r["src"], r["tgt"]) in keep]  # catalog order kept
        assert [r["id"] for r in train] == list(range(5))
    # a rerun into its own output replaces it
    assert run(capped, capsys)[0] == 0


def test_gettext_refusals_are_one_line(tmp_path, locale_root, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    rc, err = run(["gettext", "--output-dir", theirs, "--locale-root", locale_root, "--langs", "de"], capsys)
    assert rc == 2 and "exists and is not an output of build_corpus gettext" in one_error_line(err)
    assert (theirs / "notes.txt").read_text() == "mine"
    rc, err = run(["gettext", "--output-dir", locale_root / "out", "--locale-root", locale_root], capsys)
    assert rc == 2 and "lies inside --locale-root" in one_error_line(err)
    rc, err = run(["gettext", "--output-dir", tmp_path / "o", "--locale-root", locale_root, "--langs", "de,ko"], capsys)
    assert rc == 2 and "no translated gettext catalogs for ko under" in one_error_line(err)
    assert not (tmp_path / "o").exists()
    rc, err = run(["gettext", "--output-dir", tmp_path / "o", "--locale-root", tmp_path / "nope"], capsys)
    assert rc == 2 and "--locale-root" in one_error_line(err)
    rc, err = run(["gettext", "--output-dir", tmp_path / "o", "--valid-fraction", "1"], capsys)
    assert rc == 2 and "--valid-fraction must be between 0 and 1" in one_error_line(err)
    # a manpages build does not replace a gettext corpus
    assert (
        run(["gettext", "--output-dir", tmp_path / "g", "--locale-root", locale_root, "--langs", "de"], capsys)[0] == 0
    )
    (tmp_path / "man").mkdir()
    rc, err = run(["manpages", "--output-dir", tmp_path / "g", "--man-root", tmp_path / "man"], capsys)
    assert rc == 2 and "is the output of build_corpus gettext" in one_error_line(err)


# ----------------------------------------------------------------------------------------------- manpages

LS_EN = r""".TH LS 1 "2024-01-01" "coreutils 9.1" "User Commands"
.SH NAME
ls \- list directory contents
.SH DESCRIPTION
List   information about the FILEs (the current directory by default).
Sort entries alphabetically if none of the sorting options is given.
"""
LS_DE = r""".\" a comment line, as the translated pages start
.TH LS 1 "2024-01-01" "coreutils 9.1" "Dienstprogramme für Benutzer"
.SH BEZEICHNUNG
ls \- Verzeichnisinhalte auflisten
.SH BESCHREIBUNG
Listet Informationen über die DATEIen auf (standardmäßig das aktuelle Verzeichnis).
"""
CAT_EN = r""".TH CAT 1 "2024-01-01" "coreutils 9.1" "User Commands"
.SH NAME
cat \- concatenate files and print on the standard output
.SH DESCRIPTION
Concatenate FILE(s) to standard output.
"""
CAT_DE = r""".TH CAT 1 "2024-01-01" "coreutils 9.1" "Dienstprogramme für Benutzer"
.SH BEZEICHNUNG
cat \- Dateien verketten und auf der Standardausgabe ausgeben
.SH BESCHREIBUNG
Hängt DATEI(en) aneinander und gibt sie auf der Standardausgabe aus. Größe: groß.
"""
LONG_EN = '.TH HIER 7 2024-01-01 Linux "Linux Programmer\'s Manual"\n.SH NAME\nhier \\- layout\n.SH DESCRIPTION\n' + (
    "A very long line of words about directories. " * 80
)


@pytest.fixture
def man_root(tmp_path) -> Path:
    """English ls.1, cat.1 and hier.7 under man<N>/; German ls.1 (UTF-8) and cat.1.gz (Latin-1, gzipped)
    under de/; an alias page (`.so`) and a symbolic link, both left out."""
    root = tmp_path / "man"
    (root / "man1").mkdir(parents=True)
    (root / "man7").mkdir()
    (root / "de" / "man1").mkdir(parents=True)
    (root / "man1" / "ls.1").write_text(LS_EN)
    (root / "man1" / "cat.1").write_text(CAT_EN)
    (root / "man7" / "hier.7").write_text(LONG_EN)
    (root / "man1" / "dir.1").write_text(".so man1/ls.1\n")
    (root / "de" / "man1" / "ls.1").write_text(LS_DE, encoding="utf-8")
    (root / "de" / "man1" / "cat.1.gz").write_bytes(gzip.compress(CAT_DE.encode("latin-1"), mtime=0))
    (root / "de" / "man1" / "list.1").symlink_to("ls.1")
    (root / "de" / "man1" / "broken.1.gz").write_bytes(gzip.compress(b".TH X 1\n" * 50)[:-30])  # cut short
    return root


@needs_man
def test_manpages_corpus_lines_and_split_by_page(tmp_path, man_root, capsys):
    out = tmp_path / "manpages"
    argv = ["manpages", "--man-root", man_root, "--langs", "en,de", "--valid-fraction", "0.5", "--workers", "2"]
    rc, err = run([*argv, "--output-dir", out], capsys)
    assert rc == 0, err
    assert "broken.1.gz: unreadable" in err  # a damaged page is named and left out
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jsonl")) == [
        "train/00000/manpages.jsonl",
        "valid/manpages.jsonl",
    ]
    rows = {}
    for split in ("train/00000", "valid"):
        path = out / split / "manpages.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            r = json.loads(line)
            assert list(r) == ["text", "lang", "url", "id"] and r["id"] == i
            assert line.endswith(f'"lang": "{r["lang"]}", "url": "{r["url"]}", "id": {i}}}')
            rows[r["url"]] = (split, r)
    # en draws from the pages a translation exists for (ls, cat); aliases and links are not pages
    assert sorted(rows) == ["man://de/man1/cat.1", "man://de/man1/ls.1", "man://en/man1/cat.1", "man://en/man1/ls.1"]
    for page in ("man1/ls.1", "man1/cat.1"):  # every translation of a page in one split
        assert rows[f"man://en/{page}"][0] == rows[f"man://de/{page}"][0]
    ls_en, ls_de, cat_de = (
        rows[u][1]["text"] for u in ("man://en/man1/ls.1", "man://de/man1/ls.1", "man://de/man1/cat.1")
    )
    # rendered, header and footer dropped, whitespace folded
    assert ls_en.startswith("NAME\nls - list directory contents\nDESCRIPTION\nList information about")
    assert "LS(1)" not in ls_en and "  " not in ls_en and "\n\n" not in ls_en
    assert ls_de.startswith("BEZEICHNUNG\nls - Verzeichnisinhalte auflisten") and "über" in ls_de
    assert "Hängt DATEI(en) aneinander" in cat_de and "Größe" in cat_de  # Latin-1 source, gzipped
    assert rows["man://de/man1/ls.1"][1]["lang"] == "de"


@needs_man
def test_manpages_are_deterministic_capped_and_replace_their_own_output(tmp_path, man_root, capsys):
    argv = ["manpages", "--man-root", man_root, "--langs", "en", "--max-chars", "300", "--workers", "2"]
    assert run([*argv, "--output-dir", tmp_path / "a"], capsys)[0] == 0
    assert run([*argv, "--output-dir", tmp_path / "b"], capsys)[0] == 0
    for rel in ("train/00000/manpages.jsonl", "valid/manpages.jsonl"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    rows = read_jsonl(tmp_path / "a/train/00000/manpages.jsonl") + read_jsonl(tmp_path / "a/valid/manpages.jsonl")
    assert {r["url"] for r in rows} == {"man://en/man1/ls.1", "man://en/man1/cat.1", "man://en/man7/hier.7"}
    hier = next(r["text"] for r in rows if r["url"].endswith("hier.7"))
    assert len(hier) == 300 and all(len(r["text"]) <= 300 for r in rows)
    # --max-pages keeps that many per language
    rc, _ = run([*argv, "--max-pages", "2", "--output-dir", tmp_path / "a"], capsys)
    assert rc == 0
    rows = read_jsonl(tmp_path / "a/train/00000/manpages.jsonl") + read_jsonl(tmp_path / "a/valid/manpages.jsonl")
    assert len(rows) == 2


def test_manpages_refusals_are_one_line(tmp_path, man_root, capsys, monkeypatch):
    rc, err = run(["manpages", "--output-dir", tmp_path / "o", "--man-root", man_root, "--langs", "de,fr"], capsys)
    assert rc == 2
    line = one_error_line(err)
    assert "no manual pages for fr under" in line and "apt-get install manpages-fr" in line
    assert not (tmp_path / "o").exists()
    rc, err = run(["manpages", "--output-dir", man_root / "de", "--man-root", man_root], capsys)
    assert rc == 2 and "lies inside --man-root" in one_error_line(err)
    theirs = tmp_path / "theirs"
    (theirs / "x").mkdir(parents=True)
    rc, err = run(["manpages", "--output-dir", theirs, "--man-root", man_root, "--langs", "de"], capsys)
    assert rc == 2 and "exists and is not an output of build_corpus manpages" in one_error_line(err)
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    monkeypatch.setenv("PATH", str(empty_path))  # no man on it
    rc, err = run(["manpages", "--output-dir", tmp_path / "o", "--man-root", man_root, "--langs", "de"], capsys)
    assert rc == 2 and "apt-get install man-db" in one_error_line(err)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- the install script


def test_the_install_script_installs_every_languages_man_pages():
    """scripts/build_corpora.sh and the builder's error messages name the same packages."""
    text = (REPO / "scripts" / "build_corpora.sh").read_text()
    man_packages = set(re.search(r"MAN_PACKAGES=\(([^)]*)\)", text).group(1).split())
    assert {"man-db", *MANPAGES_PACKAGES.values()} == man_packages
    assert "build_corpus manpages --output-dir" in text and "build_corpus gettext --output-dir" in text
    assert "OUT=${1:-corpora}" in text
    assert "/corpora/" in (REPO / ".gitignore").read_text().splitlines()


def test_fold_whitespace():
    assert fold_whitespace("  a\tb\n\n c  ") == "a b c"
