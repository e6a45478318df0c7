"""Corpus reader: the real manpages corpus, bad-line reporting through a script, gzip, shard order, random
access by sp_id (relative, c-BTM absolute, .gz) and where the line index is cached."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xlbtm.corpus import Corpus, LineIndex, find_jsonl_files, iter_file, parse_sp_id, resolve_sp_id
from xlbtm.corpus import reader as corpus_mod
from xlbtm.demo_corpus import write_demo_corpus
from xlbtm.errors import InputError


def run_stats(*args):
    return subprocess.run(
        [sys.executable, "-m", "xlbtm.scripts.corpus_stats", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def demo_master(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo-master") / "data"
    write_demo_corpus(d, n_train=60, n_valid=10, num_shards=2, seed=0)
    return d


@pytest.fixture
def demo(tmp_path, demo_master):
    """A private copy each test may break."""
    d = tmp_path / "data"
    shutil.copytree(demo_master, d)
    return d


def fields(doc):
    return (doc.text, doc.lang, doc.id, doc.url)


# ------------------------------------------------------------------------------------------ real corpus


def test_manpages_counts_and_sp_ids(manpages_dir):
    c = Corpus(manpages_dir)
    train = list(c.iter_documents("train"))
    valid = list(c.iter_documents("valid"))
    assert len(train) == 3233 and len(valid) == 404
    assert [d.sp_id for d in train] == [f"train/00000/manpages.jsonl|{i}" for i in range(3233)]
    assert [d.sp_id for d in valid] == [f"valid/manpages.jsonl|{i}" for i in range(404)]
    assert all(d.id == str(i) for i, d in enumerate(train))  # the corpus stores its line index as id
    langs = {d.lang for d in train}
    assert len(langs) == 21 and {"de", "ru", "zh", "ja"} <= langs
    assert all(d.url.startswith("man://") for d in valid)
    # random access agrees with streaming, and never writes into the (read-only) shared corpus
    before = sorted(os.listdir(manpages_dir / "train/00000"))
    for i in (0, 17, 1600, 3232):
        assert c.get(f"train/00000/manpages.jsonl|{i}") == train[i]
    assert sorted(os.listdir(manpages_dir / "train/00000")) == before


def test_manpages_gzip_copy_gives_identical_documents(tmp_path, manpages_dir):
    (tmp_path / "valid").mkdir()
    with (
        open(manpages_dir / "valid/manpages.jsonl", "rb") as src,
        gzip.open(tmp_path / "valid/manpages.jsonl.gz", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    plain = list(Corpus(manpages_dir).iter_documents("valid"))
    gz = list(Corpus(tmp_path).iter_documents("valid"))
    assert [fields(d) for d in gz] == [fields(d) for d in plain]
    assert [d.sp_id for d in gz] == [f"valid/manpages.jsonl.gz|{i}" for i in range(404)]
    c = Corpus(tmp_path)
    for i in (403, 5, 200):  # backwards and forwards in the gzip stream
        assert fields(c.get(f"valid/manpages.jsonl.gz|{i}")) == fields(plain[i])


# -------------------------------------------------------------------------------------------- bad lines


def inject(path: Path, line_no: int, raw: bytes) -> None:
    """Replace 1-based line `line_no` of a (plain or .gz) jsonl file with `raw`."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        lines = f.read().split(b"\n")
    lines[line_no - 1] = raw
    with opener(path, "wb") as f:
        f.write(b"\n".join(lines))


BAD_LINES = [
    ("malformed-json", b'{"text": "abc"', "malformed JSON: Expecting ',' delimiter at column 15"),
    ("extra-data", b'{"text": "a"} {"text": "b"}', "malformed JSON: Extra data at column 15"),
    ("missing-text", b'{"txt": "abc", "lang": "en"}', "missing required field 'text'"),
    ("non-string-text", b'{"text": 42}', "field 'text' must be a string, got int"),
    ("null-text", b'{"text": null}', "field 'text' must be a string, got NoneType"),
    ("not-an-object", b'["text"]', "expected a JSON object, got list"),
    ("invalid-utf8", b'{"text": "caf\xe9"}', "invalid UTF-8 at byte 13 of the line"),
]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("kind,raw,message", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_bad_line_stops_with_path_line_and_status_2(demo, kind, raw, message, gz):
    target = demo / "train/00001/demo.jsonl"
    if gz:
        with open(target, "rb") as src, gzip.open(str(target) + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        target.unlink()
        target = Path(str(target) + ".gz")
    inject(target, 7, raw)
    # the library names the file and the 1-based line
    with pytest.raises(InputError) as e:
        list(Corpus(demo).iter_documents("train"))
    assert str(e.value) == f"{target}:7: {message}"
    assert (e.value.path, e.value.line) == (str(target), 7)
    # the script: exactly one line on stderr, exit status 2
    r = run_stats("--data-dir", demo, "--split", "train")
    assert r.returncode == 2
    assert r.stderr == f"xlbtm corpus_stats: error: {target}:7: {message}\n"


def test_skip_bad_lines_counts_and_keeps_sp_ids(demo):
    target = demo / "train/00001/demo.jsonl"
    for line_no, (_, raw, _) in zip((2, 4, 9), BAD_LINES):
        inject(target, line_no, raw)
    clean = {d.sp_id: d for d in Corpus(demo).iter_documents("valid")}
    c = Corpus(demo, skip_bad_lines=True)
    docs = list(c.iter_documents("train"))
    assert len(docs) == 60 - 3 and c.stats.skipped == 3
    assert c.stats.examples[0] == f"{target}:2: {BAD_LINES[0][2]}"
    sp_ids = {d.sp_id for d in docs}
    assert "train/00001/demo.jsonl|1" not in sp_ids and "train/00001/demo.jsonl|2" in sp_ids  # no shifting
    assert clean  # valid split untouched and readable

    r = run_stats("--data-dir", demo, "--split", "train", "--skip-bad-lines", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["documents"] == 57 and s["skipped_lines"] == 3
    assert f"skipped 3 bad lines; first: {target}:2: {BAD_LINES[0][2]}" in r.stderr


def test_empty_split_and_split_without_documents(demo):
    shutil.rmtree(demo / "train")
    (demo / "train/00000").mkdir(parents=True)
    (demo / "train/00000/notes.txt").write_text("not data")
    r = run_stats("--data-dir", demo, "--split", "train")
    assert r.returncode == 2
    assert r.stderr == (
        f"xlbtm corpus_stats: error: {demo / 'train'}: split 'train' is empty: "
        "no *.jsonl or *.jsonl.gz files below it\n"
    )
    (demo / "train/00000/blank.jsonl").write_text("\n  \n\n")
    r = run_stats("--data-dir", demo, "--split", "train")
    assert r.returncode == 2
    assert r.stderr == f"xlbtm corpus_stats: error: {demo / 'train'}: split 'train' has no documents\n"
    with pytest.raises(InputError, match="has no documents"):
        list(Corpus(demo).iter_documents("train"))
    r = run_stats("--data-dir", demo / "missing", "--split", "train")
    assert r.returncode == 2 and "data directory not found" in r.stderr
    r = run_stats("--data-dir", demo, "--split", "train", "--bogus")
    assert r.returncode == 2 and "--bogus" in r.stderr


def test_corpus_stats_reports_counts(demo_master):
    r = run_stats("--data-dir", demo_master, "--split", "train", "--split", "valid", "--json")
    assert r.returncode == 0, r.stderr
    train, valid = (json.loads(line) for line in r.stdout.splitlines())
    summary = json.loads((demo_master / "demo_corpus.json").read_text())
    assert train["documents"] == 60 and valid["documents"] == 10 and train["files"] == 2
    assert train["per_lang"] == summary["train"]["per_lang"]
    assert train["bytes"] == sum((demo_master / f).stat().st_size for f in summary["files"][:2])
    r = run_stats("--data-dir", demo_master)
    assert r.returncode == 0 and r.stdout.startswith("split train: 60 documents, ")


def test_blank_lines_bom_and_crlf(tmp_path):
    d = tmp_path / "data/train/0"
    d.mkdir(parents=True)
    (d / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n\r\n{"text": "three", "id": 3}\r\n\n')
    c = Corpus(tmp_path / "data")
    docs = list(c.iter_documents("train"))
    assert [(x.sp_id, x.text, x.id) for x in docs] == [
        ("train/0/a.jsonl|0", "one", None),
        ("train/0/a.jsonl|2", "three", "3"),
    ]
    assert c.stats.blank == 2
    assert c.get("train/0/a.jsonl|0").text == "one" and c.get("train/0/a.jsonl|2").text == "three"
    with pytest.raises(InputError, match=r"a.jsonl:2: empty line"):
        c.get("train/0/a.jsonl|1")


# ----------------------------------------------------------------------------------- discovery / order


def test_numeric_shard_and_file_order(tmp_path):
    root = tmp_path / "data"
    for shard in ("10", "2", "1", "00003"):
        for name in ("part10.jsonl", "part2.jsonl.gz"):
            p = root / "train" / shard / name
            p.parent.mkdir(parents=True, exist_ok=True)
            data = json.dumps({"text": f"{shard}/{name}"}).encode() + b"\n"
            p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    (root / "train/2/.hidden.jsonl").write_text('{"text": "no"}\n')
    (root / "train/2/readme.txt").write_text("no")
    got = [p.relative_to(root / "train").as_posix() for p in find_jsonl_files(root / "train")]
    assert got == [
        "1/part2.jsonl.gz",
        "1/part10.jsonl",
        "2/part2.jsonl.gz",
        "2/part10.jsonl",
        "00003/part2.jsonl.gz",
        "00003/part10.jsonl",
        "10/part2.jsonl.gz",
        "10/part10.jsonl",
    ]
    texts = [d.text for d in Corpus(root).iter_documents("train")]
    assert texts == got


def test_symlinked_shard_dir_keeps_relative_sp_ids(tmp_path, demo_master):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    os.symlink(demo_master / "train/00001", root / "train/00001")
    c = Corpus(root)
    docs = list(c.iter_documents("train"))
    assert len(docs) == 30 and docs[0].sp_id == "train/00001/demo.jsonl|0"
    assert c.get("train/00001/demo.jsonl|3") == docs[3]


# --------------------------------------------------------------------------------------- random access


def test_random_access_relative_absolute_and_moved(demo):
    c = Corpus(demo)
    docs = list(c.iter_documents("train"))
    by_id = {d.sp_id: d for d in docs}
    for sp_id in ("train/00001/demo.jsonl|29", "train/00000/demo.jsonl|0", "train/00001/demo.jsonl|3"):
        assert c.get(sp_id) == by_id[sp_id]
    # c-BTM wrote absolute paths; they resolve both under this data dir and from another machine's prefix
    absolute = f"{demo.resolve()}/train/00001/demo.jsonl|3"
    assert resolve_sp_id(absolute, demo) == ("train/00001/demo.jsonl", 3)
    moved = "/checkpoint/someone/data/train/00001/demo.jsonl|3"
    assert resolve_sp_id(moved, demo) == ("train/00001/demo.jsonl", 3)
    assert c.get(moved) == by_id["train/00001/demo.jsonl|3"]
    with pytest.raises(ValueError, match="not under"):
        resolve_sp_id("/elsewhere/x/other.jsonl|0", demo)
    with pytest.raises(InputError, match=r"line index 30 out of range \(file has 30 lines\)"):
        c.get("train/00001/demo.jsonl|30")
    with pytest.raises(InputError, match="file not found"):
        c.get("train/00009/demo.jsonl|0")
    for bad in ("no-bar", "x.jsonl|", "x.jsonl|-1", "x.jsonl|²", "|3"):
        with pytest.raises(ValueError):
            parse_sp_id(bad)
        with pytest.raises(InputError, match="path\\|line"):
            c.get(bad)
    c.close()


def test_random_access_gz_matches_plain(demo):
    plain = demo / "train/00000/demo.jsonl"
    with open(plain, "rb") as src, gzip.open(str(plain) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain_docs = list(iter_file(plain, "p"))
    gz_docs = list(iter_file(str(plain) + ".gz", "g"))
    assert [fields(d) for d in plain_docs] == [fields(d) for d in gz_docs]
    c = Corpus(demo)
    for i in (29, 0, 15, 16, 2):
        assert fields(c.get(f"train/00000/demo.jsonl.gz|{i}")) == fields(plain_docs[i])
        assert c.get(f"{demo}/train/00000/demo.jsonl.gz|{i}").sp_id == f"train/00000/demo.jsonl.gz|{i}"


# ------------------------------------------------------------------------------------ line-index cache


def cache_dir():
    return Path(os.environ["XLBTM_CACHE_DIR"]) / "line-index"


def test_index_cached_beside_file_when_writable_and_reindexed_on_change(demo):
    target = demo / "train/00000/demo.jsonl"
    c = Corpus(demo)
    first = c.get("train/00000/demo.jsonl|4")
    idx = c.index("train/00000/demo.jsonl")
    assert idx.cache_file.parent == target.parent and idx.cache_file.name.startswith(".demo.jsonl.")
    assert [p.name for p in find_jsonl_files(demo / "train/00000")] == ["demo.jsonl"]  # index is not data
    again = LineIndex.load_or_build(target)  # from the cache
    assert again.cache_file == idx.cache_file and list(again.offsets) == list(idx.offsets)
    # edit the file: a new index, the new content
    inject(target, 5, b'{"text": "edited"}')
    assert Corpus(demo).get("train/00000/demo.jsonl|4").text == "edited" != first.text


def test_index_is_never_used_with_another_version_of_its_file(demo, monkeypatch):
    """A file edited after a Corpus indexed it (the same Corpus object reads on) is refused, not read at stale
    offsets; a file that changes while it is indexed is neither cached nor used."""
    target = demo / "train/00000/demo.jsonl"
    c = Corpus(demo)
    c.get("train/00000/demo.jsonl|4")
    lines = target.read_bytes().split(b"\n")
    target.write_bytes(b"\n".join([lines[1], lines[0], *lines[2:]]) + b" ")  # in place: same inode
    with pytest.raises(InputError, match="changed since it was indexed"):
        c.get("train/00000/demo.jsonl|4")

    other = demo / "train/00001/demo.jsonl"
    real = LineIndex.build

    def edited_meanwhile(path):
        offsets = real(path)
        with open(path, "ab") as f:
            f.write(b'{"text": "appended while indexing"}\n')
        return offsets

    monkeypatch.setattr(LineIndex, "build", staticmethod(edited_meanwhile))
    keys = LineIndex.cache_paths(other)  # where the index of the version being read would be cached
    with pytest.raises(InputError, match="changed while it was indexed"):
        Corpus(demo).get("train/00001/demo.jsonl|0")
    assert not any(k.exists() for k in keys)


def test_index_goes_to_user_cache_when_data_dir_is_read_only(demo):
    """Tests run as root, which ignores permission bits. `dir_is_writable` treats a dir without write bits
    as read-only even for root (a corpus marked read-only is meant to be left alone), so chmod is a real
    test here; the os.access path (read-only mounts, other users' dirs) is covered below."""
    shard = demo / "train/00001"
    before = sorted(os.listdir(shard))
    shard.chmod(0o555)
    try:
        c = Corpus(demo)
        doc = c.get("train/00001/demo.jsonl|5")
        idx = c.index("train/00001/demo.jsonl")
        assert idx.cache_file.parent == cache_dir() and idx.cache_file.is_file()
        assert sorted(os.listdir(shard)) == before
        assert doc == list(Corpus(demo).iter_documents("train"))[30 + 5]
    finally:
        shard.chmod(0o755)


def test_index_respects_os_access(demo, monkeypatch):
    real_access = os.access
    shard = demo / "train/00000"
    monkeypatch.setattr(
        corpus_mod.os, "access", lambda p, mode, **kw: False if Path(p) == shard else real_access(p, mode, **kw)
    )
    before = sorted(os.listdir(shard))
    c = Corpus(demo)
    c.get("train/00000/demo.jsonl|1")
    assert c.index("train/00000/demo.jsonl").cache_file.parent == cache_dir()
    assert sorted(os.listdir(shard)) == before


def test_get_many_returns_input_order(demo):
    plain = demo / "train/00000/demo.jsonl"
    with open(plain, "rb") as src, gzip.open(str(plain) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    c = Corpus(demo)
    ids = [
        "train/00000/demo.jsonl.gz|20",
        "train/00001/demo.jsonl|3",
        "train/00000/demo.jsonl.gz|1",
        f"{demo}/train/00000/demo.jsonl|20",
    ]
    assert c.get_many(ids) == [c.get(s) for s in ids]
    with pytest.raises(InputError):
        c.get_many(["nope"])


def _doc_lines(path, n, tag):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"{tag} {i}"}) + "\n" for i in range(n)))


def test_symlink_loops_and_second_links_are_read_once(tmp_path):
    """A link back to an ancestor (a loop) and a second link to a shard must not feed documents again."""
    from xlbtm.corpus import Corpus

    root = tmp_path / "data"
    _doc_lines(root / "train" / "0" / "a.jsonl", 3, "a")
    _doc_lines(root / "train" / "1" / "b.jsonl", 2, "b")
    os.symlink(root / "train", root / "train" / "1" / "loop")  # loop: train/1/loop/1/loop/...
    os.symlink(root / "train" / "0", root / "train" / "2")  # the same shard under a second name
    os.symlink(root / "train" / "0" / "a.jsonl", root / "train" / "1" / "a-again.jsonl")
    corpus = Corpus(root)
    files = [corpus.rel(f) for f in corpus.files("train")]
    assert files == ["train/0/a.jsonl", "train/1/b.jsonl"]
    texts = [d.text for d in corpus.iter_documents("train")]
    assert sorted(texts) == sorted([f"a {i}" for i in range(3)] + [f"b {i}" for i in range(2)])


def test_dangling_shard_link_and_jsonl_gz_pairs_are_errors(tmp_path):
    import gzip

    from xlbtm.corpus import Corpus

    root = tmp_path / "data"
    _doc_lines(root / "train" / "0" / "a.jsonl", 2, "a")
    os.symlink(tmp_path / "gone", root / "train" / "1")
    with pytest.raises(InputError, match="dangling symlink"):
        Corpus(root).files("train")
    os.unlink(root / "train" / "1")
    with gzip.open(root / "train" / "0" / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "other"}) + "\n")
    with pytest.raises(InputError, match="a.jsonl and a.jsonl.gz"):
        Corpus(root).files("train")


def test_hostile_lines_are_one_clear_error(tmp_path):
    """Deeply nested JSON, a lone surrogate, corrupt deflate data: `path:line: what`, never a traceback."""
    from xlbtm.corpus import iter_file

    cases = {
        "deep.jsonl": ('{"text": "ok"}\n' + "[" * 100000 + "]" * 100000 + "\n", 2, "nested too deeply"),
        "surrogate.jsonl": ('{"text": "ok"}\n{"text": "bad \\ud800 here"}\n', 2, "lone surrogate"),
    }
    for name, (content, line, msg) in cases.items():
        f = tmp_path / name
        f.write_text(content)
        with pytest.raises(InputError, match=f"{name}:{line}: .*{msg}"):
            list(iter_file(f))
        docs = list(iter_file(f, skip_bad_lines=True))  # or counted and skipped
        assert [d.text for d in docs] == ["ok"]
    gz = tmp_path / "corrupt.jsonl.gz"
    data = bytearray(
        gzip.compress(("".join(json.dumps({"text": f"doc {i} " * 50}) + "\n" for i in range(200))).encode())
    )
    for k in range(40, len(data) - 40, 7):  # scribble over the deflate stream, keep the header
        data[k] ^= 0x5A
    gz.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt.jsonl.gz:[0-9]+: cannot read file"):
        list(iter_file(gz))


def test_a_50_mb_line_is_refused_while_streaming_past_it(tmp_path, monkeypatch):
    """One huge line (a dump without newlines) is refused with path:line and the limit, in bounded memory,
    and with --skip-bad-lines the documents after it keep their sp_ids. Random access refuses it too."""
    import tracemalloc

    f = tmp_path / "train" / "big.jsonl"
    f.parent.mkdir(parents=True)
    with open(f, "wb") as out:
        out.write(b'{"text": "before"}\n{"text": "')
        for _ in range(50):
            out.write(b"x" * 1_000_000)
        out.write(b'"}\n{"text": "after"}\n')
    assert corpus_mod.MAX_DOCUMENT_BYTES == 16 << 20  # the documented default
    tracemalloc.start()
    with pytest.raises(
        InputError,
        match=r"big.jsonl:2: line of 50.0 MB is over the 16 MiB limit.*"
        r"XLBTM_MAX_DOCUMENT_BYTES",
    ):
        list(iter_file(f))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40 << 20, f"peak {peak / 2**20:.0f} MiB"  # the 50 MB line was never held whole

    stats = corpus_mod.ReadStats()
    docs = list(iter_file(f, "train/big.jsonl", skip_bad_lines=True, stats=stats))
    assert [(d.sp_id, d.text) for d in docs] == [("train/big.jsonl|0", "before"), ("train/big.jsonl|2", "after")]
    assert stats.skipped == 1
    c = Corpus(tmp_path)
    assert c.get("train/big.jsonl|2").text == "after"
    with pytest.raises(InputError, match="big.jsonl:2: line of 50.0 MB"):
        c.get("train/big.jsonl|1")
    c.close()
    monkeypatch.setattr(corpus_mod, "MAX_DOCUMENT_BYTES", 64 << 20)  # the limit is a setting, not a constant
    assert [d.text[:3] for d in iter_file(f)] == ["bef", "xxx", "aft"]
