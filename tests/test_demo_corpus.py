"""Demo corpus: deterministic, c-BTM layout, readable by the corpus reader, multilingual with its own scripts."""

import json
import subprocess
import sys
import unicodedata

import pytest

from xlbtm.corpus import Corpus
from xlbtm.demo_corpus import LANGUAGES, write_demo_corpus
from xlbtm.errors import UsageError


def read_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_demo_corpus(tmp_path / "a", n_train=120, n_valid=12, seed=3)
    write_demo_corpus(tmp_path / "b", n_train=120, n_valid=12, seed=3)
    write_demo_corpus(tmp_path / "c", n_train=120, n_valid=12, seed=4)
    fa, fb, fc = (read_files(tmp_path / x) for x in "abc")
    assert fa == fb
    assert fa.keys() == fc.keys() and fa["valid/demo.jsonl"] != fc["valid/demo.jsonl"]
    assert a["files"] == ["train/00000/demo.jsonl", "train/00001/demo.jsonl", "valid/demo.jsonl"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_document_does_not_depend_on_corpus_size(tmp_path):
    write_demo_corpus(tmp_path / "small", n_train=10, n_valid=5, num_shards=1)
    write_demo_corpus(tmp_path / "big", n_train=50, n_valid=5, num_shards=1)
    small = (tmp_path / "small/train/00000/demo.jsonl").read_text(encoding="utf-8").splitlines()
    big = (tmp_path / "big/train/00000/demo.jsonl").read_text(encoding="utf-8").splitlines()
    assert big[:10] == small


def test_layout_fields_and_summary_match_reader(tmp_path):
    s = write_demo_corpus(tmp_path / "d", n_train=300, n_valid=30, num_shards=3)
    corpus = Corpus(tmp_path / "d")
    assert [corpus.rel(p) for p in corpus.files("train")] == [f"train/0000{i}/demo.jsonl" for i in range(3)]
    train = list(corpus.iter_documents("train"))
    valid = list(corpus.iter_documents("valid"))
    assert len(train) == 300 and len(valid) == 30
    assert len({d.id for d in train}) == 300
    per_lang = {}
    for d in train:
        per_lang[d.lang] = per_lang.get(d.lang, 0) + 1
    assert per_lang == s["train"]["per_lang"]
    assert set(per_lang) == set(s["languages"]) == {"en", "de", "ru", "el", "ar", "zh"}
    assert json.loads((tmp_path / "d/demo_corpus.json").read_text())["train"] == s["train"]
    assert s["bytes"] == sum((tmp_path / "d" / f).stat().st_size for f in s["files"])


def _script_of(ch):
    name = unicodedata.name(ch, "")
    for key, script in (
        ("LATIN", "Latin"),
        ("CYRILLIC", "Cyrillic"),
        ("GREEK", "Greek"),
        ("ARABIC", "Arabic"),
        ("CJK", "Han"),
        ("DEVANAGARI", "Devanagari"),
        ("HANGUL", "Hangul"),
    ):
        if name.startswith(key):
            return script
    return None


def test_each_language_uses_its_script_and_words_are_zipfian(tmp_path):
    langs = list(LANGUAGES)
    write_demo_corpus(tmp_path / "d", n_train=400, n_valid=8, num_shards=1, langs=langs)
    docs = [json.loads(line) for line in (tmp_path / "d/train/00000/demo.jsonl").open(encoding="utf-8")]
    by_lang = {}
    for d in docs:
        by_lang.setdefault(d["lang"], []).append(d["text"])
    assert set(by_lang) == set(langs)
    vocab = {}
    for lang, texts in by_lang.items():
        counts = {}
        for ch in "".join(texts):
            sc = _script_of(ch) if ch.isalpha() else None
            if sc:
                counts[sc] = counts.get(sc, 0) + 1
        # mostly its own script; a little Latin from shared named entities
        assert max(counts, key=counts.get) == LANGUAGES[lang]["script"], (lang, counts)
        if LANGUAGES[lang]["sep"] == " ":
            words = {}
            for t in texts:
                for w in t.replace(".", " ").replace("।", " ").split():
                    words[w.lower()] = words.get(w.lower(), 0) + 1
            freq = sorted(words.values(), reverse=True)
            assert freq[0] > 8 * freq[len(freq) // 2]  # heavy head, long tail
            vocab[lang] = {w for w in words if not w.isascii()}
    assert not vocab["ru"] & vocab["el"] and not vocab["ar"] & vocab["hi"]
    # topics are shared across languages: each topic shows up in several languages
    topic_langs = {}
    for d in docs:
        topic_langs.setdefault(d["topic"], set()).add(d["lang"])
    assert all(len(v) >= 4 for v in topic_langs.values())


def test_refuses_to_overwrite_other_data_and_bad_args(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a demo corpus"):
        write_demo_corpus(tmp_path / "mine", n_train=5, n_valid=2)
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"
    with pytest.raises(UsageError, match="--langs"):
        write_demo_corpus(tmp_path / "x", n_train=5, n_valid=2, langs=["en", "tlh"])
    # an earlier demo corpus is replaced whole (no stale shards)
    write_demo_corpus(tmp_path / "d", n_train=20, n_valid=2, num_shards=4)
    write_demo_corpus(tmp_path / "d", n_train=20, n_valid=2, num_shards=2)
    assert sorted(p.name for p in (tmp_path / "d/train").iterdir()) == ["00000", "00001"]


def test_cli(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "xlbtm.scripts.make_demo_corpus",
            "--out",
            str(out),
            "--num-train-docs",
            "40",
            "--num-valid-docs",
            "4",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "[make_demo_corpus] wrote 40 train + 4 valid documents" in r.stderr
    write_demo_corpus(tmp_path / "lib", n_train=40, n_valid=4, seed=1)
    assert read_files(out) == read_files(tmp_path / "lib")
    r = subprocess.run(
        [sys.executable, "-m", "xlbtm.scripts.make_demo_corpus", "--out", str(out), "--langs", "en,xx"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--langs" in r.stderr
