"""Tokenizer: training a small SentencePiece into an HF dir, loading seeds, the transformers 5.x trap."""

import json
import shutil

import pytest

from xlbtm.demo_corpus import write_demo_corpus
from xlbtm.errors import InputError
from xlbtm.tokenizer import load_tokenizer, read_sp_model, train_sentencepiece


@pytest.fixture(scope="module")
def demo_texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    write_demo_corpus(d, n_train=300, n_valid=20, seed=0)
    return [json.loads(line)["text"] for line in (d / "train/00000/demo.jsonl").open(encoding="utf-8")]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, demo_texts):
    return train_sentencepiece(demo_texts, tmp_path_factory.mktemp("tok") / "spm", vocab_size=1500, seed=0)


def sp_reference_ids(model_path, text):
    """What fairseq/XGLMTokenizer (slow) did: sp id + 1, sp's <unk> (0) -> 3."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    return [3 if i == 0 else i + 1 for i in sp.encode(text)]


def test_trained_dir_layout_and_special_ids(tok_dir):
    names = {p.name for p in tok_dir.iterdir()}
    assert {"sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json", "xlbtm_tokenizer.json"} <= names
    assert not [p for p in tok_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    tok = load_tokenizer(tok_dir)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert [tok.id_to_token(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    n_pieces = len(read_sp_model(tok_dir / "sentencepiece.bpe.model").pieces)
    assert tok.vocab_size == n_pieces + 2  # 4 specials replace sp's 3, plus <mask>
    assert tok.mask_id == tok.vocab_size - 1 and tok.id_to_token(tok.mask_id) == "<mask>"


def test_ids_match_sentencepiece_with_fairseq_offset(tok_dir, demo_texts):
    tok = load_tokenizer(tok_dir)
    texts = demo_texts[:50] + ["Hello world, ls -la /tmp", "  leading and   repeated spaces\nnew line", "☃ unknown ✈"]
    batch = tok.encode_batch(texts)
    for text, ids in zip(texts, batch):
        assert ids == tok.encode(text)
        assert ids == sp_reference_ids(tok_dir / "sentencepiece.bpe.model", text)
        assert 0 not in ids and 2 not in ids  # no special tokens added
    assert tok.encode("☃")[-1] == tok.unk_id
    lines = [ln for t in demo_texts[:50] for ln in t.split("\n") if tok.unk_id not in tok.encode(ln)]
    assert len(lines) > 20
    for line in lines:
        assert tok.decode(tok.encode(line)) == line


def test_autotokenizer_loads_same_ids(tok_dir, demo_texts):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)
    assert (hf.bos_token_id, hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    assert hf.mask_token_id == tok.mask_id
    assert len(hf) == tok.vocab_size
    for text in demo_texts[:10]:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)


def test_training_is_deterministic_and_fingerprint_tracks_vocab(tmp_path, tok_dir, demo_texts):
    again = train_sentencepiece(demo_texts, tmp_path / "again", vocab_size=1500, seed=0)
    assert (again / "sentencepiece.bpe.model").read_bytes() == (tok_dir / "sentencepiece.bpe.model").read_bytes()
    assert load_tokenizer(again).fingerprint == load_tokenizer(tok_dir).fingerprint
    other = train_sentencepiece(demo_texts, tmp_path / "again", vocab_size=1700, seed=0)  # replaces in place
    assert load_tokenizer(other).fingerprint != load_tokenizer(tok_dir).fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_sentencepiece_only_dir_is_built_with_fairseq_offset(tmp_path, tok_dir, demo_texts):
    # XLM-R style (no config): same ids and same fingerprint as the tokenizer.json it was saved with
    xlmr = tmp_path / "xlmr"
    xlmr.mkdir()
    shutil.copy(tok_dir / "sentencepiece.bpe.model", xlmr)
    a, b = load_tokenizer(xlmr), load_tokenizer(tok_dir)
    assert a.fingerprint == b.fingerprint and a.mask_id == b.mask_id
    # XGLM style: 7 madeup words instead of <mask> (vocab = pieces + 8, like XGLM's 256008)
    xglm = tmp_path / "xglm"
    shutil.copytree(xlmr, xglm)
    (xglm / "config.json").write_text(json.dumps({"model_type": "xglm"}))
    t = load_tokenizer(xglm)
    n_pieces = len(read_sp_model(xglm / "sentencepiece.bpe.model").pieces)
    assert t.vocab_size == n_pieces + 8 and t.mask_id is None
    assert t.id_to_token(t.vocab_size - 1) == "<madeupword6>"
    for text in demo_texts[:10]:
        assert t.encode(text) == b.encode(text)


def test_unk_only_tokenizer_from_transformers_is_detected(tmp_path, tok_dir, demo_texts, caplog):
    """transformers 5.x: XGLMTokenizer from a dir with only sentencepiece.bpe.model -> 11 tokens, all <unk>."""
    from transformers import XGLMTokenizer

    d = tmp_path / "seed"
    d.mkdir()
    shutil.copy(tok_dir / "sentencepiece.bpe.model", d)
    (d / "config.json").write_text(json.dumps({"model_type": "xglm"}))
    XGLMTokenizer().save_pretrained(str(d))  # what a user gets by saving the silently-broken tokenizer
    good = load_tokenizer(d)  # rebuilt from the .model, with a warning
    assert good.vocab_size == len(read_sp_model(d / "sentencepiece.bpe.model").pieces) + 8
    assert good.encode(demo_texts[0]) == load_tokenizer(tok_dir).encode(demo_texts[0])
    (d / "sentencepiece.bpe.model").unlink()
    with pytest.raises(InputError, match="broken tokenizer.*sentencepiece.bpe.model"):
        load_tokenizer(d)


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(InputError, match="expected tokenizer.json or sentencepiece.bpe.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"\xff not a protobuf \x00" * 10)
    with pytest.raises(InputError, match="sentencepiece.bpe.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(InputError, match="no text"):
        train_sentencepiece(["", "\n\n"], tmp_path / "t", vocab_size=100)


def test_tiny_corpus_trains(tmp_path):
    d = train_sentencepiece(["hello world", "hello there world", "a b c"], tmp_path / "tiny", vocab_size=1000)
    tok = load_tokenizer(d)
    assert tok.vocab_size < 1000  # soft limit: fewer pieces instead of an error
    assert tok.unk_id not in tok.encode("hello world")


def test_sample_documents_is_uniform_deterministic_and_ordered():
    from xlbtm.tokenizer import reservoir_sample as sample_documents

    a = sample_documents((str(i) for i in range(1000)), 100, seed=1)
    assert a == sample_documents((str(i) for i in range(1000)), 100, seed=1)
    assert a != sample_documents((str(i) for i in range(1000)), 100, seed=2)
    nums = [int(x) for x in a]
    assert nums == sorted(nums) and len(set(nums)) == 100
    assert sum(n >= 500 for n in nums) > 25  # not just the head of the stream
    assert sample_documents(["x", "y"], 5) == ["x", "y"]


def test_train_tokenizer_script(tmp_path):
    import subprocess
    import sys

    write_demo_corpus(tmp_path / "data", n_train=80, n_valid=4)
    out = tmp_path / "tok"
    cmd = [
        sys.executable,
        "-m",
        "xlbtm.scripts.train_tokenizer",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--vocab-size",
        "600",
        "--sample-docs",
        "50",
        "--style",
        "xglm",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tok = load_tokenizer(out)
    assert "[train_tokenizer] wrote" in r.stderr and tok.fingerprint[:16] in r.stderr
    assert tok.id_to_token(tok.vocab_size - 2) == "<madeupword6>" and tok.mask_id == tok.vocab_size - 1
    assert json.loads((out / "xlbtm_tokenizer.json").read_text())["num_sentences"] > 50
    r = subprocess.run(cmd[:-2] + ["--data-dir", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "data directory not found" in r.stderr
