import re

import numpy as np
import pytest
from tolerance import fp_tol

from xlbtm.cluster.featurize import Lsa, SubwordFeaturizer, WordFeaturizer, top_terms
from xlbtm.cluster.words import word_tokens


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from xlbtm.cluster.train import sample_documents
    from xlbtm.demo_corpus import write_demo_corpus

    d = tmp_path_factory.mktemp("demo")
    write_demo_corpus(d, n_train=300, n_valid=30, seed=0)
    return d, sample_documents(d / "train", None)


def test_word_tokens_match_sklearn_pattern_and_split_cjk():
    texts = ["Hello, World! x_y 12ab a", "Überall ÉCOLE straße 3 bits/s", "日本語のテキスト abc中文", ""]
    h, doc, starts, lens, joined = word_tokens(texts)
    toks = [joined[s : s + n] for s, n in zip(starts, lens)]
    pat = re.compile(r"(?u)\b\w\w+\b")
    assert toks[:4] == pat.findall(texts[0].lower())
    assert [t for t, d in zip(toks, doc) if d == 1] == pat.findall(texts[1].lower())
    # CJK: one token per Han/kana character; Latin runs stay words even when glued to CJK
    assert [t for t, d in zip(toks, doc) if d == 2] == list("日本語のテキスト") + ["abc", "中", "文"]
    # same token -> same hash, different token -> different hash
    by = {}
    for t, x in zip(toks, h.tolist()):
        assert by.setdefault(t, x) == x
    assert len(set(by.values())) == len(by)


def test_word_featurizer_equals_sklearn_pipeline(demo):
    """Our vectorized tokenizer + embedding-bag projection == sklearn TfidfVectorizer + SVD + normalize."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    _, s = demo
    f = WordFeaturizer().fit(s.texts, s.langs, seed=0)
    assert f.lsa.dim == 100 and f.vocab[0] == "[UNK]"
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    assert not set(f.vocab) & ENGLISH_STOP_WORDS and not any(w[:1].isdigit() for w in f.vocab[1:])
    texts = [t for t, lang in zip(s.texts, s.langs) if lang != "zh"][:60]  # sklearn's \w\w+ keeps CJK runs whole
    vec = TfidfVectorizer(vocabulary={("\x00unk" if i == 0 else w): i for i, w in enumerate(f.vocab)})
    vec.fit(texts[:2])
    vec.idf_ = f.lsa.idf.astype(np.float64)
    ref = normalize(vec.transform(texts) @ f.lsa.components.T.astype(np.float64))
    np.testing.assert_allclose(f.transform(texts), ref, atol=2e-5)


def test_featurize_flat_sums_rows_in_token_order_like_embedding_bag():
    """featurize_flat sums each document's projection rows in float32, in token order (scipy CSR of ones),
    bitwise what the torch embedding_bag it replaced gave (so clusterers fitted before keep their clusters),
    at a size where any other summation order (pairwise, float64, sorted ids) rounds differently."""
    import torch

    rng = np.random.default_rng(0)
    v, d, n = 3000, 100, 64
    lsa = Lsa(idf=rng.uniform(1, 9, v).astype(np.float32), components=rng.normal(size=(d, v)).astype(np.float32))
    lengths = rng.integers(0, 2000, n)
    lengths[5] = 0  # an empty document
    flat = rng.integers(0, v, int(lengths.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int32)
    got = lsa.featurize_flat(flat, offsets)
    bag = torch.nn.functional.embedding_bag(
        torch.from_numpy(flat), torch.from_numpy(lsa.projection), torch.from_numpy(offsets), mode="sum"
    ).numpy()
    norm = np.sqrt(np.einsum("ij,ij->i", bag, bag))
    want = bag / np.maximum(norm, np.float32(1e-12))[:, None]
    np.testing.assert_array_equal(got, want)
    within = np.concatenate([np.sort(flat[o : o + k]) for o, k in zip(offsets, lengths)]).astype(np.int32)
    assert not np.array_equal(got, lsa.featurize_flat(within, offsets))  # same bags, other order: other bits
    assert np.all(got[5] == 0)
    np.testing.assert_allclose(
        got, torch.nn.functional.normalize(torch.from_numpy(bag), dim=1).numpy(), atol=fp_tol(1.0)
    )


def test_featurize_token_ids_is_linear_in_counts_and_incremental():
    rng = np.random.default_rng(0)
    lsa = Lsa(idf=rng.uniform(1, 3, 50).astype(np.float32), components=rng.normal(size=(8, 50)).astype(np.float32))
    ids = [[1, 2, 2, 7], [7, 2, 1, 2], [], [3]]
    x = lsa.featurize_token_ids(ids)
    np.testing.assert_allclose(x[0], x[1], atol=fp_tol(1.0))  # bag of words (unit rows, other sum order)
    assert np.allclose(x[2], 0)  # empty -> zero features
    np.testing.assert_allclose(np.linalg.norm(x[[0, 3]], axis=1), 1, atol=1e-5)
    # incremental: running sum of projection rows, normalized
    s = np.zeros(8)
    for t in ids[0]:
        s += lsa.projection[t]
    np.testing.assert_allclose(s / np.linalg.norm(s), x[0], atol=1e-5)
    # the explicit tf-idf formula
    tf = np.bincount(ids[0], minlength=50) * lsa.idf
    z = lsa.components @ tf
    np.testing.assert_allclose(z / np.linalg.norm(z), x[0], atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        lsa.featurize_token_ids([[50]])


@pytest.fixture(scope="module")
def sp_tokenizer(demo, tmp_path_factory):
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    _, s = demo
    d = train_sentencepiece(s.texts, tmp_path_factory.mktemp("tok") / "tok", vocab_size=600, seed=0)
    return load_tokenizer(d)


def test_subword_featurizer_fast_path_matches_reference(demo, sp_tokenizer):
    _, s = demo
    fast = SubwordFeaturizer(sp_tokenizer).fit(s.texts, seed=0)
    ref = SubwordFeaturizer(sp_tokenizer, fast=False)
    ref.lsa = fast.lsa
    a = fast.transform(s.texts[:50])
    b = ref.transform(s.texts[:50])
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(
        b, fast.lsa.featurize_token_ids(sp_tokenizer.encode_batch(s.texts[:50])), atol=fp_tol(1.0)
    )
    assert fast.lsa.vocab_size == sp_tokenizer.vocab_size
    terms = top_terms(fast, np.eye(3, fast.lsa.dim, dtype=np.float32), n=5)
    assert len(terms) == 3 and all(len(t) == 5 for t in terms)


def test_subword_fast_path_is_bitwise_the_reference_and_old_sentencepiece_fallback(demo, sp_tokenizer, monkeypatch):
    """The assignment path (sentencepiece int32 buffers straight into embedding_bag over projection rows
    gathered in sentencepiece's id order) must give exactly featurize_token_ids(encode(texts)): cluster
    files and the ensemble router both depend on it."""
    _, s = demo
    texts = s.texts[:60] + ["", "   ", "x"]
    f = SubwordFeaturizer(sp_tokenizer).fit(s.texts, seed=0)
    got = f.transform(texts)
    assert f._fast, "the sentencepiece fast path was not taken"
    ref = f.lsa.featurize_token_ids(f.encode(texts))
    np.testing.assert_array_equal(got, ref)
    sp, lut = f._fast
    np.testing.assert_array_equal(f.lsa.projection_rows(lut), f.lsa.projection[lut])
    flat, offsets = f.encode_flat(texts)
    assert [x.tolist() for x in np.split(flat, offsets[1:])] == f.encode(texts)
    np.testing.assert_array_equal(f.lsa.featurize_flat(flat, offsets), ref)
    # sentencepiece without return_type="numpy" (< 0.2.1): the list API, same features
    encode = type(sp).encode

    def old_encode(self, input, **kw):
        if "return_type" in kw:
            raise TypeError("Encode() got an unexpected keyword argument 'return_type'")
        return encode(self, input, **kw)

    monkeypatch.setattr(type(sp), "encode", old_encode)
    np.testing.assert_array_equal(f.transform(texts), ref)
    with pytest.raises(ValueError, match="out of range"):
        f.lsa.projection_rows(np.array([f.lsa.vocab_size]))


def test_word_stop_words_per_language():
    rng = np.random.default_rng(0)
    texts, langs = [], []
    for _ in range(60):  # language xx: "zork" is in every document -> a learned stop word
        texts.append("zork " + " ".join(f"w{rng.integers(30)}x" for _ in range(8)) + " alpha 42 and")
        langs.append("xx")
    for _ in range(10):  # language yy has too few documents to learn stop words from
        texts.append("blip " + " ".join(f"v{rng.integers(30)}y" for _ in range(8)))
        langs.append("yy")
    f = WordFeaturizer(min_df=1, lang_stop_df=0.9).fit(texts, langs)
    assert "zork" in f.stop_words and "zork" not in f.vocab
    assert "blip" in f.vocab and "and" not in f.vocab and "42" not in f.vocab
    g = WordFeaturizer(min_df=1, lang_stop_df=0.9).fit(texts, None)  # without langs: only English + numbers
    assert "zork" in g.vocab
    assert "zork" in WordFeaturizer(min_df=1).fit(texts, langs).vocab  # learned stop words are opt-in


def test_subword_clusterer_artifact_carries_tokenizer_and_router_arrays(demo, sp_tokenizer, tmp_path):
    from xlbtm.cluster.artifact import load_clusterer
    from xlbtm.cluster.train import train_tfidf_clusterer
    from xlbtm.errors import InputError
    from xlbtm.tokenizer import load_tokenizer, train_sentencepiece

    d, s = demo
    c, _ = train_tfidf_clusterer(
        d / "train", 3, tmp_path / "c", featurizer="subword", tokenizer=sp_tokenizer.path, max_docs=120, seed=0
    )
    c2 = load_clusterer(tmp_path / "c")  # tokenizer comes from the artifact's own copy
    assert c2.featurizer_kind == "subword" and c2.tokenizer_fingerprint == sp_tokenizer.fingerprint
    assert c2.tokenizer.fingerprint == sp_tokenizer.fingerprint
    np.testing.assert_array_equal(c.predict(s.texts[:40]), c2.predict(s.texts[:40]))
    # what the router needs: features from token ids == features from text
    ids = sp_tokenizer.encode_batch(s.texts[:10])
    np.testing.assert_allclose(c2.featurize_token_ids(ids), c2.transform(s.texts[:10]), atol=1e-4)
    assert c2.idf.shape == (sp_tokenizer.vocab_size,) and c2.components.shape[1] == sp_tokenizer.vocab_size
    other = load_tokenizer(train_sentencepiece(s.texts[:100], tmp_path / "other", vocab_size=300, seed=1))
    with pytest.raises(InputError, match="does not match"):
        load_clusterer(tmp_path / "c", tokenizer=other)


def test_chunked_fit_and_transform_equal_single_chunk(demo, monkeypatch):
    import xlbtm.cluster.featurize as fz

    _, s = demo
    texts, langs = s.texts[:150], s.langs[:150]
    a = WordFeaturizer(min_df=1).fit(texts, langs, seed=0)
    xa = a.transform(texts)
    monkeypatch.setattr(fz, "CHUNK", 7)
    b = WordFeaturizer(min_df=1).fit(texts, langs, seed=0)
    assert a.vocab == b.vocab
    np.testing.assert_allclose(a.lsa.idf, b.lsa.idf, rtol=1e-6)
    np.testing.assert_allclose(np.abs(a.lsa.components), np.abs(b.lsa.components), atol=1e-4)
    np.testing.assert_allclose(a.transform(texts), xa, atol=fp_tol(1.0))  # transform itself chunked at 7


def test_fast_path_agreement_counts_tokens_not_documents():
    """The sentencepiece/HF agreement check compares bags of ids (what TF-IDF sees): a reordered or locally
    re-segmented long document costs its few differing tokens, not a whole document's vote."""
    from xlbtm.cluster.featurize import _bag_difference

    assert _bag_difference([[1, 2, 3], [4]], [[1, 2, 3], [4]]) == 0
    assert _bag_difference([[1, 2]], [[2, 1]]) == 0
    assert _bag_difference([[1, 2, 3], [4]], [[1, 2, 3], [4, 4]]) == 1
    assert _bag_difference([[5, 6]], [[7]]) == 3


def _reference_word_tokens(texts):
    """The word tokenizer's contract in plain Python, one token at a time: runs of >= 2 non-CJK word chars
    and single CJK chars of the lowercased text; hash = fmix64(sum_j c_j M^j ^ len * MIX) mod 2^64."""
    from xlbtm.cluster import words

    mask = (1 << 64) - 1

    def char_class(ch):  # 0 = not \\w, 1 = \\w, 2 = CJK (a token of its own)
        if not (ch.isalnum() or ch == "_"):
            return 0
        return 2 if any(lo <= ord(ch) <= hi for lo, hi in words._CJK_RANGES) else 1

    mult, mix = int(words._HASH_MULT), int(words._HASH_MIX)

    def fmix(h):
        for m in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, None):
            h ^= h >> 33
            if m is not None:
                h = (h * m) & mask
        return h

    out = []
    for d, text in enumerate(texts):
        low, i = text.lower(), 0
        while i < len(low):
            c = char_class(low[i])
            j = i + 1
            if c == 1:
                while j < len(low) and char_class(low[j]) == 1:
                    j += 1
            if c == 2 or (c == 1 and j - i >= 2):
                h = sum(ord(ch) * pow(mult, k, 1 << 64) for k, ch in enumerate(low[i:j])) & mask
                out.append((d, low[i:j], fmix(h ^ ((j - i) * mix & mask))))
            i = j
    return out


def test_word_tokens_equal_the_per_token_reference():
    """The vectorized tokenizer (prefix-sum hashes, boundary masks) gives exactly the per-token reference's
    tokens, documents and hashes: the vocabulary ids, so features and cluster files, depend on them."""
    texts = [
        "Hello, World! x_y 12ab a",
        "ΑΣ ΟΔΟΣ İstanbul ß ǅ",
        "日本語のテキスト abc中文ab中",
        "",
        "a",
        "中",
        "x\ny 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀ab9 __ a_b",
        "trailing word",
        "  ",
    ] * 3
    for batch in (texts, texts[:1], texts[3:6], texts[6:7]):
        h, doc, starts, lens, joined = word_tokens(batch)
        got = [(int(d), joined[s : s + n], int(x)) for d, s, n, x in zip(doc, starts, lens, h)]
        assert got == _reference_word_tokens(batch)
        assert doc.dtype == np.int32 and h.dtype == np.uint64
    h, doc, starts, lens, _ = word_tokens(["", "  ", "a"])
    assert h.size == doc.size == starts.size == lens.size == 0


def test_subword_fast_path_decided_once_across_threads(demo, sp_tokenizer):
    """Assignment threads share one featurizer: they must all take the path decided on the first texts, and
    give the serial features bitwise."""
    import concurrent.futures as cf

    _, s = demo
    f = SubwordFeaturizer(sp_tokenizer).fit(s.texts, seed=0)
    serial = f.transform(s.texts[:80])
    g = SubwordFeaturizer(sp_tokenizer, lsa=f.lsa)
    calls = []
    decide = g._decide_fast
    g._decide_fast = lambda probe: calls.append(1) or decide(probe)
    with cf.ThreadPoolExecutor(4) as ex:
        parts = list(ex.map(g.transform, [s.texts[i : i + 10] for i in range(0, 80, 10)]))
    assert calls == [1] and g._fast
    np.testing.assert_array_equal(np.concatenate(parts), serial)


def test_subword_leaves_out_letterless_and_everywhere_pieces(demo, sp_tokenizer):
    """Default subword fit: pieces without a letter and pieces in > half of the documents get zero projection
    rows (so a prefix's features are still a sum of rows: the router's update), the others are used."""
    _, s = demo
    f = SubwordFeaturizer(sp_tokenizer).fit(s.texts, seed=0)
    tok = sp_tokenizer
    ids = f.encode(s.texts)
    df = np.zeros(tok.vocab_size)
    for seq in ids:
        df[list(set(seq))] += 1
    letterless = np.array([not any(c.isalpha() for c in (tok.id_to_token(i) or "")) for i in range(tok.vocab_size)])
    everywhere = df > 0.5 * len(ids)
    assert letterless[df > 0].any() and everywhere.any()
    stop = letterless | everywhere
    assert f.num_stopped == int(stop.sum())
    p = f.lsa.projection
    assert not p[stop].any()
    assert np.abs(p[(df > 0) & ~stop]).sum(1).min() > 0
    np.testing.assert_array_equal(f.transform(s.texts[:20]), f.lsa.featurize_token_ids(ids[:20]))
    old = SubwordFeaturizer(tok, max_df=1.0, stop_letterless=False).fit(s.texts, seed=0)
    assert old.num_stopped == 0 and old.lsa.projection[letterless & (df > 0)].any()


def test_subword_clusterer_records_its_encoder_and_assignment_loads_no_hf_tokenizer(demo, sp_tokenizer, tmp_path):
    """A subword fit that took sentencepiece's fast path records it (clusterer.json `encoder`, `sp_to_id`,
    the model's sha256); a loaded clusterer then featurizes with exactly that encoder without loading the HF
    tokenizer, and the `cluster` command imports neither transformers nor torch (1.7 + 1 CPU-s a process)."""
    import json
    import subprocess
    import sys

    from xlbtm.cluster.artifact import load_clusterer
    from xlbtm.cluster.train import train_tfidf_clusterer
    from xlbtm.errors import InputError

    d, s = demo
    fitted, _ = train_tfidf_clusterer(
        d / "train", 3, tmp_path / "c", featurizer="subword", tokenizer=sp_tokenizer.path, seed=0
    )
    meta = json.loads((tmp_path / "c" / "clusterer.json").read_text())
    assert meta["encoder"] == {"kind": "sentencepiece", "model": "tokenizer/sentencepiece.bpe.model"}
    assert "tokenizer/sentencepiece.bpe.model" in meta["files"]
    c = load_clusterer(tmp_path / "c")
    f = c.featurizer
    assert f._fast and callable(f._tokenizer), "the recorded encoder was not used, or the HF tokenizer was loaded"
    assert f.sentencepiece_model == tmp_path / "c" / "tokenizer" / "sentencepiece.bpe.model"  # the artifact's copy
    np.testing.assert_array_equal(c.transform(s.texts[:40]), fitted.transform(s.texts[:40]))
    np.testing.assert_array_equal(f.sentencepiece_ids, fitted.featurizer.sentencepiece_ids)
    assert callable(f._tokenizer)
    assert c.top_terms(3) and not callable(f._tokenizer)  # terms need the tokenizer: loaded then, not before

    code = (
        "import runpy, sys; sys.argv = ['cluster', '--data-dir', sys.argv[1], '--path-to-clusterer', "
        "sys.argv[2], '--output-prefix', sys.argv[3], '--split', 'train']\n"
        "try:\n    runpy.run_module('xlbtm.scripts.cluster', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(d), str(tmp_path / "c"), str(tmp_path / "a")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
    want = fitted.predict(s.docs if hasattr(s, "docs") else s.texts)
    got = [
        json.loads(line)["cluster"]
        for p in sorted((tmp_path / "a" / "train").rglob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    assert sorted(got) == sorted(want.tolist()) and len(got) == len(s.texts)

    model = tmp_path / "c" / "tokenizer" / "sentencepiece.bpe.model"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(InputError, match="sentencepiece.bpe.model was modified"):
        load_clusterer(tmp_path / "c")
